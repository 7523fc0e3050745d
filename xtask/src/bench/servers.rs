//! Real servers on loopback, for fixed-duration workloads whose figure is throughput: nginx
//! serving a small static file, driven by wrk with a connection per request or with keep-alive,
//! and iperf3 moving bulk data. Every server is started for one run, listens on 127.0.0.1 only
//! (inside the benchmark's own network namespace, which the caller has entered), and is stopped
//! before the run returns, also on errors.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::tools;

/// A real-server workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// nginx and wrk, `Connection: close`: every request is a connection of its own.
    NginxClose,
    /// nginx and wrk, keep-alive: nginx closes a connection after 1,000 requests (its default
    /// `keepalive_requests`), so transitions are rare.
    NginxKeepAlive,
    /// iperf3, one stream: few connections, as many bytes as loopback moves.
    Iperf3,
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Self::NginxClose => "nginx, connection per request",
            Self::NginxKeepAlive => "nginx, keep-alive",
            Self::Iperf3 => "iperf3, one stream",
        }
    }

    /// Starts the server, drives it for `seconds`, stops it; returns its port and throughput.
    pub fn run(self, seconds: u64) -> Result<(u16, Throughput)> {
        let port = free_port()?;
        let scratch = Scratch::new()?;
        match self {
            Self::NginxClose | Self::NginxKeepAlive => {
                let server = start_nginx(&scratch, port)?;
                let mut wrk = Command::new("wrk");
                wrk.args(["-t2", "-c8", &format!("-d{seconds}s")]);
                if self == Self::NginxClose {
                    wrk.args(["-H", "Connection: close"]);
                }
                let out = wrk
                    .arg(format!("http://127.0.0.1:{port}/"))
                    .output()
                    .context("running wrk")?;
                server.stop()?;
                if !out.status.success() {
                    bail!(
                        "wrk failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok((port, parse_wrk(&String::from_utf8_lossy(&out.stdout))?))
            }
            Self::Iperf3 => {
                // --one-off: the server exits after its one test.
                let server = Server::start(
                    "iperf3 server",
                    Command::new("iperf3").args([
                        "--server",
                        "--one-off",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                    ]),
                    &scratch,
                    port,
                    libc::SIGTERM,
                )?;
                let out = Command::new("iperf3")
                    .args(["--client", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--time", &seconds.to_string(), "--json"])
                    .output()
                    .context("running iperf3")?;
                server.stop()?;
                // iperf3 reports its failures in the JSON ("error"), not always in its status.
                parse_iperf3(&String::from_utf8_lossy(&out.stdout))
                    .with_context(|| format!("iperf3 client ({})", out.status))
                    .map(|t| (port, t))
            }
        }
    }
}

/// What a fixed-duration workload achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Requests per second, or Gbit/s for bulk transfer.
    pub rate: f64,
    pub unit: &'static str,
    /// Requests completed (wrk); none for bulk transfer.
    pub requests: Option<u64>,
    /// Socket errors the client counted (connect, read, write, timeout).
    pub errors: u64,
}

/// Makes sure the servers and their clients are installed, from Debian's packages (bpftool too:
/// the footprint reads the maps' names and sizes from it).
pub fn install() -> Result<()> {
    let wanted = [
        ("/usr/sbin/nginx", "nginx-light"),
        ("/usr/bin/wrk", "wrk"),
        ("/usr/bin/iperf3", "iperf3"),
        ("/usr/sbin/bpftool", "bpftool"),
    ];
    let missing = tools::apt_install(&wanted);
    if !missing.is_empty() {
        bail!(
            "the real-server workloads need {} (apt-get install {0}); --load-seconds 0 leaves them out",
            missing.join(" ")
        );
    }
    Ok(())
}

/// A port nothing listens on in this namespace. Only this benchmark runs there, so nothing
/// takes it between this check and the server's bind.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A folder of the run's own for configuration, logs and content; removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tcpstate-bench-{}", std::process::id()));
        // A leftover of an earlier run that crashed goes first.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // nginx's workers run as nobody: they must read the content whatever the umask.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The page nginx serves: small, so requests, not bytes, are the work.
const PAGE: &str = "<!DOCTYPE html><html><head><title>tcpstate</title></head><body><p>tcpstate benchmark page.</p></body></html>\n";

fn start_nginx(scratch: &Scratch, port: u16) -> Result<Server> {
    let www = scratch.path("www");
    fs::create_dir_all(&www)?;
    fs::set_permissions(&www, fs::Permissions::from_mode(0o755))?;
    let index = www.join("index.html");
    fs::write(&index, PAGE)?;
    fs::set_permissions(&index, fs::Permissions::from_mode(0o644))?;
    let conf = scratch.path("nginx.conf");
    fs::write(&conf, nginx_conf(&scratch.0, port))?;
    Server::start(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&scratch.0)
            .arg("-c")
            .arg(&conf)
            // The error log before the configuration is read (Debian's default is stderr).
            .arg("-e")
            .arg(scratch.path("error.log")),
        scratch,
        port,
        // Graceful: idle keep-alive connections are closed, then the workers exit.
        libc::SIGQUIT,
    )
}

/// A minimal nginx configuration living in `dir`: its own pid file, error log and temporary
/// folders, no access log, listening on 127.0.0.1:`port` only.
///
/// One worker per CPU (`auto`): with wrk's two threads beside them the two CPUs are saturated,
/// so whatever a tracer spends, in the kernel or in its daemon, shows as requests not served. One
/// worker would cap nginx at one CPU and leave the tracer's daemon spare time on the other.
fn nginx_conf(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "# Generated by cargo xtask bench for one run.
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"
    )
}

/// A server process of one run. Stopped by [`Server::stop`]; killed, with its children, if
/// dropped before that (an error in between).
struct Server {
    name: &'static str,
    child: Option<Child>,
    stop_signal: i32,
    log: PathBuf,
}

/// How long a server may take to exit once told to.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Spawns `command`, its output to a log in `scratch`, and waits until it listens on `port`.
    fn start(
        name: &'static str,
        command: &mut Command,
        scratch: &Scratch,
        port: u16,
        stop_signal: i32,
    ) -> Result<Self> {
        let log = scratch.path(&format!("{}.out", name.replace(' ', "-")));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        tools::die_with_parent(command);
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Self {
            name,
            child: Some(child),
            stop_signal,
            log,
        };
        server.wait_listening(port)?;
        Ok(server)
    }

    /// Waits until the kernel lists a listener on `port`: no probe connection, whose
    /// transitions would count in the run (and which iperf3 would take for a test).
    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited ({status}): {}", self.name, self.output());
            }
            let table = fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
            if listening_on(&table, port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on port {port} within 10 s: {}",
                    self.name,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Stops the server the way it expects and waits for it (and its workers) to exit.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, self.stop_signal) };
        }
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        kill_with_children(&mut child);
        bail!(
            "{} did not stop within {SERVER_STOP_TIMEOUT:?}; killed",
            self.name
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_with_children(&mut child);
        }
    }
}

/// SIGKILL to a server and to the processes it started (nginx's workers would outlive their
/// master otherwise), each by its id.
fn kill_with_children(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let _ = child.kill();
    for id in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        // SAFETY: kill(2) on a process our server started.
        unsafe { libc::kill(id, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// Whether /proc/net/tcp lists a listening socket (state 0A) with local port `port`.
fn listening_on(table: &str, port: u16) -> bool {
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == "0A"
    })
}

/// Reads wrk's report: requests completed, requests per second, socket errors. Any non-2xx/3xx
/// response is an error: the server is then not doing the work measured.
fn parse_wrk(text: &str) -> Result<Throughput> {
    let mut requests = None;
    let mut rate = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rate = rest.trim().parse::<f64>().ok();
        } else if line.contains(" requests in ") {
            requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors = rest
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bail!("wrk got {} error responses: {text}", rest.trim());
        }
    }
    let (Some(requests), Some(rate)) = (requests, rate) else {
        bail!("no request count or rate in wrk's report: {text}");
    };
    if requests == 0 {
        bail!("wrk completed no request: {text}");
    }
    Ok(Throughput {
        rate,
        unit: "req/s",
        requests: Some(requests),
        errors,
    })
}

#[derive(Deserialize)]
struct IperfReport {
    #[serde(default)]
    error: Option<String>,
    end: Option<IperfEnd>,
}

#[derive(Deserialize)]
struct IperfEnd {
    sum_received: Option<IperfSum>,
}

#[derive(Deserialize)]
struct IperfSum {
    bits_per_second: f64,
}

/// Reads iperf3's JSON report: the rate the receiver saw, in Gbit/s.
fn parse_iperf3(text: &str) -> Result<Throughput> {
    let report: IperfReport = serde_json::from_str(text).context("parsing iperf3's JSON")?;
    if let Some(error) = report.error {
        bail!("iperf3: {error}");
    }
    let received = report
        .end
        .and_then(|end| end.sum_received)
        .context("no received total in iperf3's report")?;
    Ok(Throughput {
        rate: received.bits_per_second / 1e9,
        unit: "Gbit/s",
        requests: None,
        errors: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:8080/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.36ms    4.46ms  35.97ms   88.65%
    Req/Sec     4.16k     2.39k   11.14k    68.33%
  25090 requests in 3.09s, 6.51MB read
Requests/sec:   8107.22
Transfer/sec:      2.10MB
";

    #[test]
    fn reads_wrk() {
        let t = parse_wrk(WRK).unwrap();
        assert_eq!(t.requests, Some(25090));
        assert_eq!(t.rate, 8107.22);
        assert_eq!(t.unit, "req/s");
        assert_eq!(t.errors, 0);
    }

    #[test]
    fn reads_wrk_socket_errors() {
        let text = WRK.replace(
            "Requests/sec:",
            "  Socket errors: connect 2, read 5, write 0, timeout 1\nRequests/sec:",
        );
        assert_eq!(parse_wrk(&text).unwrap().errors, 8);
    }

    #[test]
    fn refuses_wrk_failures() {
        let bad = WRK.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 25090\nRequests/sec:",
        );
        assert!(parse_wrk(&bad).is_err());
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
        let none = WRK.replace("25090 requests", "0 requests");
        assert!(parse_wrk(&none).is_err());
    }

    #[test]
    fn reads_iperf3() {
        let json = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":4.1e10},"sum_received":{"bits_per_second":40123456789.5}}}"#;
        let t = parse_iperf3(json).unwrap();
        assert!((t.rate - 40.123456789).abs() < 1e-6);
        assert_eq!(t.unit, "Gbit/s");
        assert_eq!(t.requests, None);
        let failed = r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
        let err = parse_iperf3(failed).unwrap_err();
        assert!(format!("{err:#}").contains("Connection refused"));
        assert!(parse_iperf3("").is_err());
    }

    #[test]
    fn finds_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F91 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert!(listening_on(table, 8080));
        // Established, not listening.
        assert!(!listening_on(table, 8081));
        assert!(!listening_on(table, 80));
    }

    #[test]
    fn nginx_listens_on_loopback_only() {
        let conf = nginx_conf(Path::new("/tmp/x"), 8080);
        assert!(conf.contains("listen 127.0.0.1:8080;"));
        assert_eq!(conf.matches("listen").count(), 1);
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
        assert!(conf.contains("access_log off;"));
        assert!(conf.contains("daemon off;"));
    }
}
