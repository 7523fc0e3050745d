//! Network namespaces of one's own, for traffic that must stay off the host's, the one helper of
//! the tests, the benchmark, the scale and soak harnesses:
//! - [`Namespace`]: a namespace beside this process's, held by an `unshare -n sleep` process,
//!   loopback up, gone when dropped; commands and threads enter it;
//! - [`enter_new`]: this whole process moved into a new one, for harnesses whose every
//!   connection (and every process they start) belongs there.
use std::{
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub struct Namespace {
    holder: Child,
}

impl Namespace {
    pub fn new() -> Result<Namespace> {
        let own = std::fs::read_link("/proc/thread-self/ns/net")?;
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .context("starting unshare -n")?;
        let ns = Namespace { holder };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(ns.path()).map_or(true, |l| l == own) {
            if Instant::now() > deadline {
                bail!("unshare did not make a network namespace in 5 s");
            }
            thread::sleep(Duration::from_millis(10));
        }
        ns.sh(LOOPBACK_UP)?;
        Ok(ns)
    }

    /// The namespace's file, for `--netns` and `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A shell command running `{}` inside (see the tests' `Workload::run`).
    pub fn wrapper(&self) -> String {
        format!("nsenter --net={} {{}}", self.path())
    }

    /// Its inode number, as the tracer reports it.
    pub fn inode(&self) -> Result<u32> {
        inode(&self.path())
    }

    /// The process holding it (`ip link … netns PID` moves a link into it).
    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    /// Runs a shell script inside; fails unless it succeeds.
    pub fn sh(&self, script: &str) -> Result<()> {
        self.output(script).map(drop)
    }

    /// Runs a shell script inside and returns what it printed; fails unless it succeeds.
    pub fn output(&self, script: &str) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["sh", "-c", script])
            .output()
            .context("starting nsenter")?;
        if !out.status.success() {
            bail!(
                "`{script}` failed in {}: {}",
                self.path(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread of this process that entered the namespace: the sockets it makes
    /// belong to the namespace, and to this process.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let namespace = std::fs::File::open(self.path())?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only, with an open namespace file.
                    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.path()))?
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

const LOOPBACK_UP: &str = "ip link set lo up";

/// Moves this process into a new network namespace with loopback up, and returns its inode
/// number: its connections then neither fill the host's TIME-WAIT table nor meet its traffic.
/// unshare(2) moves the calling thread only, and threads and processes started afterwards
/// follow it; so this must run before the process starts any thread (unlike [`Namespace`],
/// nothing holds the namespace but the process itself, and nothing needs dropping).
pub fn enter_new() -> Result<u32> {
    // SAFETY: unshare affects the calling thread only; the caller has started no thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    let status = Command::new("sh")
        .args(["-c", LOOPBACK_UP])
        .status()
        .context("starting sh")?;
    if !status.success() {
        bail!("`{LOOPBACK_UP}` failed in the new namespace ({status})");
    }
    inode("/proc/thread-self/ns/net")
}

/// The inode number of a namespace file (namespace numbers are 32-bit in the kernel).
fn inode(path: &str) -> Result<u32> {
    let ino = std::fs::metadata(path)
        .with_context(|| format!("reading {path}"))?
        .ino();
    u32::try_from(ino).with_context(|| format!("{path} has inode {ino}, past 32 bits"))
}
