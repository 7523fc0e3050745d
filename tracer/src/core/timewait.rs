//! The TIME-WAIT phase. The tracepoint reports the full socket's close; the kernel hands the rest
//! of the connection (TIME-WAIT, or a FIN-WAIT-2 that lingers) to a timewait socket whose only
//! trace is its timer. This joins the timer's events to the connection they continue, follows the
//! timewait socket's substate, and ends the connection when its timer goes.
use std::collections::HashSet;

use tracer_common::TcpState;

use super::{
    Tracker,
    jiffies::HzEstimator,
    report::Sink,
    table::{Entry, SockKey},
};
use crate::{
    enrich::socket_list::ListedSocket,
    source::events::{Endpoints, Timewait, Transition},
};

/// How long a timewait event waits for its partner: the kernel writes both within microseconds
/// on one CPU, and the daemon reads everything written before it acts on a timer.
pub(super) const PAIRING_GRACE_NS: u64 = 20_000_000;

/// A timewait socket armed for a connection whose full socket has not reported its close yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct ArmedTimewait {
    sock: u64,
    substate: TcpState,
    ts_ns: u64,
}

/// Timer events waiting for their partner.
#[derive(Default)]
pub(super) struct Timewaits {
    armed: foldhash::HashMap<Endpoints, ArmedTimewait>,
    /// Timewait sockets whose timer was cancelled: gone, unless re-armed at once.
    disarmed: foldhash::HashMap<u64, Timewait>,
    hz: HzEstimator,
}

impl Timewaits {
    pub(super) fn take_armed(&mut self, endpoints: &Endpoints) -> Option<ArmedTimewait> {
        self.armed.remove(endpoints)
    }

    /// When the oldest waiting event is to be settled.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.armed
            .values()
            .map(|a| a.ts_ns)
            .chain(self.disarmed.values().map(|t| t.ts_ns))
            .min()
            .map(|ts| ts + PAIRING_GRACE_NS)
    }
}

impl Tracker {
    /// The full socket closed and a timewait socket armed for the same connection: the connection
    /// moves on under the timewait socket's id, to TIME_WAIT, or stays in FIN_WAIT2 (the lingering
    /// case, which shows no transition).
    pub(super) fn hand_over_to_timewait(
        &mut self,
        t: Transition,
        armed: ArmedTimewait,
        sink: &mut impl Sink,
    ) {
        let full = SockKey::Kernel(t.sock);
        if self.table.get(&full).is_none() {
            match self.table.find_listed(&t.endpoints) {
                Some(listed) => self.table.rekey(listed, full),
                None => {
                    let entry = Entry::new(t.old, t.ts_ns, false, t.endpoints);
                    self.insert(full, entry, t.ts_ns, sink);
                }
            }
        }
        let tw = SockKey::Kernel(armed.sock);
        self.table.rekey(full, tw);
        self.table.mark_timewait(&tw);
        if armed.substate != t.old {
            self.move_to(
                tw,
                Transition {
                    new: armed.substate,
                    ..t
                },
                sink,
            );
        }
    }

    pub(super) fn on_timewait_armed(&mut self, tw: Timewait, sink: &mut impl Sink) {
        self.timewaits.hz.observe(tw.jiffies, tw.ts_ns);
        // A cancel followed by a new start is the same timewait socket re-armed.
        self.timewaits.disarmed.remove(&tw.sock);
        let key = SockKey::Kernel(tw.sock);
        if self.table.get(&key).is_some_and(Entry::is_timewait) {
            return self.timewait_substate(key, tw, sink);
        }
        // A timewait socket known from the kernel's list (it predates the tracer).
        if let Some(listed) = self.table.find_listed(&tw.endpoints)
            && self.table.get(&listed).is_some_and(Entry::is_timewait)
        {
            self.table.rekey(listed, key);
            return self.timewait_substate(key, tw, sink);
        }
        self.timewaits.armed.insert(
            tw.endpoints,
            ArmedTimewait {
                sock: tw.sock,
                substate: tw.substate,
                ts_ns: tw.ts_ns,
            },
        );
    }

    pub(super) fn on_timewait_disarmed(&mut self, tw: Timewait) {
        self.timewaits.hz.observe(tw.jiffies, tw.ts_ns);
        self.timewaits.disarmed.insert(tw.sock, tw);
    }

    /// Timer events whose partner never came: a cancel not followed by a start is the timewait
    /// socket's end; a start without its full socket's close (lost or filtered) stands alone.
    pub(super) fn settle_timewaits(&mut self, now_ns: u64, sink: &mut impl Sink) {
        let settled = now_ns.saturating_sub(PAIRING_GRACE_NS);
        let ended: Vec<Timewait> = self
            .timewaits
            .disarmed
            .values()
            .filter(|t| t.ts_ns <= settled)
            .copied()
            .collect();
        for tw in ended {
            self.timewaits.disarmed.remove(&tw.sock);
            self.timewait_ended(tw, sink);
        }
        let lone: Vec<(Endpoints, ArmedTimewait)> = self
            .timewaits
            .armed
            .iter()
            .filter(|(_, a)| a.ts_ns <= settled)
            .map(|(e, a)| (*e, *a))
            .collect();
        for (endpoints, armed) in lone {
            self.timewaits.armed.remove(&endpoints);
            let entry =
                Entry::new(armed.substate, armed.ts_ns, true, endpoints).on_timewait_socket();
            self.insert(SockKey::Kernel(armed.sock), entry, now_ns, sink);
        }
    }

    /// A timewait socket's substate changed: FIN_WAIT2 → TIME_WAIT when the peer's FIN arrives.
    fn timewait_substate(&mut self, key: SockKey, tw: Timewait, sink: &mut impl Sink) {
        let Some(old) = self.table.get(&key).map(Entry::state) else {
            return;
        };
        if old != tw.substate {
            self.move_to(key, timewait_transition(&tw, old, tw.substate), sink);
        }
    }

    /// The timewait socket is gone (expired, reused by a new connection, or reset).
    fn timewait_ended(&mut self, tw: Timewait, sink: &mut impl Sink) {
        let mut key = SockKey::Kernel(tw.sock);
        if self.table.get(&key).is_none()
            && let Some(listed) = self.table.find_listed(&tw.endpoints)
        {
            key = listed;
        }
        let Some((old, entered_ns)) = self
            .table
            .get(&key)
            .filter(|e| e.is_timewait())
            .map(|e| (e.state(), e.entered_ns()))
        else {
            return;
        };
        if old == TcpState::FinWait2 && tw.substate == TcpState::TimeWait {
            // The peer's FIN came and the kernel re-armed the timer without an event: the
            // timer's expiry, set TIME-WAIT's length after that moment, tells when.
            let entered_time_wait = self
                .time_wait_started(&tw)
                .map_or(tw.ts_ns, |ts| ts.clamp(entered_ns, tw.ts_ns));
            let changed = Timewait {
                ts_ns: entered_time_wait,
                ..tw
            };
            self.move_to(
                key,
                timewait_transition(&changed, old, TcpState::TimeWait),
                sink,
            );
            self.move_to(
                key,
                timewait_transition(&tw, TcpState::TimeWait, TcpState::Close),
                sink,
            );
        } else {
            self.move_to(key, timewait_transition(&tw, old, TcpState::Close), sink);
        }
    }

    /// When a timewait socket's TIME-WAIT began, from its timer: the expiry minus TIME-WAIT's
    /// length (the kernel's fixed TCP_TIMEWAIT_LEN).
    fn time_wait_started(&self, tw: &Timewait) -> Option<u64> {
        const TIME_WAIT_NS: i128 = 60_000_000_000;
        let hz = i128::from(self.timewaits.hz.hz()?);
        let remaining_ns = (i128::from(tw.expires) - i128::from(tw.jiffies)) * 1_000_000_000 / hz;
        let started = i128::from(tw.ts_ns) + remaining_ns - TIME_WAIT_NS;
        u64::try_from(started).ok()
    }

    /// Finds the lingering timewait sockets that moved to TIME_WAIT without a timer event: they
    /// are no longer in `fin_wait2`, the kernel's current list of FIN_WAIT2 sockets (taken since
    /// `listed_at_ns`, with every event written meanwhile already applied).
    /// Only sockets of the namespaces listed (`namespaces`) are judged.
    pub(crate) fn check_lingering(
        &mut self,
        fin_wait2: &[ListedSocket],
        namespaces: &HashSet<u32>,
        listed_at_ns: u64,
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        let still: HashSet<&Endpoints> = fin_wait2.iter().map(|s| &s.endpoints).collect();
        let moved: Vec<(SockKey, Endpoints)> = self
            .table
            .lingering()
            .iter()
            .filter_map(|key| Some((*key, self.table.get(key)?)))
            .filter(|(key, e)| {
                e.last_active_ns() < listed_at_ns
                    && namespaces.contains(&e.endpoints().netns)
                    && !still.contains(e.endpoints())
                    && !self.timewaits.disarmed.contains_key(&key.id())
            })
            .map(|(key, e)| (key, *e.endpoints()))
            .collect();
        for (key, endpoints) in moved {
            let t = Transition {
                ts_ns: now_ns,
                sock: key.id(),
                endpoints,
                old: TcpState::FinWait2,
                new: TcpState::TimeWait,
                prev_state_ns: None,
                owner: None,
            };
            self.move_to(key, t, sink);
        }
    }
}

fn timewait_transition(tw: &Timewait, old: TcpState, new: TcpState) -> Transition {
    Transition {
        ts_ns: tw.ts_ns,
        sock: tw.sock,
        endpoints: tw.endpoints,
        old,
        new,
        prev_state_ns: None,
        owner: None,
    }
}
