//! Stuck sockets: a socket that stays in a state longer than that state's threshold. A stuck
//! socket sends no events, so detection runs on time: the table keeps every watched socket's
//! deadline in order, the daemon wakes at the earliest, and [`Tracker::report_due`] reports what
//! is due, once per episode; reminders repeat them in the summaries at most every
//! `--stuck-repeat`. One constructor per report.
use std::time::Duration;

use tracer_common::TcpState;

use super::{
    Tracker,
    report::{Sink, StuckReport, UnstuckReport},
    table::{Entry, SockKey},
};
use crate::units::nanos;

/// Per-state thresholds; `None` means the state is not watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thresholds([Option<Duration>; TcpState::COUNT]);

impl Default for Thresholds {
    /// The states where a socket normally passes quickly, or where a leak shows.
    fn default() -> Self {
        let mut thresholds = Self([None; TcpState::COUNT]);
        for (state, secs) in [
            (TcpState::SynSent, 10),
            (TcpState::SynRecv, 10),
            (TcpState::CloseWait, 60),
            (TcpState::LastAck, 60),
            (TcpState::FinWait1, 60),
            (TcpState::Closing, 60),
            // Longer than the kernel's orphan timeout (tcp_fin_timeout, 60 s): only a socket
            // whose application half-closed and never closed stays this long.
            (TcpState::FinWait2, 120),
        ] {
            thresholds.set(state, Some(Duration::from_secs(secs)));
        }
        thresholds
    }
}

impl Thresholds {
    pub(crate) fn set(&mut self, state: TcpState, threshold: Option<Duration>) {
        self.0[state as usize] = threshold;
    }

    pub(crate) fn get(&self, state: TcpState) -> Option<Duration> {
        self.0[state as usize]
    }
}

impl StuckReport {
    /// `entry` has been in its state past its threshold, at `now_ns`.
    pub(crate) fn of(key: SockKey, entry: &Entry, threshold: Duration, now_ns: u64) -> Self {
        Self {
            ts_ns: now_ns,
            sock: key.id(),
            endpoints: *entry.endpoints(),
            state: entry.state(),
            age_ns: now_ns.saturating_sub(entry.entered_ns()),
            age_known: entry.age_known(),
            threshold_ns: nanos(threshold),
            owner: entry.owner().cloned(),
        }
    }
}

impl UnstuckReport {
    /// The end of a stuck episode, if `entry` was reported stuck: it left for `new` (`None`: it
    /// vanished) at `ts_ns`, after `spent` in its state when the caller knows it.
    pub(crate) fn of(
        key: SockKey,
        entry: &Entry,
        new: Option<TcpState>,
        spent: Option<u64>,
        ts_ns: u64,
    ) -> Option<Self> {
        entry.is_stuck().then(|| Self {
            ts_ns,
            sock: key.id(),
            endpoints: *entry.endpoints(),
            state: entry.state(),
            new,
            duration_ns: spent.unwrap_or_else(|| ts_ns.saturating_sub(entry.entered_ns())),
            age_known: spent.is_some() || entry.age_known(),
            owner: entry.owner().cloned(),
        })
    }
}

impl Tracker {
    /// Reports every socket whose deadline has come, and marks it stuck.
    pub(super) fn report_due(&mut self, now_ns: u64, sink: &mut impl Sink) {
        for key in self.table.due(now_ns) {
            let Some(entry) = self.table.get(&key) else {
                continue;
            };
            let Some(threshold) = self.table.thresholds().get(entry.state()) else {
                continue;
            };
            let report = StuckReport::of(key, entry, threshold, now_ns);
            self.table.mark_reminded(&key, now_ns);
            self.report_stuck(&report, sink);
        }
    }

    /// Stuck sockets due for a reminder (none in the last `--stuck-repeat`), marked as reminded.
    /// Only the sockets the owner filter selects.
    pub(crate) fn reminders(&mut self, now_ns: u64) -> Vec<StuckReport> {
        let due: Vec<SockKey> = self
            .table
            .stuck()
            .iter()
            .filter(|key| {
                self.table
                    .get(key)
                    .and_then(Entry::reminded_ns)
                    .is_some_and(|at| now_ns.saturating_sub(at) >= self.repeat_ns)
            })
            .copied()
            .collect();
        let mut reports = Vec::with_capacity(due.len());
        for key in due {
            let Some(entry) = self.table.get(&key) else {
                continue;
            };
            let threshold = self
                .table
                .thresholds()
                .get(entry.state())
                .unwrap_or_default();
            let report = StuckReport::of(key, entry, threshold, now_ns);
            self.table.mark_reminded(&key, now_ns);
            if self.selection.matches(report.owner.as_ref()) {
                reports.push(report);
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_leak_states() {
        let t = Thresholds::default();
        assert_eq!(t.get(TcpState::CloseWait), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::SynSent), Some(Duration::from_secs(10)));
        assert_eq!(t.get(TcpState::SynRecv), Some(Duration::from_secs(10)));
        assert_eq!(t.get(TcpState::LastAck), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::FinWait1), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::Established), None);
        assert_eq!(t.get(TcpState::Listen), None);
    }
}
