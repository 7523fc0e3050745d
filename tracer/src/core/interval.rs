//! The report of a summary interval, which `Tracker::close_interval` builds: what the daemon
//! knows, in counts and distributions, never a line per socket (except the stuck ones due for a
//! reminder). Its counts come from the same snapshot of the core as the metrics; the exports only
//! render it.
use std::{borrow::Cow, collections::HashMap};

use tracer_common::{End, TcpState, Tuple, TwRecord};

use super::{
    ends,
    report::{PressureView, Reconciliation, Snapshot, StuckReport},
    totals::{Percentiles, Totals, figures_of, pairs, percentiles},
};
use crate::{
    enrich::listen_drops::ListenDrops,
    owner::{Comm, Owner},
    source::{
        decode::state,
        events::Endpoints,
        health::{KernelHealth, Seen},
        kernel_maps::{Aggregates, StateDurations},
    },
};

/// Stuck reminders listed in one summary at most; the rest are counted.
const MAX_REMINDERS: usize = 100;
/// Remote ports listed for TIME-WAIT sockets at most.
const MAX_PORTS: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub(crate) ts_ns: u64,
    /// The last summary of the run (at exit).
    pub(crate) last: bool,
    pub(crate) uptime_ns: u64,
    pub(crate) interval_ns: u64,
    /// Live sockets by state (non-zero only).
    pub(crate) sockets: Vec<(TcpState, u64)>,
    pub(crate) tracked: u64,
    pub(crate) transitions: Vec<(TcpState, TcpState, u64)>,
    pub(crate) interval_transitions: Vec<(TcpState, TcpState, u64)>,
    pub(crate) durations: Vec<(TcpState, Percentiles)>,
    pub(crate) interval_durations: Vec<(TcpState, Percentiles)>,
    /// How connections ended, by kind (zeros included).
    pub(crate) ends: Vec<(End, u64)>,
    pub(crate) interval_ends: Vec<(End, u64)>,
    /// Failed connects by reason (their kind, or the error by name).
    pub(crate) connect_failures: Vec<(Cow<'static, str>, u64)>,
    pub(crate) interval_connect_failures: Vec<(Cow<'static, str>, u64)>,
    /// Failed binds of TCP sockets by error (with `--bind-failures`).
    pub(crate) bind_failures: Vec<(Cow<'static, str>, u64)>,
    pub(crate) interval_bind_failures: Vec<(Cow<'static, str>, u64)>,
    /// Connect times without and with a SYN retransmitted.
    pub(crate) connects: Connects,
    pub(crate) interval_connects: Connects,
    /// Stuck sockets the owner filter selects, and by state.
    pub(crate) stuck: u64,
    pub(crate) stuck_by_state: Vec<(TcpState, u64)>,
    /// Listeners stalled now, and stall reports since start-up.
    pub(crate) stalled_listeners: u64,
    pub(crate) listener_stalls: u64,
    pub(crate) half_open_listeners: u64,
    pub(crate) half_open_reports: u64,
    pub(crate) synack_retransmits_by_listener: Vec<(Endpoints, u64)>,
    /// Connections listeners turned away (the kernel's counts).
    pub(crate) listen_drops: ListenDrops,
    /// Stuck sockets due for a reminder (at most [`MAX_REMINDERS`]).
    pub(crate) reminders: Vec<StuckReport>,
    /// Reminders due but not listed.
    pub(crate) reminders_omitted: usize,
    /// TIME-WAIT sockets by remote port, most first (at most [`MAX_PORTS`]).
    pub(crate) time_wait_by_remote_port: Vec<(u16, u64)>,
    /// What the kernel programs saw since start-up.
    pub(crate) seen: Seen,
    /// What the kernel could not deliver, since start-up.
    pub(crate) health: KernelHealth,
    pub(crate) reconciliation: Reconciliation,
    /// The destinations using the most of their ephemeral ports, as of the last listing.
    pub(crate) port_pressure: PressureView,
    /// How long connections waited to be accepted in the interval, by listener, the longest
    /// waits (p99) first.
    pub(crate) accept_waits: Vec<AcceptWait>,
}

/// How long a listener's connections waited in its accept queue during the interval, and the
/// process that accepts them (its pid from the kernel; the daemon describes it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AcceptWait {
    pub(crate) netns: u32,
    /// 0 (with netns 0): the listeners past the kernel map's room, together.
    pub(crate) port: u16,
    pub(crate) owner: Option<Owner>,
    pub(crate) waits: Percentiles,
}

impl AcceptWait {
    fn of_interval(totals: &Totals, kernel: &Aggregates) -> Vec<Self> {
        let mut waits: Vec<Self> = totals
            .interval_accept_waits(kernel)
            .iter()
            .filter_map(|l| {
                Some(Self {
                    netns: l.netns,
                    port: l.port,
                    owner: (l.pid != 0).then(|| Owner {
                        pid: l.pid,
                        comm: Comm::from_kernel([0; 16]),
                        cgroup: None,
                    }),
                    waits: figures_of(&l.waits)?,
                })
            })
            .collect();
        waits.sort_by(|a, b| {
            b.waits
                .p99_ms
                .total_cmp(&a.waits.p99_ms)
                .then((a.netns, a.port).cmp(&(b.netns, b.port)))
        });
        waits
    }
}

/// Connect times (SYN_SENT to ESTABLISHED): `None` when no connect of that kind was seen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Connects {
    pub(crate) first_try: Option<Percentiles>,
    /// At least one SYN was sent again: a second or more.
    pub(crate) retransmitted: Option<Percentiles>,
}

impl Connects {
    fn of(durations: &[StateDurations]) -> Self {
        Self {
            first_try: durations.first().and_then(figures_of),
            retransmitted: durations.get(1).and_then(figures_of),
        }
    }
}

/// Daemon-side figures the core does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Context {
    pub(crate) now_ns: u64,
    pub(crate) started_ns: u64,
    pub(crate) interval_started_ns: u64,
    pub(crate) seen: Seen,
    pub(crate) health: KernelHealth,
    pub(crate) last: bool,
}

impl Summary {
    /// The report of the interval ending at `context.now_ns`, from the core's snapshot and
    /// totals, the stuck sockets due for a reminder, the kernel's aggregates and its timewait
    /// records.
    pub(super) fn new(
        snapshot: Snapshot,
        mut reminders: Vec<StuckReport>,
        totals: &Totals,
        kernel: &Aggregates,
        timewaits: &[(Tuple, TwRecord)],
        context: Context,
    ) -> Self {
        // The oldest first: those omitted past the cap are the least overdue.
        reminders.sort_by_key(|r| std::cmp::Reverse(r.age_ns));
        let reminders_omitted = reminders.len().saturating_sub(MAX_REMINDERS);
        reminders.truncate(MAX_REMINDERS);
        let interval_ends = totals.interval_ends(kernel);
        Self {
            ts_ns: context.now_ns,
            last: context.last,
            uptime_ns: context.now_ns.saturating_sub(context.started_ns),
            interval_ns: context.now_ns.saturating_sub(context.interval_started_ns),
            sockets: Snapshot::non_zero(&snapshot.sockets),
            tracked: snapshot.tracked,
            transitions: pairs(&totals.transitions(kernel)),
            interval_transitions: pairs(&totals.interval_transitions(kernel)),
            durations: percentiles(&totals.durations(kernel)),
            interval_durations: percentiles(&totals.interval_durations(kernel)),
            ends: ends::by_end(&kernel.ends),
            interval_ends: ends::by_end(&interval_ends),
            connect_failures: ends::connect_failures(&kernel.ends),
            interval_connect_failures: ends::connect_failures(&interval_ends),
            bind_failures: by_error_name(&snapshot.bind_failures.total),
            interval_bind_failures: by_error_name(&snapshot.bind_failures.interval),
            connects: Connects::of(&kernel.connects),
            interval_connects: Connects::of(&totals.interval_connects(kernel)),
            stuck: snapshot.stuck_total(),
            stuck_by_state: Snapshot::non_zero(&snapshot.stuck),
            stalled_listeners: snapshot.stalled_listeners,
            listener_stalls: snapshot.listener_stalls,
            half_open_listeners: snapshot.half_open_listeners,
            half_open_reports: snapshot.half_open_reports,
            synack_retransmits_by_listener: snapshot.synack_retransmits_by_listener,
            listen_drops: snapshot.listen_drops,
            reminders,
            reminders_omitted,
            time_wait_by_remote_port: time_wait_by_remote_port(timewaits, MAX_PORTS),
            seen: context.seen,
            health: context.health,
            reconciliation: snapshot.reconciliation,
            port_pressure: snapshot.port_pressure,
            accept_waits: AcceptWait::of_interval(totals, kernel),
        }
    }
}

fn by_error_name(counts: &[(u8, u64)]) -> Vec<(Cow<'static, str>, u64)> {
    counts
        .iter()
        .map(|(errno, n)| (ends::error_name(*errno), *n))
        .collect()
}

/// TIME-WAIT sockets by remote port, most first, at most `max` ports.
pub(crate) fn time_wait_by_remote_port(
    timewaits: &[(Tuple, TwRecord)],
    max: usize,
) -> Vec<(u16, u64)> {
    let mut by_port: HashMap<u16, u64> = HashMap::new();
    for (key, record) in timewaits {
        if state(record.substate) == Ok(TcpState::TimeWait) {
            *by_port.entry(key.dport).or_default() += 1;
        }
    }
    let mut ports: Vec<(u16, u64)> = by_port.into_iter().collect();
    ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ports.truncate(max);
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        core::{Settings, Tracker, stuck::Thresholds},
        source::kernel_maps::ListenerWaits,
    };

    fn tracker() -> Tracker {
        Tracker::new(
            Settings {
                thresholds: Thresholds::default(),
                repeat_ns: 1,
                owners: Default::default(),
                port_pressure: 80,
            },
            [0; TcpState::COUNT],
        )
    }

    #[test]
    fn a_summary_counts_from_the_kernel_and_starts_an_interval() {
        let mut tracker = tracker();
        let mut kernel = Aggregates::default();
        kernel.gauges[TcpState::TimeWait as usize] = 3;
        let index = TcpState::FinWait2 as usize * TcpState::COUNT + TcpState::TimeWait as usize;
        kernel.transitions[index] = 3;
        let summary = tracker.close_interval(&kernel, &[], Context::default());
        assert_eq!(summary.sockets, vec![(TcpState::TimeWait, 3)]);
        assert_eq!(summary.tracked, 3);
        assert_eq!(
            summary.interval_transitions,
            vec![(TcpState::FinWait2, TcpState::TimeWait, 3)]
        );
        kernel.transitions[index] = 4;
        let next = tracker.close_interval(&kernel, &[], Context::default());
        assert_eq!(next.interval_transitions[0].2, 1, "since the last summary");
        assert_eq!(next.transitions[0].2, 4, "since start-up");
    }

    /// `waits` in milliseconds, as the kernel would have counted them (since start-up).
    fn listener(port: u16, pid: u32, waits_ms: &[u64]) -> ListenerWaits {
        let mut waits = StateDurations::default();
        for ms in waits_ms {
            waits.add(ms * 1_000_000);
        }
        ListenerWaits {
            netns: 7,
            port,
            pid,
            waits,
        }
    }

    #[test]
    fn accept_waits_are_the_intervals_own_the_longest_first() {
        let mut tracker = tracker();
        let mut kernel = Aggregates {
            accept_waits: vec![listener(80, 10, &[1, 2, 3]), listener(8080, 0, &[500])],
            ..Aggregates::default()
        };
        let first = tracker.close_interval(&kernel, &[], Context::default());
        let ports: Vec<u16> = first.accept_waits.iter().map(|w| w.port).collect();
        assert_eq!(ports, vec![8080, 80], "the longest waits first");
        assert_eq!(first.accept_waits[1].waits.count, 3);
        assert_eq!(
            first.accept_waits[1].owner.as_ref().map(|o| o.pid),
            Some(10)
        );
        assert_eq!(first.accept_waits[0].owner, None, "pid 0: not known");
        // Port 80 accepted two more, one after a wait of 2 s; 8080 none: left out.
        kernel.accept_waits[0] = listener(80, 11, &[1, 2, 3, 2000, 1]);
        let next = tracker.close_interval(&kernel, &[], Context::default());
        assert_eq!(next.accept_waits.len(), 1, "{:?}", next.accept_waits);
        let w = &next.accept_waits[0];
        assert_eq!((w.port, w.waits.count), (80, 2));
        assert!((w.waits.max_ms - 2000.0).abs() < 1e-6, "{w:?}");
        assert_eq!(w.owner.as_ref().map(|o| o.pid), Some(11));
    }
}
