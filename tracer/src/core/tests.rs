//! The core on synthetic input: the kernel's index of watched sockets as polls would read it, the
//! transitions the kernel sends, owners found, and the time.
use crate::owner::{Cgroup, Comm, Owner};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use proptest::prelude::*;
use tracer_common::TcpState::{self, *};

use super::{
    interval::{Context, time_wait_by_remote_port},
    listeners::{HalfOpenListing, ListenerSeen, assign_half_open},
    report::{
        CallFailed, ListenerHalfOpen, ListenerRecovered, ListenerStalled, PortPressureRelieved,
        PortPressureReport, Sink, StuckReport, TransitionInfo, Trouble, UnstuckReport,
    },
    select::OwnerFilter,
    stuck::Thresholds,
    *,
};
use crate::enrich::{owners::Holders, socket_list::ListedSocket};
use crate::source::events::{Endpoints, Family, KernelTransition, Transition, Watched};

const S: u64 = 1_000_000_000;

/// The stuck sockets due for a reminder in the summary of an interval closed at `now_ns`.
fn reminders(t: &mut Tracker, now_ns: u64) -> Vec<StuckReport> {
    let context = Context {
        now_ns,
        ..Context::default()
    };
    t.close_interval(&Aggregates::default(), &[], context)
        .reminders
}

fn holders(owners: HashMap<u64, Owner>) -> Holders {
    Holders {
        owners,
        ..Holders::default()
    }
}
const NETNS: u32 = 4026531840;

#[derive(Default, Debug)]
pub(super) struct Recorded {
    transitions: Vec<(Transition, TransitionInfo)>,
    stuck: Vec<StuckReport>,
    unstuck: Vec<UnstuckReport>,
    stalled: Vec<ListenerStalled>,
    half_open: Vec<ListenerHalfOpen>,
    recovered: Vec<ListenerRecovered>,
    pub(super) pressure: Vec<PortPressureReport>,
    pub(super) relieved: Vec<PortPressureRelieved>,
    pub(super) failed: Vec<CallFailed>,
}

impl Sink for Recorded {
    fn transition(&mut self, t: &Transition, info: TransitionInfo) {
        self.transitions.push((t.clone(), info));
    }
    fn stuck(&mut self, r: &StuckReport) {
        self.stuck.push(r.clone());
    }
    fn unstuck(&mut self, r: &UnstuckReport) {
        self.unstuck.push(r.clone());
    }
    fn listener_stalled(&mut self, r: &ListenerStalled) {
        self.stalled.push(r.clone());
    }
    fn listener_half_open(&mut self, r: &ListenerHalfOpen) {
        self.half_open.push(r.clone());
    }
    fn listener_recovered(&mut self, r: &ListenerRecovered) {
        self.recovered.push(r.clone());
    }
    fn port_pressure(&mut self, r: &PortPressureReport) {
        self.pressure.push(r.clone());
    }
    fn port_pressure_relieved(&mut self, r: &PortPressureRelieved) {
        self.relieved.push(r.clone());
    }
    fn call_failed(&mut self, r: &CallFailed) {
        self.failed.push(r.clone());
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

fn server() -> Owner {
    Owner {
        pid: 7,
        comm: Comm::new("server"),
        cgroup: Some(Cgroup::at("/system.slice/server.service")),
    }
}

fn watched(cookie: u64, state: TcpState, since_ns: u64, owner: Option<Owner>) -> Watched {
    Watched {
        cookie,
        endpoints: ends(cookie),
        state,
        since_ns,
        age_known: true,
        owner,
    }
}

fn left(cookie: u64, old: TcpState, new: TcpState, ts_ns: u64, spent: u64) -> KernelTransition {
    KernelTransition {
        transition: Transition {
            ts_ns,
            cookie,
            object: 0x1000 + cookie,
            endpoints: ends(cookie),
            old,
            new,
            prev_state_ns: Some(spent),
            owner: Some(server()),
            end: None,
            syn_retransmits: None,
        },
        service_port: 80,
        long_stay: true,
    }
}

fn thresholds(state: TcpState, secs: u64) -> Thresholds {
    let mut t = Thresholds::default();
    t.set(state, Some(Duration::from_secs(secs)));
    t
}

fn tracker_with(owners: OwnerFilter) -> Tracker {
    Tracker::new(
        Settings {
            thresholds: thresholds(CloseWait, 2),
            repeat_ns: 10 * S,
            owners,
            port_pressure: 80,
        },
        [0; TcpState::COUNT],
    )
}

fn tracker() -> Tracker {
    tracker_with(OwnerFilter::default())
}

#[test]
fn stuck_within_a_poll_of_its_threshold_then_unstuck_exactly() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    let index = [watched(1, CloseWait, S, Some(server()))];
    assert!(t.poll_watched(&index, 2 * S, &mut r).is_empty());
    assert!(r.stuck.is_empty());
    assert_eq!(t.next_poll(), Some(3 * S), "its deadline");
    t.poll_watched(&index, 3 * S, &mut r);
    t.poll_watched(&index, 4 * S, &mut r);
    assert_eq!(r.stuck.len(), 1, "once per episode");
    let report = &r.stuck[0];
    assert_eq!(
        (report.state, report.age_ns, report.age_known),
        (CloseWait, 2 * S, true)
    );
    assert_eq!(report.owner, Some(server()));
    assert_eq!(report.threshold_ns, 2 * S);
    // It closes at 6 s: the kernel says so, with the exact time spent.
    t.on_transition(left(1, CloseWait, LastAck, 6 * S, 5 * S), &mut r);
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(
        (r.unstuck[0].duration_ns, r.unstuck[0].new),
        (5 * S, Some(LastAck))
    );
    assert!(r.unstuck[0].age_known);
    // The index no longer has it: nothing more.
    t.poll_watched(&[], 7 * S, &mut r);
    assert_eq!((r.stuck.len(), r.unstuck.len()), (1, 1));
    let snapshot = t.snapshot(&Aggregates::default());
    assert_eq!(snapshot.episodes[CloseWait as usize], 1);
    assert_eq!(snapshot.stuck[CloseWait as usize], 0);
}

#[test]
fn a_socket_that_left_before_the_poll_is_reported_as_of_its_threshold() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.on_transition(left(1, CloseWait, LastAck, 10 * S, 3 * S), &mut r);
    assert_eq!(r.stuck.len(), 1);
    assert_eq!(
        (r.stuck[0].ts_ns, r.stuck[0].age_ns),
        (9 * S, 2 * S),
        "at 7 s + 2 s"
    );
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(r.unstuck[0].duration_ns, 3 * S);
    // A transition that is no long stay is only a line.
    let mut quick = left(2, CloseWait, LastAck, 11 * S, S);
    quick.long_stay = false;
    t.on_transition(quick, &mut r);
    assert_eq!((r.stuck.len(), r.transitions.len()), (1, 2));
}

#[test]
fn a_socket_without_a_known_owner_waits_for_the_lookup() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    let index = [watched(1, CloseWait, 0, None)];
    let lookups = t.poll_watched(&index, 3 * S, &mut r);
    assert_eq!(lookups.len(), 1);
    assert_eq!((lookups[0].cookie, lookups[0].state), (1, CloseWait));
    assert!(r.stuck.is_empty(), "held for its owner");
    // Polled again meanwhile: not asked twice.
    assert!(t.poll_watched(&index, 3 * S + 1, &mut r).is_empty());
    // A second socket due meanwhile waits for its own lookup.
    let more = [
        watched(1, CloseWait, 0, None),
        watched(3, CloseWait, 0, None),
    ];
    assert_eq!(t.poll_watched(&more, 3 * S + 1, &mut r).len(), 1);
    t.owners_found(
        &[1],
        &holders(HashMap::from([(1, server())])),
        3 * S + 2,
        &mut r,
    );
    assert_eq!(r.stuck.len(), 1, "only the socket looked up");
    assert_eq!(r.stuck.len(), 1);
    assert_eq!(r.stuck[0].owner, Some(server()));
    // One that is not found is reported without an owner.
    let other = [watched(2, CloseWait, 0, None)];
    t.poll_watched(&other, 4 * S, &mut r);
    t.owners_found(&[2, 3], &Holders::default(), 4 * S, &mut r);
    assert_eq!(r.stuck[1].owner, None);
    assert_eq!(r.stuck.len(), 3);
}

#[test]
fn a_stuck_socket_gone_from_the_index_without_a_word_ends_its_episode() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.poll_watched(&[watched(1, CloseWait, 0, Some(server()))], 3 * S, &mut r);
    // It moved on (its event was lost): the index shows it in LAST_ACK since 4 s.
    let mut moved = watched(1, LastAck, 4 * S, Some(server()));
    moved.age_known = true;
    t.poll_watched(&[moved], 5 * S, &mut r);
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(
        (r.unstuck[0].new, r.unstuck[0].duration_ns),
        (Some(LastAck), 4 * S)
    );
    // Vanished altogether.
    t.poll_watched(&[watched(2, CloseWait, 0, Some(server()))], 6 * S, &mut r);
    t.poll_watched(&[], 7 * S, &mut r);
    assert_eq!(r.unstuck.len(), 2);
    assert_eq!((r.unstuck[1].new, r.unstuck[1].duration_ns), (None, 7 * S));
}

#[test]
fn reminders_come_at_most_every_repeat() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.poll_watched(&[watched(1, CloseWait, 0, Some(server()))], 2 * S, &mut r);
    assert!(reminders(&mut t, 5 * S).is_empty(), "reported 3 s ago");
    let due = reminders(&mut t, 12 * S);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].age_ns, 12 * S);
    assert!(reminders(&mut t, 15 * S).is_empty());
}

#[test]
fn the_owner_filter_selects_reports_and_stuck_counts() {
    let mut t = tracker_with(OwnerFilter {
        comms: vec!["server".into()],
        ..Default::default()
    });
    let mut r = Recorded::default();
    let other = Owner {
        pid: 8,
        comm: Comm::new("other"),
        cgroup: None,
    };
    let index = [
        watched(1, CloseWait, 0, Some(server())),
        watched(2, CloseWait, 0, Some(other.clone())),
    ];
    t.poll_watched(&index, 3 * S, &mut r);
    assert_eq!(
        r.stuck.iter().map(|s| s.cookie).collect::<Vec<_>>(),
        vec![1]
    );
    let snapshot = t.snapshot(&Aggregates::default());
    assert_eq!(snapshot.stuck[CloseWait as usize], 1, "the owner's only");
    assert_eq!(reminders(&mut t, 20 * S).len(), 1);
    let mut theirs = left(2, CloseWait, LastAck, 21 * S, 21 * S);
    theirs.transition.owner = Some(other);
    t.on_transition(left(1, CloseWait, LastAck, 21 * S, 21 * S), &mut r);
    t.on_transition(theirs, &mut r);
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(
        r.transitions
            .iter()
            .map(|(_, info)| info.selected)
            .collect::<Vec<_>>(),
        vec![true, false],
        "lines of the owner only"
    );
}

#[test]
fn polls_come_at_least_once_per_shortest_threshold() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.poll_watched(&[], 100 * S, &mut r);
    assert_eq!(
        t.next_poll(),
        Some(102 * S),
        "a socket entering now may be due then"
    );
    t.poll_watched(&[watched(1, SynSent, 95 * S, None)], 100 * S, &mut r);
    assert_eq!(t.next_poll(), Some(102 * S), "SYN_SENT's 10 s come later");
}

fn listener(cookie: u64, queue: u32) -> ListenerSeen {
    ListenerSeen {
        cookie,
        endpoints: ends(cookie),
        queue,
        backlog: 128,
        synack_retransmits: 0,
        half_open: Vec::new(),
    }
}

/// A listener with these half-open connections (request cookies), and SYN-ACK retransmits.
fn half_open(cookie: u64, requests: &[u64], synacks: u64) -> ListenerSeen {
    ListenerSeen {
        synack_retransmits: synacks,
        half_open: requests.to_vec(),
        ..listener(cookie, 0)
    }
}

/// A check's listing, grouped: the listeners with their SYN-ACK retransmits, and each request
/// socket on the listener it arrived on (bound to its address, or else to any).
#[test]
fn half_open_connections_are_grouped_by_their_listener() {
    let socket = |cookie: u64, state: TcpState, local: [u8; 4], port: u16| ListedSocket {
        endpoints: Endpoints {
            local: IpAddr::V4(local.into()),
            local_port: port,
            remote_port: if state == Listen { 0 } else { 6000 + port },
            ..ends(cookie)
        },
        state,
        cookie,
        inode: 0,
        timewait: false,
        queue: 0,
        backlog: 0,
    };
    let listed = [
        socket(1, Listen, [127, 0, 0, 1], 80),
        socket(2, Listen, [0, 0, 0, 0], 80),
        socket(3, Listen, [0, 0, 0, 0], 443),
        socket(4, Established, [127, 0, 0, 1], 80),
    ];
    let mut listeners = ListenerSeen::all_of(&listed, &HashMap::from([(2, 6)]));
    let seen: Vec<(u64, u64)> = listeners
        .iter()
        .map(|l| (l.cookie, l.synack_retransmits))
        .collect();
    assert_eq!(seen, vec![(1, 0), (2, 6), (3, 0)]);
    let requests = [
        socket(10, SynRecv, [127, 0, 0, 1], 80),
        socket(11, SynRecv, [10, 0, 0, 1], 80),
        socket(12, SynRecv, [10, 0, 0, 1], 8080),
        socket(13, SynRecv, [127, 0, 0, 1], 80),
    ];
    assign_half_open(&mut listeners, &listed, &requests);
    let half_open: Vec<&[u64]> = listeners.iter().map(|l| &l.half_open[..]).collect();
    assert_eq!(half_open, vec![&[10, 13][..], &[11], &[]]);
}

/// Half-open connections are listed only when some may exist: at the first check, after one that
/// found some, and when a listener's SYN-ACK retransmits moved.
#[test]
fn half_open_connections_are_listed_when_synacks_move() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    assert_eq!(t.half_open_listing(), HalfOpenListing::Always);
    t.check_listeners(&[half_open(1, &[], 4), listener(2, 0)], 0, &mut r);
    let listing = t.half_open_listing();
    assert_eq!(listing, HalfOpenListing::IfMoved(HashMap::from([(1, 4)])));
    assert!(!listing.wanted(&[half_open(1, &[], 4), listener(2, 0)]));
    assert!(listing.wanted(&[half_open(1, &[], 5)]), "moved");
    assert!(
        listing.wanted(&[half_open(1, &[], 4), half_open(2, &[], 1)]),
        "a new one"
    );
    assert!(
        !listing.wanted(&[listener(2, 0)]),
        "listener 1 closed: its count is not a move"
    );
    t.check_listeners(&[half_open(1, &[7], 5)], 2 * S, &mut r);
    assert_eq!(t.half_open_listing(), HalfOpenListing::Always);
    let mut off = thresholds(SynRecv, 1);
    off.set(SynRecv, None);
    let off = Settings {
        thresholds: off,
        repeat_ns: S,
        owners: OwnerFilter::default(),
        port_pressure: 0,
    };
    assert_eq!(
        Tracker::new(off, [0; TcpState::COUNT]).half_open_listing(),
        HalfOpenListing::Never
    );
}

/// The default syn-recv threshold is 10 s: a listener is reported once one of its half-open
/// connections has been listed that long, with their count and its SYN-ACK retransmits, and
/// recovers when none is that old. Handshakes that complete within it never count.
#[test]
fn listeners_with_old_half_open_connections_are_reported() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    // Listener 2's handshakes each complete within a few seconds: never reported.
    for (at, one, two) in [
        (0, vec![10, 11], vec![20]),
        (5, vec![10, 11, 12], vec![21]),
        (9, vec![10, 12], vec![21, 22]),
    ] {
        let seen = [half_open(1, &one, at), half_open(2, &two, 1)];
        assert!(t.check_listeners(&seen, at * S, &mut r).is_empty());
    }
    let lookups = t.check_listeners(
        &[half_open(1, &[10, 12], 9), half_open(2, &[23], 2)],
        10 * S,
        &mut r,
    );
    assert_eq!(
        lookups
            .iter()
            .map(|l| (l.cookie, l.state))
            .collect::<Vec<_>>(),
        vec![(1, Listen)]
    );
    t.owners_found(
        &[1],
        &holders(HashMap::from([(1, server())])),
        11 * S,
        &mut r,
    );
    assert_eq!(r.half_open.len(), 1);
    let report = &r.half_open[0];
    assert_eq!((report.half_open, report.synack_retransmits), (2, 9));
    assert_eq!((report.oldest_ns, report.threshold_ns), (11 * S, 10 * S));
    assert_eq!(report.owner, Some(server()));
    assert!(r.stalled.is_empty());
    let snapshot = t.snapshot(&Default::default());
    assert_eq!(
        (snapshot.half_open_listeners, snapshot.half_open_reports),
        (1, 1)
    );
    assert_eq!(
        snapshot.synack_retransmits_by_listener,
        vec![(ends(1), 9), (ends(2), 2)],
        "most first"
    );
    // Still an old one (12, listed at 5 s): reported once, not again.
    assert!(
        t.check_listeners(&[half_open(1, &[12, 13], 12)], 16 * S, &mut r)
            .is_empty()
    );
    assert_eq!(r.half_open.len(), 1);
    assert!(r.recovered.is_empty());
    // None that old now: recovered, the trouble counted from the oldest at the report.
    t.check_listeners(&[half_open(1, &[13, 14], 12)], 20 * S, &mut r);
    assert_eq!(r.recovered.len(), 1);
    let recovered = &r.recovered[0];
    assert_eq!(recovered.trouble, Trouble::HalfOpen);
    assert_eq!((recovered.duration_ns, recovered.closed), (20 * S, false));
    assert_eq!(t.snapshot(&Default::default()).half_open_listeners, 0);
}

#[test]
fn a_half_open_listener_that_closes_recovers_as_closed() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.check_listeners(&[half_open(1, &[5], 1)], 0, &mut r);
    let lookups = t.check_listeners(&[half_open(1, &[5], 3)], 10 * S, &mut r);
    assert_eq!(lookups.len(), 1);
    // Its owner is not found: reported all the same; then it closes.
    t.owners_found(&[1], &Holders::default(), 10 * S, &mut r);
    assert_eq!((r.half_open.len(), r.half_open[0].owner.clone()), (1, None));
    t.check_listeners(&[], 12 * S, &mut r);
    assert!(r.recovered[0].closed);
    assert_eq!(r.recovered[0].trouble, Trouble::HalfOpen);
}

/// The default listen threshold is 30 s: a queue undrained at every check that long is a stall,
/// reported once its owner is looked up, and recovered when it drains; a queue that drains
/// between checks is not.
#[test]
fn listeners_whose_queue_does_not_drain_are_stalled() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    assert!(t.watches_listeners());
    // Listener 1 never drains; listener 3 drains between checks: never reported.
    for (at, one, three) in [(0, 3, 2), (10, 5, 0), (20, 5, 2), (29, 5, 2)] {
        let seen = [listener(1, one), listener(2, 0), listener(3, three)];
        assert!(
            t.check_listeners(&seen, at * S, &mut r).is_empty(),
            "not yet at {at} s"
        );
    }
    let lookups = t.check_listeners(&[listener(1, 7)], 31 * S, &mut r);
    assert_eq!(
        lookups.iter().map(|l| l.cookie).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(lookups[0].state, Listen);
    t.owners_found(
        &[1],
        &holders(HashMap::from([(1, server())])),
        32 * S,
        &mut r,
    );
    assert_eq!(r.stalled.len(), 1);
    let stalled = &r.stalled[0];
    assert_eq!((stalled.queue, stalled.backlog), (7, 128));
    assert_eq!((stalled.stalled_ns, stalled.threshold_ns), (32 * S, 30 * S));
    assert_eq!(stalled.owner, Some(server()));
    assert_eq!(t.snapshot(&Default::default()).stalled_listeners, 1);
    // Reported once, not at every check.
    assert!(
        t.check_listeners(&[listener(1, 7)], 34 * S, &mut r)
            .is_empty()
    );
    t.owners_found(&[1], &Holders::default(), 35 * S, &mut r);
    assert_eq!(r.stalled.len(), 1);
    // Drained: recovered, with how long it lasted.
    t.check_listeners(&[listener(1, 0)], 40 * S, &mut r);
    assert_eq!(r.recovered.len(), 1);
    assert_eq!(r.recovered[0].duration_ns, 40 * S);
    assert!(!r.recovered[0].closed);
    let snapshot = t.snapshot(&Default::default());
    assert_eq!(
        (snapshot.stalled_listeners, snapshot.listener_stalls),
        (0, 1)
    );
}

#[test]
fn a_stalled_listener_that_closes_recovers_as_closed() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.check_listeners(&[listener(1, 1)], 0, &mut r);
    t.check_listeners(&[listener(1, 1)], 30 * S, &mut r);
    t.owners_found(&[1], &Holders::default(), 30 * S, &mut r);
    assert_eq!(r.stalled.len(), 1);
    assert_eq!(
        r.stalled[0].owner, None,
        "no owner found: reported all the same"
    );
    t.check_listeners(&[], 31 * S, &mut r);
    assert!(r.recovered[0].closed);
}

#[test]
fn time_wait_counted_by_remote_port() {
    use crate::source::decode::tuple;
    let tw = |port: u16, remote: u16, substate: TcpState| {
        let mut e = ends(u64::from(port));
        e.remote_port = remote;
        (
            tuple(&e),
            tracer_common::TwRecord {
                substate: substate as u8,
                ..Default::default()
            },
        )
    };
    let records = [
        tw(1, 443, TimeWait),
        tw(2, 443, TimeWait),
        tw(3, 80, TimeWait),
        tw(4, 80, FinWait2),
    ];
    assert_eq!(
        time_wait_by_remote_port(&records, 10),
        vec![(443, 2), (80, 1)]
    );
    assert_eq!(time_wait_by_remote_port(&records, 1), vec![(443, 2)]);
}

/// One scripted socket: enters CLOSE_WAIT at `since`, leaves it at `leaves` (if ever).
#[derive(Debug, Clone)]
struct Life {
    since: u64,
    leaves: Option<u64>,
    owner_known: bool,
}

fn lives() -> impl Strategy<Value = Vec<Life>> {
    proptest::collection::vec(
        (0u64..20, proptest::option::of(0u64..30), any::<bool>()).prop_map(
            |(since, stay, owner_known)| Life {
                since: since * S / 2,
                leaves: stay.map(|stay| since * S / 2 + stay * S / 3),
                owner_known,
            },
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Polled every half second and fed the kernel's events in time order, every socket that
    /// stays past its threshold is reported stuck once, within a second of it, and unstuck once
    /// with its exact time when it leaves; no other report is made.
    #[test]
    fn every_episode_is_reported_once(lives in lives()) {
        let (mut t, mut r) = (tracker(), Recorded::default());
        let end = 30 * S;
        let mut now = 0;
        while now <= end {
            // Events of the sockets that left since the last poll, in time order.
            let mut gone: Vec<(u64, &Life)> = lives.iter().enumerate()
                .filter(|(_, l)| l.leaves.is_some_and(|at| at <= now && at + S / 2 > now))
                .map(|(i, l)| (i as u64, l))
                .collect();
            gone.sort_by_key(|(_, l)| l.leaves);
            for (cookie, life) in gone {
                let at = life.leaves.unwrap_or_default();
                let mut event = left(cookie, CloseWait, LastAck, at, at - life.since);
                event.long_stay = at - life.since >= 2 * S;
                t.on_transition(event, &mut r);
            }
            let index: Vec<Watched> = lives.iter().enumerate()
                .filter(|(_, l)| l.since <= now && l.leaves.is_none_or(|at| at > now))
                .map(|(i, l)| watched(i as u64, CloseWait, l.since, l.owner_known.then(server)))
                .collect();
            let lookups: Vec<u64> =
                t.poll_watched(&index, now, &mut r).iter().map(|l| l.cookie).collect();
            t.owners_found(&lookups, &Holders::default(), now, &mut r);
            now += S / 2;
        }
        for (i, life) in lives.iter().enumerate() {
            let cookie = i as u64;
            let stayed = life.leaves.unwrap_or(u64::MAX).saturating_sub(life.since);
            let stuck: Vec<&StuckReport> = r.stuck.iter().filter(|s| s.cookie == cookie).collect();
            let reached = life.since + 2 * S <= end;
            if stayed >= 2 * S && (reached || life.leaves.is_some_and(|at| at <= end)) {
                prop_assert_eq!(stuck.len(), 1, "{:?}", life);
                prop_assert!(stuck[0].ts_ns <= life.since + 2 * S + S, "within a second: {:?}", stuck[0]);
            } else {
                prop_assert!(stuck.is_empty(), "{:?} {:?}", life, stuck);
            }
            let unstuck: Vec<&UnstuckReport> = r.unstuck.iter().filter(|u| u.cookie == cookie).collect();
            match life.leaves {
                Some(at) if at <= end && stayed >= 2 * S => {
                    prop_assert_eq!(unstuck.len(), 1);
                    prop_assert_eq!(unstuck[0].duration_ns, at - life.since);
                }
                _ => prop_assert!(unstuck.is_empty(), "{:?} {:?}", life, unstuck),
            }
        }
    }
}
