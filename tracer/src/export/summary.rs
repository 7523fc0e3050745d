//! The periodic summary: what the daemon knows, in counts and distributions, never a line per
//! socket (except the stuck ones due for a reminder). Its counts come from the same snapshot of
//! the core as the metrics.
use tracer_common::TcpState;

use crate::{
    core::{
        Tracker,
        report::{Snapshot, StuckReport},
        stats::{EventCounts, Percentiles, Reconciliation},
    },
    source::health::KernelHealth,
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
    pub(crate) tracked: usize,
    pub(crate) transitions: Vec<(TcpState, TcpState, u64)>,
    pub(crate) interval_transitions: Vec<(TcpState, TcpState, u64)>,
    pub(crate) durations: Vec<(TcpState, Percentiles)>,
    pub(crate) interval_durations: Vec<(TcpState, Percentiles)>,
    /// Stuck sockets the owner filter selects, and by state.
    pub(crate) stuck: u64,
    pub(crate) stuck_by_state: Vec<(TcpState, u64)>,
    /// Stuck sockets due for a reminder (at most [`MAX_REMINDERS`]).
    pub(crate) reminders: Vec<StuckReport>,
    /// Reminders due but not listed.
    pub(crate) reminders_omitted: usize,
    /// TIME-WAIT sockets by remote port, most first (at most [`MAX_PORTS`]).
    pub(crate) time_wait_by_remote_port: Vec<(u16, u64)>,
    /// Kernel events read since start-up.
    pub(crate) events: EventCounts,
    /// What the kernel could not deliver, since start-up.
    pub(crate) health: KernelHealth,
    pub(crate) evictions: u64,
    pub(crate) reconciliation: Reconciliation,
}

/// Daemon-side figures the core does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Context {
    pub(crate) now_ns: u64,
    pub(crate) started_ns: u64,
    pub(crate) interval_started_ns: u64,
    pub(crate) health: KernelHealth,
    pub(crate) last: bool,
}

impl Summary {
    /// Takes a summary and starts the next interval.
    pub(crate) fn take(tracker: &mut Tracker, context: Context) -> Self {
        let snapshot = tracker.snapshot();
        let mut reminders = tracker.reminders(context.now_ns);
        reminders.sort_by_key(|r| std::cmp::Reverse(r.age_ns));
        let reminders_omitted = reminders.len().saturating_sub(MAX_REMINDERS);
        reminders.truncate(MAX_REMINDERS);
        let stats = tracker.stats();
        let summary = Self {
            ts_ns: context.now_ns,
            last: context.last,
            uptime_ns: context.now_ns.saturating_sub(context.started_ns),
            interval_ns: context.now_ns.saturating_sub(context.interval_started_ns),
            sockets: Snapshot::non_zero(&snapshot.sockets),
            tracked: snapshot.tracked,
            transitions: stats.transitions.pairs(),
            interval_transitions: stats.interval_transitions.pairs(),
            durations: stats.durations.percentiles(),
            interval_durations: stats.interval_durations.percentiles(),
            stuck: snapshot.stuck_total(),
            stuck_by_state: Snapshot::non_zero(&snapshot.stuck),
            reminders,
            reminders_omitted,
            time_wait_by_remote_port: tracker.time_wait_by_remote_port(MAX_PORTS),
            events: snapshot.events,
            health: context.health,
            evictions: snapshot.evictions,
            reconciliation: snapshot.reconciliation,
        };
        tracker.reset_interval();
        summary
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        net::{IpAddr, Ipv4Addr},
    };

    use super::*;
    use crate::{
        core::{
            Settings,
            report::{Sink, TransitionInfo, UnstuckReport},
            stuck::Thresholds,
        },
        enrich::socket_list::ListedSocket,
        source::events::{Endpoints, Family, Transition},
    };

    struct Nowhere;
    impl Sink for Nowhere {
        fn transition(&mut self, _: &Transition, _: TransitionInfo) {}
        fn stuck(&mut self, _: &StuckReport) {}
        fn unstuck(&mut self, _: &UnstuckReport) {}
    }

    fn time_wait(cookie: u64, remote_port: u16) -> ListedSocket {
        ListedSocket {
            endpoints: Endpoints {
                netns: 1,
                family: Family::Ipv4,
                local: IpAddr::V4(Ipv4Addr::LOCALHOST),
                local_port: 40_000 + cookie as u16,
                remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
                remote_port,
            },
            state: TcpState::TimeWait,
            cookie,
            inode: 0,
        }
    }

    #[test]
    fn time_wait_by_remote_port_keeps_the_largest() {
        let mut tracker = Tracker::new(Settings {
            max_sockets: 1000,
            thresholds: Thresholds::default(),
            repeat_ns: 1,
            owners: Default::default(),
        });
        // Port 1000+i has i+1 sockets in TIME_WAIT, for 12 ports.
        let listing: Vec<ListedSocket> = (0..12u16)
            .flat_map(|i| (0..=i).map(move |_| 1000 + i))
            .enumerate()
            .map(|(n, port)| time_wait(n as u64, port))
            .collect();
        tracker.begin_reconcile(0);
        tracker.reconcile(&listing, &HashSet::from([1]), 0, true, &mut Nowhere);
        let summary = Summary::take(&mut tracker, Context::default());
        assert_eq!(summary.time_wait_by_remote_port.len(), MAX_PORTS);
        assert_eq!(summary.time_wait_by_remote_port[0], (1011, 12));
        assert_eq!(summary.time_wait_by_remote_port[9], (1002, 3));
        assert_eq!(summary.sockets, vec![(TcpState::TimeWait, 78)]);
        assert_eq!(summary.tracked, 78);
    }
}
