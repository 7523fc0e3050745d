//! The scale run's results as JSON and as a markdown table, a column per tracer.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::bench::spread;

use super::{
    Build, Phase, Started,
    kernel::Setting,
    timeline::{BurstCost, WindowCost, Work},
};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub stuck: usize,
    pub smoke: bool,
    pub tracer_flags: Vec<String>,
    /// The namespace's sockets by state once every connection was made.
    pub kernel_sockets: BTreeMap<String, u64>,
    /// /proc/net/sockstat's TCP line then (`mem` is in pages, host-wide, against tcp_mem).
    pub sockstat: String,
    pub build: Build,
    /// Reading every file descriptor of every process, as the owner scan does.
    pub owner_walk_ms: f64,
    pub owner_walk_fds: u64,
    /// At the start and at the end: the machine is shared, CPU figures are noisy.
    pub load_average: [String; 2],
    pub settings: Vec<Setting>,
    pub phases: Vec<Phase>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub phase: Started,
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

const MIB: f64 = (1 << 20) as f64;

impl Report {
    pub fn markdown(&self) -> String {
        let sockets: u64 = self.kernel_sockets.values().sum();
        let mut out = format!(
            "Scale: {} connections ({sockets} sockets in the kernel's list: {}) held by {} worker \
             processes in a network namespace of their own, {} left in CLOSE_WAIT. Made in {:.1} s{}.\n\
             Tracer flags (besides `--log-format json --log-transitions never --no-pin --netns`): `{}`.\n\
             Load average at the start {}, at the end {}: the machine is shared, CPU figures are noisy.\n\n",
            self.connections,
            counts(&self.kernel_sockets),
            self.build.workers,
            self.stuck,
            self.build.seconds,
            match self.build.tracer_cpu_ms {
                Some(ms) => format!(
                    " with the tracer running ({ms:.0} ms of its CPU, {:.2} ms per 1,000 connections)",
                    ms * 1000.0 / self.connections.max(1) as f64
                ),
                None => String::new(),
            },
            self.tracer_flags.join(" "),
            self.load_average[0],
            self.load_average[1],
        );
        out.push_str("| | ");
        out.push_str(
            &self
                .phases
                .iter()
                .map(|p| format!("tracer started {} the sockets", p.started))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        out.push_str(" |\n|---|");
        out.push_str(&"---|".repeat(self.phases.len()));
        out.push('\n');
        for (label, cell) in rows() {
            out.push_str(&format!("| {label} |"));
            for phase in &self.phases {
                out.push_str(&format!(" {} |", cell(phase)));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "\nOwner scan from the outside: reading all {} file descriptors of every process took {:.0} ms \
             (the tracer does this to find the owners of sockets older than it).\n\
             Kernel: `{}`.\n\n| setting | scope | found | set to | why |\n|---|---|---|---|---|\n",
            self.owner_walk_fds, self.owner_walk_ms, self.sockstat
        ));
        for s in &self.settings {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                s.name,
                s.scope,
                s.found,
                s.set.as_deref().unwrap_or("–"),
                s.why
            ));
        }
        out.push_str("\nChecks (asserted by `--smoke`):\n\n");
        for c in &self.checks {
            out.push_str(&format!(
                "- {} {} (started {}): {}\n",
                if c.ok { "ok" } else { "FAILED" },
                c.what,
                c.phase,
                c.detail
            ));
        }
        let warnings: Vec<&String> = self.phases.iter().flat_map(|p| &p.warnings).collect();
        if !warnings.is_empty() {
            out.push_str("\nTracer warnings:\n\n");
            for w in warnings {
                out.push_str(&format!("- `{w}`\n"));
            }
        }
        out
    }
}

type Cell = fn(&Phase) -> String;

/// The table's rows: a label and how to show it for one tracer.
fn rows() -> Vec<(&'static str, Cell)> {
    vec![
        ("spawn → attached, ms", |p| {
            format!("{:.0}", p.attached_ms)
        }),
        ("spawn → start-up snapshot complete, ms", |p| {
            format!("{:.0} ({} sockets)", p.snapshot_ms, p.snapshot_sockets)
        }),
        ("CPU until then, ms", |p| format!("{:.0}", p.startup_cpu_ms)),
        ("planted CLOSE_WAIT reported / with their owner", |p| {
            format!(
                "{} / {} of {}",
                p.stuck.reported, p.stuck.with_owner, p.stuck.planted
            )
        }),
        ("latest report past its threshold, ms (over 1 s)", |p| {
            format!(
                "{} ({})",
                p.stuck
                    .max_late_ms
                    .map_or_else(|| "–".to_owned(), |ms| format!("{ms:.0}")),
                p.stuck.late
            )
        }),
        (
            "all owners reported, ms after the planting (before) or the spawn (after)",
            |p| {
                p.stuck
                    .all_owned_after_ms
                    .map_or_else(|| "never".to_owned(), |ms| format!("{ms:.0}"))
            },
        ),
        ("table = kernel's list by state", |p| {
            if p.table.equal {
                format!("yes ({} tracked)", p.table.tracked)
            } else {
                format!(
                    "NO: {} vs kernel {}",
                    counts(&p.table.tracer),
                    counts(&p.table.kernel)
                )
            }
        }),
        (
            "one reconciliation: wall ms / CPU ms, median (min–max)",
            |p| {
                let windows = || p.lingering.iter().chain([&p.idle]);
                let merged = windows().flat_map(|w| w.of(Work::Merged)).count();
                let mut shown = costs(windows().flat_map(|w| w.of(Work::Reconciliation)));
                if merged > 0 {
                    shown.push_str(&format!("; {merged} more merged with other work"));
                }
                shown
            },
        ),
        ("one summary: wall ms / CPU ms, median (min–max)", |p| {
            costs(p.idle.of(Work::Summary))
        }),
        (
            "idle CPU ms per minute: all / outside reconciliations",
            |p| {
                format!(
                    "{:.0} / {:.0} (over {:.0} s)",
                    p.idle.cpu_ms_per_minute,
                    p.idle.outside_reconciliations_cpu_ms_per_minute,
                    p.idle.seconds
                )
            },
        ),
        ("longest other idle burst: wall ms / CPU ms", |p| {
            longest(&p.idle)
        }),
        (
            "while FIN_WAIT2 peers linger: CPU ms per minute outside reconciliations; longest other burst wall / CPU ms",
            |p| {
                p.lingering.as_ref().map_or_else(
                    || "not measured (over before the window began)".to_owned(),
                    |w| {
                        format!(
                            "{:.0}; {}",
                            w.outside_reconciliations_cpu_ms_per_minute,
                            longest(w)
                        )
                    },
                )
            },
        ),
        ("RSS / peak RSS (VmHWM), MiB", |p| {
            format!(
                "{:.1} / {:.1}",
                p.memory.rss as f64 / MIB,
                p.memory.peak_rss as f64 / MIB
            )
        }),
        ("BPF map memory, MiB", |p| {
            format!("{:.1}", p.memory.bpf_maps as f64 / MIB)
        }),
        ("bytes per socket (RSS + maps over an idle tracer's)", |p| {
            p.bytes_per_socket
                .map_or_else(|| "–".to_owned(), |b| format!("{b:.0}"))
        }),
        (
            "final summary: lost / skipped / unrecorded / unwatched",
            |p| {
                let f = &p.final_summary;
                format!(
                    "{} / {} / {} / {}",
                    f.lost_events, f.skipped_events, f.unrecorded_sockets, f.unwatched_sockets
                )
            },
        ),
        ("reconciliations run / fixes", |p| {
            let f = &p.final_summary;
            format!("{} / {}", f.reconciliation_runs, f.reconciliation_fixes)
        }),
    ]
}

fn counts(by_state: &BTreeMap<String, u64>) -> String {
    by_state
        .iter()
        .map(|(state, n)| format!("{state}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bursts of one kind: their wall and CPU time, median (min–max), and how many.
fn costs<'a>(bursts: impl Iterator<Item = &'a BurstCost>) -> String {
    let seen: Vec<&BurstCost> = bursts.collect();
    if seen.is_empty() {
        return "none seen".to_owned();
    }
    let show = |values: Vec<f64>| match spread(values) {
        Some((median, min, max)) => format!("{median:.0} ({min:.0}–{max:.0})"),
        None => "–".to_owned(),
    };
    format!(
        "{} / {} (n={})",
        show(seen.iter().map(|b| b.wall_ms).collect()),
        show(seen.iter().map(|b| b.cpu_ms).collect()),
        seen.len()
    )
}

fn longest(window: &WindowCost) -> String {
    window
        .of(Work::Other)
        .max_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms))
        .map_or_else(
            || "none".to_owned(),
            |b| format!("{:.0} / {:.0} (at {:.1} s)", b.wall_ms, b.cpu_ms, b.at_s),
        )
}
