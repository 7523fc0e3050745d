//! The periodic summary: what the daemon knows, in counts and distributions, never a line per
//! socket (except the stuck ones due for a reminder).
use std::collections::BTreeMap;

use tracer_common::TcpState;

use crate::{
    stats::Percentiles,
    tracker::{EventCounts, Reconciliation, StuckReport, Tracker},
};

/// Stuck reminders listed in one summary at most; the rest are counted.
pub const MAX_REMINDERS: usize = 100;
/// Remote ports listed for TIME-WAIT sockets at most.
pub const MAX_PORTS: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub ts_ns: u64,
    /// The last summary of the run (at exit).
    pub last: bool,
    pub uptime_ns: u64,
    pub interval_ns: u64,
    /// Live sockets by state (non-zero only).
    pub sockets: Vec<(TcpState, u64)>,
    pub tracked: usize,
    pub transitions: Vec<(TcpState, TcpState, u64)>,
    pub interval_transitions: Vec<(TcpState, TcpState, u64)>,
    pub durations: Vec<(TcpState, Percentiles)>,
    pub interval_durations: Vec<(TcpState, Percentiles)>,
    pub stuck: usize,
    pub stuck_by_state: Vec<(TcpState, u64)>,
    /// Stuck sockets due for a reminder (at most [`MAX_REMINDERS`]).
    pub reminders: Vec<StuckReport>,
    /// Reminders due but not listed.
    pub reminders_omitted: usize,
    /// TIME-WAIT sockets by remote port, most first (at most [`MAX_PORTS`]).
    pub time_wait_by_remote_port: Vec<(u16, u64)>,
    /// Kernel events read since start-up.
    pub events: EventCounts,
    /// Events the kernel could not deliver (a full ring buffer): transitions, and all kinds.
    pub lost: (u64, u64),
    /// Program runs the kernel skipped (another BPF program was running on the CPU):
    /// of the transitions program, and of all the tracer's programs.
    pub skipped: (u64, u64),
    pub evictions: u64,
    pub reconciliation: Reconciliation,
}

/// Daemon-side figures the tracker does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    pub now_ns: u64,
    pub started_ns: u64,
    pub interval_started_ns: u64,
    pub lost: (u64, u64),
    pub skipped: (u64, u64),
    pub last: bool,
}

impl Summary {
    /// Takes a summary and starts the next interval.
    pub fn take(tracker: &mut Tracker, context: Context) -> Self {
        let table = tracker.table();
        let sockets = TcpState::ALL
            .into_iter()
            .map(|state| (state, table.count(state)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut stuck_by_state: BTreeMap<TcpState, u64> = BTreeMap::new();
        for key in tracker.stuck_keys() {
            if let Some(entry) = table.get(key) {
                *stuck_by_state.entry(entry.state).or_default() += 1;
            }
        }
        let mut by_port: BTreeMap<u16, u64> = BTreeMap::new();
        for (_, entry) in table.iter().filter(|(_, e)| e.state == TcpState::TimeWait) {
            *by_port.entry(entry.endpoints.remote_port).or_default() += 1;
        }
        let mut time_wait_by_remote_port: Vec<(u16, u64)> = by_port.into_iter().collect();
        time_wait_by_remote_port.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        time_wait_by_remote_port.truncate(MAX_PORTS);
        let tracked = table.len();
        let evictions = table.evictions();
        let stuck = tracker.stuck_count();
        let mut reminders = tracker.reminders(context.now_ns);
        reminders.sort_by_key(|r| std::cmp::Reverse(r.age_ns));
        let reminders_omitted = reminders.len().saturating_sub(MAX_REMINDERS);
        reminders.truncate(MAX_REMINDERS);
        let summary = Self {
            ts_ns: context.now_ns,
            last: context.last,
            uptime_ns: context.now_ns.saturating_sub(context.started_ns),
            interval_ns: context.now_ns.saturating_sub(context.interval_started_ns),
            sockets,
            tracked,
            transitions: tracker.transitions.pairs(),
            interval_transitions: tracker.interval_transitions.pairs(),
            durations: tracker.durations.percentiles(),
            interval_durations: tracker.interval_durations.percentiles(),
            stuck,
            stuck_by_state: stuck_by_state.into_iter().collect(),
            reminders,
            reminders_omitted,
            time_wait_by_remote_port,
            events: tracker.events,
            lost: context.lost,
            skipped: context.skipped,
            evictions,
            reconciliation: tracker.reconciliation(),
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
        detect::Thresholds,
        events::{Endpoints, Family},
        kernel_view::ListedSocket,
        tracker::{Sink, UnstuckReport},
    };

    struct Nowhere;
    impl Sink for Nowhere {
        fn transition(&mut self, _: &crate::events::Transition) {}
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
        let mut tracker = Tracker::new(1000, Thresholds::default(), 1);
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
    }
}
