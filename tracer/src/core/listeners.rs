//! Listeners that stop accepting. A process that no longer calls accept() (hung, deadlocked,
//! stopped) leaves connections in its listener's accept queue, where their clients' handshakes
//! completed but nobody reads them; when the clients give up they sit in CLOSE_WAIT with no
//! process at all. The kernel's socket list gives each listener's queue length and backlog; a
//! listener whose queue was non-empty at every check for `--stuck listen=DURATION` is reported
//! stalled (with its owner, looked up first), and recovered once its queue is seen empty, or it
//! closed. A listener that keeps up drains its queue between checks.
use std::collections::HashMap;

use tracer_common::TcpState;

use super::{report::Sink, select::OwnerFilter, stuck::OwnerLookup};
use crate::source::events::{Endpoints, Owner};

/// A listener as one check of the kernel's list saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerSeen {
    pub(crate) cookie: u64,
    pub(crate) endpoints: Endpoints,
    /// Connections waiting in its accept queue, and the most it holds.
    pub(crate) queue: u32,
    pub(crate) backlog: u32,
}

/// A listener whose accept queue has not drained for its threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerStalled {
    pub(crate) ts_ns: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) queue: u32,
    pub(crate) backlog: u32,
    /// Since when the queue was seen non-empty at every check (a lower bound of the stall).
    pub(crate) stalled_ns: u64,
    pub(crate) threshold_ns: u64,
    pub(crate) owner: Option<Owner>,
}

/// A stalled listener drained its queue (`closed` false) or was closed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerRecovered {
    pub(crate) ts_ns: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) closed: bool,
    /// How long its queue went undrained, as the checks saw it.
    pub(crate) duration_ns: u64,
    pub(crate) owner: Option<Owner>,
}

#[derive(Debug, Clone)]
struct Backlogged {
    since_ns: u64,
    seen: ListenerSeen,
    /// Reported stalled (`Some` once its owner was looked up), and whether the owner filter
    /// selected it.
    reported: Option<bool>,
    owner: Option<Owner>,
}

pub(crate) struct Listeners {
    threshold_ns: Option<u64>,
    backlogged: HashMap<u64, Backlogged>,
    /// Stall reports made since start-up.
    stalls: u64,
}

impl Listeners {
    pub(crate) fn new(threshold_ns: Option<u64>) -> Self {
        Self {
            threshold_ns,
            backlogged: HashMap::new(),
            stalls: 0,
        }
    }

    pub(crate) fn watched(&self) -> bool {
        self.threshold_ns.is_some()
    }

    /// One check of every listener: queues that drained end their stall; those undrained past
    /// the threshold are returned, for their owners to be looked up before they are reported.
    pub(crate) fn check(
        &mut self,
        listeners: &[ListenerSeen],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        let Some(threshold) = self.threshold_ns else {
            return Vec::new();
        };
        let waiting: HashMap<u64, &ListenerSeen> = listeners
            .iter()
            .filter(|l| l.queue > 0)
            .map(|l| (l.cookie, l))
            .collect();
        let drained: Vec<u64> = self
            .backlogged
            .keys()
            .filter(|cookie| !waiting.contains_key(cookie))
            .copied()
            .collect();
        for cookie in drained {
            let Some(gone) = self.backlogged.remove(&cookie) else {
                continue;
            };
            if gone.reported == Some(true) {
                sink.listener_recovered(&ListenerRecovered {
                    ts_ns: now_ns,
                    endpoints: gone.seen.endpoints,
                    closed: !listeners.iter().any(|l| l.cookie == cookie),
                    duration_ns: now_ns.saturating_sub(gone.since_ns),
                    owner: gone.owner,
                });
            }
        }
        let mut lookups = Vec::new();
        for (cookie, seen) in waiting {
            let entry = self.backlogged.entry(cookie).or_insert_with(|| Backlogged {
                since_ns: now_ns,
                seen: seen.clone(),
                reported: None,
                owner: None,
            });
            entry.seen = seen.clone();
            if entry.reported.is_none() && now_ns.saturating_sub(entry.since_ns) >= threshold {
                lookups.push(OwnerLookup {
                    cookie,
                    state: TcpState::Listen,
                    endpoints: seen.endpoints,
                });
            }
        }
        lookups
    }

    /// Owners found for the listeners looked up: those still undrained are reported stalled.
    pub(crate) fn owners_found(
        &mut self,
        looked_up: &[u64],
        found: &HashMap<u64, Owner>,
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        let Some(threshold) = self.threshold_ns else {
            return;
        };
        for cookie in looked_up {
            let Some(entry) = self.backlogged.get_mut(cookie) else {
                continue;
            };
            if entry.reported.is_some() {
                continue;
            }
            entry.owner = found.get(cookie).cloned();
            let selected = selection.matches(entry.owner.as_ref());
            entry.reported = Some(selected);
            if selected {
                self.stalls += 1;
                sink.listener_stalled(&ListenerStalled {
                    ts_ns: now_ns,
                    endpoints: entry.seen.endpoints,
                    queue: entry.seen.queue,
                    backlog: entry.seen.backlog,
                    stalled_ns: now_ns.saturating_sub(entry.since_ns),
                    threshold_ns: threshold,
                    owner: entry.owner.clone(),
                });
            }
        }
    }

    /// Listeners stalled now (those the owner filter selects).
    pub(crate) fn stalled(&self) -> u64 {
        self.backlogged
            .values()
            .filter(|b| b.reported == Some(true))
            .count() as u64
    }

    /// Stall reports made since start-up.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls
    }
}
