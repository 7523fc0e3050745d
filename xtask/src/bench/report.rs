//! The benchmark's tables: medians with their range over rounds, and the arithmetic behind each
//! column (ratios to no tool, per-transition and per-connection figures) kept apart so that it
//! is unit-tested.
use std::collections::BTreeMap;

use super::{RunResult, Workload, measure::Map, tools::Tool};

/// Median and range of some figure over runs.
pub fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

/// `value` per unit of `count` (kernel ns per transition, runs per connection); none when
/// nothing was counted.
fn per(value: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| value / count as f64)
}

/// A tool's figure against no tool's: wall time × no tool's (lower is better), or the fraction
/// of no tool's throughput kept (higher is better).
fn ratio(tool: f64, no_tool: f64) -> Option<f64> {
    (no_tool > 0.0).then(|| tool / no_tool)
}

const MIB: f64 = (1 << 20) as f64;

fn fmt(s: Option<(f64, f64, f64)>, digits: usize) -> String {
    match s {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "–".to_owned(),
    }
}

fn fmt_one(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

/// The runs of one tool on one workload: timed, and with BPF statistics on.
fn runs_of<'a>(
    results: &'a [RunResult],
    workload: &str,
    tool: Tool,
) -> (Vec<&'a RunResult>, Vec<&'a RunResult>) {
    results
        .iter()
        .filter(|r| r.workload == workload && r.tool == tool.name())
        .partition(|r| !r.bpf_stats)
}

/// Kernel ns per transition over runs with BPF statistics on: the workload's transitions when
/// known, else all the tool accounted for.
fn kernel_per_transition(stats_runs: &[&RunResult]) -> Option<(f64, f64, f64)> {
    spread(
        stats_runs
            .iter()
            .filter_map(|r| per(r.kernel_ns? as f64, r.transitions())),
    )
}

/// The workloads with a known number of transitions, timed by their wall time.
pub fn wall_table(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | tool | wall ms, median (min–max) | × no tracer | expected | seen | lost | skipped | kernel ns / event | tool CPU ms / 1k events | peak RSS MiB | start-up ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for workload in workloads.iter().filter(|w| !w.is_server()) {
        let name = workload.name();
        let baseline = spread(
            runs_of(results, &name, Tool::Baseline)
                .0
                .iter()
                .map(|r| r.wall_ms),
        )
        .map(|s| s.0);
        for &tool in tools {
            let (runs, stats_runs) = runs_of(results, &name, tool);
            let Some(expected) = runs.first().and_then(|r| r.expected) else {
                continue;
            };
            let wall = spread(runs.iter().map(|r| r.wall_ms));
            let times = match (wall, baseline) {
                (Some(w), Some(b)) if tool != Tool::Baseline => ratio(w.0, b),
                _ => None,
            };
            let count = |f: fn(&RunResult) -> u64| {
                spread(runs.iter().map(|r| f(r) as f64)).map_or(0.0, |s| s.0)
            };
            let per_event = kernel_per_transition(&stats_runs);
            let cpu = spread(
                runs.iter()
                    .filter_map(|r| per(r.tool_cpu_ms? * 1000.0, r.expected?)),
            );
            let rss = spread(
                runs.iter()
                    .filter_map(|r| Some(r.peak_rss_bytes? as f64 / MIB)),
            );
            let startup = spread(
                runs.iter()
                    .filter(|_| tool != Tool::Baseline)
                    .map(|r| r.startup_ms),
            );
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {expected} | {} | {} | {} | {} | {} | {} | {} |\n",
                tool.name(),
                fmt(wall, 1),
                fmt_one(times, 2),
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
    out
}

/// The real servers, run for a fixed time: their figure is throughput, and the number of
/// transitions is whatever the tool counted (nothing else can tell it exactly). "transitions"
/// is what the tool saw; the figures per request and per transition count those it lost or the
/// kernel skipped as well, as they happened all the same.
/// The workloads without a known number of transitions that are not servers (handshakes left
/// half-open): what each tool spent on them, in CPU time and kernel time.
pub fn half_open_table(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | tool | tool CPU ms, median (min–max) | kernel ms (BPF statistics on) |\n\
         |---|---|---|---|\n",
    );
    for workload in workloads
        .iter()
        .filter(|w| !w.is_server() && w.expected().is_none())
    {
        let name = workload.name();
        for &tool in tools.iter().filter(|&&t| t != Tool::Baseline) {
            let (runs, stats_runs) = runs_of(results, &name, tool);
            let cpu = spread(runs.iter().filter_map(|r| r.tool_cpu_ms));
            let kernel = spread(
                stats_runs
                    .iter()
                    .filter_map(|r| Some(r.kernel_ns? as f64 / 1e6)),
            );
            out.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                tool.name(),
                fmt(cpu, 1),
                fmt(kernel, 2)
            ));
        }
    }
    out
}

pub fn server_table(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | tool | throughput, median (min–max) | fraction of no tool's | transitions | per request | lost | skipped | kernel ns / transition | tool CPU ms / 1k transitions | RSS MiB | BPF maps MiB | footprint MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut errors = Vec::new();
    for workload in workloads.iter().filter(|w| w.is_server()) {
        let name = workload.name();
        let rate = |r: &&RunResult| r.throughput.map(|t| t.rate);
        let baseline = spread(
            runs_of(results, &name, Tool::Baseline)
                .0
                .iter()
                .filter_map(rate),
        )
        .map(|s| s.0);
        for &tool in tools {
            let (runs, stats_runs) = runs_of(results, &name, tool);
            let Some(unit) = runs.iter().find_map(|r| r.throughput).map(|t| t.unit) else {
                continue;
            };
            errors.extend(
                runs.iter()
                    .chain(&stats_runs)
                    .filter_map(|&r| r.throughput.filter(|t| t.errors > 0).map(|t| (r, t.errors))),
            );
            let throughput = spread(runs.iter().filter_map(rate));
            let fraction = match (throughput, baseline) {
                (Some(t), Some(b)) if tool != Tool::Baseline => ratio(t.0, b),
                _ => None,
            };
            let ours = tool != Tool::Baseline;
            let count = |f: fn(&RunResult) -> u64| {
                spread(runs.iter().filter(|_| ours).map(|r| f(r) as f64)).map(|s| s.0)
            };
            let per_request = spread(
                runs.iter()
                    .filter(|_| ours)
                    .filter_map(|r| per(r.transitions() as f64, r.throughput?.requests?)),
            );
            let kernel = kernel_per_transition(&stats_runs);
            let cpu = spread(
                runs.iter()
                    .filter_map(|r| per(r.tool_cpu_ms? * 1000.0, r.transitions())),
            );
            let rss = spread(runs.iter().filter_map(|r| Some(r.rss_bytes? as f64 / MIB)));
            let maps = spread(
                runs.iter()
                    .filter(|r| r.rss_bytes.is_some())
                    .map(|r| map_bytes(&r.maps) as f64 / MIB),
            );
            let footprint = spread(
                runs.iter()
                    .filter_map(|r| Some((r.rss_bytes? + map_bytes(&r.maps)) as f64 / MIB)),
            );
            let digits = if unit == "req/s" { 0 } else { 2 };
            out.push_str(&format!(
                "| {name} | {} | {} {unit} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                tool.name(),
                fmt(throughput, digits),
                fmt_one(fraction, 3),
                fmt_one(count(|r| r.seen), 0),
                fmt(per_request, 2),
                fmt_one(count(|r| r.lost), 0),
                fmt_one(count(|r| r.skipped), 0),
                fmt(kernel, 0),
                fmt(cpu, 2),
                fmt(rss, 1),
                fmt(maps, 1),
                fmt(footprint, 1),
            ));
        }
    }
    for (r, n) in errors {
        out.push_str(&format!(
            "\nThe client counted {n} socket errors in round {} of {} with {}.",
            r.round + 1,
            r.workload,
            r.tool
        ));
    }
    out
}

/// The workspace's quiet tracer against another build of it (`--against`), in one line: kernel
/// ns per transition (medians of the rounds with BPF statistics on) workload by workload, and
/// their ratio, ours over theirs (below 1: ours spends less). Not for handshakes left half-open,
/// whose transitions are not all counted; none without rounds with statistics.
pub fn against_line(results: &[RunResult], other: Tool, workloads: &[Workload]) -> Option<String> {
    let median = |name: &str, tool: Tool| {
        kernel_per_transition(&runs_of(results, name, tool).1).map(|s| s.0)
    };
    let each: Vec<String> = workloads
        .iter()
        .filter(|w| w.is_server() || w.expected().is_some())
        .filter_map(|w| {
            let name = w.name();
            let ours = median(&name, Tool::TracerQuiet)?;
            let theirs = median(&name, other)?;
            Some(format!(
                "{name} {ours:.0} against {theirs:.0} ({})",
                fmt_one(ratio(ours, theirs), 2)
            ))
        })
        .collect();
    (!each.is_empty()).then(|| {
        format!(
            "Kernel ns per transition, {} against {} (BPF statistics on, medians; ours / theirs \
             in parentheses): {}.",
            Tool::TracerQuiet.name(),
            other.name(),
            each.join("; ")
        )
    })
}

/// Kernel memory of a tool's BPF maps.
pub fn map_bytes(maps: &[Map]) -> u64 {
    maps.iter().map(|m| m.bytes).sum()
}

/// Each tool's BPF maps by name, in KiB (median over its timed runs of the real servers).
pub fn maps_table(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let servers: Vec<String> = workloads
        .iter()
        .filter(|w| w.is_server())
        .map(|w| w.name())
        .collect();
    let mut out = String::from("| tool | map | KiB |\n|---|---|---|\n");
    // The logging tracer holds the same maps as the quiet one.
    for &tool in tools
        .iter()
        .filter(|&&t| t != Tool::Baseline && t != Tool::TracerLog)
    {
        let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in results
            .iter()
            .filter(|r| r.tool == tool.name() && !r.bpf_stats && servers.contains(&r.workload))
        {
            for m in &r.maps {
                by_name.entry(&m.name).or_default().push(m.bytes as f64);
            }
        }
        for (map, bytes) in by_name {
            let kib = spread(bytes).map_or(0.0, |s| s.0) / 1024.0;
            out.push_str(&format!("| {} | {map} | {kib:.1} |\n", tool.name()));
        }
    }
    out
}

/// Where each tool's kernel time goes, by program, with BPF statistics on: runs per connection
/// (per request for keep-alive), time per run and per transition of the workload.
pub fn programs_table(results: &[RunResult], tools: &[Tool], workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | tool | program | runs | runs per connection (keep-alive: per request) | ns per run | ns per transition | total ms |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    // The logging tracer runs the same programs as the quiet one.
    for workload in workloads {
        let name = workload.name();
        for &tool in tools
            .iter()
            .filter(|&&t| t != Tool::Baseline && t != Tool::TracerLog)
        {
            let (_, stats_runs) = runs_of(results, &name, tool);
            let mut by_program: BTreeMap<&str, Vec<&super::ProgramDelta>> = BTreeMap::new();
            for r in &stats_runs {
                for p in &r.programs {
                    by_program.entry(&p.name).or_default().push(p);
                }
            }
            for (program, deltas) in by_program {
                let median = |f: &dyn Fn(&super::ProgramDelta) -> u64| {
                    spread(deltas.iter().map(|p| f(p) as f64)).map_or(0.0, |s| s.0)
                };
                let runs = median(&|p| p.runs);
                let total = median(&|p| p.run_time_ns);
                // Per connection and per transition of the same run, then the median.
                let per_run_of = |f: &dyn Fn(&RunResult, &super::ProgramDelta) -> Option<f64>| {
                    spread(stats_runs.iter().filter_map(|r| {
                        let p = r.programs.iter().find(|p| p.name == program)?;
                        f(r, p)
                    }))
                };
                let per_connection = per_run_of(&|r, p| per(p.runs as f64, r.connections()?));
                // Not for handshakes left half-open: the tracer counts only the transitions of
                // the benchmark's namespace, where the clients are not.
                let per_transition = per_run_of(&|r, p| {
                    (workload.is_server() || workload.expected().is_some())
                        .then(|| per(p.run_time_ns as f64, r.transitions()))?
                });
                out.push_str(&format!(
                    "| {name} | {} | {program} | {runs:.0} | {} | {} | {} | {:.2} |\n",
                    tool.name(),
                    fmt(per_connection, 2),
                    fmt_one(per(total, runs as u64), 0),
                    fmt(per_transition, 0),
                    total / 1e6
                ));
            }
        }
    }
    out
}

/// The idle tracer: resident memory, its maps' memory and the two together.
pub fn idle_line(rss: u64, maps: &[Map], startup_ms: u128) -> String {
    let listed: Vec<String> = maps
        .iter()
        .map(|m| format!("{} {:.1} KiB", m.name, m.bytes as f64 / 1024.0))
        .collect();
    format!(
        "Idle tracer (quiet, no traffic): resident memory {:.1} MiB, BPF maps {:.1} MiB ({}), footprint {:.1} MiB; start-up {startup_ms} ms.",
        rss as f64 / MIB,
        map_bytes(maps) as f64 / MIB,
        listed.join(", "),
        (rss + map_bytes(maps)) as f64 / MIB,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(spread([3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(Vec::<f64>::new()), None);
    }

    #[test]
    fn ratios_to_no_tool() {
        // Throughput: 18,000 req/s under a tool against 20,000 without keeps 0.9 of it.
        assert_eq!(ratio(18_000.0, 20_000.0), Some(0.9));
        // Wall time: 600 ms against 500 ms is 1.2× as long.
        assert_eq!(ratio(600.0, 500.0), Some(1.2));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn per_unit() {
        // 2 ms of CPU over 4,000 transitions: 0.5 ms per 1,000.
        assert_eq!(per(2.0 * 1000.0, 4_000), Some(0.5));
        assert_eq!(per(1_000.0, 0), None);
    }

    #[test]
    fn compares_two_builds_kernel_time() {
        use super::super::tools::OtherBuild;
        let other = Tool::TracerAt(OtherBuild::at(std::path::Path::new("/old/tracer")));
        let sequential = Workload::Sequential(50);
        let half_open = Workload::HalfOpen(20, std::time::Duration::from_secs(2));
        let run = |tool: Tool, workload: Workload, bpf_stats: bool, kernel_ns: u64| RunResult {
            tool: tool.name(),
            workload: workload.name(),
            bpf_stats,
            expected: workload.expected(),
            kernel_ns: bpf_stats.then_some(kernel_ns),
            // Half-open: what the tracer counted, for want of a known number.
            seen: 100,
            ..RunResult::default()
        };
        // 502 transitions: 1,000 and 1,250 ns each in the median round with statistics on.
        let mut results = vec![
            run(Tool::TracerQuiet, sequential, true, 502_000),
            run(Tool::TracerQuiet, sequential, true, 400_000),
            run(Tool::TracerQuiet, sequential, true, 600_000),
            run(other, sequential, true, 627_500),
            // Timed rounds carry no kernel time; half-open is left out.
            run(other, sequential, false, 0),
            run(Tool::TracerQuiet, half_open, true, 1_000),
            run(other, half_open, true, 2_000),
        ];
        let line = against_line(&results, other, &[sequential, half_open]).unwrap();
        assert_eq!(
            line,
            "Kernel ns per transition, tracer (quiet) against tracer at /old/tracer (quiet) (BPF \
             statistics on, medians; ours / theirs in parentheses): sequential 50 1000 against \
             1250 (0.80)."
        );
        // Without rounds with statistics, nothing to compare.
        results.retain(|r| !r.bpf_stats);
        assert_eq!(
            against_line(&results, other, &[sequential, half_open]),
            None
        );
    }

    #[test]
    fn footprint_of_the_idle_tracer() {
        let maps = [
            Map {
                id: 1,
                name: "EVENTS".into(),
                bytes: 4 << 20,
            },
            Map {
                id: 2,
                name: "SOCKETS".into(),
                bytes: 1 << 19,
            },
        ];
        assert_eq!(map_bytes(&maps), (4 << 20) + (1 << 19));
        let line = idle_line(15 << 20, &maps, 170);
        assert!(line.contains("resident memory 15.0 MiB"), "{line}");
        assert!(
            line.contains("BPF maps 4.5 MiB (EVENTS 4096.0 KiB, SOCKETS 512.0 KiB)"),
            "{line}"
        );
        assert!(line.contains("footprint 19.5 MiB"), "{line}");
    }
}
