//! When a started tracer is ready, from the structured signal it sends systemd (`sd_notify`),
//! never from its prose: the tests, the benchmark and the scale run all wait with this. The
//! daemon says `TCPSTATE_ATTACHED=1` once its programs are attached, then `READY=1` with
//! `TCPSTATE_SNAPSHOT_SOCKETS=N` once its start-up snapshot is in.
use std::{
    collections::HashMap,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A notification socket for one tracer: give it to the command, then wait on it.
pub struct Readiness {
    socket: UnixDatagram,
    path: PathBuf,
}

/// What the tracer said, and when, counted from its spawn.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Spawn to attached: it traces from then on.
    pub attached: Duration,
    /// Spawn to ready: its table is complete (the start-up snapshot is in).
    pub ready: Duration,
    /// Sockets the start-up snapshot found.
    pub snapshot_sockets: u64,
}

impl Readiness {
    /// Binds a socket of its own, and has `command` (the tracer) notify it.
    pub fn for_command(command: &mut Command) -> Result<Readiness> {
        let path = std::env::temp_dir().join(format!(
            "tcpstate-notify-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)
            .with_context(|| format!("binding a notification socket at {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        command.env("NOTIFY_SOCKET", &path);
        Ok(Readiness { socket, path })
    }

    /// Waits until the tracer, spawned at `spawned`, is ready; fails if it exits first (with what
    /// `stderr` returns then) or `timeout` passes.
    pub fn wait(
        &self,
        child: &mut Child,
        spawned: Instant,
        timeout: Duration,
        stderr: impl Fn() -> String,
    ) -> Result<Ready> {
        let mut attached = None;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let fields = parse(&String::from_utf8_lossy(&buf[..n]));
                if fields.contains_key("TCPSTATE_ATTACHED") {
                    attached.get_or_insert(spawned.elapsed());
                }
                if fields.get("READY").is_some_and(|v| v == "1") {
                    let ready = spawned.elapsed();
                    return Ok(Ready {
                        attached: attached.unwrap_or(ready),
                        ready,
                        snapshot_sockets: fields
                            .get("TCPSTATE_SNAPSHOT_SOCKETS")
                            .and_then(|n| n.parse().ok())
                            .context("READY without TCPSTATE_SNAPSHOT_SOCKETS")?,
                    });
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the tracer exited ({status}) before it was ready: {}",
                    stderr()
                );
            }
            if spawned.elapsed() > timeout {
                bail!(
                    "the tracer was not ready within {}: {}",
                    humantime::format_duration(timeout),
                    stderr()
                );
            }
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `KEY=VALUE` lines of a notification.
fn parse(message: &str) -> HashMap<String, String> {
    message
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// A number no other socket of this process has used.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_key_value_lines() {
        let fields = parse("READY=1\nSTATUS=tracing: a=b\nTCPSTATE_SNAPSHOT_SOCKETS=12\n");
        assert_eq!(fields["READY"], "1");
        assert_eq!(fields["STATUS"], "tracing: a=b");
        assert_eq!(fields["TCPSTATE_SNAPSHOT_SOCKETS"], "12");
    }
}
