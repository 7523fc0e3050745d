//! The summary line: every figure of the periodic summary under its key, the keys in alphabetical
//! order as the line has always had them. Counts keep the core's order (states in the kernel's
//! order, the most first…) for the text lines, and are written as JSON objects sorted by name.
use std::{borrow::Cow, collections::BTreeMap, time::SystemTime};

use serde::{Serialize, Serializer};
use tracer_common::{End, TcpState};

use super::{
    common::{DestinationAddr, Level, ListenerAddr, OwnerFields, percent, rfc3339_micros},
    reports::StuckBody,
};
use crate::{
    core::{
        interval::{Connects, Summary},
        totals::Percentiles,
    },
    export::wall_clock::WallClock,
};

#[derive(Serialize)]
pub(in super::super) struct SummaryLine<'a> {
    pub(in super::super) bind_failures: Span<Counts<'a, (Cow<'static, str>, u64)>>,
    pub(in super::super) connect_failures: Span<Counts<'a, (Cow<'static, str>, u64)>>,
    pub(in super::super) connect_ms: Span<ConnectFigures>,
    pub(in super::super) durations_ms: Span<Durations<'a>>,
    pub(in super::super) ends: Span<Counts<'a, (End, u64)>>,
    pub(in super::super) event: &'static str,
    pub(in super::super) events: EventCounts,
    /// Kept for the schema: the table no longer evicts (sockets it cannot hold are counted in
    /// `unrecorded_sockets`).
    pub(in super::super) evictions: u64,
    pub(in super::super) failed_reads: u64,
    #[serde(rename = "final")]
    pub(in super::super) last: bool,
    pub(in super::super) handshakes: Handshakes,
    #[serde(rename = "interval_s", serialize_with = "seconds")]
    pub(in super::super) interval_ns: u64,
    pub(in super::super) level: Level,
    pub(in super::super) listeners: ListenerCounts<'a>,
    pub(in super::super) lost_events: u64,
    pub(in super::super) port_pressure: PortCounts,
    pub(in super::super) reconciliation: ReconciliationCounts,
    pub(in super::super) skipped_events: u64,
    pub(in super::super) sockets: Counts<'a, (TcpState, u64)>,
    pub(in super::super) stuck: StuckCounts<'a>,
    pub(in super::super) time_wait_by_remote_port: Counts<'a, (u16, u64)>,
    pub(in super::super) tracked: u64,
    pub(in super::super) transitions: Span<Counts<'a, (TcpState, TcpState, u64)>>,
    #[serde(serialize_with = "rfc3339_micros")]
    pub(in super::super) ts: SystemTime,
    pub(in super::super) unlabelled_counts: u64,
    pub(in super::super) unmatched_resets: u64,
    pub(in super::super) unrecorded_sockets: u64,
    pub(in super::super) unwatched_sockets: u64,
    #[serde(rename = "uptime_s", serialize_with = "seconds")]
    pub(in super::super) uptime_ns: u64,
}

/// A figure over the last interval and since the start.
#[derive(Serialize)]
pub(in super::super) struct Span<T> {
    pub(in super::super) interval: T,
    pub(in super::super) total: T,
}

/// Something counted under a name.
pub(in super::super) trait Counted {
    fn name(&self) -> Cow<'_, str>;
    fn count(&self) -> u64;
}

impl Counted for (TcpState, u64) {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.0.name())
    }
    fn count(&self) -> u64 {
        self.1
    }
}

impl Counted for (End, u64) {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.0.name())
    }
    fn count(&self) -> u64 {
        self.1
    }
}

impl Counted for (Cow<'static, str>, u64) {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.0)
    }
    fn count(&self) -> u64 {
        self.1
    }
}

/// TIME-WAIT sockets by remote port.
impl Counted for (u16, u64) {
    fn name(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn count(&self) -> u64 {
        self.1
    }
}

/// Transitions by `"OLD->NEW"`.
impl Counted for (TcpState, TcpState, u64) {
    fn name(&self) -> Cow<'_, str> {
        Cow::Owned(format!("{}->{}", self.0.name(), self.1.name()))
    }
    fn count(&self) -> u64 {
        self.2
    }
}

/// Counts in the core's order; in JSON an object of the non-zero ones by name.
pub(in super::super) struct Counts<'a, T>(pub(in super::super) &'a [T]);

impl<T: Counted> Counts<'_, T> {
    /// Names and counts in the core's order, zeros included.
    pub(in super::super) fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, u64)> {
        self.0.iter().map(|c| (c.name(), c.count()))
    }

    /// The count under `name`, 0 when it has none.
    pub(in super::super) fn get(&self, name: &str) -> u64 {
        self.iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, count)| count)
    }
}

impl<T: Counted> Serialize for Counts<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<Cow<'_, str>, u64> = self
            .0
            .iter()
            .filter(|c| c.count() > 0)
            .map(|c| (c.name(), c.count()))
            .collect();
        sorted.serialize(s)
    }
}

/// Time in state by state; in JSON an object by state name.
pub(in super::super) struct Durations<'a>(pub(in super::super) &'a [(TcpState, Percentiles)]);

impl Serialize for Durations<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&str, Figures> = self
            .0
            .iter()
            .map(|(state, p)| (state.name(), Figures::new(p)))
            .collect();
        sorted.serialize(s)
    }
}

/// A distribution in milliseconds.
#[derive(Serialize)]
pub(in super::super) struct Figures {
    pub(in super::super) count: u64,
    pub(in super::super) max: f64,
    pub(in super::super) min: f64,
    pub(in super::super) p50: f64,
    pub(in super::super) p90: f64,
    pub(in super::super) p99: f64,
}

impl Figures {
    pub(in super::super) fn new(p: &Percentiles) -> Self {
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

/// Connect times without and with a SYN retransmitted; `None` when none was seen.
#[derive(Serialize)]
pub(in super::super) struct ConnectFigures {
    pub(in super::super) first_try: Option<Figures>,
    pub(in super::super) retransmitted: Option<Figures>,
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
pub(in super::super) struct EventCounts {
    pub(in super::super) accepted: u64,
    pub(in super::super) accepted_untimed: u64,
    pub(in super::super) timewait: u64,
    pub(in super::super) transitions: u64,
    pub(in super::super) transitions_lost: u64,
    pub(in super::super) transitions_skipped: u64,
}

#[derive(Serialize)]
pub(in super::super) struct Handshakes {
    pub(in super::super) syn_retransmits: u64,
    pub(in super::super) synack_retransmits: u64,
}

#[derive(Serialize)]
pub(in super::super) struct ListenerCounts<'a> {
    pub(in super::super) accept_wait: Vec<AcceptWaitFigures<'a>>,
    pub(in super::super) drops: u64,
    pub(in super::super) half_open_now: u64,
    pub(in super::super) half_open_reports: u64,
    pub(in super::super) overflows: u64,
    pub(in super::super) stalled_now: u64,
    pub(in super::super) stalls: u64,
    pub(in super::super) synack_retransmits: Vec<ListenerCount>,
}

/// How long a listener's connections waited to be accepted in the interval (milliseconds), with
/// the process that accepts them.
#[derive(Serialize)]
pub(in super::super) struct AcceptWaitFigures<'a> {
    #[serde(flatten)]
    pub(in super::super) figures: Figures,
    pub(in super::super) netns: u32,
    pub(in super::super) port: u16,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

/// A listener and how many SYN-ACKs it sent again.
#[derive(Serialize)]
pub(in super::super) struct ListenerCount {
    pub(in super::super) count: u64,
    #[serde(flatten)]
    pub(in super::super) listener: ListenerAddr,
}

#[derive(Serialize)]
pub(in super::super) struct PortCounts {
    pub(in super::super) most_used: Vec<PortUse>,
    pub(in super::super) pressed_now: usize,
    pub(in super::super) reports: u64,
}

/// A destination and the ephemeral ports it uses.
#[derive(Serialize)]
pub(in super::super) struct PortUse {
    pub(in super::super) available: u32,
    #[serde(flatten)]
    pub(in super::super) destination: DestinationAddr,
    pub(in super::super) in_use: u32,
    pub(in super::super) percent: f64,
    pub(in super::super) time_wait: u32,
}

#[derive(Serialize)]
pub(in super::super) struct ReconciliationCounts {
    pub(in super::super) added: u64,
    pub(in super::super) corrected: u64,
    pub(in super::super) fixes: u64,
    pub(in super::super) removed: u64,
    pub(in super::super) runs: u64,
}

#[derive(Serialize)]
pub(in super::super) struct StuckCounts<'a> {
    pub(in super::super) by_state: Counts<'a, (TcpState, u64)>,
    pub(in super::super) now: u64,
    pub(in super::super) reminders: Vec<Reminder<'a>>,
    pub(in super::super) reminders_omitted: usize,
}

/// A stuck socket a summary reminds of: its stuck line without event and level.
#[derive(Serialize)]
pub(in super::super) struct Reminder<'a> {
    #[serde(flatten)]
    pub(in super::super) body: StuckBody<'a>,
    #[serde(serialize_with = "rfc3339_micros")]
    pub(in super::super) ts: SystemTime,
}

fn seconds<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*ns as f64 / 1e9)
}

impl<'a> SummaryLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, s: &'a Summary) -> Self {
        Self {
            bind_failures: Span {
                interval: Counts(&s.interval_bind_failures),
                total: Counts(&s.bind_failures),
            },
            connect_failures: Span {
                interval: Counts(&s.interval_connect_failures),
                total: Counts(&s.connect_failures),
            },
            connect_ms: Span {
                interval: ConnectFigures::new(&s.interval_connects),
                total: ConnectFigures::new(&s.connects),
            },
            durations_ms: Span {
                interval: Durations(&s.interval_durations),
                total: Durations(&s.durations),
            },
            ends: Span {
                interval: Counts(&s.interval_ends),
                total: Counts(&s.ends),
            },
            event: "summary",
            events: EventCounts {
                accepted: s.seen.accepts,
                accepted_untimed: s.seen.accepts_untimed,
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
            interval_ns: s.interval_ns,
            level: Level::Info,
            listeners: ListenerCounts {
                accept_wait: s
                    .accept_waits
                    .iter()
                    .map(|w| AcceptWaitFigures {
                        figures: Figures::new(&w.waits),
                        netns: w.netns,
                        port: w.port,
                        owner: OwnerFields::new(w.owner.as_ref()),
                    })
                    .collect(),
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
                        listener: ListenerAddr::new(e),
                    })
                    .collect(),
            },
            lost_events: s.health.lost(),
            port_pressure: PortCounts {
                most_used: s
                    .port_pressure
                    .most_used
                    .iter()
                    .map(|u| PortUse {
                        available: u.available,
                        destination: DestinationAddr::new(&u.destination),
                        in_use: u.in_use,
                        percent: percent(u.in_use, u.available),
                        time_wait: u.time_wait,
                    })
                    .collect(),
                pressed_now: s.port_pressure.pressed_now,
                reports: s.port_pressure.reports,
            },
            reconciliation: ReconciliationCounts {
                added: s.reconciliation.added,
                corrected: s.reconciliation.corrected,
                fixes: s.reconciliation.fixes(),
                removed: s.reconciliation.removed,
                runs: s.reconciliation.runs,
            },
            skipped_events: s.health.skipped_all,
            sockets: Counts(&s.sockets),
            stuck: StuckCounts {
                by_state: Counts(&s.stuck_by_state),
                now: s.stuck,
                reminders: s
                    .reminders
                    .iter()
                    .map(|r| Reminder {
                        body: StuckBody::new(r),
                        ts: clock.wall(r.ts_ns),
                    })
                    .collect(),
                reminders_omitted: s.reminders_omitted,
            },
            time_wait_by_remote_port: Counts(&s.time_wait_by_remote_port),
            tracked: s.tracked,
            transitions: Span {
                interval: Counts(&s.interval_transitions),
                total: Counts(&s.transitions),
            },
            ts: clock.wall(s.ts_ns),
            unlabelled_counts: s.health.unlabelled,
            unmatched_resets: s.health.unmatched_resets,
            unrecorded_sockets: s.health.unrecorded_sockets,
            unwatched_sockets: s.health.unwatched_sockets,
            uptime_ns: s.uptime_ns,
        }
    }
}
