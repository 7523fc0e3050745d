//! Keeps the table equal to the kernel's own list of sockets: the start-up snapshot seeds it,
//! later listings heal what events missed (a lost or skipped event, a request socket the
//! tracepoint never reports), each fix counted. A restarted daemon also adopts the kernel's
//! pinned per-socket records, which give sockets found at start-up their true ages.
use std::collections::{HashMap, HashSet};

use tracer_common::TcpState;

use super::{
    Tracker,
    report::Sink,
    table::{Entry, SockKey},
};
use crate::{
    enrich::socket_list::ListedSocket,
    source::events::{Endpoints, PinnedRecord},
};

/// A reconciliation whose listing is being taken.
pub(super) struct Reconciling {
    /// When the listing started.
    listed_at_ns: u64,
    /// Connections that closed since: the listing may still show them.
    closed: HashSet<Endpoints>,
}

impl Tracker {
    /// Starts a reconciliation: the kernel's listing is about to be taken at `now_ns`.
    pub(crate) fn begin_reconcile(&mut self, now_ns: u64) {
        self.reconciling = Some(Reconciling {
            listed_at_ns: now_ns,
            closed: HashSet::new(),
        });
    }

    /// Notes a connection closing while a listing is taken.
    pub(super) fn note_closed(&mut self, endpoints: &Endpoints) {
        if let Some(reconciling) = &mut self.reconciling {
            reconciling.closed.insert(*endpoints);
        }
    }

    /// Compares the table with the kernel's listing (taken since [`Self::begin_reconcile`], with
    /// every event written meanwhile already applied) and fixes what differs. The listing covers
    /// the network namespaces in `namespaces`: sockets of others are left alone. `seed` marks
    /// the first listing, at start-up: sockets added then are not fixes.
    ///
    /// Returns the sockets whose owner is not known but whose file the kernel listed (by inode),
    /// for the caller to look up and answer with [`Tracker::owners_looked_up`].
    pub(crate) fn reconcile(
        &mut self,
        listing: &[ListedSocket],
        namespaces: &HashSet<u32>,
        now_ns: u64,
        seed: bool,
        sink: &mut impl Sink,
    ) -> Vec<(SockKey, u32)> {
        let mut unowned = Vec::new();
        let Some(Reconciling {
            listed_at_ns: listed_at,
            closed,
        }) = self.reconciling.take()
        else {
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
            .filter(|(_, e)| namespaces.contains(&e.endpoints().netns))
            .map(|(k, e)| (*k, *e.endpoints(), e.state(), e.last_active_ns()))
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
                        self.table
                            .learn_local_port(&key, listing[i].endpoints.local_port);
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
                    if let Some(old) = self.table.get(&key).map(Entry::state)
                        && let (_, Some(report)) = self.leave_state(key, old, state, None, now_ns)
                    {
                        self.report_unstuck(&report, sink);
                    }
                    self.table
                        .correct(&key, state, now_ns, listing[i].endpoints);
                    self.note_unowned(key, &listing[i], &mut unowned);
                    self.stats.reconciliation.corrected += 1;
                }
                None => {
                    self.forget(key, now_ns, sink);
                    self.stats.reconciliation.removed += 1;
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
            if socket.state == TcpState::TimeWait
                || (socket.state == TcpState::FinWait2 && socket.inode == 0)
            {
                entry = entry.on_timewait_socket();
            }
            let key = SockKey::Listed(socket.cookie);
            self.insert(key, entry, now_ns, sink);
            self.note_unowned(key, socket, &mut unowned);
            if !seed {
                self.stats.reconciliation.added += 1;
            }
        }
        if !seed {
            self.stats.reconciliation.runs += 1;
        }
        unowned
    }

    /// A socket without an owner whose file the kernel listed: its owner is to be looked up by
    /// inode, and a stuck report waits for the answer.
    fn note_unowned(
        &mut self,
        key: SockKey,
        socket: &ListedSocket,
        unowned: &mut Vec<(SockKey, u32)>,
    ) {
        if socket.inode != 0 && self.table.get(&key).is_some_and(|e| e.owner().is_none()) {
            self.table.await_owner(&key);
            unowned.push((key, socket.inode));
        }
    }

    /// Gives sockets known only from the kernel's list the kernel's own records of them (kept in a
    /// pinned map across daemon restarts): their address, when they entered their state, and
    /// their owner. A record counts only if it shows the state the kernel lists. Returns how many
    /// sockets were matched.
    pub(crate) fn adopt_records(&mut self, records: &[PinnedRecord]) -> usize {
        let by_connection: HashMap<(Endpoints, TcpState), &PinnedRecord> = records
            .iter()
            .map(|r| ((r.endpoints, r.state), r))
            .collect();
        let listed: Vec<(SockKey, Endpoints, TcpState)> = self
            .table
            .iter()
            .filter(|(k, _)| matches!(k, SockKey::Listed(_)))
            .map(|(k, e)| (*k, *e.endpoints(), e.state()))
            .collect();
        let mut adopted = 0;
        for (key, endpoints, state) in listed {
            let Some(record) = by_connection.get(&(endpoints, state)) else {
                continue;
            };
            let kernel = SockKey::Kernel(record.sock);
            self.table.rekey(key, kernel);
            self.table
                .adopt_age(&kernel, record.since_ns, record.owner.clone());
            adopted += 1;
        }
        adopted
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
