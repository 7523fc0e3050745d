//! `cargo xtask scale`: what the daemon costs per socket, at a million sockets. Worker processes
//! hold N established loopback connections (2N sockets) in a network namespace of the harness's
//! own, some left in CLOSE_WAIT; the tracer is measured started before they exist (its table
//! built from events) and started after (from the kernel's list): start-up, owners, stuck
//! reports, whether its table equals the kernel's, its reconciliations and idle CPU, its memory.
//! Results: target/bench/scale.{md,json}. `--smoke` is a small run with assertions that do not
//! depend on the machine's speed, part of `cargo xtask test`.
mod fleet;
mod judge;
mod kernel;
mod report;
mod timeline;
pub mod worker;

use std::{
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use self::{
    fleet::{Fleet, Planted},
    judge::{FinalSummary, StuckReports, TableCheck},
    timeline::{CpuSampler, Schedule, WindowCost},
};
use crate::{
    bench::{measure, tools},
    cargo::workspace_root,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Established loopback connections; each is two sockets.
    #[arg(long, default_value_t = 500_000)]
    pub connections: usize,
    /// Connections whose server end is left in CLOSE_WAIT, spread over the workers.
    #[arg(long, default_value_t = 20)]
    pub stuck: usize,
    /// How long each tracer's CPU is sampled with no traffic at all.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Measure a tracer started before the sockets exist (neither flag: both).
    #[arg(long)]
    pub before: bool,
    /// Measure a tracer started after the sockets exist (neither flag: both).
    #[arg(long)]
    pub after: bool,
    /// The tracer's CLOSE_WAIT threshold.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub threshold: Duration,
    /// The tracer's reconciliation interval (its default).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// The tracer's summary interval: prime to the reconciliation interval, so that their bursts
    /// of work do not coincide and each can be measured.
    #[arg(long, default_value = "11s", value_parser = humantime::parse_duration)]
    pub summary_interval: Duration,
    /// Connections per worker process (two file descriptors each; 20,000 at most per process).
    #[arg(long, default_value_t = 9_000)]
    pub per_worker: usize,
    /// 50,000 connections, short windows, and assertions (part of `cargo xtask test`).
    #[arg(long)]
    pub smoke: bool,
}

impl Options {
    pub fn smoke() -> Self {
        Self {
            connections: 50_000,
            stuck: 20,
            idle: Duration::from_secs(10),
            before: true,
            after: true,
            threshold: Duration::from_secs(5),
            // The daemon's default. Shorter, a reconciliation could run while the connections are
            // made, and it blocks the daemon long enough for the ring buffer to overflow on a slow
            // machine: the smoke run's "nothing lost" would then depend on the machine's speed.
            reconcile_interval: Duration::from_secs(30),
            summary_interval: Duration::from_secs(3),
            per_worker: 9_000,
            smoke: true,
        }
    }

    fn started(&self) -> Vec<Started> {
        match (self.before, self.after) {
            (true, false) => vec![Started::Before],
            (false, true) => vec![Started::After],
            _ => vec![Started::Before, Started::After],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Started {
    Before,
    After,
}

impl std::fmt::Display for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Before => "before",
            Self::After => "after",
        })
    }
}

/// The tracer's own default table bound.
const DEFAULT_MAX_SOCKETS: usize = 262_144;
/// The tracer's metrics endpoint, in the harness's namespace: realistic (the DaemonSet serves
/// metrics, refreshed every second) and free (the namespace is new).
const METRICS_ADDR: &str = "127.0.0.1:9977";
/// How long a tracer may take to list a million sockets at start-up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Time for the daemon to settle after start-up before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

pub fn run(options: &Options) -> Result<()> {
    if options.stuck > options.connections {
        bail!("cannot leave more connections in CLOSE_WAIT than there are");
    }
    let host = kernel::host_settings();
    let load_at_start = kernel::load_average();
    let netns = xtask::netns::enter_new()?;
    let mut settings = kernel::prepare_namespace(options.per_worker)?;
    settings.extend(host);
    let fin_timeout = kernel::fin_timeout()?;
    let workers = options.connections.div_ceil(options.per_worker.max(1));
    // Every socket the namespace will hold: both ends of each connection, the workers' listeners,
    // the tracer's metrics listener, the planted sockets' lingering peers.
    let expected_sockets = 2 * options.connections + workers + 1 + options.stuck;
    let max_sockets = (expected_sockets > DEFAULT_MAX_SOCKETS)
        .then_some(expected_sockets + expected_sockets / 100 + 1000);
    let flags = tracer_flags(options, max_sockets);
    let parallel = thread::available_parallelism().map_or(2, |n| n.get());
    let started = options.started();

    let mut phases = Vec::new();
    let build = || -> Result<(Fleet, Duration)> {
        let started = Instant::now();
        let fleet = Fleet::start(options.connections, options.per_worker, parallel)?;
        Ok((fleet, started.elapsed()))
    };
    let (baseline, first, mut fleet, took) = if started.contains(&Started::Before) {
        let tracer = Tracer::start(&flags, netns)?;
        thread::sleep(SETTLE);
        let baseline = tracer.memory()?;
        let cpu = measure::process_cpu_time(tracer.pid)?;
        let (fleet, took) = build()?;
        let tracer_cpu = measure::process_cpu_time(tracer.pid)?.saturating_sub(cpu);
        (baseline, Some((tracer, tracer_cpu)), fleet, took)
    } else {
        let baseline = idle_memory(&flags, netns)?;
        let (fleet, took) = build()?;
        (baseline, None, fleet, took)
    };
    let build = Build {
        seconds: took.as_secs_f64(),
        workers: fleet.len(),
        tracer_cpu_ms: first.as_ref().map(|(_, cpu)| cpu.as_secs_f64() * 1e3),
    };
    let kernel_after_build = kernel::socket_counts()?;
    let sockstat = kernel::sockstat();
    let (walk, fds) = kernel::walk_fds();
    let planted = fleet.plant(options.stuck)?;
    let planting = Clock::now();
    let context = PhaseContext {
        options,
        planted: &planted,
        planting,
        fin_timeout,
        baseline,
    };
    if let Some((tracer, _)) = first {
        phases.push(measure_phase(tracer, Started::Before, &context)?);
    }
    if started.contains(&Started::After) {
        let tracer = Tracer::start(&flags, netns)?;
        phases.push(measure_phase(tracer, Started::After, &context)?);
    }
    fleet.stop()?;

    let report = report::Report {
        connections: options.connections,
        stuck: options.stuck,
        smoke: options.smoke,
        tracer_flags: flags,
        kernel_sockets: kernel_after_build,
        sockstat,
        build,
        owner_walk_ms: walk.as_secs_f64() * 1e3,
        owner_walk_fds: fds,
        load_average: [load_at_start, kernel::load_average()],
        settings,
        checks: judge::checks(&phases),
        phases,
    };
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).context("creating target/bench")?;
    let name = if options.smoke {
        "scale-smoke"
    } else {
        "scale"
    };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report)?,
    )?;
    let table = report.markdown();
    std::fs::write(dir.join(format!("{name}.md")), &table)?;
    println!("{table}");
    let failed: Vec<&report::Check> = report.checks.iter().filter(|c| !c.ok).collect();
    if options.smoke && !failed.is_empty() {
        bail!(
            "scale smoke: {}",
            failed
                .iter()
                .map(|c| format!("{} ({}): {}", c.what, c.phase, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn tracer_flags(options: &Options, max_sockets: Option<usize>) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--stuck".to_owned(),
        format!(
            "close-wait={}",
            humantime::format_duration(options.threshold)
        ),
        "--summary-interval".to_owned(),
        humantime::format_duration(options.summary_interval).to_string(),
        "--reconcile-interval".to_owned(),
        humantime::format_duration(options.reconcile_interval).to_string(),
        "--metrics-addr".to_owned(),
        METRICS_ADDR.to_owned(),
    ]
    .into();
    if let Some(max) = max_sockets {
        // Room for every socket of the namespace, or some would go unrecorded.
        flags.extend(["--max-sockets".to_owned(), max.to_string()]);
    }
    flags
}

/// When something happened, on the monotonic clock (for windows) and the wall clock (to compare
/// with the tracer's timestamps).
#[derive(Debug, Clone, Copy)]
struct Clock {
    at: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A tracer under measurement: the running process and its CPU over time.
struct Tracer {
    running: tools::Running,
    sampler: CpuSampler,
    pid: u32,
    spawned: Clock,
    startup_cpu: Duration,
}

impl Tracer {
    fn start(flags: &[String], netns: u32) -> Result<Self> {
        let spawned = Clock::now();
        let running = tools::start_tracer(netns, flags, STARTUP_TIMEOUT)?;
        let pid = running.pid().context("the tracer has no process")?;
        let startup_cpu = measure::process_cpu_time(pid)?;
        Ok(Self {
            sampler: CpuSampler::start(pid),
            running,
            pid,
            spawned,
            startup_cpu,
        })
    }

    /// When the start-up snapshot was complete (the daemon's reconciliation timer starts then).
    fn snapshot_at(&self) -> Instant {
        self.spawned.at + self.running.snapshot
    }

    fn memory(&self) -> Result<Memory> {
        Ok(Memory {
            rss: measure::rss(self.pid)?,
            peak_rss: measure::peak_rss(self.pid)?,
            bpf_maps: measure::bpf_map_memory(self.pid)?,
        })
    }

    /// The daemon's CPU between two instants, and its bursts of work.
    fn cost(&self, from: Instant, to: Instant, options: &Options) -> WindowCost {
        let schedule = Schedule {
            snapshot: self.snapshot_at(),
            reconcile: options.reconcile_interval,
            summary: options.summary_interval,
        };
        timeline::window_cost(&self.sampler.between(from, to), &schedule)
    }

    /// The JSON objects of one kind written so far.
    fn events(&self, kind: &str) -> Vec<Value> {
        self.running
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == kind)
            .collect()
    }

    /// Waits for the `count + 1`-th summary.
    fn summary_after(&self, count: usize, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(summary) = self.events("summary").into_iter().nth(count) {
                return Ok(summary);
            }
            if Instant::now() > deadline {
                bail!("the tracer wrote no summary within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A tracer with nothing to trace: the baseline of memory growth per socket, when no tracer is
/// started before the sockets.
fn idle_memory(flags: &[String], netns: u32) -> Result<Memory> {
    let tracer = Tracer::start(flags, netns)?;
    thread::sleep(SETTLE);
    let memory = tracer.memory();
    tracer.running.stop()?;
    memory
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    rss: u64,
    peak_rss: u64,
    bpf_maps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    seconds: f64,
    workers: usize,
    /// The tracer's CPU while the connections were made (when started before).
    tracer_cpu_ms: Option<f64>,
}

struct PhaseContext<'a> {
    options: &'a Options,
    planted: &'a [Planted],
    planting: Clock,
    fin_timeout: Duration,
    baseline: Memory,
}

/// One tracer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    started: Started,
    attached_ms: f64,
    snapshot_ms: f64,
    snapshot_sockets: u64,
    startup_cpu_ms: f64,
    stuck: StuckReports,
    table: TableCheck,
    /// While the planted sockets' peers linger in FIN_WAIT2 (the daemon checks that list every
    /// second, spaced out when it is slow); measured when the window is still ahead.
    lingering: Option<WindowCost>,
    idle: WindowCost,
    baseline: Memory,
    memory: Memory,
    bytes_per_socket: Option<f64>,
    final_summary: FinalSummary,
    warnings: Vec<String>,
}

fn measure_phase(tracer: Tracer, started: Started, context: &PhaseContext) -> Result<Phase> {
    let options = context.options;
    eprintln!("xtask: scale: tracer started {started} the sockets: waiting for the stuck reports");
    // A socket older than the tracer is timed from the start-up snapshot; its owner is found
    // during start-up, so the time to the owned reports counts from the spawn.
    let (threshold_from, origin) = match started {
        Started::Before => (context.planting.at, context.planting),
        Started::After => (tracer.snapshot_at(), tracer.spawned),
    };
    let stuck = judge::wait_stuck(
        &tracer,
        context.planted,
        threshold_from + options.threshold,
        origin,
    )?;
    // Before the table comparison, whose `ss` runs load the machine and take long at a million
    // sockets. The kernel keeps a timewait socket listed a second or two past its timeout; the
    // daemon stops checking once their timers have fired.
    let lingering_until = context.planting.at + context.fin_timeout + Duration::from_secs(5);
    let lingering = if !options.smoke && Instant::now() < lingering_until {
        eprintln!("xtask: scale: sampling CPU while the planted sockets' peers linger");
        let from = Instant::now();
        thread::sleep(lingering_until - from);
        Some(tracer.cost(from, Instant::now(), options))
    } else {
        None
    };
    eprintln!("xtask: scale: comparing the tracer's table with the kernel's");
    let table = judge::compare_table(&tracer, options)?;
    eprintln!(
        "xtask: scale: sampling idle CPU for {}",
        humantime::format_duration(options.idle)
    );
    let from = Instant::now();
    thread::sleep(options.idle);
    let idle = tracer.cost(from, Instant::now(), options);
    let memory = tracer.memory()?;
    let tracked = table.tracked;
    let grown = (memory.rss + memory.bpf_maps) as f64
        - (context.baseline.rss + context.baseline.bpf_maps) as f64;
    let phase = Phase {
        started,
        attached_ms: tracer.running.startup.as_secs_f64() * 1e3,
        snapshot_ms: tracer.running.snapshot.as_secs_f64() * 1e3,
        snapshot_sockets: tracer.running.snapshot_sockets,
        startup_cpu_ms: tracer.startup_cpu.as_secs_f64() * 1e3,
        stuck,
        table,
        lingering,
        idle,
        baseline: context.baseline,
        memory,
        bytes_per_socket: (tracked > 0).then(|| grown / tracked as f64),
        final_summary: FinalSummary::default(),
        warnings: Vec::new(),
    };
    let Tracer { running, .. } = tracer;
    let finished = running.stop()?;
    Ok(Phase {
        final_summary: FinalSummary::of(&finished.stdout)?,
        warnings: finished
            .stderr
            .lines()
            .filter(|l| l.contains("WARN"))
            .map(str::to_owned)
            .collect(),
        ..phase
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_is_small_and_checks_both_tracers() {
        let o = Options::smoke();
        assert!(2 * o.connections <= 100_000);
        assert_eq!(o.started(), vec![Started::Before, Started::After]);
        let flags = tracer_flags(&o, None);
        assert!(flags.contains(&"close-wait=5s".to_owned()));
        assert!(!flags.contains(&"--max-sockets".to_owned()));
    }
}
