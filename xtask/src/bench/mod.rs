//! `cargo xtask bench`: the tracer against no tracer and against its peers, on fixed loopback
//! workloads in a network namespace of the benchmark's own. Runs are interleaved (every tool once
//! per round, rounds repeated) and reported as medians with their range, in
//! target/bench/results.{md,json}.
pub mod measure;
pub mod tools;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use self::{
    measure::{BpfStats, Program},
    tools::{Running, Tool},
};
use crate::cargo::workspace_root;
use xtask::workload::{self, CloseWaitLeak, TRANSITIONS_PER_CONNECTION, TRANSITIONS_PER_LISTENER};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Timed rounds: every tool runs every workload once per round.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Rounds that follow with the kernel's BPF statistics on, for kernel time per event only
    /// (the statistics slow every BPF program a little, so timings come from the timed rounds;
    /// kernel time varies by tens of percent from round to round on a VM, hence several).
    #[arg(long, default_value_t = 3)]
    pub stats_runs: usize,
    /// Sequential connections.
    #[arg(long, default_value_t = 5000)]
    pub sequential: usize,
    /// Parallel clients of the burst.
    #[arg(long, default_value_t = 8)]
    pub burst_clients: usize,
    /// Connections per client in the burst.
    #[arg(long, default_value_t = 2500)]
    pub burst_per_client: usize,
    /// Sockets leaked in CLOSE_WAIT.
    #[arg(long, default_value_t = 200)]
    pub leak: usize,
    /// How long the leak is held.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leak_hold: Duration,
    /// Tiny counts, this tracer only, one round, and a check that its accounting adds up
    /// (expected = seen + lost + skipped). Part of `cargo xtask test`.
    #[arg(long)]
    pub smoke: bool,
}

impl Options {
    pub fn smoke() -> Self {
        Self {
            runs: 1,
            stats_runs: 0,
            sequential: 50,
            burst_clients: 2,
            burst_per_client: 25,
            leak: 5,
            leak_hold: Duration::from_millis(500),
            smoke: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    Sequential(usize),
    Burst(usize, usize),
    Leak(usize, Duration),
}

impl Workload {
    fn name(self) -> String {
        match self {
            Self::Sequential(n) => format!("sequential {n}"),
            Self::Burst(c, p) => format!("burst {c}x{p}"),
            Self::Leak(n, hold) => format!(
                "CLOSE_WAIT leak {n} for {}",
                humantime::format_duration(hold)
            ),
        }
    }

    fn connections(self) -> u64 {
        match self {
            Self::Sequential(n) | Self::Leak(n, _) => n as u64,
            Self::Burst(c, p) => (c * p) as u64,
        }
    }

    /// Transitions the kernel reports for the workload.
    fn expected(self) -> u64 {
        self.connections() * TRANSITIONS_PER_CONNECTION + TRANSITIONS_PER_LISTENER
    }

    /// Runs it; returns the server's port.
    fn run(self) -> Result<u16> {
        match self {
            Self::Sequential(n) => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                workload::sequential(listener, n)?;
                Ok(port)
            }
            Self::Burst(c, p) => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                workload::burst(listener, c, p)?;
                Ok(port)
            }
            Self::Leak(n, hold) => {
                let leak = CloseWaitLeak::start(workload::V4, n)?;
                thread::sleep(hold);
                let port = leak.listen_port;
                leak.release();
                Ok(port)
            }
        }
    }
}

/// One tool on one workload, once.
#[derive(Debug, Clone, Serialize)]
struct RunResult {
    tool: &'static str,
    workload: String,
    round: usize,
    /// Run with the kernel's BPF statistics on: its timings are not comparable.
    bpf_stats: bool,
    wall_ms: f64,
    expected: u64,
    seen: u64,
    lost: u64,
    skipped: u64,
    /// Kernel time of the tool's programs during the workload, when measured.
    kernel_ns: Option<u64>,
    programs: Vec<ProgramDelta>,
    tool_cpu_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    startup_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct ProgramDelta {
    name: String,
    runs: u64,
    run_time_ns: u64,
    recursion_misses: u64,
}

pub fn run(options: &Options) -> Result<()> {
    let netns = measure::enter_own_network_namespace()?;
    let mut tools = vec![Tool::Baseline, Tool::TracerQuiet, Tool::TracerLog];
    if options.smoke {
        tools.retain(|t| t.is_ours());
    } else {
        tools.extend(tools::install_peers());
    }
    // Idle: the quiet tracer in the new, empty namespace, before any workload.
    let idle = {
        let running = tools::start(Tool::TracerQuiet, netns)?;
        thread::sleep(Duration::from_secs(2));
        let rss = running.pid().map(measure::rss).transpose()?.unwrap_or(0);
        let startup = running.startup;
        running.stop()?;
        (rss, startup)
    };
    let workloads = [
        Workload::Sequential(options.sequential),
        Workload::Burst(options.burst_clients, options.burst_per_client),
        Workload::Leak(options.leak, options.leak_hold),
    ];
    let mut results = Vec::new();
    for round in 0..options.runs + options.stats_runs {
        let stats = (round >= options.runs).then(BpfStats::enable).transpose()?;
        for workload in workloads {
            for &tool in &tools {
                eprintln!(
                    "xtask: bench round {}{}: {} with {}",
                    round + 1,
                    if stats.is_some() {
                        " (BPF statistics on)"
                    } else {
                        ""
                    },
                    workload.name(),
                    tool.name()
                );
                let result = run_one(tool, workload, netns, round, stats.is_some())
                    .with_context(|| format!("{} with {}", workload.name(), tool.name()))?;
                results.push(result);
            }
        }
    }
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let name = if options.smoke { "smoke" } else { "results" };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&results)?,
    )?;
    let table = format!(
        "Idle tracer (quiet, no traffic): resident memory {:.1} MiB, start-up {} ms.\n\n{}",
        idle.0 as f64 / f64::from(1 << 20),
        idle.1.as_millis(),
        markdown(&results, &tools, &workloads)
    );
    std::fs::write(dir.join(format!("{name}.md")), &table)?;
    println!("{table}");
    if options.smoke {
        check_accounting(&results)?;
    }
    Ok(())
}

fn run_one(
    tool: Tool,
    workload: Workload,
    netns: u32,
    round: usize,
    kernel_stats: bool,
) -> Result<RunResult> {
    let running = tools::start(tool, netns)?;
    let pid = running.pid();
    // The kernel counts the runs it skipped (`recursion_misses`) whether statistics are on or
    // not: the peers' are read in every round (this tracer reports its own), run times only with
    // statistics on.
    let programs_before = match pid {
        Some(pid) if kernel_stats || !tool.is_ours() => Some(measure::programs_of(pid)?),
        _ => None,
    };
    let cpu_before = pid.map(measure::cpu_time).transpose()?;
    let started = Instant::now();
    let port = workload.run()?;
    let wall = started.elapsed();
    let expected = workload.expected();
    if tool.is_ours() {
        // The tracer reads at least every 100 ms; its quiet mode shows nothing to wait on.
        thread::sleep(Duration::from_millis(400));
    } else if tool != Tool::Baseline {
        wait_for_lines(&running, port, expected);
    }
    let cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) => Some(measure::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let peak_rss = pid.map(measure::peak_rss).transpose()?;
    let programs = match (pid, programs_before) {
        (Some(pid), Some(before)) => Some(measure::program_deltas(
            &before,
            &measure::programs_of(pid)?,
        )),
        _ => None,
    };
    let startup = running.startup;
    let seen_lines = running.lines_for(port) as u64;
    let finished = running.stop()?;
    let (seen, lost, skipped) = match tool {
        Tool::Baseline => (0, 0, 0),
        Tool::TracerQuiet | Tool::TracerLog => tracer_accounting(&finished.stdout)?,
        Tool::Libbpf | Tool::Bpftrace => {
            let skipped = programs.iter().flatten().map(|p| p.recursion_misses).sum();
            (seen_lines, lost_in(&finished.stderr), skipped)
        }
    };
    Ok(RunResult {
        tool: tool.name(),
        workload: workload.name(),
        round,
        bpf_stats: kernel_stats,
        wall_ms: wall.as_secs_f64() * 1e3,
        expected,
        seen,
        lost,
        skipped,
        kernel_ns: programs
            .as_ref()
            .filter(|_| kernel_stats)
            .map(|p| p.iter().map(|p| p.run_time_ns).sum()),
        programs: programs
            .unwrap_or_default()
            .into_iter()
            .map(|p: Program| ProgramDelta {
                name: p.name,
                runs: p.run_cnt,
                run_time_ns: p.run_time_ns,
                recursion_misses: p.recursion_misses,
            })
            .collect(),
        tool_cpu_ms: cpu.map(|c| c.as_secs_f64() * 1e3),
        peak_rss_bytes: peak_rss,
        startup_ms: startup.as_secs_f64() * 1e3,
    })
}

/// Waits until a peer has printed the workload's transitions (or they stop coming).
fn wait_for_lines(running: &Running, port: u16, expected: u64) {
    let mut last = 0;
    let mut quiet_since = Instant::now();
    loop {
        let now = running.lines_for(port) as u64;
        if now >= expected || quiet_since.elapsed() > Duration::from_secs(2) {
            return;
        }
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The tracer's own accounting from its final summary: transitions read, lost and skipped.
fn tracer_accounting(stdout: &[String]) -> Result<(u64, u64, u64)> {
    let summary: Value = stdout
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "summary" && v["final"] == true)
        .context("the tracer printed no final summary")?;
    let field = |name: &str| {
        summary["events"][name]
            .as_u64()
            .context("summary field missing")
    };
    Ok((
        field("transitions")?,
        field("transitions_lost")?,
        field("transitions_skipped")?,
    ))
}

/// Events a peer said it lost ("lost 12 events on CPU #0", "Lost 12 events").
fn lost_in(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("lost"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum()
}

fn check_accounting(results: &[RunResult]) -> Result<()> {
    for r in results.iter().filter(|r| r.tool.starts_with("tracer")) {
        if r.seen + r.lost + r.skipped != r.expected {
            bail!(
                "accounting does not add up for {} on {}: expected {} transitions, seen {} + lost {} + skipped {}",
                r.tool,
                r.workload,
                r.expected,
                r.seen,
                r.lost,
                r.skipped
            );
        }
    }
    eprintln!(
        "xtask: bench accounting adds up (expected = seen + lost + skipped) for every tracer run"
    );
    Ok(())
}

/// Median and range of some figure over runs.
pub(crate) fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn markdown(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | tool | wall ms, median (min–max) | × no tracer | expected | seen | lost | skipped | kernel ns / event | tool CPU ms / 1k events | peak RSS MiB | start-up ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let fmt = |s: Option<(f64, f64, f64)>, digits: usize| match s {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "–".to_owned(),
    };
    for workload in workloads {
        let name = workload.name();
        let of = |tool: Tool| {
            let name = &name;
            results
                .iter()
                .filter(move |r| r.workload == *name && r.tool == tool.name())
        };
        let baseline = spread(
            of(Tool::Baseline)
                .filter(|r| !r.bpf_stats)
                .map(|r| r.wall_ms),
        )
        .map(|s| s.0);
        for &tool in tools {
            let runs: Vec<&RunResult> = of(tool).filter(|r| !r.bpf_stats).collect();
            let stats_runs: Vec<&RunResult> = of(tool).filter(|r| r.bpf_stats).collect();
            if runs.is_empty() {
                continue;
            }
            let wall = spread(runs.iter().map(|r| r.wall_ms));
            let ratio = match (wall, baseline) {
                (Some(w), Some(b)) if tool != Tool::Baseline => format!("{:.2}", w.0 / b),
                _ => "–".to_owned(),
            };
            let count = |f: fn(&RunResult) -> u64| {
                spread(runs.iter().map(|r| f(r) as f64)).map_or(0.0, |s| s.0)
            };
            let per_event = spread(
                stats_runs
                    .iter()
                    .filter_map(|r| Some(r.kernel_ns? as f64 / r.expected as f64)),
            );
            let cpu = spread(
                runs.iter()
                    .filter_map(|r| Some(r.tool_cpu_ms? / r.expected as f64 * 1000.0)),
            );
            let rss = spread(
                runs.iter()
                    .filter_map(|r| Some(r.peak_rss_bytes? as f64 / (1 << 20) as f64)),
            );
            let startup = spread(
                runs.iter()
                    .filter(|_| tool != Tool::Baseline)
                    .map(|r| r.startup_ms),
            );
            out.push_str(&format!(
                "| {name} | {} | {} | {ratio} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                tool.name(),
                fmt(wall, 1),
                runs[0].expected,
                count(|r| r.seen),
                count(|r| r.lost),
                count(|r| r.skipped),
                fmt(per_event, 0),
                fmt(cpu, 2),
                fmt(rss, 1),
                fmt(startup, 0),
            ));
        }
    }
    // Where the tracer's kernel time goes, per program (median over its runs).
    let mut per_program: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| r.tool == Tool::TracerQuiet.name() && r.bpf_stats)
    {
        for p in &r.programs {
            per_program
                .entry((r.workload.clone(), p.name.clone()))
                .or_default()
                .push((p.runs, p.run_time_ns));
        }
    }
    if !per_program.is_empty() {
        out.push_str("\nTracer (quiet) kernel time by program, with BPF statistics on:\n\n| workload | program | runs | ns per run | total ms |\n|---|---|---|---|---|\n");
        for ((workload, program), runs) in per_program {
            let count = spread(runs.iter().map(|r| r.0 as f64)).map_or(0.0, |s| s.0);
            let total = spread(runs.iter().map(|r| r.1 as f64)).map_or(0.0, |s| s.0);
            let per_run = if count > 0.0 { total / count } else { 0.0 };
            out.push_str(&format!(
                "| {workload} | {program} | {count:.0} | {per_run:.0} | {:.2} |\n",
                total / 1e6
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peer_loss_reports() {
        assert_eq!(
            lost_in("lost 12 events on CPU #0\nlost 3 events on CPU #1\n"),
            15
        );
        assert_eq!(lost_in("Attaching 2 probes...\nLost 7 events\n"), 7);
        assert_eq!(lost_in("all good\n"), 0);
    }

    #[test]
    fn reads_the_tracer_accounting() {
        let lines = vec![
            r#"{"event":"summary","final":false,"events":{"transitions":1,"transitions_lost":0,"transitions_skipped":0}}"#.to_owned(),
            r#"{"event":"summary","final":true,"events":{"transitions":500,"transitions_lost":2,"transitions_skipped":1}}"#.to_owned(),
        ];
        assert_eq!(tracer_accounting(&lines).unwrap(), (500, 2, 1));
        assert!(tracer_accounting(&[]).is_err());
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(spread([3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(Vec::<f64>::new()), None);
    }
}
