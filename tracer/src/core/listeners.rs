//! Listeners in trouble, from checks of the kernel's socket list every few seconds.
//!
//! - Stalled: a process that no longer calls accept() (hung, deadlocked, stopped) leaves
//!   connections in its listener's accept queue, where their clients' handshakes completed but
//!   nobody reads them; when the clients give up they sit in CLOSE_WAIT with no process at all. A
//!   listener whose queue was non-empty at every check for `--stuck listen=DURATION` is reported
//!   stalled, and recovered once its queue is seen empty. A listener that keeps up drains its
//!   queue between checks.
//! - Half-open: a handshake that never completes (a SYN flood, ACKs lost on the way back) lives
//!   in a request socket the state tracepoint never reports; its listener retransmits SYN-ACKs
//!   for it, which the kernel counts per listener. The checks list the request sockets of the
//!   listeners whose count moved (or that had some at the last check); a listener with a
//!   half-open connection listed for `--stuck syn-recv=DURATION` is reported, and recovered once
//!   none is that old.
//!
//! Either report waits for the listener's owner to be looked up; it ends when the listener
//! closes, too.
use crate::owner::Owner;
use std::collections::{HashMap, HashSet};

use tracer_common::TcpState;

use super::{
    report::{ListenerHalfOpen, ListenerRecovered, ListenerStalled, Sink, Trouble},
    select::OwnerFilter,
    stuck::OwnerLookup,
};
use crate::{
    enrich::socket_list::{ListedSocket, ListenerIndex},
    source::events::Endpoints,
};

/// The most listeners summaries list by SYN-ACK retransmits.
const MAX_SYNACK_LISTENERS: usize = 10;

/// A listener as one check of the kernel's list saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerSeen {
    pub(crate) cookie: u64,
    pub(crate) endpoints: Endpoints,
    /// Connections waiting in its accept queue, and the most it holds.
    pub(crate) queue: u32,
    pub(crate) backlog: u32,
    /// SYN-ACKs it retransmitted since the kernel programs were loaded.
    pub(crate) synack_retransmits: u64,
    /// Its half-open connections (request sockets, by cookie) when the check listed them.
    pub(crate) half_open: Vec<u64>,
}

/// Whether a check lists the listeners' half-open connections, given the listeners it found with
/// their SYN-ACK retransmits: only when some may exist, as listing them walks every connection of
/// the host. (A closed listener keeps its count in the kernel's map until evicted: not a move.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HalfOpenListing {
    Never,
    Always,
    /// Only if a listener's count is not the one given (a listener not given counts 0).
    IfMoved(HashMap<u64, u64>),
}

impl HalfOpenListing {
    pub(crate) fn wanted(&self, listeners: &[ListenerSeen]) -> bool {
        match self {
            Self::Never => false,
            Self::Always => true,
            Self::IfMoved(last) => listeners
                .iter()
                .any(|l| last.get(&l.cookie).copied().unwrap_or(0) != l.synack_retransmits),
        }
    }
}

impl ListenerSeen {
    /// The listeners of a listing, each with the SYN-ACKs it retransmitted (`synacks`, by cookie).
    pub(crate) fn all_of(listed: &[ListedSocket], synacks: &HashMap<u64, u64>) -> Vec<Self> {
        listed
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|s| Self {
                cookie: s.cookie,
                endpoints: s.endpoints,
                queue: s.queue,
                backlog: s.backlog,
                synack_retransmits: synacks.get(&s.cookie).copied().unwrap_or(0),
                half_open: Vec::new(),
            })
            .collect()
    }
}

/// Gives each listener its half-open connections: the request sockets listed (`requests`), each
/// on the listener it arrived on among those `listed`.
pub(crate) fn assign_half_open(
    listeners: &mut [ListenerSeen],
    listed: &[ListedSocket],
    requests: &[ListedSocket],
) {
    let index = ListenerIndex::new(listed);
    let mut by_listener: HashMap<u64, Vec<u64>> = HashMap::new();
    for request in requests {
        if let Some(listener) = index.listener_of(&request.endpoints) {
            by_listener
                .entry(listener.cookie)
                .or_default()
                .push(request.cookie);
        }
    }
    for l in listeners {
        l.half_open = by_listener.remove(&l.cookie).unwrap_or_default();
    }
}

#[derive(Debug, Clone)]
struct Episode {
    since_ns: u64,
    seen: ListenerSeen,
    /// Reported (`Some` once its owner was looked up), and whether the owner filter selected it.
    reported: Option<bool>,
    owner: Option<Owner>,
}

/// The episodes of one kind of trouble, by listener cookie.
struct Watch {
    trouble: Trouble,
    threshold_ns: Option<u64>,
    episodes: HashMap<u64, Episode>,
    /// Reports made since start-up.
    reports: u64,
}

impl Watch {
    fn new(trouble: Trouble, threshold_ns: Option<u64>) -> Self {
        Self {
            trouble,
            threshold_ns,
            episodes: HashMap::new(),
            reports: 0,
        }
    }

    /// One check: `troubled` are the listeners in trouble now, each with since when (`None`:
    /// since its episode began, or now). The episodes of the others end; those past the threshold
    /// and not yet reported are returned, for their owners to be looked up.
    fn check(
        &mut self,
        troubled: Vec<(&ListenerSeen, Option<u64>)>,
        all: &[ListenerSeen],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        let Some(threshold) = self.threshold_ns else {
            return Vec::new();
        };
        let still: HashSet<u64> = troubled.iter().map(|(l, _)| l.cookie).collect();
        let open: HashSet<u64> = all.iter().map(|l| l.cookie).collect();
        let ended: Vec<u64> = self
            .episodes
            .keys()
            .filter(|cookie| !still.contains(cookie))
            .copied()
            .collect();
        for cookie in ended {
            let Some(gone) = self.episodes.remove(&cookie) else {
                continue;
            };
            if gone.reported == Some(true) {
                sink.listener_recovered(&ListenerRecovered {
                    ts_ns: now_ns,
                    endpoints: gone.seen.endpoints,
                    trouble: self.trouble,
                    closed: !open.contains(&cookie),
                    duration_ns: now_ns.saturating_sub(gone.since_ns),
                    owner: gone.owner,
                });
            }
        }
        let mut lookups = Vec::new();
        for (seen, since) in troubled {
            let entry = self.episodes.entry(seen.cookie).or_insert_with(|| Episode {
                since_ns: since.unwrap_or(now_ns),
                seen: seen.clone(),
                reported: None,
                owner: None,
            });
            entry.seen = seen.clone();
            if entry.reported.is_some() {
                continue;
            }
            if let Some(since) = since {
                entry.since_ns = since;
            }
            if now_ns.saturating_sub(entry.since_ns) >= threshold {
                lookups.push(OwnerLookup {
                    cookie: seen.cookie,
                    state: TcpState::Listen,
                    endpoints: seen.endpoints,
                });
            }
        }
        lookups
    }

    /// Owners found for the listeners looked up: those still in trouble are reported.
    fn owners_found(
        &mut self,
        looked_up: &[u64],
        found: &HashMap<u64, Owner>,
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        let Some(threshold_ns) = self.threshold_ns else {
            return;
        };
        for cookie in looked_up {
            let Some(entry) = self.episodes.get_mut(cookie) else {
                continue;
            };
            if entry.reported.is_some() {
                continue;
            }
            entry.owner = found.get(cookie).cloned();
            let selected = selection.matches(entry.owner.as_ref());
            entry.reported = Some(selected);
            if !selected {
                continue;
            }
            self.reports += 1;
            let (seen, owner) = (&entry.seen, entry.owner.clone());
            let lasted_ns = now_ns.saturating_sub(entry.since_ns);
            match self.trouble {
                Trouble::Stalled => sink.listener_stalled(&ListenerStalled {
                    ts_ns: now_ns,
                    endpoints: seen.endpoints,
                    queue: seen.queue,
                    backlog: seen.backlog,
                    stalled_ns: lasted_ns,
                    threshold_ns,
                    owner,
                }),
                Trouble::HalfOpen => sink.listener_half_open(&ListenerHalfOpen {
                    ts_ns: now_ns,
                    endpoints: seen.endpoints,
                    half_open: u32::try_from(seen.half_open.len()).unwrap_or(u32::MAX),
                    oldest_ns: lasted_ns,
                    threshold_ns,
                    synack_retransmits: seen.synack_retransmits,
                    owner,
                }),
            }
        }
    }

    /// Listeners reported now (those the owner filter selects).
    fn reported(&self) -> u64 {
        self.episodes
            .values()
            .filter(|e| e.reported == Some(true))
            .count() as u64
    }
}

pub(crate) struct Listeners {
    stalls: Watch,
    half_open: Watch,
    /// When each half-open connection was first listed, by listener and request cookie.
    requests: HashMap<u64, HashMap<u64, u64>>,
    /// SYN-ACK retransmits of the listeners that have any, as the last check read them.
    synacks: HashMap<u64, (Endpoints, u64)>,
    checked: bool,
}

impl Listeners {
    /// `listen_ns`: the accept-queue threshold; `half_open_ns`: the half-open one.
    pub(crate) fn new(listen_ns: Option<u64>, half_open_ns: Option<u64>) -> Self {
        Self {
            stalls: Watch::new(Trouble::Stalled, listen_ns),
            half_open: Watch::new(Trouble::HalfOpen, half_open_ns),
            requests: HashMap::new(),
            synacks: HashMap::new(),
            checked: false,
        }
    }

    pub(crate) fn watched(&self) -> bool {
        self.stalls.threshold_ns.is_some() || self.half_open.threshold_ns.is_some()
    }

    /// Whether the next check lists half-open connections: at the first, after one that found
    /// some, and when a listener retransmitted a SYN-ACK since.
    pub(crate) fn half_open_listing(&self) -> HalfOpenListing {
        if self.half_open.threshold_ns.is_none() {
            HalfOpenListing::Never
        } else if !self.checked || !self.requests.is_empty() {
            HalfOpenListing::Always
        } else {
            HalfOpenListing::IfMoved(
                self.synacks
                    .iter()
                    .map(|(cookie, (_, n))| (*cookie, *n))
                    .collect(),
            )
        }
    }

    /// One check of every listener: troubles that ended are reported; listeners in trouble past
    /// their threshold are returned, for their owners to be looked up before they are reported.
    pub(crate) fn check(
        &mut self,
        listeners: &[ListenerSeen],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        self.checked = true;
        self.synacks = listeners
            .iter()
            .filter(|l| l.synack_retransmits > 0)
            .map(|l| (l.cookie, (l.endpoints, l.synack_retransmits)))
            .collect();
        let mut requests = HashMap::new();
        for l in listeners.iter().filter(|l| !l.half_open.is_empty()) {
            let known = self.requests.remove(&l.cookie).unwrap_or_default();
            let first_listed: HashMap<u64, u64> = l
                .half_open
                .iter()
                .map(|r| (*r, known.get(r).copied().unwrap_or(now_ns)))
                .collect();
            requests.insert(l.cookie, first_listed);
        }
        self.requests = requests;

        let backlogged = listeners
            .iter()
            .filter(|l| l.queue > 0)
            .map(|l| (l, None))
            .collect();
        let mut lookups = self.stalls.check(backlogged, listeners, now_ns, sink);
        let threshold = self.half_open.threshold_ns.unwrap_or(u64::MAX);
        let half_open = listeners
            .iter()
            .filter_map(|l| {
                let oldest = self.requests.get(&l.cookie)?.values().min().copied()?;
                (now_ns.saturating_sub(oldest) >= threshold).then_some((l, Some(oldest)))
            })
            .collect();
        lookups.extend(self.half_open.check(half_open, listeners, now_ns, sink));
        lookups
    }

    /// Owners found for the listeners looked up: those still in trouble are reported.
    pub(crate) fn owners_found(
        &mut self,
        looked_up: &[u64],
        found: &HashMap<u64, Owner>,
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        for watch in [&mut self.stalls, &mut self.half_open] {
            watch.owners_found(looked_up, found, now_ns, selection, sink);
        }
    }

    /// Listeners stalled now (those the owner filter selects), and stall reports since start-up.
    pub(crate) fn stalled(&self) -> (u64, u64) {
        (self.stalls.reported(), self.stalls.reports)
    }

    /// Listeners reported with half-open connections now, and such reports since start-up.
    pub(crate) fn half_open(&self) -> (u64, u64) {
        (self.half_open.reported(), self.half_open.reports)
    }

    /// The listeners that retransmitted the most SYN-ACKs, with their counts, most first.
    pub(crate) fn synack_retransmits(&self) -> Vec<(Endpoints, u64)> {
        let mut most: Vec<(Endpoints, u64)> = self.synacks.values().copied().collect();
        most.sort_by_key(|(e, n)| (std::cmp::Reverse(*n), e.local_port));
        most.truncate(MAX_SYNACK_LISTENERS);
        most
    }
}
