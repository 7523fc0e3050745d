//! Runs the built tracer as a child process and collects its JSON lines, so integration tests see
//! exactly what users see. These tests load eBPF programs: they need root and never skip.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub use xtask::netns::Namespace;
use xtask::readiness::Readiness;

pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// A deadline stretched for slower machines: `TCPSTATE_TIME_SCALE` (the kernel matrix sets it in
/// its emulated VMs, several times slower than the host) multiplies every wait of these tests.
/// Only how long a test waits changes, never what it asserts.
pub fn patience(wait: Duration) -> Duration {
    wait.mul_f64(time_scale())
}

/// How many times slower than the host this machine runs the tests (`TCPSTATE_TIME_SCALE`, 1 by
/// default).
pub fn time_scale() -> f64 {
    std::env::var("TCPSTATE_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s >= 1.0)
        .unwrap_or(1.0)
}

/// What the running kernel lets the tracer do, as `tracer --check` says: tests whose
/// expectations differ by kernel assert the behaviour of each (never skip one).
#[derive(Debug, Clone, Copy)]
pub struct KernelFeatures {
    /// Sockets named by cookie (Linux 5.12): records checked against the kernel's socket list,
    /// sockets older than the tracer tracked, ages kept over restarts.
    pub socket_cookies: bool,
    /// The reason of a reset sent (Linux 6.10).
    pub reset_reasons: bool,
}

pub fn kernel_features() -> KernelFeatures {
    static FEATURES: std::sync::OnceLock<KernelFeatures> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(|| {
        require_root();
        let out = Command::new(TRACER)
            .args(["--check", "--log-format", "json", "--no-pin"])
            .output()
            .expect("cannot start the tracer binary");
        assert!(
            out.status.success(),
            "tracer --check failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check: Value = serde_json::from_slice(&out.stdout).expect("--check prints JSON");
        KernelFeatures {
            socket_cookies: check["socket_cookies"].as_bool().expect("socket_cookies"),
            reset_reasons: check["reset_reasons"].as_bool().expect("reset_reasons"),
        }
    })
}

/// Fails loudly when not root: a privileged test must never pass without loading anything.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and must run as root (use `sudo cargo xtask test`)"
    );
}

pub struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    /// Lines of its output (stdout or stderr) that carry a kernel address: none may.
    leaks: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr: they end at the pipes' end of file.
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a stopped tracer left behind.
pub struct Finished {
    pub events: Vec<Value>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Tracer {
    /// Starts `tracer --log-format json <args>` and waits until it is ready. Tests run side by
    /// side, so the pinned kernel state is off unless a test names its own `--pin-dir`.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with(Command::new(TRACER), args)
    }

    /// As [`Tracer::start`], the tracer run by `command`: the tracer binary itself, with what is
    /// to hold for it (a seccomp filter set before it runs), or a program that runs it in turn.
    pub fn start_with(mut command: Command, args: &[&str]) -> Tracer {
        require_root();
        let pinning: &[&str] = if args.contains(&"--pin-dir") || args.contains(&"--no-pin") {
            &[]
        } else {
            &["--no-pin"]
        };
        let readiness = Readiness::for_command(&mut command).expect("a notification socket");
        let spawned = Instant::now();
        let mut child = command
            .args(["--log-format", "json"])
            .args(pinning)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the tracer binary");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let leaks = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = events.clone();
        let out_leaks = leaks.clone();
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if kernel_address_in(&line).is_some() {
                    out_leaks.lock().unwrap().push(line.clone());
                }
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("stdout line is not JSON ({err}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let err_pipe = child.stderr.take().expect("stderr");
        let err_sink = stderr.clone();
        let err_leaks = leaks.clone();
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                if kernel_address_in(&line).is_some() {
                    err_leaks.lock().unwrap().push(line.clone());
                }
                let mut text = err_sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut tracer = Tracer {
            child,
            events,
            stderr,
            leaks,
            readers: vec![out_reader, err_reader],
        };
        // Ready: attached, and its start-up snapshot in (the sd_notify READY it sends).
        let stderr = tracer.stderr.clone();
        if let Err(err) = readiness.wait(
            &mut tracer.child,
            spawned,
            patience(Duration::from_secs(30)),
            || stderr.lock().unwrap().clone(),
        ) {
            panic!("{err:#}");
        }
        tracer
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The lines seen so far (and none carries a kernel address).
    pub fn events(&self) -> Vec<Value> {
        self.assert_no_kernel_address();
        self.events.lock().unwrap().clone()
    }

    fn assert_no_kernel_address(&self) {
        let leaks = self.leaks.lock().unwrap();
        assert!(
            leaks.is_empty(),
            "the tracer wrote kernel addresses:\n{}",
            leaks.join("\n")
        );
    }

    /// Waits until `done` holds for the events seen so far; panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[Value]) -> bool) {
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; events seen:\n{}\nthe tracer's stderr:\n{}",
                self.events()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the tracer to exit.
    pub fn stop_with(mut self, signal: i32) -> Finished {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("waiting for the tracer");
        // Everything it wrote, to the last line (a slow machine parses the tail for a while).
        for reader in self.readers.drain(..) {
            reader
                .join()
                .expect("a reader of the tracer's output panicked");
        }
        Finished {
            // (Checked for kernel addresses, now that every line is in.)
            events: self.events(),
            stderr: self.stderr(),
            status,
        }
    }

    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kernel address in a line of output, if any: 16 hex digits from `ffff` up (the kernel's half
/// of the address space, on x86-64 and arm64 alike), or the same value in decimal (20 digits from
/// 18446462598732840960). Cookies and disguised ids stay far below (a disguised id's top bit is
/// clear).
pub fn kernel_address_in(line: &str) -> Option<&str> {
    const KERNEL_HALF: u64 = 0xffff_0000_0000_0000;
    let runs = |pred: fn(char) -> bool| {
        line.split(move |c: char| !pred(c))
            .filter(|run| !run.is_empty())
            .collect::<Vec<_>>()
    };
    let hex = runs(|c| c.is_ascii_hexdigit()).into_iter().find(|run| {
        run.len() == 16 && u64::from_str_radix(run, 16).is_ok_and(|v| v >= KERNEL_HALF)
    });
    hex.or_else(|| {
        runs(|c| c.is_ascii_digit())
            .into_iter()
            .find(|run| run.len() == 20 && run.parse::<u64>().is_ok_and(|v| v >= KERNEL_HALF))
    })
}

/// Events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Stuck reports about sockets whose local port is `port` (a server's accepted sockets).
pub fn stuck_on_port(events: &[Value], port: u16) -> Vec<Value> {
    of_kind(events, "stuck")
        .into_iter()
        .filter(|e| e["sport"] == port)
        .cloned()
        .collect()
}

/// `(old, new)` pairs of a list of transitions.
pub fn states(events: &[&Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["old"].as_str().unwrap().to_owned(),
                e["new"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// This process's name, as `ps` and the tracer report it (not the test thread's name).
pub fn process_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned()
}

/// The `workload` example (built by `cargo test` next to the tracer binary).
pub fn workload_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(TRACER)
        .parent()
        .expect("binary directory")
        .join("examples/workload");
    assert!(
        path.exists(),
        "{} is missing: run the whole suite (cargo xtask test)",
        path.display()
    );
    path
}

/// A `workload` process: a server holding accepted sockets (see tracer/examples/workload.rs).
pub struct Workload {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub pid: u32,
    pub listen_port: u16,
    pub client_ports: Vec<u16>,
}

impl Workload {
    /// `workload close-wait`: a server holding accepted sockets in CLOSE_WAIT.
    pub fn close_wait(ip: &str, count: usize, wrapper: Option<&str>) -> Workload {
        Self::start("close-wait", ip, count, wrapper)
    }

    /// `workload serve`: a server accepting connections from outside.
    pub fn serve(ip: &str, count: usize) -> Workload {
        Self::start("serve", ip, count, None)
    }

    /// Any workload mode, optionally through a shell wrapper (see [`Workload::start`]).
    pub fn run(mode: &str, ip: &str, count: usize, wrapper: Option<&str>) -> Workload {
        Self::start(mode, ip, count, wrapper)
    }

    /// Starts it directly, or through `sh -c` with `wrapper`, a shell command in which `{}`
    /// stands for the workload's (e.g. [`Namespace::wrapper`]).
    fn start(mode: &str, ip: &str, count: usize, wrapper: Option<&str>) -> Workload {
        let binary = workload_binary();
        let mut command = match wrapper {
            None => {
                let mut c = Command::new(&binary);
                c.args([mode, ip, &count.to_string()]);
                c
            }
            Some(wrapper) => {
                let workload = format!("{} {mode} {ip} {count}", binary.display());
                let mut c = Command::new("sh");
                c.arg("-c").arg(wrapper.replace("{}", &workload));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the workload");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .expect("workload said nothing")
            .expect("workload output");
        let info: Value = serde_json::from_str(&first).expect("workload JSON");
        Workload {
            child,
            lines,
            pid: info["pid"].as_u64().unwrap() as u32,
            listen_port: info["listen_port"].as_u64().unwrap() as u16,
            client_ports: info["client_ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u16)
                .collect(),
        }
    }

    /// Closes the accepted sockets and waits until it has.
    pub fn release(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "release").expect("writing to the workload");
        stdin.flush().unwrap();
        self.expect_line("released");
    }

    /// Waits for the workload to print `line`.
    pub fn expect_line(&mut self, line: &str) {
        let got = self
            .lines
            .next()
            .expect("workload ended")
            .expect("workload output");
        assert_eq!(got, line);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A folder of the test's own under the system's temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "tcpstate-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free on loopback right now, for a server the test starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` from a server on loopback: the status line and headers, and the body. HTTP/1.0, so
/// the body comes whole (never chunked) and ends with the connection.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|err| panic!("cannot connect to 127.0.0.1:{port}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response from port {port}: {response}"));
    (head.to_owned(), body.to_owned())
}

/// The tracer's `/metrics`, checked to be served as OpenMetrics.
pub fn scrape(port: u16) -> String {
    let (head, body) = http_get(port, "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body
}

/// Samples by name and labels (sorted `k=v` pairs joined by commas).
pub fn samples(text: &str) -> HashMap<(String, String), f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses as Prometheus text");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            Some(((s.metric, labels.join(",")), value))
        })
        .collect()
}

pub fn value(samples: &HashMap<(String, String), f64>, name: &str, labels: &str) -> f64 {
    samples
        .get(&(name.to_owned(), labels.to_owned()))
        .copied()
        .unwrap_or(0.0)
}

/// Waits until a scrape satisfies `done`; returns it. Patient: the tracer's gauges can lag by
/// many seconds on a host with very many sockets (tests/prometheus.rs says why).
pub fn scrape_until(
    port: u16,
    what: &str,
    done: impl Fn(&HashMap<(String, String), f64>) -> bool,
) -> String {
    let deadline = Instant::now() + patience(Duration::from_secs(60));
    loop {
        let text = scrape(port);
        if done(&samples(&text)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A tracer limited to the network namespace `ns`, serving metrics on a free port (returned).
pub fn start_tracer(ns: &Namespace, extra: &[&str]) -> (Tracer, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let path = ns.path();
    let mut args = vec![
        "--netns",
        path.as_str(),
        "--metrics-addr",
        port_text.as_str(),
    ];
    args.extend_from_slice(extra);
    (Tracer::start(&args), port)
}

/// `promtool` from Debian's prometheus package. Fails when it is missing, in CI as anywhere:
/// the alert rules and dashboard would otherwise pass unchecked.
pub fn promtool() -> Command {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "promtool is missing: install Debian's prometheus package \
         (apt-get install --no-install-recommends prometheus; .ci/run does)"
    );
    Command::new("promtool")
}
