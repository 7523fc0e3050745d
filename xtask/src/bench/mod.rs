//! `cargo xtask bench`: the tracer against no tracer and against its peers, on fixed loopback
//! workloads in a network namespace of the benchmark's own: connection patterns with a known
//! number of transitions, timed by their wall time, and real servers (nginx, iperf3) run for a
//! fixed time, measured by their throughput. Runs are interleaved (every tool once per round,
//! rounds repeated) and reported as medians with their range, in target/bench/results.{md,json}.
mod half_open;
pub mod measure;
mod report;
mod servers;
pub mod tools;

pub(crate) use report::spread;

use std::{
    net::TcpListener,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use self::{
    measure::{BpfStats, Map, Program},
    servers::{Load, Throughput},
    tools::{OtherBuild, Running, Tool},
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
    /// Handshakes left half-open (their SYN-ACKs dropped), and for how long.
    #[arg(long, default_value_t = 1000)]
    pub half_open: usize,
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub half_open_hold: Duration,
    /// Seconds each run of the real servers lasts (nginx driven by wrk, iperf3); 0 leaves them
    /// out.
    #[arg(long, default_value_t = 5)]
    pub load_seconds: u64,
    /// Another build of the tracer (an older commit's, say) run as one more tool, "tracer at
    /// PATH (quiet)": with the same flags as the quiet tracer, in every round beside it, so that
    /// the two builds are compared within one run (this VM's speed moves between runs).
    #[arg(long, value_name = "PATH")]
    pub against: Option<PathBuf>,
    /// Tiny counts, real servers for 1 s, this tracer only, one round, and a check that its
    /// accounting adds up (expected = seen + skipped). Part of `cargo xtask test`.
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
            // Past the first SYN-ACK retransmit (1 s).
            half_open: 20,
            half_open_hold: Duration::from_secs(2),
            // The shortest run wrk and iperf3 take: enough to see the servers work end to end.
            load_seconds: 1,
            against: None,
            smoke: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    Sequential(usize),
    Burst(usize, usize),
    Leak(usize, Duration),
    /// Handshakes whose SYN-ACKs are dropped, held half-open this long.
    HalfOpen(usize, Duration),
    /// A real server driven for this many seconds.
    Server(Load, u64),
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
            Self::HalfOpen(n, hold) => {
                format!("half-open {n} for {}", humantime::format_duration(hold))
            }
            Self::Server(load, seconds) => format!("{}, {seconds} s", load.name()),
        }
    }

    /// Run for a fixed time and measured by throughput, its transitions not known in advance.
    fn is_server(self) -> bool {
        matches!(self, Self::Server(..))
    }

    /// Connections the workload makes, when known in advance.
    fn connections(self) -> Option<u64> {
        match self {
            Self::Sequential(n) | Self::Leak(n, _) | Self::HalfOpen(n, _) => Some(n as u64),
            Self::Burst(c, p) => Some((c * p) as u64),
            Self::Server(..) => None,
        }
    }

    /// Transitions the kernel reports for the workload, when known in advance (not for
    /// handshakes that never complete: their connects end when the clients close them).
    fn expected(self) -> Option<u64> {
        if matches!(self, Self::HalfOpen(..)) {
            return None;
        }
        Some(self.connections()? * TRANSITIONS_PER_CONNECTION + TRANSITIONS_PER_LISTENER)
    }

    /// Runs it; returns the server's port, and the throughput of a real server.
    fn run(self) -> Result<(u16, Option<Throughput>)> {
        match self {
            Self::Sequential(n) => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                workload::sequential(listener, n)?;
                Ok((port, None))
            }
            Self::Burst(c, p) => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                workload::burst(listener, c, p)?;
                Ok((port, None))
            }
            Self::Leak(n, hold) => {
                let leak = CloseWaitLeak::start(workload::V4, n)?;
                thread::sleep(hold);
                let port = leak.listen_port;
                leak.release();
                Ok((port, None))
            }
            Self::HalfOpen(n, hold) => Ok((half_open::run(n, hold)?, None)),
            Self::Server(load, seconds) => {
                let (port, throughput) = load.run(seconds)?;
                Ok((port, Some(throughput)))
            }
        }
    }
}

/// One tool on one workload, once.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(Default))]
struct RunResult {
    tool: &'static str,
    workload: String,
    round: usize,
    /// Run with the kernel's BPF statistics on: its timings are not comparable.
    bpf_stats: bool,
    wall_ms: f64,
    /// Transitions the workload makes, when known (not for the real servers).
    expected: Option<u64>,
    /// Connections the workload made, when known in advance.
    connections: Option<u64>,
    /// What a real server achieved (its figure instead of wall time).
    throughput: Option<Throughput>,
    seen: u64,
    lost: u64,
    skipped: u64,
    /// Kernel time of the tool's programs during the workload, when measured.
    kernel_ns: Option<u64>,
    programs: Vec<ProgramDelta>,
    tool_cpu_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    /// Resident memory at the end of the workload.
    rss_bytes: Option<u64>,
    /// The BPF maps the tool held then, with their kernel memory.
    maps: Vec<Map>,
    startup_ms: f64,
}

impl RunResult {
    /// Transitions the workload made: known in advance, or else all the tool accounted for.
    fn transitions(&self) -> u64 {
        self.expected.unwrap_or_else(|| self.accounted())
    }

    /// Transitions the tool accounted for. The tracer counts every transition in the kernel
    /// (its lost are log lines of transitions it counted); a peer's lost events are not in
    /// its lines.
    fn accounted(&self) -> u64 {
        if self.tool.starts_with("tracer") {
            self.seen + self.skipped
        } else {
            self.seen + self.lost + self.skipped
        }
    }

    /// Connections made, or requests served for a real server (a connection each when every
    /// request has its own; per request for keep-alive).
    fn connections(&self) -> Option<u64> {
        self.connections
            .or_else(|| self.throughput.and_then(|t| t.requests))
    }
}

#[derive(Debug, Clone, Serialize)]
struct ProgramDelta {
    name: String,
    runs: u64,
    run_time_ns: u64,
    recursion_misses: u64,
}

pub fn run(options: &Options) -> Result<()> {
    // What is missing is installed first: the benchmark's own network namespace, entered once
    // the tools and workloads are known, has no route to the package mirrors.
    let mut tools = vec![Tool::Baseline, Tool::TracerQuiet];
    let against = options
        .against
        .as_deref()
        .map(OtherBuild::checked)
        .transpose()?
        .map(Tool::TracerAt);
    tools.extend(against);
    tools.push(Tool::TracerLog);
    if options.smoke {
        tools.retain(|t| t.is_ours());
    } else {
        tools.extend(tools::install_peers());
    }
    let mut workloads = vec![
        Workload::Sequential(options.sequential),
        Workload::Burst(options.burst_clients, options.burst_per_client),
        Workload::Leak(options.leak, options.leak_hold),
    ];
    if options.half_open > 0 {
        if !tools::apt_install(&[("/usr/sbin/nft", "nftables")]).is_empty() {
            bail!(
                "the half-open workload needs nftables (apt-get install nftables); \
                 --half-open 0 leaves it out"
            );
        }
        workloads.push(Workload::HalfOpen(
            options.half_open,
            options.half_open_hold,
        ));
    }
    if options.load_seconds > 0 {
        servers::install()?;
        // The smoke run leaves out keep-alive, which differs from a connection per request by
        // one header: the other two cover both servers, both clients and both reports.
        let loads: &[Load] = if options.smoke {
            &[Load::NginxClose, Load::Iperf3]
        } else {
            &[Load::NginxClose, Load::NginxKeepAlive, Load::Iperf3]
        };
        workloads.extend(
            loads
                .iter()
                .map(|&load| Workload::Server(load, options.load_seconds)),
        );
    }
    let netns = xtask::netns::enter_new()?;
    // Idle: the quiet tracer in the new, empty namespace, before any workload.
    let idle = {
        let running = tools::start(Tool::TracerQuiet, netns)?;
        thread::sleep(Duration::from_secs(2));
        let pid = running.pid().context("the tracer has no process")?;
        let idle = report::idle_line(
            measure::rss(pid)?,
            &measure::maps_of(pid)?,
            running.startup.as_millis(),
        );
        running.stop()?;
        idle
    };
    let mut results = Vec::new();
    for round in 0..options.runs + options.stats_runs {
        let stats = (round >= options.runs).then(BpfStats::enable).transpose()?;
        for &workload in &workloads {
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
    let mut table = format!(
        "{idle}\n\n{}",
        report::wall_table(&results, &tools, &workloads)
    );
    if let Some(line) = against.and_then(|other| report::against_line(&results, other, &workloads))
    {
        table.push_str(&format!("\n{line}\n"));
    }
    if options.half_open > 0 {
        table.push_str(&format!(
            "\nHandshakes left half-open (SYN-ACKs dropped by the clients' namespace): the SYN-ACK \
             retransmits and, for the tracer, the listing of half-open connections.\n\n{}",
            report::half_open_table(&results, &tools, &workloads)
        ));
    }
    if options.load_seconds > 0 {
        table.push_str(&format!(
            "\nReal servers on loopback, {} s a run; throughput is the figure (higher is better). \
             Transitions are what each tool counted: the tracer's final summary, a peer's lines for \
             the server's port; none is known in advance, so compare the tools' counts per request. \
             Footprint: resident memory at the end of the run plus the kernel memory of the BPF \
             maps held (the pages of a ring buffer the daemon has touched count in both).\n\n{}\n\
             BPF maps held, KiB (median over the real-server runs):\n\n{}",
            options.load_seconds,
            report::server_table(&results, &tools, &workloads),
            report::maps_table(&results, &tools, &workloads),
        ));
    }
    if options.stats_runs > 0 {
        table.push_str(&format!(
            "\nKernel time by program, with BPF statistics on (median over those rounds):\n\n{}",
            report::programs_table(&results, &tools, &workloads)
        ));
    }
    std::fs::write(dir.join(format!("{name}.md")), &table)?;
    println!("{table}");
    if options.smoke {
        check_accounting(&results, &workloads)?;
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
    let (port, throughput) = workload.run()?;
    let wall = started.elapsed();
    let expected = workload.expected();
    if tool.is_ours() {
        // The tracer reads at least every 100 ms; its quiet mode shows nothing to wait on.
        thread::sleep(Duration::from_millis(400));
    } else if tool != Tool::Baseline {
        // A real server's count is not known: wait until the lines stop coming.
        wait_for_lines(&running, port, expected.unwrap_or(u64::MAX));
    }
    let cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) => Some(measure::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let peak_rss = pid.map(measure::peak_rss).transpose()?;
    let rss = pid.map(measure::rss).transpose()?;
    let maps = pid.map(measure::maps_of).transpose()?.unwrap_or_default();
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
        Tool::TracerQuiet | Tool::TracerLog | Tool::TracerAt(_) => {
            tracer_accounting(&finished.stdout)?
        }
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
        connections: workload.connections(),
        throughput,
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
        rss_bytes: rss,
        maps,
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

/// The smoke run's check on the tracer's runs: where the transitions are known in advance,
/// every one is counted or was skipped by the kernel, and no more lines were lost than
/// transitions counted; with a connection per request, the tracer accounts for the transitions
/// of every request's connection.
fn check_accounting(results: &[RunResult], workloads: &[Workload]) -> Result<()> {
    let per_request: Vec<String> = workloads
        .iter()
        .filter(|w| matches!(w, Workload::Server(Load::NginxClose, _)))
        .map(|w| w.name())
        .collect();
    for r in results.iter().filter(|r| r.tool.starts_with("tracer")) {
        let accounted = r.accounted();
        let detail = format!(
            "seen {} + skipped {}, lost lines {}",
            r.seen, r.skipped, r.lost
        );
        if r.lost > r.seen {
            bail!(
                "{} on {}: more lines lost than transitions counted ({detail})",
                r.tool,
                r.workload
            );
        }
        if let Some(expected) = r.expected
            && accounted != expected
        {
            bail!(
                "accounting does not add up for {} on {}: expected {expected} transitions, {detail}",
                r.tool,
                r.workload,
            );
        }
        let requests = r.throughput.and_then(|t| t.requests).unwrap_or(0);
        if per_request.contains(&r.workload)
            && accounted < MIN_TRANSITIONS_PER_CLOSED_REQUEST * requests
        {
            bail!(
                "{} on {}: {accounted} transitions ({detail}) for {requests} requests, each on a connection of its own",
                r.tool,
                r.workload,
            );
        }
    }
    eprintln!(
        "xtask: bench accounting adds up for every tracer run (expected = seen + skipped, lost lines \
         <= seen; at least {MIN_TRANSITIONS_PER_CLOSED_REQUEST} per request with a connection per request)"
    );
    Ok(())
}

/// A request on a connection of its own makes 10 transitions (5 on each side) when both sides
/// close; a reset instead of a close makes fewer, hence the margin.
const MIN_TRANSITIONS_PER_CLOSED_REQUEST: u64 = 9;

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
    fn checks_the_smoke_accounting() {
        let close = Workload::Server(Load::NginxClose, 1);
        let known = Workload::Sequential(50);
        let workloads = [known, close];
        let run = |workload: Workload, seen: u64, requests: Option<u64>| RunResult {
            tool: Tool::TracerQuiet.name(),
            workload: workload.name(),
            expected: workload.expected(),
            throughput: requests.map(|n| Throughput {
                rate: n as f64,
                unit: "req/s",
                requests: Some(n),
                errors: 0,
            }),
            seen,
            ..RunResult::default()
        };
        assert!(check_accounting(&[run(known, 502, None)], &workloads).is_ok());
        assert!(check_accounting(&[run(known, 501, None)], &workloads).is_err());
        // Lines lost are of transitions counted: they do not add to the count.
        let lossy = RunResult {
            lost: 2,
            ..run(known, 502, None)
        };
        assert!(check_accounting(std::slice::from_ref(&lossy), &workloads).is_ok());
        let impossible = RunResult {
            lost: 503,
            ..run(known, 502, None)
        };
        assert!(check_accounting(&[impossible], &workloads).is_err());
        // 10 transitions per request, and the listener's: fine; half of them: some were missed.
        assert!(check_accounting(&[run(close, 10_002, Some(1000))], &workloads).is_ok());
        assert!(check_accounting(&[run(close, 5_000, Some(1000))], &workloads).is_err());
        // Keep-alive and bulk transfer make few transitions: nothing to check there.
        let keep_alive = Workload::Server(Load::NginxKeepAlive, 1);
        assert!(check_accounting(&[run(keep_alive, 20, Some(1000))], &workloads).is_ok());
    }

    #[test]
    fn connections_or_requests() {
        let known = RunResult {
            connections: Some(50),
            ..RunResult::default()
        };
        assert_eq!(known.connections(), Some(50));
        let served = RunResult {
            throughput: Some(Throughput {
                rate: 1.0,
                unit: "req/s",
                requests: Some(7),
                errors: 0,
            }),
            ..RunResult::default()
        };
        assert_eq!(served.connections(), Some(7));
        assert_eq!(RunResult::default().connections(), None);
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
}
