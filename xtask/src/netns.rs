//! A network namespace of one's own, for traffic that must stay off the host's (tests, the
//! benchmark's clients): held by an `unshare -n sleep` process, loopback up, gone when dropped.
use std::{
    os::fd::AsRawFd as _,
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
        ns.sh("ip link set lo up")?;
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
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(self.path())?.ino())
    }

    /// The process holding it (`ip link … netns PID` moves a link into it).
    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    /// Runs a shell script inside; fails unless it succeeds.
    pub fn sh(&self, script: &str) -> Result<()> {
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
        Ok(())
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
