//! Port pressure on synthetic listings: what is counted toward which destination, and the
//! episodes the detector reports.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use proptest::prelude::*;
use tracer_common::{SockRecord, TcpState, TwRecord};

use super::*;
use crate::{
    core::tests::Recorded,
    enrich::{port_range::PortRange, socket_list::ListedSocket},
    source::events::{Endpoints, Family},
};

const S: u64 = 1_000_000_000;
const NETNS: u32 = 4026531840;
const OTHER_NETNS: u32 = 4026532000;
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const DB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const WEB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

fn socket(netns: u32, local_port: u16, remote: IpAddr, port: u16, state: TcpState) -> ListedSocket {
    let local = if remote.is_ipv4() {
        LOCAL
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    ListedSocket {
        endpoints: Endpoints {
            netns,
            family: if remote.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            local,
            local_port,
            remote,
            remote_port: port,
        },
        state,
        cookie: u64::from(local_port) << 32 | u64::from(netns & 0xffff),
        inode: 0,
        timewait: state == TcpState::TimeWait,
        queue: 0,
        backlog: 0,
    }
}

/// A listing of `sockets`, every namespace with the range 1000..=1099 (100 ports).
fn listing(sockets: Vec<ListedSocket>) -> Listing {
    let range = PortRange::new(1000, 1099, &[]);
    Listing {
        sockets,
        listed: HashSet::from([NETNS, OTHER_NETNS]),
        port_ranges: HashMap::from([(NETNS, range.clone()), (OTHER_NETNS, range)]),
        ..Listing::default()
    }
}

fn toward(remote: IpAddr, port: u16) -> Destination {
    Destination {
        netns: NETNS,
        local: LOCAL,
        remote,
        remote_port: port,
    }
}

/// `open` established connections and `closed` in TIME-WAIT toward `remote:port` from the range.
fn connections(remote: IpAddr, port: u16, open: u16, closed: u16) -> Vec<ListedSocket> {
    (0..open + closed)
        .map(|i| {
            let state = if i < open {
                TcpState::Established
            } else {
                TcpState::TimeWait
            };
            socket(NETNS, 1000 + i, remote, port, state)
        })
        .collect()
}

fn usage_of(usage: &[Usage], d: Destination) -> Option<&Usage> {
    usage.iter().find(|u| u.destination == d)
}

#[test]
fn every_state_in_the_range_counts_toward_its_destination() {
    let mut sockets = connections(DB, 5432, 50, 35);
    sockets.push(socket(NETNS, 1090, DB, 5432, TcpState::SynSent));
    // Outside the range (bound to an explicit port): not counted.
    sockets.push(socket(NETNS, 40_000, DB, 5432, TcpState::Established));
    // The same ports toward another destination are free toward this one.
    sockets.extend(connections(WEB, 443, 10, 0));
    let usage = tally(&listing(sockets), &Records::default(), 80);
    let db = usage_of(&usage, toward(DB, 5432)).unwrap();
    assert_eq!((db.in_use, db.time_wait, db.available), (86, 35, 100));
    let web = usage_of(&usage, toward(WEB, 443)).unwrap();
    assert_eq!((web.in_use, web.time_wait), (10, 0));
    assert_eq!(
        usage[0].destination,
        toward(DB, 5432),
        "the most used first"
    );
}

#[test]
fn listeners_and_the_connections_they_accepted_do_not_count() {
    let mut sockets = vec![socket(
        NETNS,
        1050,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
        TcpState::Listen,
    )];
    // Accepted connections: their local port is the listener's, each from another client port.
    sockets.extend((0..90).map(|i| socket(NETNS, 1050, DB, 30_000 + i, TcpState::Established)));
    assert!(tally(&listing(sockets), &Records::default(), 80).is_empty());
}

#[test]
fn each_namespace_has_its_own_range_and_reserved_ports_are_not_available() {
    let mut sockets = connections(DB, 5432, 20, 0);
    sockets.extend((0..20).map(|i| socket(OTHER_NETNS, 2000 + i, DB, 5432, TcpState::Established)));
    // A namespace whose range could not be read: nothing counted there.
    sockets.push(socket(7, 1000, DB, 5432, TcpState::Established));
    let mut l = listing(sockets);
    l.port_ranges.insert(
        OTHER_NETNS,
        PortRange::new(2000, 2039, &[(2030, 2039), (80, 80)]),
    );
    let usage = tally(&l, &Records::default(), 80);
    let other = usage_of(
        &usage,
        Destination {
            netns: OTHER_NETNS,
            ..toward(DB, 5432)
        },
    )
    .unwrap();
    assert_eq!((other.in_use, other.available), (20, 30));
    assert_eq!(usage_of(&usage, toward(DB, 5432)).unwrap().in_use, 20);
    assert!(usage.iter().all(|u| u.destination.netns != 7));
}

#[test]
fn ipv6_destinations_use_the_same_range() {
    let remote = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    let sockets = (0..85)
        .map(|i| socket(NETNS, 1000 + i, remote, 443, TcpState::Established))
        .collect();
    let usage = tally(&listing(sockets), &Records::default(), 80);
    assert_eq!(usage[0].in_use, 85);
    assert_eq!(usage[0].destination.family(), Family::Ipv6);
}

#[test]
fn the_processes_holding_most_are_named_from_the_records() {
    let sockets = connections(DB, 5432, 60, 30);
    let mut records = Records::default();
    for s in &sockets {
        let pid = if s.endpoints.local_port < 1070 {
            100
        } else {
            200
        };
        if s.timewait {
            let record = TwRecord {
                cookie: s.cookie,
                pid,
                ..TwRecord::default()
            };
            records
                .timewaits
                .push((crate::source::decode::tuple(&s.endpoints), record));
        } else if s.endpoints.local_port != 1000 {
            // One socket without a record: its owner is unknown, and left out.
            let record = SockRecord {
                pid,
                ..SockRecord::default()
            };
            records.sockets.push((s.cookie, record));
        }
    }
    let usage = tally(&listing(sockets), &records, 80);
    let holders: Vec<(u32, u32)> = usage[0].holders.iter().map(|(o, n)| (o.pid, *n)).collect();
    assert_eq!(holders, vec![(100, 69), (200, 20)]);
}

#[test]
fn only_destinations_near_the_threshold_and_the_most_used_are_kept() {
    let mut sockets = Vec::new();
    for d in 0..20u8 {
        let remote = IpAddr::V4(Ipv4Addr::new(10, 1, 0, d));
        sockets.extend(
            (0..u16::from(d)).map(|i| socket(NETNS, 1000 + i, remote, 80, TcpState::Established)),
        );
    }
    assert_eq!(
        tally(&listing(sockets.clone()), &Records::default(), 80).len(),
        MOST_PRESSED
    );
    assert_eq!(
        tally(&listing(sockets.clone()), &Records::default(), 20).len(),
        5
    );
    assert_eq!(
        tally(&listing(sockets.clone()), &Records::default(), 15).len(),
        10
    );
    assert!(
        tally(&listing(sockets), &Records::default(), 0).is_empty(),
        "off"
    );
}

/// A detector's view after `n` destinations came past the threshold, 99 to 100 - n ports in use.
pub(crate) fn pressed(n: u8) -> PressureView {
    let mut sockets = Vec::new();
    for d in 0..n {
        let remote = IpAddr::V4(Ipv4Addr::new(10, 1, 0, d));
        let open = 99 - u16::from(d);
        sockets
            .extend((0..open).map(|i| socket(NETNS, 1000 + i, remote, 80, TcpState::Established)));
    }
    let mut p = PortPressure::new(80);
    let usage = tally(&listing(sockets), &Records::default(), 80);
    p.check(usage, S, &mut Recorded::default());
    p.view()
}

#[test]
fn the_view_is_bounded() {
    let view = pressed(12);
    assert_eq!(
        (view.pressed_now, view.reports, view.most_used.len()),
        (10, 12, 10)
    );
    assert_eq!(view.most_used[0].in_use, 99);
    assert_eq!(pressed(2).most_used.len(), 2, "only what was kept");
}

/// The detector fed a listing with `in_use` ports toward the database.
fn check(p: &mut PortPressure, in_use: u16, at: u64, r: &mut Recorded) {
    let usage = tally(
        &listing(connections(DB, 5432, in_use, 0)),
        &Records::default(),
        80,
    );
    p.check(usage, at * S, r);
}

#[test]
fn one_report_per_episode_and_relief_below_the_hysteresis() {
    let mut p = PortPressure::new(80);
    let mut r = Recorded::default();
    check(&mut p, 79, 1, &mut r);
    assert!(r.pressure.is_empty());
    check(&mut p, 80, 2, &mut r);
    check(&mut p, 95, 3, &mut r);
    check(&mut p, 76, 4, &mut r);
    assert_eq!(r.pressure.len(), 1, "one report per episode");
    let report = &r.pressure[0];
    assert_eq!(
        (
            report.destination,
            report.in_use,
            report.available,
            report.threshold_percent
        ),
        (toward(DB, 5432), 80, 100, 80)
    );
    assert!(r.relieved.is_empty(), "76 % is within the hysteresis");
    assert_eq!(p.view().pressed_now, 0);
    assert_eq!(p.view().reports, 1);
    check(&mut p, 74, 6, &mut r);
    assert_eq!(r.relieved.len(), 1);
    let relieved = &r.relieved[0];
    assert_eq!(
        (relieved.in_use, relieved.peak, relieved.duration_ns),
        (74, 95, 4 * S)
    );
    check(&mut p, 90, 7, &mut r);
    assert_eq!(r.pressure.len(), 2, "a new episode");
    assert_eq!(p.view().pressed_now, 1);
    assert_eq!(p.view().most_used[0].in_use, 90);
}

#[test]
fn a_destination_gone_from_the_listing_is_relieved() {
    let mut p = PortPressure::new(80);
    let mut r = Recorded::default();
    check(&mut p, 90, 1, &mut r);
    check(&mut p, 0, 2, &mut r);
    assert_eq!(r.relieved.len(), 1);
    assert_eq!((r.relieved[0].in_use, r.relieved[0].available), (0, 100));
}

#[test]
fn off_reports_nothing() {
    let mut p = PortPressure::new(0);
    let mut r = Recorded::default();
    let usage = tally(
        &listing(connections(DB, 5432, 100, 0)),
        &Records::default(),
        80,
    );
    p.check(usage, S, &mut r);
    assert!(r.pressure.is_empty());
    assert_eq!(p.view(), PressureView::default());
}

proptest! {
    /// Random listings: every destination kept counts exactly its sockets in the range, and the
    /// reports of each destination alternate, pressure first, each pressure at or past the
    /// threshold and each relief below it less the hysteresis.
    #[test]
    fn tallies_and_episodes_hold(
        rounds in prop::collection::vec(
            prop::collection::vec((0u8..4, 990u16..1110, prop::sample::select(vec![
                TcpState::Established, TcpState::TimeWait, TcpState::SynSent, TcpState::FinWait1,
                TcpState::CloseWait, TcpState::Listen,
            ])), 0..400),
            1..8,
        ),
        percent in 1u8..100,
    ) {
        let mut p = PortPressure::new(percent);
        let mut r = Recorded::default();
        for (round, sockets) in rounds.iter().enumerate() {
            let mut seen = HashSet::new();
            let sockets: Vec<ListedSocket> = sockets
                .iter()
                .filter(|(d, port, _)| seen.insert((*d, *port)))
                .map(|(d, port, state)| {
                    let remote = IpAddr::V4(Ipv4Addr::new(10, 2, 0, *d));
                    socket(NETNS, *port, remote, 80, *state)
                })
                .collect();
            let l = listing(sockets.clone());
            let usage = tally(&l, &Records::default(), percent);
            let listening: HashSet<u16> = sockets
                .iter()
                .filter(|s| s.state == TcpState::Listen)
                .map(|s| s.endpoints.local_port)
                .collect();
            for u in &usage {
                let counted: Vec<&ListedSocket> = sockets
                    .iter()
                    .filter(|s| s.endpoints.remote == u.destination.remote)
                    .filter(|s| s.state != TcpState::Listen)
                    .filter(|s| (1000..=1099).contains(&s.endpoints.local_port))
                    .filter(|s| !listening.contains(&s.endpoints.local_port))
                    .collect();
                prop_assert_eq!(u.in_use as usize, counted.len());
                let time_wait = counted.iter().filter(|s| s.state == TcpState::TimeWait).count();
                prop_assert_eq!(u.time_wait as usize, time_wait);
            }
            p.check(usage, round as u64 * S, &mut r);
        }
        let mut events: Vec<(u64, Destination, bool, u32)> = r
            .pressure
            .iter()
            .map(|e| (e.ts_ns, e.destination, true, e.in_use))
            .chain(r.relieved.iter().map(|e| (e.ts_ns, e.destination, false, e.in_use)))
            .collect();
        events.sort_by_key(|(ts, d, pressed, _)| (*d, *ts, *pressed));
        let mut pressed: HashMap<Destination, bool> = HashMap::new();
        for (_, d, is_pressure, in_use) in events {
            let was = pressed.insert(d, is_pressure).unwrap_or(false);
            prop_assert_ne!(was, is_pressure, "reports alternate");
            if is_pressure {
                prop_assert!(u32::from(percent) * 100 <= in_use * 100);
            } else {
                let floor = u32::from(percent.saturating_sub(HYSTERESIS).max(1));
                prop_assert!(in_use * 100 < floor * 100);
            }
        }
    }
}
