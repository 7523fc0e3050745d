//! Stuck sockets: a socket that stays in a state longer than that state's threshold. The kernel
//! keeps an index of the sockets in watched states; the daemon looks through it when the earliest
//! one may cross its threshold (and at least once per shortest threshold, for sockets that enter
//! meanwhile), reports each socket once per episode, and repeats it in the summaries at most every
//! `--stuck-repeat`. The kernel tells when a socket leaves a watched state after its threshold:
//! the end of the episode, with the exact time it spent. One constructor per report.
use crate::owner::Owner;
use std::{collections::HashMap, time::Duration};

use tracer_common::TcpState;

use super::{
    report::{Sink, StuckReport, UnstuckReport},
    select::OwnerFilter,
};
use crate::{
    enrich::owners::Holders,
    source::events::{Endpoints, KernelTransition, Watched},
    units::nanos,
};

/// The states whose thresholds are a listener's, not a socket's.
const LISTENER_STATES: [TcpState; 2] = [TcpState::Listen, TcpState::SynRecv];

/// Per-state thresholds; `None` means the state is not watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thresholds([Option<Duration>; TcpState::COUNT]);

impl Default for Thresholds {
    /// The states where a socket normally passes quickly, or where a leak shows.
    fn default() -> Self {
        let mut thresholds = Self([None; TcpState::COUNT]);
        for (state, secs) in [
            (TcpState::SynSent, 10),
            // Not a socket's stay: a listener with a half-open connection this old. A full
            // socket passes SYN_RECV in microseconds; the half-open part of a handshake lives
            // in a request socket the tracepoint never sees (`listeners`).
            (TcpState::SynRecv, 10),
            (TcpState::CloseWait, 60),
            (TcpState::LastAck, 60),
            (TcpState::FinWait1, 60),
            (TcpState::Closing, 60),
            // Longer than the kernel's orphan timeout (tcp_fin_timeout, 60 s): only a socket
            // whose application half-closed and never closed stays this long.
            (TcpState::FinWait2, 120),
            // Not a socket's stay: a listener whose accept queue did not drain this long.
            (TcpState::Listen, 30),
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

    /// Whether sockets in `state` are watched for a stuck stay (not LISTEN or SYN_RECV: see
    /// `as_nanos`).
    pub(crate) fn watches(&self, state: TcpState) -> bool {
        !LISTENER_STATES.contains(&state) && self.get(state).is_some()
    }

    /// Nanoseconds per state, 0 for unwatched states: what the kernel programs are handed. The
    /// thresholds of LISTEN and SYN_RECV are for listeners (`listeners`): an accept queue that
    /// does not drain, half-open connections that persist. Watching full sockets in SYN_RECV
    /// would cost every connection a tenth of the tracer's kernel time, to catch nothing.
    pub(crate) fn as_nanos(&self) -> [u64; TcpState::COUNT] {
        let mut nanos = self.0.map(|t| t.map_or(0, nanos));
        for state in LISTENER_STATES {
            nanos[state as usize] = 0;
        }
        nanos
    }

    fn shortest(&self) -> Option<u64> {
        self.as_nanos().into_iter().filter(|ns| *ns > 0).min()
    }
}

impl StuckReport {
    /// A socket that entered `state` at `since_ns` is past `threshold` at `now_ns`.
    fn of(socket: &Candidate, threshold: Duration, now_ns: u64) -> Self {
        Self {
            ts_ns: now_ns,
            cookie: socket.cookie,
            endpoints: socket.endpoints,
            state: socket.state,
            age_ns: now_ns.saturating_sub(socket.since_ns),
            age_known: socket.age_known,
            threshold_ns: nanos(threshold),
            owner: socket.owner.clone(),
            accepted: socket.never_accepted.then_some(false),
        }
    }
}

impl UnstuckReport {
    /// A stuck socket left its state for `new` (`None`: it vanished) at `ts_ns`, after `spent`
    /// in it when the kernel knows.
    fn of(stuck: &Stuck, new: Option<TcpState>, spent: Option<u64>, ts_ns: u64) -> Self {
        let socket = &stuck.socket;
        Self {
            ts_ns,
            cookie: socket.cookie,
            endpoints: socket.endpoints,
            state: socket.state,
            new,
            duration_ns: spent.unwrap_or_else(|| ts_ns.saturating_sub(socket.since_ns)),
            age_known: spent.is_some() || socket.age_known,
            owner: socket.owner.clone(),
        }
    }
}

/// A socket in a watched state, as the detector knows it.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    cookie: u64,
    endpoints: Endpoints,
    state: TcpState,
    since_ns: u64,
    age_known: bool,
    owner: Option<Owner>,
    /// No process ever accepted it: `owner` is its listener's.
    never_accepted: bool,
}

impl From<&Watched> for Candidate {
    fn from(w: &Watched) -> Self {
        Self {
            cookie: w.cookie,
            endpoints: w.endpoints,
            state: w.state,
            since_ns: w.since_ns,
            age_known: w.age_known,
            owner: w.owner.clone(),
            never_accepted: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Stuck {
    socket: Candidate,
    reminded_ns: u64,
    /// The owner filter selects it: its reports are made and it is counted.
    selected: bool,
}

/// A socket past its threshold whose owner the kernel does not know: the daemon looks it up before
/// reporting it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnerLookup {
    pub(crate) cookie: u64,
    pub(crate) state: TcpState,
    pub(crate) endpoints: Endpoints,
}

pub(crate) struct StuckSockets {
    thresholds: Thresholds,
    repeat_ns: u64,
    /// Stuck now, by cookie.
    stuck: HashMap<u64, Stuck>,
    /// Past their threshold, waiting for their owner.
    awaiting: HashMap<u64, Candidate>,
    /// Stuck reports made, by state (of the sockets the owner filter selects).
    episodes: [u64; TcpState::COUNT],
    next_poll_ns: Option<u64>,
}

impl StuckSockets {
    pub(crate) fn new(thresholds: Thresholds, repeat_ns: u64) -> Self {
        Self {
            thresholds,
            repeat_ns,
            stuck: HashMap::new(),
            awaiting: HashMap::new(),
            episodes: [0; TcpState::COUNT],
            next_poll_ns: None,
        }
    }

    /// When the kernel's index should be looked through next (`None`: at once, or never when no
    /// state is watched).
    pub(crate) fn next_poll(&self) -> Option<u64> {
        self.next_poll_ns
    }

    /// Looks through the kernel's index of watched sockets (read before the events written since
    /// were applied): reports the sockets past their threshold, asks for the owners it needs, and
    /// ends the episodes of stuck sockets gone from it without a word from the kernel.
    pub(crate) fn poll(
        &mut self,
        watched: &[Watched],
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        let by_cookie: HashMap<u64, &Watched> = watched.iter().map(|w| (w.cookie, w)).collect();
        // A stuck socket no longer indexed in its state left it unseen (its event was lost, or a
        // reconciliation removed it): the episode ends now, or when it entered its new state.
        let left: Vec<u64> = self
            .stuck
            .iter()
            .filter(|(cookie, s)| {
                by_cookie
                    .get(cookie)
                    .is_none_or(|w| w.state != s.socket.state || w.since_ns != s.socket.since_ns)
            })
            .map(|(cookie, _)| *cookie)
            .collect();
        for cookie in left {
            if let Some(stuck) = self.stuck.remove(&cookie) {
                let (new, ended) = match by_cookie.get(&cookie) {
                    Some(w) => (Some(w.state), w.since_ns),
                    None => (None, now_ns),
                };
                let spent = ended.saturating_sub(stuck.socket.since_ns);
                if stuck.selected {
                    sink.unstuck(&UnstuckReport::of(&stuck, new, Some(spent), ended));
                }
            }
        }
        let mut lookups = Vec::new();
        let mut next: Option<u64> = self.thresholds.shortest().map(|t| now_ns + t);
        for w in watched {
            let Some(threshold) = self.thresholds.get(w.state) else {
                continue;
            };
            if self.stuck.contains_key(&w.cookie) || self.awaiting.contains_key(&w.cookie) {
                continue;
            }
            let deadline = w.since_ns.saturating_add(nanos(threshold));
            if deadline > now_ns {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            let candidate = Candidate::from(w);
            if candidate.owner.is_some() {
                self.report(w.cookie, candidate, now_ns, selection, sink);
            } else {
                lookups.push(OwnerLookup {
                    cookie: w.cookie,
                    state: w.state,
                    endpoints: w.endpoints,
                });
                self.awaiting.insert(w.cookie, candidate);
            }
        }
        self.next_poll_ns = next;
        lookups
    }

    /// The owners found (by cookie) for the sockets `looked_up`; those not found have none:
    /// their stuck reports go now.
    pub(crate) fn owners_found(
        &mut self,
        looked_up: &[u64],
        found: &Holders,
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        for cookie in looked_up {
            if let Some(mut candidate) = self.awaiting.remove(cookie) {
                candidate.owner = found.owners.get(cookie).cloned();
                candidate.never_accepted = found.never_accepted.contains(cookie);
                self.report(*cookie, candidate, now_ns, selection, sink);
            }
        }
    }

    fn report(
        &mut self,
        cookie: u64,
        socket: Candidate,
        now_ns: u64,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        let Some(threshold) = self.thresholds.get(socket.state) else {
            return;
        };
        let selected = selection.matches(socket.owner.as_ref());
        if selected {
            sink.stuck(&StuckReport::of(&socket, threshold, now_ns));
            self.episodes[socket.state as usize] += 1;
        }
        self.stuck.insert(
            cookie,
            Stuck {
                socket,
                reminded_ns: now_ns,
                selected,
            },
        );
    }

    /// A socket left a watched state after its threshold (the kernel's word): the end of its
    /// episode, with the exact time it spent. A socket that crossed its threshold and left before
    /// the daemon looked is reported stuck first, as of its threshold.
    pub(crate) fn left(
        &mut self,
        event: &KernelTransition,
        selection: &OwnerFilter,
        sink: &mut impl Sink,
    ) {
        let t = &event.transition;
        let spent = t.prev_state_ns;
        let stuck = match self.stuck.remove(&event.transition.cookie) {
            Some(stuck) if stuck.socket.state == t.old => stuck,
            Some(_) | None => {
                let Some(threshold) = self.thresholds.get(t.old) else {
                    return;
                };
                let awaited = self.awaiting.remove(&event.transition.cookie);
                let since_ns = spent.map_or_else(
                    || awaited.as_ref().map_or(t.ts_ns, |a| a.since_ns),
                    |spent| t.ts_ns.saturating_sub(spent),
                );
                let socket = Candidate {
                    cookie: t.cookie,
                    endpoints: t.endpoints,
                    state: t.old,
                    since_ns,
                    age_known: spent.is_some(),
                    owner: t.owner.clone().or(awaited.and_then(|a| a.owner)),
                    never_accepted: false,
                };
                let crossed = since_ns.saturating_add(nanos(threshold)).min(t.ts_ns);
                self.report(event.transition.cookie, socket, crossed, selection, sink);
                match self.stuck.remove(&event.transition.cookie) {
                    Some(stuck) => stuck,
                    None => return,
                }
            }
        };
        if stuck.selected {
            sink.unstuck(&UnstuckReport::of(&stuck, Some(t.new), spent, t.ts_ns));
        }
    }

    /// Stuck sockets due for a reminder (none in the last `--stuck-repeat`), marked as reminded.
    pub(crate) fn reminders(&mut self, now_ns: u64) -> Vec<StuckReport> {
        let repeat_ns = self.repeat_ns;
        let thresholds = &self.thresholds;
        self.stuck
            .values_mut()
            .filter(|s| s.selected && now_ns.saturating_sub(s.reminded_ns) >= repeat_ns)
            .map(|s| {
                s.reminded_ns = now_ns;
                let threshold = thresholds.get(s.socket.state).unwrap_or_default();
                StuckReport::of(&s.socket, threshold, now_ns)
            })
            .collect()
    }

    /// Stuck sockets now, by state (those the owner filter selects).
    pub(crate) fn by_state(&self) -> [u64; TcpState::COUNT] {
        let mut counts = [0; TcpState::COUNT];
        for s in self.stuck.values().filter(|s| s.selected) {
            counts[s.socket.state as usize] += 1;
        }
        counts
    }

    /// Stuck reports made so far, by state.
    pub(crate) fn episodes(&self) -> [u64; TcpState::COUNT] {
        self.episodes
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
        assert_eq!(t.get(TcpState::LastAck), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::FinWait1), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::Established), None);
        // A listener's thresholds are for its accept queue and its half-open connections, not
        // stays the kernel watches.
        assert_eq!(t.get(TcpState::Listen), Some(Duration::from_secs(30)));
        assert_eq!(t.get(TcpState::SynRecv), Some(Duration::from_secs(10)));
        let ns = t.as_nanos();
        for state in LISTENER_STATES {
            assert!(!t.watches(state));
            assert_eq!(ns[state as usize], 0);
        }
        assert_eq!(ns[TcpState::CloseWait as usize], 60_000_000_000);
        assert_eq!(ns[TcpState::Established as usize], 0);
        assert_eq!(t.shortest(), Some(10_000_000_000));
    }
}
