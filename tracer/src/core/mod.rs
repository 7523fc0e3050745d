//! Stage 3, the core: the daemon's view of the host's TCP sockets, with no I/O at all. It is fed
//! typed events, listings of the kernel's sockets and the time, and reports through a
//! [`report::Sink`]. [`Tracker`] is the façade that dispatches; each job lives beside it:
//!
//! - [`table`]: the socket table and its indexes;
//! - [`sockets`]: a socket's life in the table (states entered and left, with their statistics);
//! - [`timewait`]: the TIME-WAIT phase, held by a separate timewait socket;
//! - [`stuck`]: thresholds, stuck and unstuck reports, reminders;
//! - [`reconcile`]: healing the table against the kernel's list, adopting pinned records;
//! - [`stats`]: counts and distributions; [`select`]: the owner filters; [`report`]: the
//!   vocabulary of what the core reports.
pub(crate) mod jiffies;
mod reconcile;
pub(crate) mod report;
pub(crate) mod select;
mod sockets;
pub(crate) mod stats;
pub(crate) mod stuck;
pub(crate) mod table;
mod timewait;

use std::collections::BTreeMap;

use tracer_common::TcpState;

use self::{
    reconcile::Reconciling,
    report::{Sink, Snapshot},
    select::OwnerFilter,
    stats::Stats,
    stuck::Thresholds,
    table::SocketTable,
    timewait::Timewaits,
};
use crate::source::events::KernelEvent;

/// How the core is set up.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `--max-sockets`: the table's bound.
    pub(crate) max_sockets: usize,
    pub(crate) thresholds: Thresholds,
    /// `--stuck-repeat`: reminders of a stuck socket at most this often.
    pub(crate) repeat_ns: u64,
    /// `--pid`, `--comm`, `--cgroup`.
    pub(crate) owners: OwnerFilter,
}

pub(crate) struct Tracker {
    table: SocketTable,
    stats: Stats,
    timewaits: Timewaits,
    /// A reconciliation under way: its listing is being taken.
    reconciling: Option<Reconciling>,
    repeat_ns: u64,
    selection: OwnerFilter,
}

impl Tracker {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            table: SocketTable::new(settings.max_sockets, settings.thresholds),
            stats: Stats::default(),
            timewaits: Timewaits::default(),
            reconciling: None,
            repeat_ns: settings.repeat_ns,
            selection: settings.owners,
        }
    }

    pub(crate) fn on_event(&mut self, event: KernelEvent, sink: &mut impl Sink) {
        match event {
            KernelEvent::Transition(t) => {
                self.stats.events.transitions += 1;
                self.on_transition(t, sink)
            }
            KernelEvent::TimewaitArmed(tw) => {
                self.stats.events.timewait += 1;
                self.on_timewait_armed(tw, sink)
            }
            KernelEvent::TimewaitDisarmed(tw) => {
                self.stats.events.timewait += 1;
                self.on_timewait_disarmed(tw)
            }
            KernelEvent::Accepted(a) => {
                self.stats.events.accepted += 1;
                self.on_accepted(a)
            }
        }
    }

    /// Settles what waits on time: timewait events whose partner never came, then sockets that
    /// crossed their threshold. Call after reading every event written before `now_ns`.
    pub(crate) fn tick(&mut self, now_ns: u64, sink: &mut impl Sink) {
        self.settle_timewaits(now_ns, sink);
        self.report_due(now_ns, sink);
    }

    /// The earliest time a socket may become stuck or a timewait event needs settling.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        match (self.table.next_deadline(), self.timewaits.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The counts of this moment, for summaries and metrics alike.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut sockets = [0; TcpState::COUNT];
        for state in TcpState::ALL {
            sockets[state as usize] = self.table.count(state);
        }
        let mut stuck = [0; TcpState::COUNT];
        for entry in self
            .table
            .stuck()
            .iter()
            .filter_map(|key| self.table.get(key))
        {
            if self.selection.matches(entry.owner()) {
                stuck[entry.state() as usize] += 1;
            }
        }
        Snapshot {
            sockets,
            tracked: self.table.len(),
            stuck,
            evictions: self.table.evictions(),
            events: self.stats.events,
            reconciliation: self.stats.reconciliation,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts new statistics intervals (after a summary).
    pub(crate) fn reset_interval(&mut self) {
        self.stats.reset_interval();
    }

    /// TIME-WAIT sockets by remote port, most first, at most `max` ports.
    pub(crate) fn time_wait_by_remote_port(&self, max: usize) -> Vec<(u16, u64)> {
        let mut by_port: BTreeMap<u16, u64> = BTreeMap::new();
        for (_, entry) in self
            .table
            .iter()
            .filter(|(_, e)| e.state() == TcpState::TimeWait)
        {
            *by_port.entry(entry.endpoints().remote_port).or_default() += 1;
        }
        let mut ports: Vec<(u16, u64)> = by_port.into_iter().collect();
        ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ports.truncate(max);
        ports
    }

    /// Sockets in the table with a lingering FIN-WAIT-2 on a timewait socket: the daemon checks
    /// them against the kernel's FIN_WAIT2 list.
    pub(crate) fn has_lingering(&self) -> bool {
        !self.table.lingering().is_empty()
    }

    /// Sockets in the table: the size of the start-up snapshot.
    pub(crate) fn tracked(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
pub(crate) mod tests;
