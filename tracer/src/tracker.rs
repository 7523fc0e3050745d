//! Turns the kernel's event stream into the daemon's view: feeds the socket table, joins the
//! TIME-WAIT phase (held by a separate timewait socket) to the connection it ends, keeps the
//! statistics, detects stuck sockets and heals the table against the kernel's own socket list.
//! Pure: it is given events, listings and the time, and reports through a [`Sink`].
use std::collections::{HashMap, HashSet};

use tracer_common::TcpState;

use crate::{
    clock::HzEstimator,
    detect::{Deadlines, Thresholds, nanos},
    events::{Accepted, Endpoints, KernelEvent, Process, Timewait, Transition},
    kernel_view::ListedSocket,
    stats::{Durations, TransitionCounts},
    table::{Entry, SockKey, SocketTable, StatePath, StuckMark},
};

/// A socket crossed its state's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckReport {
    pub ts_ns: u64,
    pub sock: u64,
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// Time in `state` so far; a lower bound when `age_known` is false.
    pub age_ns: u64,
    pub age_known: bool,
    pub threshold_ns: u64,
    pub owner: Option<Process>,
}

/// A stuck socket left its state (`new`), or disappeared (`new` is `None`: evicted, or found gone
/// by reconciliation).
#[derive(Debug, Clone, PartialEq)]
pub struct UnstuckReport {
    pub ts_ns: u64,
    pub sock: u64,
    pub endpoints: Endpoints,
    pub state: TcpState,
    pub new: Option<TcpState>,
    /// Total time in `state`; a lower bound when `age_known` is false.
    pub duration_ns: u64,
    pub age_known: bool,
    pub owner: Option<Process>,
}

/// Where the tracker's reports go.
pub trait Sink {
    fn transition(&mut self, transition: &Transition);
    fn stuck(&mut self, report: &StuckReport);
    fn unstuck(&mut self, report: &UnstuckReport);
}

/// Differences found between the table and the kernel's socket list, and fixed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciliation {
    pub runs: u64,
    /// Sockets the kernel has that the table missed.
    pub added: u64,
    /// Sockets in the table that the kernel no longer has.
    pub removed: u64,
    /// Sockets whose state in the table was wrong.
    pub corrected: u64,
}

impl Reconciliation {
    pub fn fixes(&self) -> u64 {
        self.added + self.removed + self.corrected
    }
}

/// Kernel events read, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventCounts {
    pub transitions: u64,
    pub timewait: u64,
    pub accepted: u64,
}

/// A timewait socket armed for a connection whose full socket has not reported its close yet.
#[derive(Debug, Clone, Copy)]
struct ArmedTimewait {
    sock: u64,
    substate: TcpState,
    ts_ns: u64,
}

/// How long a timewait event waits for its partner: the kernel writes both within microseconds
/// on one CPU, and the daemon reads everything written before it acts on a timer.
const PAIRING_GRACE_NS: u64 = 20_000_000;

pub struct Tracker {
    table: SocketTable,
    thresholds: Thresholds,
    repeat_ns: u64,
    deadlines: Deadlines,
    stuck: foldhash::HashSet<SockKey>,
    pub durations: Durations,
    pub interval_durations: Durations,
    pub transitions: TransitionCounts,
    pub interval_transitions: TransitionCounts,
    armed: foldhash::HashMap<Endpoints, ArmedTimewait>,
    /// Timewait sockets whose timer was cancelled: gone, unless re-armed at once.
    disarmed: foldhash::HashMap<u64, Timewait>,
    reconciliation: Reconciliation,
    /// While a reconciliation is under way: when its listing started, and the connections that
    /// closed since (the listing may still show them).
    closed_since_listing: Option<(u64, HashSet<Endpoints>)>,
    hz: HzEstimator,
    pub events: EventCounts,
}

impl Tracker {
    pub fn new(max_sockets: usize, thresholds: Thresholds, repeat_ns: u64) -> Self {
        Self {
            table: SocketTable::new(max_sockets),
            thresholds,
            repeat_ns,
            deadlines: Deadlines::default(),
            stuck: Default::default(),
            durations: Durations::default(),
            interval_durations: Durations::default(),
            transitions: TransitionCounts::default(),
            interval_transitions: TransitionCounts::default(),
            armed: Default::default(),
            disarmed: Default::default(),
            reconciliation: Reconciliation::default(),
            closed_since_listing: None,
            hz: HzEstimator::default(),
            events: EventCounts::default(),
        }
    }

    pub fn table(&self) -> &SocketTable {
        &self.table
    }

    pub fn reconciliation(&self) -> Reconciliation {
        self.reconciliation
    }

    pub fn stuck_count(&self) -> usize {
        self.stuck.len()
    }

    pub fn stuck_keys(&self) -> impl Iterator<Item = &SockKey> {
        self.stuck.iter()
    }

    /// The earliest time a socket may become stuck or a timewait event needs settling.
    pub fn next_deadline(&self) -> Option<u64> {
        let pending = self
            .armed
            .values()
            .map(|a| a.ts_ns)
            .chain(self.disarmed.values().map(|t| t.ts_ns))
            .min()
            .map(|ts| ts + PAIRING_GRACE_NS);
        match (self.deadlines.next(), pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_event(&mut self, event: KernelEvent, sink: &mut impl Sink) {
        match event {
            KernelEvent::Transition(t) => {
                self.events.transitions += 1;
                self.on_transition(t, sink)
            }
            KernelEvent::TimewaitArmed(tw) => {
                self.events.timewait += 1;
                self.hz.observe(tw.jiffies, tw.ts_ns);
                self.on_timewait_armed(tw, sink)
            }
            KernelEvent::TimewaitDisarmed(tw) => {
                self.events.timewait += 1;
                self.hz.observe(tw.jiffies, tw.ts_ns);
                self.disarmed.insert(tw.sock, tw);
            }
            KernelEvent::Accepted(a) => {
                self.events.accepted += 1;
                self.on_accepted(a)
            }
        }
    }

    fn on_transition(&mut self, t: Transition, sink: &mut impl Sink) {
        if let Some((_, closed)) = &mut self.closed_since_listing
            && t.new == TcpState::Close
        {
            closed.insert(t.endpoints);
        }
        if t.new == TcpState::Close
            && let Some(armed) = self.armed.remove(&t.endpoints)
        {
            return self.hand_over_to_timewait(t, armed, sink);
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
            self.rekey(listed, key);
        }
        if self.table.get(&key).is_some() {
            return self.move_to(key, t, sink);
        }
        if let Some(spent) = t.prev_state_ns {
            self.record(t.old, spent);
        }
        if t.new != TcpState::Close {
            let mut entry = Entry::new(t.new, t.ts_ns, true, t.endpoints);
            entry.path = StatePath::new(t.old);
            entry.path.push(t.new);
            entry.owner = t.owner;
            self.insert(key, entry, t.ts_ns, sink);
        }
        self.count(t.old, t.new);
        sink.transition(&t);
    }

    /// Moves a socket the table holds from `t.old` to `t.new` and reports the transition, with
    /// the time spent in `t.old` and the socket's owner as the table knows them.
    fn move_to(&mut self, key: SockKey, t: Transition, sink: &mut impl Sink) {
        if t.old == t.new {
            // The kernel set the state again (close() after shutdown() in LAST_ACK): reported,
            // but the socket stays in its state, on the same clock.
            let entry = self.table.get(&key);
            let so_far = entry
                .filter(|e| e.age_known)
                .map(|e| t.ts_ns.saturating_sub(e.entered_ns));
            let owner = entry.and_then(|e| e.owner);
            self.count(t.old, t.new);
            sink.transition(&Transition {
                prev_state_ns: so_far.or(t.prev_state_ns),
                owner: t.owner.or(owner),
                ..t
            });
            return;
        }
        let (spent, unstuck) = self.leave_state(key, t.old, t.new, t.prev_state_ns, t.ts_ns);
        let owner = if t.new == TcpState::Close {
            self.table.remove(&key).and_then(|e| e.owner)
        } else {
            let owner = self.table.update(&key, |e| {
                e.enter(t.new, t.ts_ns);
                e.endpoints = t.endpoints;
                e.owner = t.owner.or(e.owner);
                e.owner
            });
            self.watch(key, t.ts_ns, sink);
            owner.flatten()
        };
        self.count(t.old, t.new);
        sink.transition(&Transition {
            prev_state_ns: spent,
            owner,
            ..t
        });
        if let Some(report) = unstuck {
            sink.unstuck(&report);
        }
    }

    /// The full socket closed and a timewait socket armed for the same connection: the connection
    /// moves on under the timewait socket's id, to TIME_WAIT, or stays in FIN_WAIT2 (the lingering
    /// case, which shows no transition).
    fn hand_over_to_timewait(&mut self, t: Transition, armed: ArmedTimewait, sink: &mut impl Sink) {
        let full = SockKey::Kernel(t.sock);
        if self.table.get(&full).is_none() {
            match self.table.find_listed(&t.endpoints) {
                Some(listed) => self.rekey(listed, full),
                None => {
                    let entry = Entry::new(t.old, t.ts_ns, false, t.endpoints);
                    self.insert(full, entry, t.ts_ns, sink);
                }
            }
        }
        let tw = SockKey::Kernel(armed.sock);
        self.rekey(full, tw);
        self.table.update(&tw, |e| e.timewait = true);
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

    fn on_timewait_armed(&mut self, tw: Timewait, sink: &mut impl Sink) {
        // A cancel followed by a new start is the same timewait socket re-armed.
        self.disarmed.remove(&tw.sock);
        let key = SockKey::Kernel(tw.sock);
        if self.table.get(&key).is_some_and(|e| e.timewait) {
            return self.timewait_substate(key, tw, sink);
        }
        // A timewait socket known from the kernel's list (it predates the tracer).
        if let Some(listed) = self.table.find_listed(&tw.endpoints)
            && self.table.get(&listed).is_some_and(|e| e.timewait)
        {
            self.rekey(listed, key);
            return self.timewait_substate(key, tw, sink);
        }
        self.armed.insert(
            tw.endpoints,
            ArmedTimewait {
                sock: tw.sock,
                substate: tw.substate,
                ts_ns: tw.ts_ns,
            },
        );
    }

    /// A timewait socket's substate changed: FIN_WAIT2 → TIME_WAIT when the peer's FIN arrives.
    fn timewait_substate(&mut self, key: SockKey, tw: Timewait, sink: &mut impl Sink) {
        let Some(old) = self.table.get(&key).map(|e| e.state) else {
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
            .filter(|e| e.timewait)
            .map(|e| (e.state, e.entered_ns))
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
        let hz = i128::from(self.hz.hz()?);
        let remaining_ns = (i128::from(tw.expires) - i128::from(tw.jiffies)) * 1_000_000_000 / hz;
        let started = i128::from(tw.ts_ns) + remaining_ns - TIME_WAIT_NS;
        u64::try_from(started).ok()
    }

    /// Finds the lingering timewait sockets that moved to TIME_WAIT without a timer event: they
    /// are no longer in `fin_wait2`, the kernel's current list of FIN_WAIT2 sockets (taken since
    /// `listed_at_ns`, with every event written meanwhile already applied).
    /// Only sockets of the namespaces listed (`namespaces`) are judged.
    pub fn check_lingering(
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
                e.last_active_ns < listed_at_ns
                    && namespaces.contains(&e.endpoints.netns)
                    && !still.contains(&e.endpoints)
                    && !self.disarmed.contains_key(&key.id())
            })
            .map(|(key, e)| (key, e.endpoints))
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

    fn on_accepted(&mut self, a: Accepted) {
        let mut key = SockKey::Kernel(a.sock);
        if self.table.get(&key).is_none()
            && let Some(listed) = self.table.find_listed(&a.endpoints)
        {
            self.rekey(listed, key);
            key = SockKey::Kernel(a.sock);
        }
        self.table.update(&key, |e| {
            e.owner = Some(a.owner);
            e.last_active_ns = a.ts_ns;
        });
    }

    /// Settles what waits on time: timewait events whose partner never came, then sockets that
    /// crossed their threshold. Call after reading every event written before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl Sink) {
        let settled = now_ns.saturating_sub(PAIRING_GRACE_NS);
        let ended: Vec<Timewait> = self
            .disarmed
            .values()
            .filter(|t| t.ts_ns <= settled)
            .copied()
            .collect();
        for tw in ended {
            self.disarmed.remove(&tw.sock);
            self.timewait_ended(tw, sink);
        }
        // Armed without its full socket's close (that event was lost or filtered): the timewait
        // socket stands alone.
        let lone: Vec<(Endpoints, ArmedTimewait)> = self
            .armed
            .iter()
            .filter(|(_, a)| a.ts_ns <= settled)
            .map(|(e, a)| (*e, *a))
            .collect();
        for (endpoints, armed) in lone {
            self.armed.remove(&endpoints);
            let mut entry = Entry::new(armed.substate, armed.ts_ns, true, endpoints);
            entry.timewait = true;
            self.insert(SockKey::Kernel(armed.sock), entry, now_ns, sink);
        }
        for key in self.deadlines.pop_due(now_ns) {
            self.report_stuck(key, now_ns, sink);
        }
    }

    fn report_stuck(&mut self, key: SockKey, now_ns: u64, sink: &mut impl Sink) {
        let Some(entry) = self.table.get(&key) else {
            return;
        };
        let Some(threshold) = self.thresholds.get(entry.state) else {
            return;
        };
        let report = StuckReport {
            ts_ns: now_ns,
            sock: key.id(),
            endpoints: entry.endpoints,
            state: entry.state,
            age_ns: now_ns.saturating_sub(entry.entered_ns),
            age_known: entry.age_known,
            threshold_ns: nanos(threshold),
            owner: entry.owner,
        };
        self.table.update(&key, |e| {
            e.stuck = Some(StuckMark {
                reported_ns: now_ns,
                reminded_ns: now_ns,
            })
        });
        self.stuck.insert(key);
        sink.stuck(&report);
    }

    /// Stuck sockets due for a reminder (none in the last `--stuck-repeat`), marked as reminded.
    pub fn reminders(&mut self, now_ns: u64) -> Vec<StuckReport> {
        let due: Vec<SockKey> = self
            .stuck
            .iter()
            .filter(|key| {
                self.table
                    .get(key)
                    .and_then(|e| e.stuck)
                    .is_some_and(|mark| now_ns.saturating_sub(mark.reminded_ns) >= self.repeat_ns)
            })
            .copied()
            .collect();
        let mut reports = Vec::with_capacity(due.len());
        for key in due {
            let Some(entry) = self.table.get(&key) else {
                continue;
            };
            reports.push(StuckReport {
                ts_ns: now_ns,
                sock: key.id(),
                endpoints: entry.endpoints,
                state: entry.state,
                age_ns: now_ns.saturating_sub(entry.entered_ns),
                age_known: entry.age_known,
                threshold_ns: self.thresholds.get(entry.state).map_or(0, nanos),
                owner: entry.owner,
            });
            self.table.update(&key, |e| {
                if let Some(mark) = &mut e.stuck {
                    mark.reminded_ns = now_ns;
                }
            });
        }
        reports
    }

    /// Starts a reconciliation: the kernel's listing is about to be taken at `now_ns`.
    pub fn begin_reconcile(&mut self, now_ns: u64) {
        self.closed_since_listing = Some((now_ns, HashSet::new()));
    }

    /// Compares the table with the kernel's listing (taken since [`Self::begin_reconcile`], with
    /// every event written meanwhile already applied) and fixes what differs. The listing covers
    /// the network namespaces in `namespaces`: sockets of others are left alone. `seed` marks
    /// the first listing, at start-up: sockets added then are not fixes.
    ///
    /// Returns the sockets whose owner is not known but whose file the kernel listed (by inode),
    /// for the caller to look up.
    pub fn reconcile(
        &mut self,
        listing: &[ListedSocket],
        namespaces: &HashSet<u32>,
        now_ns: u64,
        seed: bool,
        sink: &mut impl Sink,
    ) -> Vec<(SockKey, u32)> {
        let mut unowned = Vec::new();
        let Some((listed_at, closed)) = self.closed_since_listing.take() else {
            return unowned;
        };
        self.tick(now_ns, sink);
        // Kernel sockets by endpoints; each can match one entry.
        let mut unmatched: HashMap<Endpoints, Vec<usize>> = HashMap::new();
        for (i, socket) in listing.iter().enumerate() {
            unmatched.entry(socket.endpoints).or_default().push(i);
        }
        let mut keys: Vec<(SockKey, Endpoints, TcpState, u64)> = self
            .table
            .iter()
            .filter(|(_, e)| namespaces.contains(&e.endpoints.netns))
            .map(|(k, e)| (*k, e.endpoints, e.state, e.last_active_ns))
            .collect();
        // Sockets that changed during the listing come first: the events are newer than the
        // listing, so they are not judged by it, but they are the sockets it shows (a socket
        // created meanwhile must not be added twice). Then sockets the events name, then
        // sockets known only from a listing.
        keys.sort_by_key(|(k, _, _, last_active)| {
            (*last_active < listed_at, matches!(k, SockKey::Listed(_)))
        });
        let mut mismatched = Vec::new();
        for (key, endpoints, state, last_active) in keys {
            if last_active >= listed_at {
                take_match(&mut unmatched, listing, &endpoints, |_| true);
                continue;
            }
            let found = take_match(&mut unmatched, listing, &endpoints, |s| s.state == state);
            match found {
                Some(i) => {
                    if endpoints.local_port == 0 {
                        // A connecting socket, whose port was not yet known at its first event.
                        let port = listing[i].endpoints.local_port;
                        self.table.update(&key, |e| e.endpoints.local_port = port);
                    }
                    self.note_unowned(key, &listing[i], &mut unowned);
                }
                None => mismatched.push((key, endpoints)),
            }
        }
        for (key, endpoints) in mismatched {
            match take_match(&mut unmatched, listing, &endpoints, |_| true) {
                Some(i) => {
                    let state = listing[i].state;
                    let previous = self.table.get(&key).map(|e| e.state);
                    if let Some(old) = previous
                        && let (_, Some(report)) = self.leave_state(key, old, state, None, now_ns)
                    {
                        sink.unstuck(&report);
                    }
                    self.table.update(&key, |e| {
                        e.enter(state, now_ns);
                        e.age_known = false;
                        e.endpoints = listing[i].endpoints;
                    });
                    self.watch(key, now_ns, sink);
                    self.note_unowned(key, &listing[i], &mut unowned);
                    self.reconciliation.corrected += 1;
                }
                None => {
                    self.forget(key, now_ns, sink);
                    self.reconciliation.removed += 1;
                }
            }
        }
        for socket in unmatched.into_values().flatten().map(|i| &listing[i]) {
            if matches!(socket.state, TcpState::Close | TcpState::BoundInactive)
                || closed.contains(&socket.endpoints)
            {
                continue;
            }
            let mut entry = Entry::new(socket.state, now_ns, false, socket.endpoints);
            entry.timewait = matches!(socket.state, TcpState::TimeWait)
                || (socket.state == TcpState::FinWait2 && socket.inode == 0);
            let key = SockKey::Listed(socket.cookie);
            self.insert(key, entry, now_ns, sink);
            self.note_unowned(key, socket, &mut unowned);
            if !seed {
                self.reconciliation.added += 1;
            }
        }
        if !seed {
            self.reconciliation.runs += 1;
        }
        unowned
    }

    fn note_unowned(&self, key: SockKey, socket: &ListedSocket, unowned: &mut Vec<(SockKey, u32)>) {
        if socket.inode != 0 && self.table.get(&key).is_some_and(|e| e.owner.is_none()) {
            unowned.push((key, socket.inode));
        }
    }

    /// Gives sockets known only from the kernel's list the kernel's own records of them (kept in a
    /// pinned map across daemon restarts): their address, when they entered their state, and
    /// their owner. A record counts only if it shows the state the kernel lists. Returns how many
    /// sockets were matched.
    pub fn adopt_records(&mut self, records: &[(u64, tracer_common::SockRecord)]) -> usize {
        let mut by_connection: HashMap<(Endpoints, TcpState), (u64, &tracer_common::SockRecord)> =
            HashMap::new();
        for (sock, record) in records {
            if let (Ok(endpoints), Some(state)) = (
                crate::events::endpoints(&record.tuple),
                TcpState::from_u8(record.state),
            ) {
                by_connection.insert((endpoints, state), (*sock, record));
            }
        }
        let listed: Vec<(SockKey, Endpoints, TcpState)> = self
            .table
            .iter()
            .filter(|(k, _)| matches!(k, SockKey::Listed(_)))
            .map(|(k, e)| (*k, e.endpoints, e.state))
            .collect();
        let mut adopted = 0;
        for (key, endpoints, state) in listed {
            let Some(&(sock, record)) = by_connection.get(&(endpoints, state)) else {
                continue;
            };
            let kernel = SockKey::Kernel(sock);
            self.rekey(key, kernel);
            self.unwatch(kernel);
            let owner = crate::events::process(&record.owner);
            self.table.update(&kernel, |e| {
                e.entered_ns = record.since_ns;
                e.age_known = true;
                e.owner = e.owner.or(owner);
            });
            self.rewatch(kernel);
            adopted += 1;
        }
        adopted
    }

    /// Watches an entry again after its entry time changed (no report: the next tick makes it).
    fn rewatch(&mut self, key: SockKey) {
        if let Some(deadline) = self
            .table
            .get(&key)
            .filter(|e| e.stuck.is_none())
            .and_then(|e| self.deadline_of(e))
        {
            self.deadlines.insert(deadline, key);
        }
    }

    /// Records the owner found for a socket (by its inode).
    pub fn assign_owner(&mut self, key: SockKey, owner: Process) {
        self.table.update(&key, |e| {
            e.owner.get_or_insert(owner);
        });
    }

    /// Leaves `old` for `new` at `ts_ns`: stops watching, records the time spent (the table's
    /// own, else the kernel's `prev_state_ns`) and returns it, with the end of a stuck episode
    /// for the caller to report after the transition.
    fn leave_state(
        &mut self,
        key: SockKey,
        old: TcpState,
        new: TcpState,
        prev_state_ns: Option<u64>,
        ts_ns: u64,
    ) -> (Option<u64>, Option<UnstuckReport>) {
        self.unwatch(key);
        let Some(entry) = self.table.get(&key) else {
            return (None, None);
        };
        let spent = if entry.state == old && entry.age_known {
            Some(ts_ns.saturating_sub(entry.entered_ns))
        } else {
            prev_state_ns
        };
        let unstuck = unstuck_report(entry, key, new, spent, ts_ns);
        if unstuck.is_some() {
            self.stuck.remove(&key);
        }
        if let Some(spent) = spent {
            self.record(old, spent);
        }
        (spent, unstuck)
    }

    fn record(&mut self, state: TcpState, spent_ns: u64) {
        self.durations.record(state, spent_ns);
        self.interval_durations.record(state, spent_ns);
    }

    fn count(&mut self, old: TcpState, new: TcpState) {
        self.transitions.add(old, new);
        self.interval_transitions.add(old, new);
    }

    fn insert(&mut self, key: SockKey, entry: Entry, now_ns: u64, sink: &mut impl Sink) {
        for (evicted_key, evicted) in self.table.insert(key, entry) {
            self.drop_watch(evicted_key, &evicted);
            if let Some(report) = unstuck_report(&evicted, evicted_key, None, None, now_ns) {
                sink.unstuck(&report);
            }
            self.stuck.remove(&evicted_key);
        }
        self.watch(key, now_ns, sink);
    }

    /// Removes an entry that no longer stands for a live socket.
    fn forget(&mut self, key: SockKey, now_ns: u64, sink: &mut impl Sink) {
        self.unwatch(key);
        if let Some(entry) = self.table.remove(&key)
            && let Some(report) = unstuck_report(&entry, key, None, None, now_ns)
        {
            sink.unstuck(&report);
        }
        self.stuck.remove(&key);
    }

    fn rekey(&mut self, from: SockKey, to: SockKey) {
        self.unwatch(from);
        if let Some(entry) = self.table.remove(&from) {
            let deadline = self.deadline_of(&entry);
            if self.stuck.remove(&from) {
                self.stuck.insert(to);
            }
            self.table.insert(to, entry);
            if let Some(deadline) = deadline {
                self.deadlines.insert(deadline, to);
            }
        }
    }

    /// Watches the entry's current state, if it has a threshold and is not already reported.
    fn watch(&mut self, key: SockKey, now_ns: u64, sink: &mut impl Sink) {
        let Some(entry) = self.table.get(&key) else {
            return;
        };
        if entry.stuck.is_some() {
            return;
        }
        if let Some(deadline) = self.deadline_of(entry) {
            if deadline <= now_ns {
                self.report_stuck(key, now_ns, sink);
            } else {
                self.deadlines.insert(deadline, key);
            }
        }
    }

    fn unwatch(&mut self, key: SockKey) {
        if let Some(deadline) = self.table.get(&key).and_then(|e| self.deadline_of(e)) {
            self.deadlines.remove(deadline, key);
        }
    }

    fn drop_watch(&mut self, key: SockKey, entry: &Entry) {
        if let Some(deadline) = self.deadline_of(entry) {
            self.deadlines.remove(deadline, key);
        }
    }

    fn deadline_of(&self, entry: &Entry) -> Option<u64> {
        let threshold = self.thresholds.get(entry.state)?;
        Some(entry.entered_ns.saturating_add(nanos(threshold)))
    }

    /// Starts new statistics intervals (after a summary).
    pub fn reset_interval(&mut self) {
        self.interval_durations.reset();
        self.interval_transitions.reset();
    }
}

/// The end of a stuck episode, if `entry` was reported stuck.
fn unstuck_report(
    entry: &Entry,
    key: SockKey,
    new: impl Into<Option<TcpState>>,
    spent: Option<u64>,
    ts_ns: u64,
) -> Option<UnstuckReport> {
    entry.stuck?;
    Some(UnstuckReport {
        ts_ns,
        sock: key.id(),
        endpoints: entry.endpoints,
        state: entry.state,
        new: new.into(),
        duration_ns: spent.unwrap_or_else(|| ts_ns.saturating_sub(entry.entered_ns)),
        age_known: spent.is_some() || entry.age_known,
        owner: entry.owner,
    })
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

/// Takes the first unmatched listed socket with these endpoints (any local port for a socket
/// whose port is not known yet) that satisfies `accept`.
fn take_match(
    unmatched: &mut HashMap<Endpoints, Vec<usize>>,
    listing: &[ListedSocket],
    endpoints: &Endpoints,
    accept: impl Fn(&ListedSocket) -> bool,
) -> Option<usize> {
    if endpoints.local_port == 0 && endpoints.remote_port != 0 {
        let candidate = unmatched
            .iter()
            .find(|(e, list)| {
                e.family == endpoints.family
                    && e.local == endpoints.local
                    && e.remote == endpoints.remote
                    && e.remote_port == endpoints.remote_port
                    && list.iter().any(|i| accept(&listing[*i]))
            })
            .map(|(e, _)| *e)?;
        return take_from(unmatched, listing, &candidate, accept);
    }
    take_from(unmatched, listing, endpoints, accept)
}

fn take_from(
    unmatched: &mut HashMap<Endpoints, Vec<usize>>,
    listing: &[ListedSocket],
    endpoints: &Endpoints,
    accept: impl Fn(&ListedSocket) -> bool,
) -> Option<usize> {
    let list = unmatched.get_mut(endpoints)?;
    let position = list.iter().position(|i| accept(&listing[*i]))?;
    let index = list.swap_remove(position);
    if list.is_empty() {
        unmatched.remove(endpoints);
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use TcpState::*;

    use super::*;
    use crate::events::{Comm, Family};

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    const NETNS: u32 = 4026531840;

    fn ours() -> HashSet<u32> {
        HashSet::from([NETNS])
    }

    #[derive(Default, Debug)]
    struct Recorded {
        transitions: Vec<Transition>,
        stuck: Vec<StuckReport>,
        unstuck: Vec<UnstuckReport>,
    }

    impl Sink for Recorded {
        fn transition(&mut self, t: &Transition) {
            self.transitions.push(*t);
        }
        fn stuck(&mut self, r: &StuckReport) {
            self.stuck.push(r.clone());
        }
        fn unstuck(&mut self, r: &UnstuckReport) {
            self.unstuck.push(r.clone());
        }
    }

    fn ends(id: u64) -> Endpoints {
        Endpoints {
            netns: NETNS,
            family: Family::Ipv4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 10_000 + id as u16,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
        }
    }

    fn owner() -> Option<Process> {
        Some(Process {
            pid: 7,
            comm: Comm::new("server"),
        })
    }

    fn tr(sock: u64, old: TcpState, new: TcpState, ts_ns: u64, prev: Option<u64>) -> KernelEvent {
        KernelEvent::Transition(Transition {
            ts_ns,
            sock,
            endpoints: ends(sock),
            old,
            new,
            prev_state_ns: prev,
            owner: owner(),
        })
    }

    fn tw(
        sock: u64,
        conn: u64,
        substate: TcpState,
        ts_ns: u64,
        jiffies: u64,
        expires: u64,
    ) -> Timewait {
        Timewait {
            ts_ns,
            sock,
            endpoints: ends(conn),
            substate,
            jiffies,
            expires,
        }
    }

    fn thresholds(state: TcpState, secs: u64) -> Thresholds {
        let mut t = Thresholds::default();
        t.set(state, Some(Duration::from_secs(secs)));
        t
    }

    fn tracker() -> Tracker {
        Tracker::new(1000, thresholds(CloseWait, 2), 300 * S)
    }

    fn pairs(r: &Recorded) -> Vec<(TcpState, TcpState)> {
        r.transitions.iter().map(|t| (t.old, t.new)).collect()
    }

    #[test]
    fn a_connection_from_open_to_close() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Close, SynSent, 0, None), &mut r);
        t.on_event(tr(1, SynSent, Established, 2 * MS, Some(2 * MS)), &mut r);
        assert_eq!(t.table().count(Established), 1);
        t.on_event(tr(1, Established, FinWait1, 10 * MS, Some(8 * MS)), &mut r);
        t.on_event(tr(1, FinWait1, Close, 11 * MS, Some(MS)), &mut r);
        assert!(t.table().is_empty());
        assert_eq!(r.transitions[1].prev_state_ns, Some(2 * MS));
        let syn_sent = t.durations.percentiles()[1];
        assert_eq!((syn_sent.0, syn_sent.1.count), (SynSent, 1));
        assert_eq!(t.transitions.get(SynSent, Established), 1);
    }

    #[test]
    fn a_reused_id_starts_fresh() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Close, SynSent, 0, None), &mut r);
        t.on_event(tr(1, SynSent, Established, MS, None), &mut r);
        // Its close was lost; the address comes back as a new socket.
        t.on_event(tr(1, Close, SynSent, 5 * S, None), &mut r);
        t.on_event(tr(1, SynSent, Established, 5 * S + MS, None), &mut r);
        assert_eq!(t.table().len(), 1);
        assert_eq!(
            r.transitions[3].prev_state_ns,
            Some(MS),
            "{:?}",
            r.transitions[3]
        );
        let entry = t.table().get(&SockKey::Kernel(1)).unwrap();
        assert_eq!(entry.entered_ns, 5 * S + MS);
        assert_eq!(
            entry.path.states().collect::<Vec<_>>(),
            vec![Close, SynSent, Established]
        );
    }

    #[test]
    fn a_state_set_again_keeps_its_clock() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, CloseWait, LastAck, 0, None), &mut r);
        t.on_event(tr(1, LastAck, LastAck, 5 * MS, Some(5 * MS)), &mut r);
        t.on_event(tr(1, LastAck, Close, 7 * MS, Some(2 * MS)), &mut r);
        assert_eq!(
            pairs(&r),
            vec![(CloseWait, LastAck), (LastAck, LastAck), (LastAck, Close)]
        );
        assert_eq!(r.transitions[1].prev_state_ns, Some(5 * MS));
        assert_eq!(
            r.transitions[2].prev_state_ns,
            Some(7 * MS),
            "LAST_ACK lasted from 0 to 7 ms"
        );
        let last_ack = t
            .durations
            .percentiles()
            .into_iter()
            .find(|(s, _)| *s == LastAck)
            .unwrap()
            .1;
        assert_eq!(last_ack.count, 1);
    }

    #[test]
    fn stuck_then_unstuck_once() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Listen, SynRecv, 0, None), &mut r);
        t.on_event(tr(1, SynRecv, Established, MS, None), &mut r);
        t.on_event(tr(1, Established, CloseWait, S, None), &mut r);
        assert_eq!(t.next_deadline(), Some(3 * S));
        t.tick(2 * S, &mut r);
        assert!(r.stuck.is_empty());
        t.tick(3 * S, &mut r);
        t.tick(4 * S, &mut r);
        assert_eq!(r.stuck.len(), 1);
        let report = &r.stuck[0];
        assert_eq!(
            (report.state, report.age_ns, report.age_known),
            (CloseWait, 2 * S, true)
        );
        assert_eq!(report.owner, owner());
        assert_eq!(t.stuck_count(), 1);
        t.on_event(tr(1, CloseWait, LastAck, 6 * S, None), &mut r);
        t.on_event(tr(1, LastAck, Close, 6 * S + MS, None), &mut r);
        assert_eq!(r.unstuck.len(), 1);
        assert_eq!(r.unstuck[0].duration_ns, 5 * S);
        assert_eq!(r.unstuck[0].new, Some(LastAck));
        assert_eq!(t.stuck_count(), 0);
        // The transition is logged before its unstuck report.
        assert_eq!(pairs(&r).last(), Some(&(LastAck, Close)));
    }

    #[test]
    fn reminders_come_at_most_every_repeat() {
        let mut t = Tracker::new(1000, thresholds(CloseWait, 1), 10 * S);
        let mut r = Recorded::default();
        t.on_event(tr(1, Established, CloseWait, 0, None), &mut r);
        t.tick(S, &mut r);
        assert!(t.reminders(5 * S).is_empty(), "reported 4 s ago");
        assert_eq!(t.reminders(11 * S).len(), 1);
        assert!(t.reminders(15 * S).is_empty());
        assert_eq!(t.reminders(21 * S)[0].age_ns, 21 * S);
    }

    #[test]
    fn active_close_hands_over_to_time_wait() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Close, SynSent, 0, None), &mut r);
        t.on_event(tr(1, SynSent, Established, MS, None), &mut r);
        t.on_event(tr(1, Established, FinWait1, 10 * MS, None), &mut r);
        t.on_event(tr(1, FinWait1, FinWait2, 11 * MS, None), &mut r);
        // Peer's FIN already in: the kernel arms a TIME_WAIT timewait socket, then closes.
        t.on_event(
            KernelEvent::TimewaitArmed(tw(99, 1, TimeWait, 20 * MS, 0, 0)),
            &mut r,
        );
        t.on_event(tr(1, FinWait2, Close, 20 * MS, None), &mut r);
        assert_eq!(pairs(&r).last(), Some(&(FinWait2, TimeWait)));
        assert_eq!(r.transitions.last().unwrap().sock, 1);
        assert_eq!(r.transitions.last().unwrap().prev_state_ns, Some(9 * MS));
        assert_eq!(t.table().count(TimeWait), 1);
        let entry = t.table().get(&SockKey::Kernel(99)).unwrap();
        assert!(entry.timewait);
        // Expiry: cancel, settled after the pairing grace.
        t.on_event(
            KernelEvent::TimewaitDisarmed(tw(99, 1, TimeWait, 60 * S, 0, 0)),
            &mut r,
        );
        assert_eq!(t.table().count(TimeWait), 1);
        t.tick(60 * S + PAIRING_GRACE_NS, &mut r);
        assert_eq!(pairs(&r).last(), Some(&(TimeWait, Close)));
        let last = r.transitions.last().unwrap();
        assert_eq!(
            (last.sock, last.prev_state_ns),
            (99, Some(60 * S - 20 * MS))
        );
        assert!(t.table().is_empty());
        assert_eq!(
            t.durations
                .percentiles()
                .iter()
                .find(|(s, _)| *s == TimeWait)
                .unwrap()
                .1
                .count,
            1
        );
    }

    #[test]
    fn a_rearmed_timer_is_not_an_end() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, FinWait1, FinWait2, 0, None), &mut r);
        t.on_event(
            KernelEvent::TimewaitArmed(tw(99, 1, FinWait2, MS, 0, 0)),
            &mut r,
        );
        t.on_event(tr(1, FinWait2, Close, MS, None), &mut r);
        // The lingering FIN_WAIT2 shows no transition; the connection stays in FIN_WAIT2.
        assert_eq!(pairs(&r), vec![(FinWait1, FinWait2)]);
        assert_eq!(t.table().count(FinWait2), 1);
        assert_eq!(t.table().lingering().len(), 1);
        // The peer's FIN moves the timer to another bucket: cancel then start.
        let rearm = |t: &mut Tracker, r: &mut Recorded, ts_ns: u64| {
            t.on_event(
                KernelEvent::TimewaitDisarmed(tw(99, 1, TimeWait, ts_ns, 0, 0)),
                r,
            );
            t.on_event(
                KernelEvent::TimewaitArmed(tw(99, 1, TimeWait, ts_ns, 0, 0)),
                r,
            );
            t.tick(ts_ns + S, r);
        };
        rearm(&mut t, &mut r, 3 * S);
        assert_eq!(pairs(&r).last(), Some(&(FinWait2, TimeWait)));
        assert_eq!(r.transitions.last().unwrap().prev_state_ns, Some(3 * S));
        // A duplicate FIN in TIME_WAIT re-arms again: still TIME_WAIT.
        rearm(&mut t, &mut r, 5 * S);
        assert_eq!(t.table().count(TimeWait), 1);
        assert_eq!(r.transitions.len(), 2);
    }

    #[test]
    fn a_silent_move_to_time_wait_is_dated_by_the_timer() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        let uptime = 1_000 * S;
        // HZ 250: jiffies = 2^32 + 250 * (uptime - 300 s).
        let jiffies = |ns: u64| (1u64 << 32) + 250 * (ns / MS) / 1000 - 250 * 300;
        t.on_event(tr(1, FinWait1, FinWait2, uptime, None), &mut r);
        let armed = tw(
            99,
            1,
            FinWait2,
            uptime,
            jiffies(uptime),
            jiffies(uptime) + 15_000,
        );
        t.on_event(KernelEvent::TimewaitArmed(armed), &mut r);
        t.on_event(tr(1, FinWait2, Close, uptime, None), &mut r);
        // The FIN came 2 s later (no event); TIME_WAIT ends early 10 s after that (reuse).
        let fin = uptime + 2 * S;
        let end = fin + 10 * S;
        let stop = tw(99, 1, TimeWait, end, jiffies(end), jiffies(fin) + 15_000);
        t.on_event(KernelEvent::TimewaitDisarmed(stop), &mut r);
        t.tick(end + S, &mut r);
        let last_two: Vec<_> = r.transitions[r.transitions.len() - 2..].to_vec();
        assert_eq!((last_two[0].old, last_two[0].new), (FinWait2, TimeWait));
        assert_eq!(last_two[0].ts_ns, fin);
        assert_eq!(last_two[0].prev_state_ns, Some(2 * S));
        assert_eq!((last_two[1].old, last_two[1].new), (TimeWait, Close));
        assert_eq!(last_two[1].prev_state_ns, Some(10 * S));
        assert!(t.table().is_empty());
    }

    #[test]
    fn lingering_check_finds_silent_moves() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, FinWait1, FinWait2, 0, None), &mut r);
        t.on_event(
            KernelEvent::TimewaitArmed(tw(99, 1, FinWait2, 0, 0, 0)),
            &mut r,
        );
        t.on_event(tr(1, FinWait2, Close, 0, None), &mut r);
        let still = ListedSocket {
            endpoints: ends(1),
            state: FinWait2,
            cookie: 5,
            inode: 0,
        };
        t.check_lingering(std::slice::from_ref(&still), &ours(), S, S, &mut r);
        assert_eq!(t.table().count(FinWait2), 1);
        t.check_lingering(&[], &ours(), 2 * S, 2 * S, &mut r);
        assert_eq!(t.table().count(TimeWait), 1);
        assert_eq!(pairs(&r).last(), Some(&(FinWait2, TimeWait)));
        assert!(t.table().lingering().is_empty());
    }

    fn listed(id: u64, state: TcpState, cookie: u64) -> ListedSocket {
        ListedSocket {
            endpoints: ends(id),
            state,
            cookie,
            inode: 1,
        }
    }

    #[test]
    fn reconciliation_fixes_drift() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Close, SynSent, 0, None), &mut r); // ghost: its close was lost
        t.on_event(tr(1, SynSent, Established, MS, None), &mut r);
        t.on_event(tr(2, Established, FinWait1, MS, None), &mut r); // wrong state
        t.on_event(tr(3, Close, Listen, MS, None), &mut r); // right
        t.begin_reconcile(S);
        // Changed during the listing: not judged by it.
        t.on_event(tr(4, Close, Listen, S + 1, None), &mut r);
        let listing = [
            listed(2, FinWait2, 20),
            listed(3, Listen, 30),
            listed(5, CloseWait, 50),
            listed(6, Close, 60),
        ];
        let unowned = t.reconcile(&listing, &ours(), 2 * S, false, &mut r);
        let fixes = t.reconciliation();
        assert_eq!(
            (fixes.runs, fixes.added, fixes.removed, fixes.corrected),
            (1, 1, 1, 1)
        );
        assert!(t.table().get(&SockKey::Kernel(1)).is_none());
        assert_eq!(t.table().get(&SockKey::Kernel(2)).unwrap().state, FinWait2);
        assert!(!t.table().get(&SockKey::Kernel(2)).unwrap().age_known);
        assert!(t.table().get(&SockKey::Kernel(4)).is_some());
        let added = t.table().get(&SockKey::Listed(50)).unwrap();
        assert_eq!((added.state, added.age_known), (CloseWait, false));
        // Its owner is for the caller to find, by inode.
        assert_eq!(unowned, vec![(SockKey::Listed(50), 1)]);
        t.assign_owner(SockKey::Listed(50), owner().unwrap());
        assert_eq!(t.table().get(&SockKey::Listed(50)).unwrap().owner, owner());
        // Stuck thresholds count from when it was first seen.
        t.tick(4 * S, &mut r);
        assert_eq!(r.stuck.len(), 1);
        assert!(!r.stuck[0].age_known);
        // Its first event names it: adopted, the kernel's duration is the true one.
        t.on_event(tr(5, CloseWait, LastAck, 5 * S, Some(100 * S)), &mut r);
        assert!(t.table().get(&SockKey::Listed(50)).is_none());
        assert_eq!(r.transitions.last().unwrap().prev_state_ns, Some(100 * S));
        assert_eq!(r.unstuck.len(), 1);
        assert_eq!(r.unstuck[0].duration_ns, 100 * S);
        assert!(r.unstuck[0].age_known);
    }

    #[test]
    fn reconciliation_leaves_other_namespaces_alone() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        let mut in_container = tr(1, Close, Listen, 0, None);
        if let KernelEvent::Transition(c) = &mut in_container {
            c.endpoints.netns = NETNS + 1;
        }
        t.on_event(in_container, &mut r);
        t.begin_reconcile(S);
        t.reconcile(&[], &ours(), S, false, &mut r);
        assert_eq!(t.table().len(), 1);
        assert_eq!(t.reconciliation().fixes(), 0);
    }

    #[test]
    fn a_restart_adopts_the_kernels_records() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.begin_reconcile(100 * S);
        t.reconcile(
            &[listed(1, CloseWait, 10), listed(2, Established, 20)],
            &ours(),
            100 * S,
            true,
            &mut r,
        );
        let record = |id: u64, state: TcpState, since_ns: u64| {
            let mut tuple = tracer_common::Tuple {
                sport: ends(id).local_port,
                dport: 80,
                family: tracer_common::AF_INET,
                netns: NETNS,
                ..tracer_common::Tuple::default()
            };
            tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            let mut comm = [0u8; 16];
            comm[..6].copy_from_slice(b"server");
            tracer_common::SockRecord {
                since_ns,
                tuple,
                owner: tracer_common::Owner {
                    pid: 7,
                    _pad: 0,
                    comm,
                },
                state: state as u8,
                _pad: [0; 7],
            }
        };
        // Socket 1 has been in CLOSE_WAIT since 40 s; socket 2's record is stale (another state).
        let records = [
            (0xaa, record(1, CloseWait, 40 * S)),
            (0xbb, record(2, FinWait1, 90 * S)),
        ];
        assert_eq!(t.adopt_records(&records), 1);
        let entry = t
            .table()
            .get(&SockKey::Kernel(0xaa))
            .expect("rekeyed to its address");
        assert_eq!((entry.entered_ns, entry.age_known), (40 * S, true));
        assert_eq!(entry.owner, owner());
        assert!(t.table().get(&SockKey::Listed(10)).is_none());
        assert!(!t.table().get(&SockKey::Listed(20)).unwrap().age_known);
        // The 2 s threshold counts from the true entry: stuck at once, with the true age.
        t.tick(101 * S, &mut r);
        assert_eq!(r.stuck.len(), 1);
        assert_eq!((r.stuck[0].age_ns, r.stuck[0].age_known), (61 * S, true));
    }

    #[test]
    fn reconciliation_learns_a_connecting_port() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        let mut connect = tr(1, Close, SynSent, 0, None);
        if let KernelEvent::Transition(c) = &mut connect {
            c.endpoints.local_port = 0;
        }
        t.on_event(connect, &mut r);
        t.begin_reconcile(S);
        t.reconcile(&[listed(1, SynSent, 10)], &ours(), S, false, &mut r);
        assert_eq!(t.reconciliation().fixes(), 0);
        assert_eq!(
            t.table().get(&SockKey::Kernel(1)).unwrap().endpoints,
            ends(1)
        );
    }

    #[test]
    fn sockets_opened_during_a_listing_are_not_added_twice() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.begin_reconcile(S);
        // Created while the kernel was being listed: the listing shows it too.
        t.on_event(tr(1, Close, Listen, S + 1, None), &mut r);
        t.on_event(tr(2, Listen, SynRecv, S + 2, None), &mut r);
        t.on_event(tr(2, SynRecv, Established, S + 3, None), &mut r);
        t.reconcile(
            &[listed(1, Listen, 10), listed(2, SynRecv, 20)],
            &ours(),
            2 * S,
            false,
            &mut r,
        );
        assert_eq!(t.table().len(), 2);
        assert_eq!(t.table().count(Established), 1, "the newer event wins");
        assert_eq!(t.reconciliation().fixes(), 0);
    }

    #[test]
    fn sockets_closed_during_a_listing_are_not_added() {
        let (mut t, mut r) = (tracker(), Recorded::default());
        t.on_event(tr(1, Established, CloseWait, 0, None), &mut r);
        t.begin_reconcile(S);
        t.on_event(tr(1, CloseWait, LastAck, S + 1, None), &mut r);
        t.on_event(tr(1, LastAck, Close, S + 2, None), &mut r);
        t.reconcile(&[listed(1, CloseWait, 10)], &ours(), 2 * S, false, &mut r);
        assert!(t.table().is_empty());
        assert_eq!(t.reconciliation().fixes(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_evictions_end_stuck_episodes() {
        let mut t = Tracker::new(8, thresholds(CloseWait, 1), 300 * S);
        let mut r = Recorded::default();
        t.on_event(tr(0, Established, CloseWait, 0, None), &mut r);
        t.tick(2 * S, &mut r);
        for id in 1..100 {
            t.on_event(tr(id, Close, SynSent, 2 * S + id, None), &mut r);
            assert!(t.table().len() <= 8);
        }
        assert!(t.table().evictions() >= 92);
        assert_eq!((r.stuck.len(), r.unstuck.len()), (1, 1));
        assert_eq!(r.unstuck[0].new, None);
        assert_eq!(t.stuck_count(), 0);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Paths sockets take through the state machine.
        const PATHS: [&[TcpState]; 6] = [
            &[Close, SynSent, Established, FinWait1, FinWait2, Close],
            &[Listen, SynRecv, Established, CloseWait, LastAck, Close],
            &[Close, SynSent, Close],
            &[Close, Listen, Close],
            &[Close, SynSent, Established, CloseWait, LastAck, Close],
            &[Listen, SynRecv, Established, FinWait1, Closing, Close],
        ];

        #[derive(Debug, Clone)]
        enum Step {
            /// Advance socket `id` after `gap` ms; `lost` drops the event (simulated loss).
            Advance {
                id: u64,
                gap_ms: u64,
                lost: bool,
            },
            Tick {
                gap_ms: u64,
            },
        }

        fn steps(lossy: bool) -> impl Strategy<Value = Vec<Step>> {
            let advance = (
                0u64..6,
                0u64..4_000,
                proptest::bool::weighted(if lossy { 0.1 } else { 0.0 }),
            )
                .prop_map(|(id, gap_ms, lost)| Step::Advance { id, gap_ms, lost });
            let tick = (0u64..4_000).prop_map(|gap_ms| Step::Tick { gap_ms });
            proptest::collection::vec(prop_oneof![4 => advance, 1 => tick], 1..300)
        }

        /// One socket's scripted lives: which path, and how far along it is.
        #[derive(Clone, Copy)]
        struct Script {
            path: usize,
            at: usize,
            last_ns: u64,
            life_start: u64,
            life: usize,
        }

        struct Run {
            tracker: Tracker,
            recorded: Recorded,
            now: u64,
            max: usize,
        }

        /// A completed life: socket id, its life number, first and last transition times.
        struct Life {
            id: u64,
            number: usize,
            start: u64,
            end: u64,
        }

        /// Runs the steps; returns the run, the completed lives, and for each event fed to the
        /// tracker, the (socket id, life number) it belongs to.
        fn run(steps: &[Step], max: usize) -> (Run, Vec<Life>, Vec<(u64, usize)>) {
            let mut run = Run {
                tracker: Tracker::new(max, thresholds(CloseWait, 3), 300 * S),
                recorded: Recorded::default(),
                now: 0,
                max,
            };
            let mut scripts: Vec<Script> = (0..6)
                .map(|id| Script {
                    path: id as usize % PATHS.len(),
                    at: 0,
                    last_ns: 0,
                    life_start: 0,
                    life: 0,
                })
                .collect();
            let mut lives = Vec::new();
            let mut fed = Vec::new();
            for step in steps {
                match *step {
                    Step::Tick { gap_ms } => {
                        run.now += gap_ms * MS;
                        run.tracker.tick(run.now, &mut run.recorded);
                    }
                    Step::Advance { id, gap_ms, lost } => {
                        run.now += gap_ms * MS;
                        let s = &mut scripts[id as usize];
                        let path = PATHS[s.path];
                        let (old, new) = (path[s.at], path[s.at + 1]);
                        let prev = (s.at > 0).then(|| run.now - s.last_ns);
                        if s.at == 0 {
                            s.life_start = run.now;
                        }
                        let life = s.life;
                        s.at += 1;
                        s.last_ns = run.now;
                        if s.at + 1 == path.len() {
                            lives.push(Life {
                                id,
                                number: life,
                                start: s.life_start,
                                end: run.now,
                            });
                            // The id comes back on another path.
                            s.path = (s.path + 1 + id as usize) % PATHS.len();
                            s.at = 0;
                            s.life += 1;
                        }
                        if !lost {
                            fed.push((id, life));
                            run.tracker
                                .on_event(tr(id, old, new, run.now, prev), &mut run.recorded);
                        }
                    }
                }
                check_invariants(&run);
            }
            (run, lives, fed)
        }

        fn check_invariants(run: &Run) {
            let table = run.tracker.table();
            assert!(table.len() <= run.max, "table over its bound");
            // Every socket is in exactly one state.
            let counted: u64 = TcpState::ALL.iter().map(|s| table.count(*s)).sum();
            assert_eq!(counted, table.len() as u64);
            for key in run.tracker.stuck_keys() {
                assert!(
                    table.get(key).is_some_and(|e| e.stuck.is_some()),
                    "stuck key without entry"
                );
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn lossless_streams(steps in steps(false)) {
                let (run, lives, fed) = run(&steps, 1000);
                let r = &run.recorded;
                // Every event is reported once, in order.
                prop_assert_eq!(r.transitions.len(), fed.len());
                // The times spent in a life's states add up to its lifetime.
                for life in &lives {
                    let spent: Vec<Option<u64>> = r.transitions.iter().zip(&fed)
                        .filter(|(_, (id, number))| *id == life.id && *number == life.number)
                        .map(|(t, _)| t.prev_state_ns)
                        .collect();
                    prop_assert_eq!(spent[0], None, "a socket's first transition has no duration");
                    let total: u64 = spent[1..].iter()
                        .map(|d| d.expect("a lossless stream knows every duration"))
                        .sum();
                    prop_assert_eq!(total, life.end - life.start);
                }
                // One stuck report per episode, and one unstuck when it ends.
                let mut episodes = std::collections::HashMap::new();
                for s in &r.stuck {
                    let n = episodes.entry((s.sock, s.ts_ns - s.age_ns)).or_insert(0);
                    *n += 1;
                    prop_assert_eq!(*n, 1);
                    prop_assert!(s.age_ns >= s.threshold_ns);
                }
                for u in &r.unstuck {
                    prop_assert!(episodes.remove(&(u.sock, u.ts_ns - u.duration_ns)).is_some(), "unstuck without stuck: {:?}", u);
                }
                // Episodes left open are the sockets stuck now.
                prop_assert_eq!(episodes.len(), run.tracker.stuck_count());
                // Much later, every socket in a watched state has been reported.
                let mut run = run;
                let later = run.now + 3600 * S;
                run.tracker.tick(later, &mut run.recorded);
                let watched = run.tracker.table().iter()
                    .filter(|(_, e)| run.tracker.thresholds.get(e.state).is_some())
                    .count();
                prop_assert_eq!(watched, run.tracker.stuck_count());
            }

            #[test]
            fn lossy_streams_keep_the_table_sound(steps in steps(true), max in 1usize..8) {
                let (run, _, _) = run(&steps, max);
                let r = &run.recorded;
                prop_assert!(r.unstuck.len() <= r.stuck.len());
                prop_assert_eq!(r.stuck.len() - r.unstuck.len(), run.tracker.stuck_count());
            }
        }
    }
}
