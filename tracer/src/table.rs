//! The socket table: every live TCP socket the tracer knows, its current state, since when, its
//! owner and the states it went through. It knows nothing of the kernel or of output formats:
//! callers feed it, and it keeps its invariants (one state per socket, counts by state, a bound on
//! its size with least-recently-active eviction).
// foldhash: keyed per process like std's hasher, several times cheaper per lookup, and these maps
// are touched on every event.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use tracer_common::TcpState;

use crate::events::{Endpoints, Process};

/// How a socket is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockKey {
    /// The kernel address of the socket (or of its timewait socket), as events carry it.
    Kernel(u64),
    /// A socket known only from the kernel's socket list (sock_diag), by its cookie, until an
    /// event names its address.
    Listed(u64),
}

impl SockKey {
    /// The id users see: the kernel address, or the sock_diag cookie.
    pub fn id(self) -> u64 {
        match self {
            Self::Kernel(id) | Self::Listed(id) => id,
        }
    }
}

/// Up to [`StatePath::CAPACITY`] states a socket went through, oldest first; older ones are
/// dropped (their count is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePath {
    states: [u8; Self::CAPACITY],
    len: u8,
    dropped: u16,
}

impl StatePath {
    pub const CAPACITY: usize = 12;

    pub fn new(first: TcpState) -> Self {
        let mut states = [0; Self::CAPACITY];
        states[0] = first as u8;
        Self {
            states,
            len: 1,
            dropped: 0,
        }
    }

    pub fn push(&mut self, state: TcpState) {
        if usize::from(self.len) == Self::CAPACITY {
            self.states.copy_within(1.., 0);
            self.states[Self::CAPACITY - 1] = state as u8;
            self.dropped = self.dropped.saturating_add(1);
        } else {
            self.states[usize::from(self.len)] = state as u8;
            self.len += 1;
        }
    }

    pub fn states(&self) -> impl Iterator<Item = TcpState> + '_ {
        self.states[..usize::from(self.len)]
            .iter()
            .filter_map(|s| TcpState::from_u8(*s))
    }

    /// States no longer held because the path was full.
    pub fn dropped(&self) -> u16 {
        self.dropped
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub state: TcpState,
    /// When the socket entered `state` (CLOCK_MONOTONIC ns). A lower bound when `age_known` is
    /// false: the tracer first saw the socket in this state at that time.
    pub entered_ns: u64,
    pub age_known: bool,
    pub endpoints: Endpoints,
    pub owner: Option<Process>,
    pub last_active_ns: u64,
    pub path: StatePath,
    /// The kernel hands this connection's last phase (TIME-WAIT, or a lingering FIN-WAIT-2) to a
    /// timewait socket: the entry is keyed by that socket now.
    pub timewait: bool,
    /// When the stuck report of the current state was emitted, and when it was last repeated.
    pub stuck: Option<StuckMark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckMark {
    pub reported_ns: u64,
    pub reminded_ns: u64,
}

impl Entry {
    pub fn new(state: TcpState, now_ns: u64, age_known: bool, endpoints: Endpoints) -> Self {
        Self {
            state,
            entered_ns: now_ns,
            age_known,
            endpoints,
            owner: None,
            last_active_ns: now_ns,
            path: StatePath::new(state),
            timewait: false,
            stuck: None,
        }
    }

    /// A timewait socket in FIN_WAIT2.
    pub fn lingering(&self) -> bool {
        self.timewait && self.state == TcpState::FinWait2
    }

    /// Moves to `state` at `now_ns`: returns the time spent in the previous state when known.
    pub fn enter(&mut self, state: TcpState, now_ns: u64) -> Option<u64> {
        let spent = self
            .age_known
            .then(|| now_ns.saturating_sub(self.entered_ns));
        self.state = state;
        self.entered_ns = now_ns;
        self.age_known = true;
        self.last_active_ns = now_ns;
        self.path.push(state);
        self.stuck = None;
        spent
    }
}

pub struct SocketTable {
    entries: HashMap<SockKey, Entry>,
    /// Endpoints of the entries known only from the kernel's list, to find them when an event
    /// first names their address.
    listed: HashMap<Endpoints, SockKey>,
    /// Timewait sockets in FIN_WAIT2: the kernel may move them to TIME_WAIT without an event.
    lingering: HashSet<SockKey>,
    /// Listening sockets by (network namespace, port).
    listening: HashMap<(u32, u16), u32>,
    by_state: [u64; 14],
    max_entries: usize,
    evictions: u64,
}

impl SocketTable {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            listed: HashMap::new(),
            lingering: HashSet::new(),
            listening: HashMap::new(),
            by_state: [0; 14],
            max_entries: max_entries.max(1),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Live sockets in `state`.
    pub fn count(&self, state: TcpState) -> u64 {
        self.by_state[state as usize]
    }

    pub fn get(&self, key: &SockKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SockKey, &Entry)> {
        self.entries.iter()
    }

    /// Changes an entry through `change`, keeping the counts by state right.
    pub fn update<R>(&mut self, key: &SockKey, change: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let entry = self.entries.get_mut(key)?;
        let before = entry.state;
        let result = change(entry);
        let after = entry.state;
        let lingering = entry.lingering();
        let endpoints = entry.endpoints;
        if before != after {
            self.by_state[before as usize] -= 1;
            self.by_state[after as usize] += 1;
            self.note_listening(&endpoints, before, -1);
            self.note_listening(&endpoints, after, 1);
        }
        self.mark_lingering(*key, lingering);
        Some(result)
    }

    /// Timewait sockets in FIN_WAIT2.
    pub fn lingering(&self) -> &HashSet<SockKey> {
        &self.lingering
    }

    /// Ports something listens on, with their network namespace.
    pub fn listening_ports(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        self.listening.keys().copied()
    }

    fn note_listening(&mut self, e: &Endpoints, state: TcpState, change: i32) {
        if state != TcpState::Listen {
            return;
        }
        let key = (e.netns, e.local_port);
        let count = self.listening.entry(key).or_default();
        *count = count.saturating_add_signed(change);
        if *count == 0 {
            self.listening.remove(&key);
        }
    }

    fn mark_lingering(&mut self, key: SockKey, lingering: bool) {
        if lingering {
            self.lingering.insert(key);
        } else {
            self.lingering.remove(&key);
        }
    }

    /// Inserts or replaces an entry. When the table is full, the least recently active entries
    /// are evicted first, and returned so the caller can account for them.
    pub fn insert(&mut self, key: SockKey, entry: Entry) -> Vec<(SockKey, Entry)> {
        let mut evicted = Vec::new();
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            evicted = self.evict_least_active();
        }
        self.by_state[entry.state as usize] += 1;
        if matches!(key, SockKey::Listed(_)) {
            self.listed.insert(entry.endpoints, key);
        }
        self.mark_lingering(key, entry.lingering());
        self.note_listening(&entry.endpoints, entry.state, 1);
        if let Some(old) = self.entries.insert(key, entry) {
            self.by_state[old.state as usize] -= 1;
            self.note_listening(&old.endpoints, old.state, -1);
        }
        evicted
    }

    pub fn remove(&mut self, key: &SockKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_state[entry.state as usize] -= 1;
        self.lingering.remove(key);
        self.note_listening(&entry.endpoints, entry.state, -1);
        if self.listed.get(&entry.endpoints) == Some(key) {
            self.listed.remove(&entry.endpoints);
        }
        Some(entry)
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

    /// Finds an entry known only from the kernel's list with these endpoints, so an event naming
    /// the socket's address can take it over.
    pub fn find_listed(&self, endpoints: &Endpoints) -> Option<SockKey> {
        self.listed.get(endpoints).copied()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::Family;

    pub fn endpoints(port: u16) -> Endpoints {
        Endpoints {
            netns: 4026531840,
            family: Family::Ipv4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
        }
    }

    #[test]
    fn counts_follow_states() {
        let mut table = SocketTable::new(10);
        table.insert(
            SockKey::Kernel(1),
            Entry::new(TcpState::SynSent, 0, true, endpoints(1)),
        );
        table.insert(
            SockKey::Kernel(2),
            Entry::new(TcpState::SynSent, 0, true, endpoints(2)),
        );
        assert_eq!(table.count(TcpState::SynSent), 2);
        let spent = table.update(&SockKey::Kernel(1), |e| e.enter(TcpState::Established, 50));
        assert_eq!(spent, Some(Some(50)));
        assert_eq!(table.count(TcpState::SynSent), 1);
        assert_eq!(table.count(TcpState::Established), 1);
        table.remove(&SockKey::Kernel(2));
        assert_eq!(table.count(TcpState::SynSent), 0);
        // Replacing an entry under the same key does not double count.
        table.insert(
            SockKey::Kernel(1),
            Entry::new(TcpState::Listen, 60, true, endpoints(1)),
        );
        assert_eq!(table.count(TcpState::Established), 0);
        assert_eq!(table.count(TcpState::Listen), 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn evicts_least_recently_active_first() {
        let mut table = SocketTable::new(4);
        for i in 0..4u64 {
            table.insert(
                SockKey::Kernel(i),
                Entry::new(TcpState::Established, 10 * i, true, endpoints(i as u16)),
            );
        }
        // Socket 0 is oldest but active again; socket 1 is now the least recently active.
        table.update(&SockKey::Kernel(0), |e| e.last_active_ns = 100);
        let evicted = table.insert(
            SockKey::Kernel(9),
            Entry::new(TcpState::SynSent, 200, true, endpoints(9)),
        );
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0, SockKey::Kernel(1));
        assert_eq!(table.len(), 4);
        assert_eq!(table.evictions(), 1);
        assert!(table.get(&SockKey::Kernel(0)).is_some());
    }

    #[test]
    fn unknown_age_gives_no_duration() {
        let mut entry = Entry::new(TcpState::CloseWait, 1_000, false, endpoints(1));
        assert_eq!(entry.enter(TcpState::LastAck, 5_000), None);
        assert_eq!(entry.enter(TcpState::Close, 5_100), Some(100));
    }

    #[test]
    fn path_keeps_the_latest_states() {
        let mut path = StatePath::new(TcpState::Close);
        for _ in 0..StatePath::CAPACITY {
            path.push(TcpState::Established);
        }
        path.push(TcpState::CloseWait);
        let states: Vec<TcpState> = path.states().collect();
        assert_eq!(states.len(), StatePath::CAPACITY);
        assert_eq!(states.last(), Some(&TcpState::CloseWait));
        assert_eq!(path.dropped(), 2);
    }

    #[test]
    fn tracks_listening_ports() {
        let mut table = SocketTable::new(10);
        table.insert(
            SockKey::Kernel(1),
            Entry::new(TcpState::Listen, 0, true, endpoints(80)),
        );
        table.insert(
            SockKey::Kernel(2),
            Entry::new(TcpState::Listen, 0, true, endpoints(80)),
        );
        table.insert(
            SockKey::Kernel(3),
            Entry::new(TcpState::SynSent, 0, true, endpoints(90)),
        );
        let netns = endpoints(80).netns;
        assert_eq!(
            table.listening_ports().collect::<Vec<_>>(),
            vec![(netns, 80)]
        );
        table.update(&SockKey::Kernel(1), |e| e.enter(TcpState::Close, 5));
        assert_eq!(
            table.listening_ports().count(),
            1,
            "another socket still listens"
        );
        table.remove(&SockKey::Kernel(2));
        assert_eq!(table.listening_ports().count(), 0);
    }

    #[test]
    fn tracks_lingering_timewait_sockets() {
        let mut table = SocketTable::new(10);
        let mut entry = Entry::new(TcpState::FinWait2, 0, true, endpoints(1));
        entry.timewait = true;
        table.insert(SockKey::Kernel(1), entry);
        table.insert(
            SockKey::Kernel(2),
            Entry::new(TcpState::FinWait2, 0, true, endpoints(2)),
        );
        assert_eq!(table.lingering().len(), 1);
        table.update(&SockKey::Kernel(1), |e| e.enter(TcpState::TimeWait, 10));
        assert!(table.lingering().is_empty());
        table.update(&SockKey::Kernel(2), |e| e.timewait = true);
        assert!(table.lingering().contains(&SockKey::Kernel(2)));
        table.remove(&SockKey::Kernel(2));
        assert!(table.lingering().is_empty());
    }

    #[test]
    fn finds_listed_sockets_by_endpoints() {
        let mut table = SocketTable::new(10);
        table.insert(
            SockKey::Listed(77),
            Entry::new(TcpState::CloseWait, 0, false, endpoints(5)),
        );
        table.insert(
            SockKey::Kernel(1),
            Entry::new(TcpState::CloseWait, 0, true, endpoints(6)),
        );
        assert_eq!(table.find_listed(&endpoints(5)), Some(SockKey::Listed(77)));
        assert_eq!(table.find_listed(&endpoints(6)), None);
    }
}
