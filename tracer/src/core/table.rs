//! The socket table: every live TCP socket the tracer knows, its current state, since when and its
//! owner. It knows nothing of the kernel or of outputs: callers change entries only through its
//! typed methods, and every change goes through one place that keeps its indexes right (counts by
//! state, listeners, lingering timewait sockets, sockets known only from a listing, stuck
//! deadlines, stuck sockets), so they cannot drift. Bounded, with least-recently-active eviction.
// foldhash: keyed per process like std's hasher, several times cheaper per lookup, and these maps
// are touched on every event.
use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use tracer_common::TcpState;

use super::stuck::Thresholds;
use crate::{
    source::events::{Endpoints, Owner},
    units::nanos,
};

/// How a socket is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SockKey {
    /// The kernel address of the socket (or of its timewait socket), as events carry it.
    Kernel(u64),
    /// A socket known only from the kernel's socket list (sock_diag), by its cookie, until an
    /// event names its address.
    Listed(u64),
}

impl SockKey {
    /// The id users see: the kernel address, or the sock_diag cookie.
    pub(crate) fn id(self) -> u64 {
        match self {
            Self::Kernel(id) | Self::Listed(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    state: TcpState,
    /// When the socket entered `state` (CLOCK_MONOTONIC ns). A lower bound when `age_known` is
    /// false: the tracer first saw the socket in this state at that time.
    entered_ns: u64,
    age_known: bool,
    endpoints: Endpoints,
    owner: Option<Owner>,
    last_active_ns: u64,
    /// The kernel hands this connection's last phase (TIME-WAIT, or a lingering FIN-WAIT-2) to a
    /// timewait socket: the entry is keyed by that socket now.
    timewait: bool,
    /// When the stuck report of the current state was last made or repeated; `None` while the
    /// socket is not stuck.
    reminded_ns: Option<u64>,
    /// Its owner is being looked up (by inode): a stuck report waits for the answer, unless an
    /// owner turns up meanwhile.
    owner_pending: bool,
}

impl Entry {
    pub(crate) fn new(state: TcpState, now_ns: u64, age_known: bool, endpoints: Endpoints) -> Self {
        Self {
            state,
            entered_ns: now_ns,
            age_known,
            endpoints,
            owner: None,
            last_active_ns: now_ns,
            timewait: false,
            reminded_ns: None,
            owner_pending: false,
        }
    }

    pub(crate) fn with_owner(self, owner: Option<Owner>) -> Self {
        Self { owner, ..self }
    }

    /// A connection whose last phase a timewait socket holds.
    pub(crate) fn on_timewait_socket(self) -> Self {
        Self {
            timewait: true,
            ..self
        }
    }

    pub(crate) fn state(&self) -> TcpState {
        self.state
    }

    pub(crate) fn entered_ns(&self) -> u64 {
        self.entered_ns
    }

    pub(crate) fn age_known(&self) -> bool {
        self.age_known
    }

    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub(crate) fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    pub(crate) fn last_active_ns(&self) -> u64 {
        self.last_active_ns
    }

    pub(crate) fn is_timewait(&self) -> bool {
        self.timewait
    }

    pub(crate) fn is_stuck(&self) -> bool {
        self.reminded_ns.is_some()
    }

    pub(crate) fn reminded_ns(&self) -> Option<u64> {
        self.reminded_ns
    }

    /// Its owner is being looked up and not known yet: a stuck report would have none.
    fn awaits_owner(&self) -> bool {
        self.owner_pending && self.owner.is_none()
    }

    /// A timewait socket in FIN_WAIT2: the kernel may move it to TIME_WAIT without an event.
    fn lingering(&self) -> bool {
        self.timewait && self.state == TcpState::FinWait2
    }

    /// Time spent in the current state at `now_ns`, when known.
    pub(crate) fn time_in_state(&self, now_ns: u64) -> Option<u64> {
        self.age_known
            .then(|| now_ns.saturating_sub(self.entered_ns))
    }

    /// Moves to `state` at `now_ns`, on a known clock.
    fn enter(&mut self, state: TcpState, now_ns: u64) {
        self.state = state;
        self.entered_ns = now_ns;
        self.age_known = true;
        self.last_active_ns = now_ns;
        self.reminded_ns = None;
    }
}

/// What the indexes know of an entry.
#[derive(Clone, Copy, PartialEq)]
struct Indexed {
    state: TcpState,
    endpoints: Endpoints,
    lingering: bool,
    deadline: Option<u64>,
    stuck: bool,
}

pub(crate) struct SocketTable {
    entries: HashMap<SockKey, Entry>,
    thresholds: Thresholds,
    /// Endpoints of the entries known only from the kernel's list, to find them when an event
    /// first names their address.
    listed: HashMap<Endpoints, SockKey>,
    /// Timewait sockets in FIN_WAIT2.
    lingering: HashSet<SockKey>,
    /// Listening sockets by (network namespace, port).
    listening: HashMap<(u32, u16), u32>,
    /// (deadline, socket) of every socket in a watched state not reported stuck yet.
    deadlines: BTreeSet<(u64, SockKey)>,
    stuck: HashSet<SockKey>,
    by_state: [u64; TcpState::COUNT],
    max_entries: usize,
    evictions: u64,
}

impl SocketTable {
    pub(crate) fn new(max_entries: usize, thresholds: Thresholds) -> Self {
        Self {
            entries: HashMap::new(),
            thresholds,
            listed: HashMap::new(),
            lingering: HashSet::new(),
            listening: HashMap::new(),
            deadlines: BTreeSet::new(),
            stuck: HashSet::new(),
            by_state: [0; TcpState::COUNT],
            max_entries: max_entries.max(1),
            evictions: 0,
        }
    }

    pub(crate) fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Live sockets in `state`.
    pub(crate) fn count(&self, state: TcpState) -> u64 {
        self.by_state[state as usize]
    }

    pub(crate) fn get(&self, key: &SockKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SockKey, &Entry)> {
        self.entries.iter()
    }

    /// Timewait sockets in FIN_WAIT2.
    pub(crate) fn lingering(&self) -> &HashSet<SockKey> {
        &self.lingering
    }

    pub(crate) fn stuck(&self) -> &HashSet<SockKey> {
        &self.stuck
    }

    /// The earliest time a socket becomes stuck.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Sockets whose stuck deadline is at or before `now_ns`, earliest first.
    pub(crate) fn due(&self, now_ns: u64) -> Vec<SockKey> {
        self.deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now_ns)
            .map(|(_, key)| *key)
            .collect()
    }

    /// The port a socket serves or uses: its local port when something listens on it, else its
    /// remote port (a client's destination).
    pub(crate) fn service_port(&self, e: &Endpoints) -> u16 {
        if self.listening.contains_key(&(e.netns, e.local_port)) {
            e.local_port
        } else {
            e.remote_port
        }
    }

    /// Finds an entry known only from the kernel's list with these endpoints, so an event naming
    /// the socket's address can take it over.
    pub(crate) fn find_listed(&self, endpoints: &Endpoints) -> Option<SockKey> {
        self.listed.get(endpoints).copied()
    }

    /// Inserts or replaces an entry. When the table is full, the least recently active entries
    /// are evicted first, and returned so the caller can account for them.
    pub(crate) fn insert(&mut self, key: SockKey, entry: Entry) -> Vec<(SockKey, Entry)> {
        let mut evicted = Vec::new();
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            evicted = self.evict_least_active();
        }
        self.remove(&key);
        self.index(key, &self.indexed(&entry));
        self.entries.insert(key, entry);
        evicted
    }

    pub(crate) fn remove(&mut self, key: &SockKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.unindex(*key, &self.indexed(&entry));
        Some(entry)
    }

    /// Moves an entry to another key (an event names a listed socket, or a timewait socket takes
    /// the connection over).
    pub(crate) fn rekey(&mut self, from: SockKey, to: SockKey) {
        if let Some(entry) = self.remove(&from) {
            self.insert(to, entry);
        }
    }

    /// The socket moved to `state` at `ts_ns` (an event): on a known clock from now on, with the
    /// endpoints the event gives and its owner when the event names one.
    pub(crate) fn enter(
        &mut self,
        key: &SockKey,
        state: TcpState,
        ts_ns: u64,
        endpoints: Endpoints,
        owner: Option<Owner>,
    ) {
        self.change(key, |e| {
            e.enter(state, ts_ns);
            e.endpoints = endpoints;
            if owner.is_some() {
                e.owner = owner;
            }
        });
    }

    /// The kernel's list shows the socket in another state than the table: it is in `state`
    /// since an unknown time (seen at `now_ns`).
    pub(crate) fn correct(
        &mut self,
        key: &SockKey,
        state: TcpState,
        now_ns: u64,
        endpoints: Endpoints,
    ) {
        self.change(key, |e| {
            e.enter(state, now_ns);
            e.age_known = false;
            e.endpoints = endpoints;
        });
    }

    /// A process took the socket (accept): it is the owner from now on.
    pub(crate) fn set_owner(&mut self, key: &SockKey, owner: Owner, ts_ns: u64) {
        self.change(key, |e| {
            e.owner = Some(owner);
            e.last_active_ns = ts_ns;
        });
    }

    /// The socket's owner is being looked up: its stuck deadline waits for the answer.
    pub(crate) fn await_owner(&mut self, key: &SockKey) {
        self.change(key, |e| e.owner_pending = true);
    }

    /// The answer of an owner lookup: the owner found, if any, for a socket without one.
    pub(crate) fn owner_looked_up(&mut self, key: &SockKey, owner: Option<Owner>) {
        self.change(key, |e| {
            e.owner_pending = false;
            if e.owner.is_none() {
                e.owner = owner;
            }
        });
    }

    pub(crate) fn mark_timewait(&mut self, key: &SockKey) {
        self.change(key, |e| e.timewait = true);
    }

    /// The socket was reported stuck, or reminded of, at `now_ns`.
    pub(crate) fn mark_reminded(&mut self, key: &SockKey, now_ns: u64) {
        self.change(key, |e| e.reminded_ns = Some(now_ns));
    }

    /// A connecting socket's local port, unknown at its first event, learnt from a listing.
    pub(crate) fn learn_local_port(&mut self, key: &SockKey, port: u16) {
        self.change(key, |e| e.endpoints.local_port = port);
    }

    /// The kernel's own record of when the socket entered its state (kept across restarts).
    pub(crate) fn adopt_age(&mut self, key: &SockKey, since_ns: u64, owner: Option<Owner>) {
        self.change(key, |e| {
            e.entered_ns = since_ns;
            e.age_known = true;
            if e.owner.is_none() {
                e.owner = owner;
            }
        });
    }

    /// The one place entries change: the indexes are moved from what they knew to what is true.
    fn change(&mut self, key: &SockKey, change: impl FnOnce(&mut Entry)) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let before = Self::view(&self.thresholds, entry);
        change(entry);
        let after = Self::view(&self.thresholds, entry);
        if before != after {
            self.unindex(*key, &before);
            self.index(*key, &after);
        }
    }

    fn indexed(&self, entry: &Entry) -> Indexed {
        Self::view(&self.thresholds, entry)
    }

    fn view(thresholds: &Thresholds, entry: &Entry) -> Indexed {
        let deadline = thresholds
            .get(entry.state)
            .filter(|_| !entry.is_stuck() && !entry.awaits_owner())
            .map(|threshold| entry.entered_ns.saturating_add(nanos(threshold)));
        Indexed {
            state: entry.state,
            endpoints: entry.endpoints,
            lingering: entry.lingering(),
            deadline,
            stuck: entry.is_stuck(),
        }
    }

    fn index(&mut self, key: SockKey, v: &Indexed) {
        self.by_state[v.state as usize] += 1;
        if matches!(key, SockKey::Listed(_)) {
            self.listed.insert(v.endpoints, key);
        }
        if v.lingering {
            self.lingering.insert(key);
        }
        if v.state == TcpState::Listen {
            *self
                .listening
                .entry((v.endpoints.netns, v.endpoints.local_port))
                .or_default() += 1;
        }
        if let Some(deadline) = v.deadline {
            self.deadlines.insert((deadline, key));
        }
        if v.stuck {
            self.stuck.insert(key);
        }
    }

    fn unindex(&mut self, key: SockKey, v: &Indexed) {
        self.by_state[v.state as usize] -= 1;
        if self.listed.get(&v.endpoints) == Some(&key) {
            self.listed.remove(&v.endpoints);
        }
        self.lingering.remove(&key);
        if v.state == TcpState::Listen {
            let port = (v.endpoints.netns, v.endpoints.local_port);
            if let Some(count) = self.listening.get_mut(&port) {
                *count -= 1;
                if *count == 0 {
                    self.listening.remove(&port);
                }
            }
        }
        if let Some(deadline) = v.deadline {
            self.deadlines.remove(&(deadline, key));
        }
        self.stuck.remove(&key);
    }

    /// Evicts the least recently active 1/64 of the table (at least one entry) in one pass, so the
    /// cost of finding them is shared by many inserts.
    fn evict_least_active(&mut self) -> Vec<(SockKey, Entry)> {
        let batch = (self.max_entries / 64).max(1).min(self.entries.len());
        let mut ages: Vec<(u64, SockKey)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.last_active_ns, *k))
            .collect();
        if batch < ages.len() {
            ages.select_nth_unstable(batch - 1);
        }
        ages.truncate(batch);
        self.evictions += ages.len() as u64;
        ages.into_iter()
            .filter_map(|(_, key)| self.remove(&key).map(|entry| (key, entry)))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use super::*;
    use crate::source::events::Family;

    pub(crate) fn endpoints(port: u16) -> Endpoints {
        Endpoints {
            netns: 4026531840,
            family: Family::Ipv4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
        }
    }

    fn table(max: usize) -> SocketTable {
        SocketTable::new(max, Thresholds::default())
    }

    fn entry(state: TcpState, now: u64, port: u16) -> Entry {
        Entry::new(state, now, true, endpoints(port))
    }

    #[test]
    fn counts_follow_states() {
        let mut table = table(10);
        table.insert(SockKey::Kernel(1), entry(TcpState::SynSent, 0, 1));
        table.insert(SockKey::Kernel(2), entry(TcpState::SynSent, 0, 2));
        assert_eq!(table.count(TcpState::SynSent), 2);
        table.enter(
            &SockKey::Kernel(1),
            TcpState::Established,
            50,
            endpoints(1),
            None,
        );
        assert_eq!(table.count(TcpState::SynSent), 1);
        assert_eq!(table.count(TcpState::Established), 1);
        table.remove(&SockKey::Kernel(2));
        assert_eq!(table.count(TcpState::SynSent), 0);
        // Replacing an entry under the same key does not double count.
        table.insert(SockKey::Kernel(1), entry(TcpState::Listen, 60, 1));
        assert_eq!(table.count(TcpState::Established), 0);
        assert_eq!(table.count(TcpState::Listen), 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn evicts_least_recently_active_first() {
        let mut table = table(4);
        for i in 0..4u64 {
            table.insert(
                SockKey::Kernel(i),
                entry(TcpState::Established, 10 * i, i as u16),
            );
        }
        // Socket 0 is oldest but active again; socket 1 is now the least recently active.
        table.set_owner(
            &SockKey::Kernel(0),
            Owner {
                pid: 1,
                comm: crate::source::events::Comm::new("x"),
                cgroup: None,
            },
            100,
        );
        let evicted = table.insert(SockKey::Kernel(9), entry(TcpState::SynSent, 200, 9));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0, SockKey::Kernel(1));
        assert_eq!(table.len(), 4);
        assert_eq!(table.evictions(), 1);
        assert!(table.get(&SockKey::Kernel(0)).is_some());
    }

    #[test]
    fn unknown_age_gives_no_time_in_state() {
        let mut table = table(10);
        let key = SockKey::Kernel(1);
        table.insert(
            key,
            Entry::new(TcpState::CloseWait, 1_000, false, endpoints(1)),
        );
        assert_eq!(table.get(&key).unwrap().time_in_state(5_000), None);
        table.enter(&key, TcpState::LastAck, 5_000, endpoints(1), None);
        assert_eq!(table.get(&key).unwrap().time_in_state(5_100), Some(100));
    }

    #[test]
    fn tracks_listening_ports() {
        let mut table = table(10);
        table.insert(SockKey::Kernel(1), entry(TcpState::Listen, 0, 80));
        table.insert(SockKey::Kernel(2), entry(TcpState::Listen, 0, 80));
        table.insert(SockKey::Kernel(3), entry(TcpState::SynSent, 0, 90));
        assert_eq!(table.service_port(&endpoints(80)), 80, "a server's port");
        assert_eq!(
            table.service_port(&endpoints(90)),
            80,
            "a client's destination"
        );
        table.enter(&SockKey::Kernel(1), TcpState::Close, 5, endpoints(80), None);
        assert_eq!(
            table.service_port(&endpoints(80)),
            80,
            "another socket still listens"
        );
        table.remove(&SockKey::Kernel(2));
        let mut elsewhere = endpoints(80);
        elsewhere.remote_port = 5555;
        assert_eq!(table.service_port(&elsewhere), 5555);
    }

    #[test]
    fn tracks_lingering_timewait_sockets() {
        let mut table = table(10);
        table.insert(
            SockKey::Kernel(1),
            entry(TcpState::FinWait2, 0, 1).on_timewait_socket(),
        );
        table.insert(SockKey::Kernel(2), entry(TcpState::FinWait2, 0, 2));
        assert_eq!(table.lingering().len(), 1);
        table.enter(
            &SockKey::Kernel(1),
            TcpState::TimeWait,
            10,
            endpoints(1),
            None,
        );
        assert!(table.lingering().is_empty());
        table.mark_timewait(&SockKey::Kernel(2));
        assert!(table.lingering().contains(&SockKey::Kernel(2)));
        table.remove(&SockKey::Kernel(2));
        assert!(table.lingering().is_empty());
    }

    #[test]
    fn finds_listed_sockets_by_endpoints() {
        let mut table = table(10);
        table.insert(
            SockKey::Listed(77),
            Entry::new(TcpState::CloseWait, 0, false, endpoints(5)),
        );
        table.insert(SockKey::Kernel(1), entry(TcpState::CloseWait, 0, 6));
        assert_eq!(table.find_listed(&endpoints(5)), Some(SockKey::Listed(77)));
        assert_eq!(table.find_listed(&endpoints(6)), None);
        table.rekey(SockKey::Listed(77), SockKey::Kernel(2));
        assert_eq!(table.find_listed(&endpoints(5)), None);
    }

    #[test]
    fn deadlines_follow_states_and_reports() {
        let mut thresholds = Thresholds::default();
        thresholds.set(TcpState::CloseWait, Some(Duration::from_secs(2)));
        let mut table = SocketTable::new(10, thresholds);
        let s = 1_000_000_000;
        table.insert(SockKey::Kernel(1), entry(TcpState::Established, 0, 1));
        assert_eq!(table.next_deadline(), None, "ESTABLISHED is not watched");
        table.enter(
            &SockKey::Kernel(1),
            TcpState::CloseWait,
            s,
            endpoints(1),
            None,
        );
        assert_eq!(table.next_deadline(), Some(3 * s));
        assert!(table.due(3 * s - 1).is_empty());
        assert_eq!(table.due(3 * s), vec![SockKey::Kernel(1)]);
        table.mark_reminded(&SockKey::Kernel(1), 3 * s);
        assert_eq!(table.next_deadline(), None, "reported: no deadline");
        assert!(table.stuck().contains(&SockKey::Kernel(1)));
        table.rekey(SockKey::Kernel(1), SockKey::Kernel(2));
        assert!(
            table.stuck().contains(&SockKey::Kernel(2)),
            "stuck follows the key"
        );
        table.enter(
            &SockKey::Kernel(2),
            TcpState::LastAck,
            4 * s,
            endpoints(1),
            None,
        );
        assert!(table.stuck().is_empty());
        assert_eq!(
            table.next_deadline(),
            Some(64 * s),
            "LAST_ACK's own threshold"
        );
        table.remove(&SockKey::Kernel(2));
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn a_pending_owner_lookup_holds_the_deadline() {
        let mut table = table(10);
        let key = SockKey::Listed(5);
        table.insert(key, Entry::new(TcpState::CloseWait, 0, false, endpoints(5)));
        let deadline = table.next_deadline();
        assert!(deadline.is_some());
        table.await_owner(&key);
        assert_eq!(table.next_deadline(), None);
        table.owner_looked_up(&key, None);
        assert_eq!(
            table.next_deadline(),
            deadline,
            "due again, with or without an owner"
        );
    }
}
