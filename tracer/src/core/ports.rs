//! Ephemeral-port pressure per destination. A connection holds its local port while open and,
//! after an active close, through TIME-WAIT; toward one destination (namespace, local address,
//! remote address and port) only the namespace's ephemeral range can be used, so the range runs
//! out for that destination (`connect()` fails with `EADDRNOTAVAIL`) long before the host looks
//! busy. Counted from each full listing of the kernel's sockets ([`tally`], on the job's thread),
//! judged here ([`PortPressure`]): one report per episode past `--port-pressure`, one when it ends.
use std::{cmp::Reverse, collections::HashMap};

use tracer_common::TcpState;

use super::{
    reconcile::Records,
    report::{Destination, PortPressureRelieved, PortPressureReport, PressureView, Sink, Usage},
};
use crate::{
    enrich::socket_list::Listing,
    owner::{Comm, Owner},
};

/// An episode ends when the use falls this many points below the threshold: a destination
/// hovering at the threshold is reported once, not at every listing.
pub(crate) const HYSTERESIS: u8 = 5;
/// Destinations carried to the summary beyond those pressed (see [`PressureView`]).
pub(crate) const MOST_PRESSED: usize = 5;
/// Pressed destinations with a gauge of their own, at most.
pub(crate) const MAX_GAUGES: usize = 10;
/// Processes named in a report, at most.
const HOLDERS: usize = 5;

/// Counts each destination's ports in a listing of every state (its namespaces' port ranges
/// with it): the sockets whose local port lies in their namespace's range, whatever their
/// state, but listeners and the connections they accepted (their local port is the listener's).
/// Returns the destinations at or past `percent` less [`HYSTERESIS`] (those an episode may
/// concern), and the [`MOST_PRESSED`] others most used, most used first; the owners of those at
/// or past `percent` are looked up in `records`. Nothing when `percent` is 0 (off).
pub(crate) fn tally(listing: &Listing, records: &Records, percent: u8) -> Vec<Usage> {
    if percent == 0 {
        return Vec::new();
    }
    let listening = listing.listening();
    let counted = listing.sockets.iter().filter(|s| {
        let e = &s.endpoints;
        s.state != TcpState::Listen
            && e.remote_port != 0
            && !listening.contains(&(e.netns, e.local_port))
            && listing
                .port_ranges
                .get(&e.netns)
                .is_some_and(|r| r.contains(e.local_port))
    });
    let mut by_destination: HashMap<Destination, (u32, u32)> = HashMap::new();
    for s in counted.clone() {
        let counts = by_destination
            .entry(Destination::of(&s.endpoints))
            .or_default();
        counts.0 += 1;
        counts.1 += u32::from(s.state == TcpState::TimeWait);
    }
    let mut usage: Vec<Usage> = by_destination
        .into_iter()
        .filter_map(|(destination, (in_use, time_wait))| {
            let available = listing.port_ranges.get(&destination.netns)?.available();
            Some(Usage {
                destination,
                in_use,
                time_wait,
                available,
                holders: Vec::new(),
            })
        })
        .filter(|u| u.available > 0)
        .collect();
    usage.sort_by(|a, b| {
        b.percent()
            .total_cmp(&a.percent())
            .then(a.destination.cmp(&b.destination))
    });
    let kept = usage.iter().filter(|u| u.reaches(relief(percent))).count();
    usage.truncate(kept.max(MOST_PRESSED));
    let pressed: HashMap<Destination, usize> = usage
        .iter()
        .enumerate()
        .filter(|(_, u)| u.reaches(percent))
        .map(|(i, u)| (u.destination, i))
        .collect();
    if pressed.is_empty() {
        return usage;
    }
    let pids: HashMap<u64, u32> = records
        .sockets
        .iter()
        .map(|(cookie, r)| (*cookie, r.pid))
        .chain(records.timewaits.iter().map(|(_, r)| (r.cookie, r.pid)))
        .filter(|(_, pid)| *pid != 0)
        .collect();
    let mut by_pid: Vec<HashMap<u32, u32>> = vec![HashMap::new(); usage.len()];
    for s in counted {
        let destination = Destination::of(&s.endpoints);
        if let (Some(i), Some(pid)) = (pressed.get(&destination), pids.get(&s.cookie)) {
            *by_pid[*i].entry(*pid).or_default() += 1;
        }
    }
    for (u, counts) in usage.iter_mut().zip(by_pid) {
        let mut holders: Vec<(u32, u32)> = counts.into_iter().collect();
        holders.sort_by_key(|(pid, n)| (Reverse(*n), *pid));
        holders.truncate(HOLDERS);
        u.holders = holders
            .into_iter()
            .map(|(pid, n)| {
                let owner = Owner {
                    pid,
                    comm: Comm::new(""),
                    cgroup: None,
                };
                (owner, n)
            })
            .collect();
    }
    usage
}

/// Below this share an episode ends: [`HYSTERESIS`] points under the threshold, and at least 1 %
/// (with a threshold of 5 % or less, when the destination is all but unused).
fn relief(percent: u8) -> u8 {
    percent.saturating_sub(HYSTERESIS).max(1)
}

/// An episode under way.
#[derive(Debug, Clone, Copy)]
struct Episode {
    since_ns: u64,
    /// The most ports in use it saw.
    peak: u32,
    /// The range's size when last seen.
    available: u32,
}

/// Judges the counts of each listing: `port_pressure` past the threshold, once per episode, and
/// `port_pressure_relieved` when the use falls [`HYSTERESIS`] points below it (or the
/// destination's sockets are gone).
#[derive(Debug, Default)]
pub(crate) struct PortPressure {
    /// `--port-pressure`, in percent; 0: off.
    percent: u8,
    pressed: HashMap<Destination, Episode>,
    latest: Vec<Usage>,
    reports: u64,
}

impl PortPressure {
    pub(crate) fn new(percent: u8) -> Self {
        Self {
            percent,
            ..Self::default()
        }
    }

    /// The counts of a listing taken at `now_ns`, as [`tally`] kept them (holders described).
    pub(crate) fn check(&mut self, usage: Vec<Usage>, now_ns: u64, sink: &mut impl Sink) {
        if self.percent == 0 {
            return;
        }
        let floor = relief(self.percent);
        let now: HashMap<Destination, &Usage> = usage.iter().map(|u| (u.destination, u)).collect();
        let mut ended: Vec<(Destination, Episode)> = self
            .pressed
            .iter()
            .filter(|(d, _)| now.get(*d).is_none_or(|u| !u.reaches(floor)))
            .map(|(d, e)| (*d, *e))
            .collect();
        ended.sort_by_key(|(d, _)| *d);
        for (destination, episode) in ended {
            self.pressed.remove(&destination);
            let current = now.get(&destination);
            sink.port_pressure_relieved(&PortPressureRelieved {
                ts_ns: now_ns,
                destination,
                in_use: current.map_or(0, |u| u.in_use),
                available: current.map_or(episode.available, |u| u.available),
                peak: episode.peak,
                duration_ns: now_ns.saturating_sub(episode.since_ns),
            });
        }
        for u in usage.iter().filter(|u| u.reaches(self.percent)) {
            if let Some(episode) = self.pressed.get_mut(&u.destination) {
                episode.peak = episode.peak.max(u.in_use);
                episode.available = u.available;
                continue;
            }
            self.pressed.insert(
                u.destination,
                Episode {
                    since_ns: now_ns,
                    peak: u.in_use,
                    available: u.available,
                },
            );
            self.reports += 1;
            sink.port_pressure(&PortPressureReport {
                ts_ns: now_ns,
                destination: u.destination,
                in_use: u.in_use,
                available: u.available,
                time_wait: u.time_wait,
                threshold_percent: self.percent,
                holders: u.holders.clone(),
            });
        }
        self.latest = usage;
    }

    /// The destinations most used now, for summaries and metrics.
    pub(crate) fn view(&self) -> PressureView {
        let pressed_now = self
            .latest
            .iter()
            .take_while(|u| u.reaches(self.percent))
            .count()
            .min(MAX_GAUGES);
        PressureView {
            most_used: self
                .latest
                .iter()
                .take(pressed_now.max(MOST_PRESSED))
                .cloned()
                .collect(),
            pressed_now,
            reports: self.reports,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
