//! The tools compared: none (the baseline), this tracer in its two modes, another build of it
//! (`--against`), and the peers present on the machine. Each is started, waited for until it
//! reports, stopped the way it expects, and its output counted for the workload's own port.
use std::{
    io::{BufRead as _, BufReader, Read},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use xtask::readiness::Readiness;

use crate::cargo::workspace_root;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// No tracer: the workload alone.
    Baseline,
    /// This tracer as a daemon: summaries only.
    TracerQuiet,
    /// This tracer logging every transition as JSON.
    TracerLog,
    /// Another build of this tracer (`--against`, an older commit's, say), quiet: started,
    /// waited for, stopped and accounted like `TracerQuiet`, with its own binary.
    TracerAt(&'static OtherBuild),
    /// libbpf-tools `tcpstates` (Debian package libbpf-tools).
    Libbpf,
    /// bpftrace with xtask/bench/tcpstates.bt.
    Bpftrace,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no tracer",
            Self::TracerQuiet => "tracer (quiet)",
            Self::TracerLog => "tracer (--log-transitions)",
            Self::TracerAt(build) => &build.name,
            Self::Libbpf => "libbpf-tools tcpstates",
            Self::Bpftrace => "bpftrace tcpstates.bt",
        }
    }

    /// A build of this tracer (the workspace's or another): it says when it is ready, counts
    /// every transition itself, and must stop when told to.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Self::TracerQuiet | Self::TracerLog | Self::TracerAt(_)
        )
    }
}

/// Another build of this tracer, run beside the workspace's.
#[derive(Debug, PartialEq, Eq)]
pub struct OtherBuild {
    binary: PathBuf,
    /// "tracer at PATH (quiet)": its rows in the tables and the results.
    name: String,
}

impl OtherBuild {
    /// The build at `binary`, which must be an executable file.
    pub fn checked(binary: &Path) -> Result<&'static Self> {
        let metadata =
            std::fs::metadata(binary).with_context(|| format!("--against {}", binary.display()))?;
        if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
            bail!("--against {}: not an executable file", binary.display());
        }
        Ok(Self::at(binary))
    }

    /// The build at `binary`, kept for the rest of the process: tools are copied into every
    /// run and named by `&'static str` in the results, and the benchmark runs once.
    pub fn at(binary: &Path) -> &'static Self {
        Box::leak(Box::new(Self {
            binary: binary.to_owned(),
            name: format!("tracer at {} (quiet)", binary.display()),
        }))
    }
}

/// A started tool and what it has written so far.
pub struct Running {
    pub tool: Tool,
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Spawn to attached (the tracer) or to the first line seen (a peer).
    pub startup: Duration,
    /// Spawn to the tracer's readiness: its table is complete from then on.
    pub snapshot: Duration,
    /// Sockets the tracer's start-up snapshot found.
    pub snapshot_sockets: u64,
}

/// What a stopped tool left.
pub struct Finished {
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Lines written to standard output so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Lines written so far that mention `port` as either end, in the tool's format.
    pub fn lines_for(&self, port: u16) -> usize {
        self.stdout
            .lock()
            .map(|lines| {
                lines
                    .iter()
                    .filter(|l| mentions_port(self.tool, l, port))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stops the tool the way it expects (libbpf-tools and bpftrace flush on SIGINT).
    pub fn stop(mut self) -> Result<Finished> {
        if let Some(mut child) = self.child.take() {
            let signal = match self.tool {
                Tool::Libbpf | Tool::Bpftrace => libc::SIGINT,
                _ => libc::SIGTERM,
            };
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            match wait_or_kill(&mut child, STOP_TIMEOUT)? {
                // This tracer must stop when told to.
                None if self.tool.is_ours() => {
                    bail!("{} did not stop within {STOP_TIMEOUT:?}", self.tool.name())
                }
                // A peer that ignores its stop signal (seen once with bpftrace) must not hang the
                // whole benchmark: what it printed still counts.
                None => eprintln!(
                    "xtask: {} did not stop within {STOP_TIMEOUT:?} of its signal; killed",
                    self.tool.name()
                ),
                Some(status) if !status.success() && self.tool.is_ours() => bail!(
                    "{} failed ({status}): {}",
                    self.tool.name(),
                    self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
                ),
                Some(_) => {}
            }
        }
        // Let the readers drain the pipes.
        thread::sleep(Duration::from_millis(200));
        Ok(Finished {
            // Taken, not copied: a logging tool's lines can run to hundreds of megabytes.
            stdout: self
                .stdout
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default(),
            stderr: self.stderr.lock().map(|s| s.clone()).unwrap_or_default(),
        })
    }
}

/// How long a tool may take to exit once told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for the child to exit; kills it if it has not after `timeout` (then `None`).
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().context("waiting for the tool")? {
            return Ok(Some(status));
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.kill().context("killing the tool")?;
    child.wait().context("waiting for the killed tool")?;
    Ok(None)
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a line of the tool's output is about a socket with this port at either end.
fn mentions_port(tool: Tool, line: &str, port: u16) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = port.to_string();
    match tool {
        // SKADDR PID COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS (COMM may hold spaces)
        Tool::Libbpf => {
            fields.len() >= 8
                && (fields[fields.len() - 7] == port || fields[fields.len() - 5] == port)
        }
        // sk pid comm sport dport old new ms
        Tool::Bpftrace => {
            fields.len() >= 8
                && (fields[fields.len() - 5] == port || fields[fields.len() - 4] == port)
        }
        Tool::TracerLog | Tool::TracerQuiet | Tool::TracerAt(_) => {
            line.contains(&format!("\"sport\":{port},"))
                || line.contains(&format!("\"dport\":{port},"))
        }
        Tool::Baseline => false,
    }
}

pub fn tracer_binary() -> PathBuf {
    workspace_root().join("target/release/tracer")
}

fn bpftrace_script() -> PathBuf {
    workspace_root().join("xtask/bench/tcpstates.bt")
}

/// How long a tool may take to start in the benchmark.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `tool` and waits until it reports. The tracer is limited to the benchmark's network
/// namespace (`netns`), so its counts hold the workload's events only.
pub fn start(tool: Tool, netns: u32) -> Result<Running> {
    spawn(tool, netns, &[], START_TIMEOUT)
}

/// Starts the quiet tracer with further flags, waiting up to `timeout` for its start-up snapshot
/// (which takes long when millions of sockets exist).
pub fn start_tracer(netns: u32, extra: &[String], timeout: Duration) -> Result<Running> {
    spawn(Tool::TracerQuiet, netns, extra, timeout)
}

fn spawn(tool: Tool, netns: u32, extra: &[String], timeout: Duration) -> Result<Running> {
    let mut command = match tool {
        Tool::Baseline => {
            return Ok(Running {
                tool,
                child: None,
                stdout: Arc::default(),
                stderr: Arc::default(),
                startup: Duration::ZERO,
                snapshot: Duration::ZERO,
                snapshot_sockets: 0,
            });
        }
        Tool::TracerQuiet | Tool::TracerLog | Tool::TracerAt(_) => {
            let mut c = Command::new(match tool {
                Tool::TracerAt(build) => build.binary.clone(),
                _ => tracer_binary(),
            });
            c.args([
                "--log-format",
                "json",
                "--no-pin",
                "--netns",
                &netns.to_string(),
            ]);
            c.args([
                "--log-transitions",
                if tool == Tool::TracerLog {
                    "always"
                } else {
                    "never"
                },
            ]);
            c.args(extra);
            c
        }
        Tool::Libbpf => {
            // Line-buffered: its output is a pipe here.
            let mut c = Command::new("stdbuf");
            c.args(["-oL", "/usr/sbin/tcpstates"]);
            c
        }
        Tool::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-B", "line"]).arg(bpftrace_script());
            c
        }
    };
    die_with_parent(&mut command);
    let readiness = if tool.is_ours() {
        Some(Readiness::for_command(&mut command)?)
    } else {
        None
    };
    let spawned = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", tool.name()))?;
    let stdout = collect_lines(child.stdout.take().context("stdout")?);
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let mut err_pipe = child.stderr.take().context("stderr")?;
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let mut running = Running {
        tool,
        child: Some(child),
        stdout,
        stderr,
        startup: Duration::ZERO,
        snapshot: Duration::ZERO,
        snapshot_sockets: 0,
    };
    match readiness {
        Some(readiness) => {
            let stderr = running.stderr.clone();
            let child = running
                .child
                .as_mut()
                .context("the tracer has no process")?;
            let ready = readiness.wait(child, spawned, timeout, || {
                stderr.lock().map(|s| s.clone()).unwrap_or_default()
            })?;
            running.startup = ready.attached;
            running.snapshot = ready.ready;
            running.snapshot_sockets = ready.snapshot_sockets;
        }
        None => wait_for_peer(&mut running, spawned, timeout)?,
    }
    Ok(running)
}

/// Has the kernel send SIGTERM to the process started by `command` when the benchmark dies (a
/// kill, a crash), so that no tool or server outlives it. Only the main thread spawns them: the
/// signal follows the thread that forked.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as the code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn collect_lines(pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    lines
}

/// A peer is ready when a connection made for the purpose shows in its output.
fn wait_for_peer(running: &mut Running, spawned: Instant, timeout: Duration) -> Result<()> {
    let deadline = spawned + timeout;
    let sentinel = TcpListener::bind("127.0.0.1:0").context("binding the sentinel")?;
    loop {
        if let Some(child) = running.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "{} exited ({status}): {}",
                running.tool.name(),
                running.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
        drop(TcpStream::connect(sentinel.local_addr()?));
        let _ = sentinel.accept();
        if running.lines_for(sentinel.local_addr()?.port()) > 0 {
            running.snapshot = spawned.elapsed();
            running.startup = running.snapshot;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not start within {}",
                running.tool.name(),
                humantime::format_duration(timeout)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Makes sure the peers are installed, from Debian's packages; returns those that are.
pub fn install_peers() -> Vec<Tool> {
    // Each peer is optional: those still missing are left out of the table.
    let _ = apt_install(&[
        ("/usr/sbin/tcpstates", "libbpf-tools"),
        ("/usr/bin/bpftrace", "bpftrace"),
        ("/usr/sbin/bpftool", "bpftool"),
    ]);
    let mut peers = Vec::new();
    if Path::new("/usr/sbin/tcpstates").exists() {
        peers.push(Tool::Libbpf);
    }
    if Path::new("/usr/bin/bpftrace").exists() {
        peers.push(Tool::Bpftrace);
    }
    peers
}

/// Installs, quietly and from Debian's packages, those of `wanted` (a file and the package
/// providing it) whose file is missing. Best effort: returns the packages whose files are still
/// missing after it, once each.
pub fn apt_install<'a>(wanted: &[(&str, &'a str)]) -> Vec<&'a str> {
    let missing = || {
        let mut packages: Vec<&'a str> = wanted
            .iter()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(_, package)| *package)
            .collect();
        packages.dedup();
        packages
    };
    let packages = missing();
    if packages.is_empty() {
        return packages;
    }
    eprintln!(
        "xtask: installing {} from Debian's packages",
        packages.join(", ")
    );
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let _ = Command::new("apt-get")
        // Another apt on the machine holds the lock for a while: wait for it rather than fail.
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    missing()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ports_in_each_format() {
        let libbpf = "ffff8881a8850940 3128    python3    127.0.0.1       46886 127.0.0.1       9099  SYN_SENT    -> ESTABLISHED 0.062";
        assert!(mentions_port(Tool::Libbpf, libbpf, 9099));
        assert!(mentions_port(Tool::Libbpf, libbpf, 46886));
        assert!(!mentions_port(Tool::Libbpf, libbpf, 3128));
        let spaced = "ffff8881a8850940 3128    my app    127.0.0.1       46886 127.0.0.1       9099  SYN_SENT    -> ESTABLISHED 0.062";
        assert!(mentions_port(Tool::Libbpf, spaced, 9099));
        let bpftrace = "ffff8881a8850940 3128 python3 46886 9099 2 1 0";
        assert!(mentions_port(Tool::Bpftrace, bpftrace, 9099));
        assert!(!mentions_port(Tool::Bpftrace, bpftrace, 3128));
        let ours = r#"{"event":"transition","sport":46886,"dport":9099,"old":"SYN_SENT"}"#;
        assert!(mentions_port(Tool::TracerLog, ours, 9099));
        assert!(!mentions_port(Tool::TracerLog, ours, 909));
        let other = Tool::TracerAt(OtherBuild::at(Path::new("/old")));
        assert!(mentions_port(other, ours, 46886));
        assert!(!mentions_port(other, ours, 909));
    }

    #[test]
    fn another_build_is_a_quiet_tracer_of_its_own() {
        let other = Tool::TracerAt(OtherBuild::at(Path::new("/work/old/tracer")));
        assert_eq!(other.name(), "tracer at /work/old/tracer (quiet)");
        // Started, stopped and accounted like the workspace's tracer...
        assert!(other.is_ours());
        // ...and its rows told apart from it.
        assert_ne!(other, Tool::TracerQuiet);
        assert_ne!(other.name(), Tool::TracerQuiet.name());
    }

    #[test]
    fn another_build_must_be_an_executable_file() {
        let root = workspace_root();
        assert!(OtherBuild::checked(&root.join("no such tracer")).is_err());
        // A directory, and a file that is not executable.
        assert!(OtherBuild::checked(&root).is_err());
        assert!(OtherBuild::checked(&root.join("Cargo.toml")).is_err());
        let sh = OtherBuild::checked(Path::new("/bin/sh")).unwrap();
        assert_eq!(Tool::TracerAt(sh).name(), "tracer at /bin/sh (quiet)");
    }
}
