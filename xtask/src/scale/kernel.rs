//! What the harness reads from and sets in the kernel: the limits a million sockets meet, the
//! kernel's own count of the namespace's sockets (what the tracer's table must equal), and the
//! cost of the /proc walk that finds owners.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// A kernel setting as found and as left.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub name: &'static str,
    /// `namespace` (the harness's own, gone with it) or `host` (read only: the machine is shared).
    pub scope: &'static str,
    pub found: String,
    pub set: Option<String>,
    pub why: &'static str,
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

fn read(name: &str) -> Result<String> {
    let path = sysctl_path(name);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

fn write(name: &str, value: &str) -> Result<()> {
    let path = sysctl_path(name);
    std::fs::write(&path, value).with_context(|| format!("writing {value:?} to {path}"))
}

/// Host-wide limits, read before the harness leaves its network namespace: tcp_mem shows only in
/// the host's (after the benchmark, in `cargo xtask test`, it is not visible). Not changed: other
/// work shares the machine.
pub fn host_settings() -> Vec<Setting> {
    let host = |name, why| Setting {
        name,
        scope: "host",
        found: read(name).unwrap_or_else(|_| "not visible from this namespace".to_owned()),
        set: None,
        why,
    };
    vec![
        host(
            "net.ipv4.tcp_mem",
            "pages of socket buffers before TCP throttles; idle connections hold none",
        ),
        host(
            "fs.file-max",
            "open files machine-wide: a socket is one, 2 per connection",
        ),
        host(
            "fs.nr_open",
            "per-process ceiling of the fd limit (the hard limit, 20,000 here, binds first)",
        ),
    ]
}

/// Sets what the namespace needs for `connections_per_destination` connections to each worker's
/// listener, and reports what it found. Must run on the thread that entered the namespace.
pub fn prepare_namespace(connections_per_destination: usize) -> Result<Vec<Setting>> {
    let mut settings = Vec::new();
    // Clients bind no port: connect() picks one per destination, so the ports a destination needs
    // are its connections; the default range (32768–60999, 28,232 ports) would already do for
    // 9,000, but the widest range keeps any worker size within reach. Listeners use port 1000,
    // below it.
    let range = read("net.ipv4.ip_local_port_range")?;
    let wanted = "1024 65535";
    if range != wanted {
        write("net.ipv4.ip_local_port_range", wanted)?;
    }
    settings.push(Setting {
        name: "net.ipv4.ip_local_port_range",
        scope: "namespace",
        found: range.clone(),
        set: (range != wanted).then(|| wanted.to_owned()),
        why: "ephemeral ports of each worker's clients",
    });
    let ports = port_count(wanted)?;
    if connections_per_destination as u64 > ports {
        bail!(
            "{connections_per_destination} connections to one destination need more than {ports} ephemeral ports"
        );
    }
    // Workers connect at most BATCH times before accepting, so the backlogs are never reached;
    // read to show they were checked.
    for (name, why) in [
        (
            "net.core.somaxconn",
            "listen backlog cap; workers accept every 100 connects",
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            "half-open connections; loopback handshakes complete inside connect()",
        ),
        (
            "net.ipv4.tcp_max_tw_buckets",
            "TIME-WAIT table; workers reset their connections at the end instead",
        ),
        (
            "net.ipv4.tcp_fin_timeout",
            "how long the planted sockets' peers linger in FIN_WAIT2",
        ),
    ] {
        settings.push(Setting {
            name,
            scope: "namespace",
            found: read(name)?,
            set: None,
            why,
        });
    }
    Ok(settings)
}

fn port_count(range: &str) -> Result<u64> {
    let mut bounds = range.split_whitespace().map(str::parse::<u64>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => Ok(high - low + 1),
        _ => bail!("cannot read the port range {range:?}"),
    }
}

/// `net.ipv4.tcp_fin_timeout` of the current namespace.
pub fn fin_timeout() -> Result<Duration> {
    let seconds: u64 = read("net.ipv4.tcp_fin_timeout")?
        .parse()
        .context("parsing tcp_fin_timeout")?;
    Ok(Duration::from_secs(seconds))
}

/// The kernel's TCP sockets in the current network namespace, by state in the tracer's names,
/// from `ss` (sock_diag). Unconnected sockets, which the tracer does not keep, are left out.
pub fn socket_counts() -> Result<BTreeMap<String, u64>> {
    let mut child = Command::new("ss")
        .args(["-Htan"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running ss")?;
    let mut counts = BTreeMap::new();
    // Streamed: a million lines need not be held.
    for line in BufReader::new(child.stdout.take().context("ss stdout")?).lines() {
        let line = line.context("reading ss")?;
        if let Some(state) = line.split_whitespace().next().and_then(tracer_state) {
            *counts.entry(state.to_owned()).or_default() += 1;
        }
    }
    let status = child.wait().context("waiting for ss")?;
    if !status.success() {
        bail!("ss failed ({status})");
    }
    Ok(counts)
}

/// `ss`'s state names in the tracer's (JSON) names.
fn tracer_state(ss: &str) -> Option<&'static str> {
    Some(match ss {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "LISTEN" => "LISTEN",
        "CLOSING" => "CLOSING",
        _ => return None,
    })
}

/// What the tracer does to find the owners of sockets older than it, done from the outside:
/// read every process's file descriptors. Returns the time it took and the descriptors read.
pub fn walk_fds() -> (Duration, u64) {
    let started = Instant::now();
    let mut count = 0;
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for entry in pids.filter(|e| e.file_name().to_str().is_some_and(is_pid)) {
        let fds = std::fs::read_dir(entry.path().join("fd"));
        for fd in fds.into_iter().flatten().flatten() {
            if std::fs::read_link(fd.path()).is_ok() {
                count += 1;
            }
        }
    }
    (started.elapsed(), count)
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// The `TCP:` line of /proc/net/sockstat (sockets in use here; memory pages host-wide).
pub fn sockstat() -> String {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("TCP:")).map(str::to_owned))
        .unwrap_or_default()
}

/// The machine's load average, to show how shared it was.
pub fn load_average() -> String {
    std::fs::read_to_string(Path::new("/proc/loadavg"))
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_states_as_the_tracer() {
        assert_eq!(tracer_state("ESTAB"), Some("ESTABLISHED"));
        assert_eq!(tracer_state("CLOSE-WAIT"), Some("CLOSE_WAIT"));
        assert_eq!(tracer_state("FIN-WAIT-2"), Some("FIN_WAIT2"));
        assert_eq!(tracer_state("UNCONN"), None);
    }

    #[test]
    fn counts_ports() {
        assert_eq!(port_count("1024 65535").unwrap(), 64512);
        assert!(port_count("60000 1024").is_err());
    }
}
