//! What the benchmark reads off the system: a process's CPU time and peak memory, and the
//! kernel's per-program BPF statistics.
use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// CPU time a process has used (user + system), from /proc/<pid>/schedstat (nanoseconds).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("parsing schedstat")?;
    Ok(Duration::from_nanos(ns))
}

/// CPU time of a whole process, every thread included, also those that have exited (the
/// tracer lists other network namespaces from short-lived threads): utime + stime of
/// /proc/<pid>/stat, in clock ticks (10 ms).
pub fn process_cpu_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime and stime fields 14 and 15.
    let after_comm = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let mut fields = after_comm.split_whitespace().skip(11);
    let mut tick = || -> Result<u64> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .context("parsing /proc/<pid>/stat")
    };
    let ticks = tick()? + tick()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident memory of a process now (VmRSS), in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS:")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// One program's counters, from `bpftool prog show --json` (which leaves out zero counters).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Program {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
    #[serde(default)]
    pub recursion_misses: u64,
}

/// Ids of the BPF objects whose file descriptors a process holds: `key` is `prog_id:` or
/// `map_id:`, as in its fdinfo.
fn fdinfo_ids(pid: u32, key: &str) -> Result<HashSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix(key))
                .filter_map(|id| id.trim().parse::<u32>().ok()),
        );
    }
    Ok(ids)
}

/// `bpftool <object> show --json`, kept to the ids a process holds.
fn bpftool_show<T: DeserializeOwned>(
    object: &str,
    ids: &HashSet<u32>,
    id: impl Fn(&T) -> u32,
) -> Result<Vec<T>> {
    let out = Command::new("bpftool")
        .args([object, "show", "--json"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {object} show failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let all: Vec<T> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing bpftool {object} show's JSON"))?;
    Ok(all.into_iter().filter(|o| ids.contains(&id(o))).collect())
}

/// The BPF programs a process holds, by id.
pub fn programs_of(pid: u32) -> Result<HashMap<u32, Program>> {
    let ids = fdinfo_ids(pid, "prog_id:")?;
    Ok(bpftool_show("prog", &ids, |p: &Program| p.id)?
        .into_iter()
        .map(|p| (p.id, p))
        .collect())
}

/// One BPF map and the kernel memory charged to it (`memlock:` in the fdinfo of its file
/// descriptors, `bytes_memlock` in bpftool's report).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Map {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename(deserialize = "bytes_memlock"))]
    pub bytes: u64,
}

/// The BPF maps a process holds, each once however many descriptors it has, by name.
pub fn maps_of(pid: u32) -> Result<Vec<Map>> {
    let ids = fdinfo_ids(pid, "map_id:")?;
    let mut maps = bpftool_show("map", &ids, |m: &Map| m.id)?;
    maps.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(maps)
}

/// Kernel memory of the BPF maps a process holds, in bytes (ring buffer included).
pub fn bpf_map_memory(pid: u32) -> Result<u64> {
    Ok(maps_of(pid)?.iter().map(|m| m.bytes).sum())
}

/// Counter increase between two readings of the same process's programs, by program name.
pub fn program_deltas(
    before: &HashMap<u32, Program>,
    after: &HashMap<u32, Program>,
) -> Vec<Program> {
    let mut deltas: Vec<Program> = after
        .values()
        .map(|a| {
            let b = before.get(&a.id).cloned().unwrap_or_default();
            Program {
                id: a.id,
                name: a.name.clone(),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                recursion_misses: a.recursion_misses.saturating_sub(b.recursion_misses),
            }
        })
        .collect();
    deltas.sort_by(|a, b| a.name.cmp(&b.name));
    deltas
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on for the benchmark, restored when dropped.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous =
            std::fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_whole_process_cpu_time() {
        let before = process_cpu_time(std::process::id()).unwrap();
        // Busy for a few clock ticks, on another thread.
        thread_busy(Duration::from_millis(50));
        let after = process_cpu_time(std::process::id()).unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
    }

    fn thread_busy(how_long: Duration) {
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < how_long {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
    }
}
