//! The JSON summary line, typed: every figure of the periodic summary under its key, the keys in
//! alphabetical order as the line has always had them.
use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::json::{Listener, StuckBody, as_display, line, stuck_body};
use crate::{
    core::totals::Percentiles,
    export::{
        summary::{Connects, Summary},
        wall_clock::WallClock,
    },
};

/// The summary line. Its keys are in alphabetical order, as the line has always had them.
#[derive(Serialize)]
struct SummaryLine<'a> {
    connect_failures: Span<BTreeMap<&'a str, u64>>,
    connect_ms: Span<ConnectFigures>,
    durations_ms: Span<BTreeMap<&'static str, Figures>>,
    ends: Span<BTreeMap<&'static str, u64>>,
    event: &'static str,
    events: EventCounts,
    /// Kept for the schema: the table no longer evicts (sockets it cannot hold are counted in
    /// `unrecorded_sockets`).
    evictions: u64,
    failed_reads: u64,
    #[serde(rename = "final")]
    last: bool,
    handshakes: Handshakes,
    interval_s: f64,
    level: &'static str,
    listeners: ListenerCounts,
    lost_events: u64,
    reconciliation: ReconciliationCounts,
    skipped_events: u64,
    sockets: BTreeMap<&'static str, u64>,
    stuck: StuckCounts,
    time_wait_by_remote_port: BTreeMap<String, u64>,
    tracked: u64,
    transitions: Span<BTreeMap<String, u64>>,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
    unlabelled_counts: u64,
    unmatched_resets: u64,
    unrecorded_sockets: u64,
    unwatched_sockets: u64,
    uptime_s: f64,
}

/// A figure over the last interval and since the start.
#[derive(Serialize)]
struct Span<T> {
    interval: T,
    total: T,
}

#[derive(Serialize)]
struct Figures {
    count: u64,
    max: f64,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Figures {
    fn new(p: &Percentiles) -> Self {
        Self {
            count: p.count,
            max: p.max_ms,
            min: p.min_ms,
            p50: p.p50_ms,
            p90: p.p90_ms,
            p99: p.p99_ms,
        }
    }
}

#[derive(Serialize)]
struct ConnectFigures {
    first_try: Option<Figures>,
    retransmitted: Option<Figures>,
}

impl ConnectFigures {
    fn new(c: &Connects) -> Self {
        Self {
            first_try: c.first_try.as_ref().map(Figures::new),
            retransmitted: c.retransmitted.as_ref().map(Figures::new),
        }
    }
}

#[derive(Serialize)]
struct EventCounts {
    accepted: u64,
    timewait: u64,
    transitions: u64,
    transitions_lost: u64,
    transitions_skipped: u64,
}

#[derive(Serialize)]
struct Handshakes {
    syn_retransmits: u64,
    synack_retransmits: u64,
}

#[derive(Serialize)]
struct ListenerCounts {
    drops: u64,
    half_open_now: u64,
    half_open_reports: u64,
    overflows: u64,
    stalled_now: u64,
    stalls: u64,
    synack_retransmits: Vec<ListenerCount>,
}

/// A listener and how many SYN-ACKs it sent again.
#[derive(Serialize)]
struct ListenerCount {
    count: u64,
    #[serde(flatten)]
    listener: Listener,
}

#[derive(Serialize)]
struct ReconciliationCounts {
    added: u64,
    corrected: u64,
    fixes: u64,
    removed: u64,
    runs: u64,
}

#[derive(Serialize)]
struct StuckCounts {
    by_state: BTreeMap<&'static str, u64>,
    now: u64,
    reminders: Vec<Reminder>,
    reminders_omitted: usize,
}

/// A stuck socket a summary reminds of: its stuck line without event and level.
#[derive(Serialize)]
struct Reminder {
    #[serde(flatten)]
    body: StuckBody,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
}

fn percentiles(list: &[(tracer_common::TcpState, Percentiles)]) -> BTreeMap<&'static str, Figures> {
    list.iter()
        .map(|(state, p)| (state.name(), Figures::new(p)))
        .collect()
}

/// Non-zero counts by name.
fn named<K: AsRef<str>>(list: &[(K, u64)]) -> BTreeMap<&str, u64> {
    list.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name.as_ref(), *n))
        .collect()
}

fn end_names(list: &[(tracer_common::End, u64)]) -> BTreeMap<&'static str, u64> {
    list.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(end, n)| (end.name(), *n))
        .collect()
}

fn pairs(
    list: &[(tracer_common::TcpState, tracer_common::TcpState, u64)],
) -> BTreeMap<String, u64> {
    list.iter()
        .map(|(old, new, n)| (format!("{}->{}", old.name(), new.name()), *n))
        .collect()
}

fn by_state(list: &[(tracer_common::TcpState, u64)]) -> BTreeMap<&'static str, u64> {
    list.iter().map(|(state, n)| (state.name(), *n)).collect()
}

pub(super) fn summary(out: &mut impl Write, clock: &WallClock, s: &Summary) -> io::Result<()> {
    let summary = SummaryLine {
        connect_failures: Span {
            interval: named(&s.interval_connect_failures),
            total: named(&s.connect_failures),
        },
        connect_ms: Span {
            interval: ConnectFigures::new(&s.interval_connects),
            total: ConnectFigures::new(&s.connects),
        },
        durations_ms: Span {
            interval: percentiles(&s.interval_durations),
            total: percentiles(&s.durations),
        },
        ends: Span {
            interval: end_names(&s.interval_ends),
            total: end_names(&s.ends),
        },
        event: "summary",
        events: EventCounts {
            accepted: s.seen.accepts,
            timewait: s.seen.timewait_ends,
            transitions: s.seen.transitions,
            transitions_lost: s.health.lost_transitions,
            transitions_skipped: s.health.skipped_transitions,
        },
        evictions: 0,
        failed_reads: s.health.failed_reads,
        last: s.last,
        handshakes: Handshakes {
            syn_retransmits: s.seen.syn_retransmits,
            synack_retransmits: s.seen.synack_retransmits,
        },
        interval_s: s.interval_ns as f64 / 1e9,
        level: "info",
        listeners: ListenerCounts {
            drops: s.listen_drops.drops,
            half_open_now: s.half_open_listeners,
            half_open_reports: s.half_open_reports,
            overflows: s.listen_drops.overflows,
            stalled_now: s.stalled_listeners,
            stalls: s.listener_stalls,
            synack_retransmits: s
                .synack_retransmits_by_listener
                .iter()
                .map(|(e, n)| ListenerCount {
                    count: *n,
                    listener: Listener::new(e),
                })
                .collect(),
        },
        lost_events: s.health.lost(),
        reconciliation: ReconciliationCounts {
            added: s.reconciliation.added,
            corrected: s.reconciliation.corrected,
            fixes: s.reconciliation.fixes(),
            removed: s.reconciliation.removed,
            runs: s.reconciliation.runs,
        },
        skipped_events: s.health.skipped_all,
        sockets: by_state(&s.sockets),
        stuck: StuckCounts {
            by_state: by_state(&s.stuck_by_state),
            now: s.stuck,
            reminders: s
                .reminders
                .iter()
                .map(|r| Reminder {
                    body: stuck_body(r),
                    ts: humantime::format_rfc3339_micros(clock.wall(r.ts_ns)),
                })
                .collect(),
            reminders_omitted: s.reminders_omitted,
        },
        time_wait_by_remote_port: s
            .time_wait_by_remote_port
            .iter()
            .map(|(port, n)| (port.to_string(), *n))
            .collect(),
        tracked: s.tracked,
        transitions: Span {
            interval: pairs(&s.interval_transitions),
            total: pairs(&s.transitions),
        },
        ts: humantime::format_rfc3339_micros(clock.wall(s.ts_ns)),
        unlabelled_counts: s.health.unlabelled,
        unmatched_resets: s.health.unmatched_resets,
        unrecorded_sockets: s.health.unrecorded_sockets,
        unwatched_sockets: s.health.unwatched_sockets,
        uptime_s: s.uptime_ns as f64 / 1e9,
    };
    line(out, &summary)
}
