//! Text of the summary: a first line with the sockets by state, then one line per kind of figure,
//! and a line per stuck socket due for a reminder.
use std::io::{self, Write};

use super::{
    line::Line,
    model::{Counted, Counts, Figures, Span, SummaryLine},
    text::{TextStyle, destination, level, listener, seconds, stuck_details, time},
};

/// Counts of the interval, with the total since start in parentheses, in the order of the totals
/// (an error by name may appear in the total only); zeros left out.
fn with_total<T: Counted>(span: &Span<Counts<T>>) -> String {
    list(
        span.total
            .iter()
            .map(|(name, t)| (span.interval.get(&name), name, t))
            .filter(|(n, _, t)| *n > 0 || *t > 0)
            .map(|(n, name, t)| format!("{name}={n}({t})"))
            .collect(),
    )
}

/// Items joined by spaces, `none` when there are none.
fn list(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(" ")
    }
}

pub(super) fn summary(out: &mut Line, style: &TextStyle, s: &SummaryLine) -> io::Result<()> {
    let sockets = list(
        s.sockets
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect(),
    );
    writeln!(
        out,
        "{} {}  summary  {}uptime {}, {} sockets: {sockets}",
        time(s.ts),
        level(s.level, style),
        if s.last { "final, " } else { "" },
        seconds(s.uptime_ns),
        s.tracked,
    )?;
    let transitions = list(
        s.transitions
            .interval
            .iter()
            .map(|(name, n)| format!("{name}={n}({})", s.transitions.total.get(&name)))
            .collect(),
    );
    writeln!(
        out,
        "    transitions in the last {} (since start): {transitions}",
        seconds(s.interval_ns)
    )?;
    let durations = list(
        s.durations_ms
            .interval
            .0
            .iter()
            .map(|(state, p)| {
                let p = Figures::new(p);
                format!(
                    "{} n={} min={:.3} p50={:.3} p90={:.3} p99={:.3} max={:.3};",
                    state.name(),
                    p.count,
                    p.min,
                    p.p50,
                    p.p90,
                    p.p99,
                    p.max
                )
            })
            .collect(),
    );
    writeln!(
        out,
        "    time in state, ms, last {}: {durations}",
        seconds(s.interval_ns)
    )?;
    let ends = with_total(&s.ends);
    let mut failures = with_total(&s.connect_failures);
    // Binds are traced only with --bind-failures: said when there were any.
    if !s.bind_failures.total.0.is_empty() {
        failures = format!("{failures}; failed binds: {}", with_total(&s.bind_failures));
    }
    let connect = |name: &str, p: &Option<Figures>| {
        p.as_ref().map(|p| {
            format!(
                "{name} n={} p50={:.3} p99={:.3} max={:.3}",
                p.count, p.p50, p.p99, p.max
            )
        })
    };
    let connects = list(
        [
            connect("first try", &s.connect_ms.interval.first_try),
            connect(
                "after a SYN retransmit",
                &s.connect_ms.interval.retransmitted,
            ),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    let by_listener = &s.listeners.synack_retransmits;
    writeln!(
        out,
        "    connections ended (since start): {ends}; failed connects: {failures}; connect ms: {connects}; SYN retransmits: {}, SYN-ACK retransmits: {}{}",
        s.handshakes.syn_retransmits,
        s.handshakes.synack_retransmits,
        if by_listener.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                by_listener
                    .iter()
                    .map(|c| format!(
                        "{}={}",
                        listener(c.listener.saddr, c.listener.sport),
                        c.count
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
    )?;
    writeln!(
        out,
        "    stuck now: {} ({}); stalled listeners: {} (accept queue overflows {}, listen drops {}); listeners with old half-open connections: {}; TIME_WAIT by remote port: {}; lost events: {}; skipped events: {}; reconciliation: {} runs, {} fixes",
        s.stuck.now,
        list(
            s.stuck
                .by_state
                .iter()
                .map(|(name, n)| format!("{name}={n}"))
                .collect()
        ),
        s.listeners.stalled_now,
        s.listeners.overflows,
        s.listeners.drops,
        s.listeners.half_open_now,
        list(
            s.time_wait_by_remote_port
                .iter()
                .map(|(port, n)| format!("{port}={n}"))
                .collect()
        ),
        s.lost_events,
        s.skipped_events,
        s.reconciliation.runs,
        s.reconciliation.fixes
    )?;
    if s.failed_reads
        + s.unrecorded_sockets
        + s.unwatched_sockets
        + s.unmatched_resets
        + s.unlabelled_counts
        > 0
    {
        writeln!(
            out,
            "    kernel: failed reads: {}; sockets without a record: {}; watched sockets not indexed: {}; resets not matched to their close: {}; counts without a port label: {}",
            s.failed_reads,
            s.unrecorded_sockets,
            s.unwatched_sockets,
            s.unmatched_resets,
            s.unlabelled_counts
        )?;
    }
    if !s.listeners.accept_wait.is_empty() {
        let waits: Vec<String> = (s.listeners.accept_wait.iter())
            .map(|w| {
                let port = match w.port {
                    0 => "other".to_string(),
                    port => format!(":{port}"),
                };
                let who = match (&w.owner.pid, &w.owner.comm) {
                    (Some(pid), Some(comm)) => format!(" pid={pid} comm={comm}"),
                    _ => String::new(),
                };
                format!(
                    "{port} n={} p50={:.3} p99={:.3} max={:.3}{who}",
                    w.figures.count, w.figures.p50, w.figures.p99, w.figures.max
                )
            })
            .collect();
        writeln!(
            out,
            "    accept wait, ms, last {}: {}",
            seconds(s.interval_ns),
            waits.join("; ")
        )?;
    }
    // Only once a destination uses a share worth a look: a quarter of its range.
    let pressed: Vec<String> = (s.port_pressure.most_used.iter())
        .filter(|u| u.percent >= 25.0)
        .map(|u| {
            format!(
                "{} {}/{}",
                destination(&u.destination),
                u.in_use,
                u.available
            )
        })
        .collect();
    if !pressed.is_empty() {
        let now = s.port_pressure.pressed_now;
        writeln!(
            out,
            "    ephemeral ports, most used ({now} pressed): {}",
            pressed.join("; ")
        )?;
    }
    for r in &s.stuck.reminders {
        writeln!(out, "    still stuck: {}", stuck_details(&r.body))?;
    }
    if s.stuck.reminders_omitted > 0 {
        writeln!(
            out,
            "    … and {} more stuck sockets",
            s.stuck.reminders_omitted
        )?;
    }
    Ok(())
}
