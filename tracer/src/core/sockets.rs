//! A socket's life in the table: the states it enters and leaves, the time spent in each (the
//! table's own clock when it saw the entry, else the kernel's), its owner, and the reports that
//! follow. The other jobs (TIME-WAIT, reconciliation) move sockets through these same steps.
use std::collections::HashMap;

use tracer_common::TcpState;

use super::{
    Tracker,
    report::{Sink, StuckReport, TransitionInfo, UnstuckReport},
    table::{Entry, SockKey},
};
use crate::source::events::{Accepted, Owner, Transition};

impl Tracker {
    pub(super) fn on_transition(&mut self, t: Transition, sink: &mut impl Sink) {
        if t.new == TcpState::Close {
            self.note_closed(&t.endpoints);
            if let Some(armed) = self.timewaits.take_armed(&t.endpoints) {
                return self.hand_over_to_timewait(t, armed, sink);
            }
        }
        let key = SockKey::Kernel(t.sock);
        if t.old == TcpState::Close {
            // A new socket. An entry under its id is a ghost whose close the tracer missed.
            self.forget(key, t.ts_ns, sink);
        } else if self.table.get(&key).is_none()
            && let Some(listed) = self.table.find_listed(&t.endpoints)
        {
            // A socket known from the kernel's list (older than the tracer, or a listener's
            // request socket that became this child) now named by an event.
            self.table.rekey(listed, key);
        }
        if self.table.get(&key).is_some() {
            return self.move_to(key, t, sink);
        }
        if let Some(spent) = t.prev_state_ns {
            self.stats.record(t.old, spent);
        }
        if t.new != TcpState::Close {
            let entry = Entry::new(t.new, t.ts_ns, true, t.endpoints).with_owner(t.owner.clone());
            self.insert(key, entry, t.ts_ns, sink);
        }
        self.stats.count(t.old, t.new);
        self.report_transition(&t, sink);
    }

    /// Moves a socket the table holds from `t.old` to `t.new` and reports the transition, with
    /// the time spent in `t.old` and the socket's owner as the table knows them.
    pub(super) fn move_to(&mut self, key: SockKey, t: Transition, sink: &mut impl Sink) {
        if t.old == t.new {
            // The kernel set the state again (close() after shutdown() in LAST_ACK): reported,
            // but the socket stays in its state, on the same clock.
            let entry = self.table.get(&key);
            let so_far = entry.and_then(|e| e.time_in_state(t.ts_ns));
            let owner = entry.and_then(|e| e.owner().cloned());
            self.stats.count(t.old, t.new);
            let again = Transition {
                prev_state_ns: so_far.or(t.prev_state_ns),
                owner: t.owner.or(owner),
                ..t
            };
            return self.report_transition(&again, sink);
        }
        let (spent, unstuck) = self.leave_state(key, t.old, t.new, t.prev_state_ns, t.ts_ns);
        let owner = if t.new == TcpState::Close {
            self.table.remove(&key).and_then(|e| e.owner().cloned())
        } else {
            self.table
                .enter(&key, t.new, t.ts_ns, t.endpoints, t.owner.clone());
            self.table.get(&key).and_then(|e| e.owner().cloned())
        };
        self.stats.count(t.old, t.new);
        self.report_transition(
            &Transition {
                prev_state_ns: spent,
                owner,
                ..t
            },
            sink,
        );
        if let Some(report) = unstuck {
            self.report_unstuck(&report, sink);
        }
    }

    /// Leaves `old` for `new` at `ts_ns`: records the time spent (the table's own, else the
    /// kernel's `prev_state_ns`) and returns it, with the end of a stuck episode for the caller to
    /// report after the transition.
    pub(super) fn leave_state(
        &mut self,
        key: SockKey,
        old: TcpState,
        new: TcpState,
        prev_state_ns: Option<u64>,
        ts_ns: u64,
    ) -> (Option<u64>, Option<UnstuckReport>) {
        let Some(entry) = self.table.get(&key) else {
            return (None, None);
        };
        let spent = if entry.state() == old {
            entry.time_in_state(ts_ns).or(prev_state_ns)
        } else {
            prev_state_ns
        };
        let unstuck = UnstuckReport::of(key, entry, Some(new), spent, ts_ns);
        if let Some(spent) = spent {
            self.stats.record(old, spent);
        }
        (spent, unstuck)
    }

    pub(super) fn on_accepted(&mut self, a: Accepted) {
        let key = SockKey::Kernel(a.sock);
        if self.table.get(&key).is_none()
            && let Some(listed) = self.table.find_listed(&a.endpoints)
        {
            self.table.rekey(listed, key);
        }
        self.table.set_owner(&key, a.owner, a.ts_ns);
    }

    /// The answers of an owner lookup by inode: each socket gets the owner found, unless it has
    /// one, and the stuck reports that waited for it can go.
    pub(crate) fn owners_looked_up(
        &mut self,
        lookups: &[(SockKey, u32)],
        found: &HashMap<u32, Owner>,
    ) {
        for (key, inode) in lookups {
            self.table.owner_looked_up(key, found.get(inode).cloned());
        }
    }

    /// Adds an entry; sockets evicted to make room end their stuck episodes.
    pub(super) fn insert(&mut self, key: SockKey, entry: Entry, now_ns: u64, sink: &mut impl Sink) {
        for (evicted_key, evicted) in self.table.insert(key, entry) {
            if let Some(report) = UnstuckReport::of(evicted_key, &evicted, None, None, now_ns) {
                self.report_unstuck(&report, sink);
            }
        }
    }

    /// Removes an entry that no longer stands for a live socket.
    pub(super) fn forget(&mut self, key: SockKey, now_ns: u64, sink: &mut impl Sink) {
        if let Some(entry) = self.table.remove(&key)
            && let Some(report) = UnstuckReport::of(key, &entry, None, None, now_ns)
        {
            self.report_unstuck(&report, sink);
        }
    }

    pub(super) fn report_transition(&self, t: &Transition, sink: &mut impl Sink) {
        let info = TransitionInfo {
            service_port: self.table.service_port(&t.endpoints),
            selected: self.selection.matches(t.owner.as_ref()),
        };
        sink.transition(t, info);
    }

    pub(super) fn report_unstuck(&self, report: &UnstuckReport, sink: &mut impl Sink) {
        if self.selection.matches(report.owner.as_ref()) {
            sink.unstuck(report);
        }
    }

    pub(super) fn report_stuck(&self, report: &StuckReport, sink: &mut impl Sink) {
        if self.selection.matches(report.owner.as_ref()) {
            sink.stuck(report);
        }
    }
}
