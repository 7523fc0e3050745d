//! The core's behaviour on synthetic event streams: exact reports for scripted sockets, and
//! properties over random streams (with and without lost events).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use TcpState::*;

use super::{
    report::{Sink, StuckReport, TransitionInfo, UnstuckReport},
    select::OwnerFilter,
    stuck::Thresholds,
    table::SockKey,
    timewait::PAIRING_GRACE_NS,
    *,
};
use crate::{
    enrich::socket_list::ListedSocket,
    source::events::{
        Comm, Endpoints, Family, KernelEvent, Owner, PinnedRecord, Timewait, Transition,
    },
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const NETNS: u32 = 4026531840;

fn ours() -> HashSet<u32> {
    HashSet::from([NETNS])
}

#[derive(Default, Debug)]
struct Recorded {
    transitions: Vec<Transition>,
    /// Whether each transition was selected by the owner filter.
    selected: Vec<bool>,
    stuck: Vec<StuckReport>,
    unstuck: Vec<UnstuckReport>,
}

impl Sink for Recorded {
    fn transition(&mut self, t: &Transition, info: TransitionInfo) {
        self.transitions.push(t.clone());
        self.selected.push(info.selected);
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

fn owner() -> Option<Owner> {
    Some(Owner {
        pid: 7,
        comm: Comm::new("server"),
        cgroup: None,
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

fn tracker_with(max_sockets: usize, thresholds: Thresholds, repeat_ns: u64) -> Tracker {
    Tracker::new(Settings {
        max_sockets,
        thresholds,
        repeat_ns,
        owners: Default::default(),
    })
}

fn tracker() -> Tracker {
    tracker_with(1000, thresholds(CloseWait, 2), 300 * S)
}

fn pairs(r: &Recorded) -> Vec<(TcpState, TcpState)> {
    r.transitions.iter().map(|t| (t.old, t.new)).collect()
}

#[test]
fn a_connection_from_open_to_close() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.on_event(tr(1, Close, SynSent, 0, None), &mut r);
    t.on_event(tr(1, SynSent, Established, 2 * MS, Some(2 * MS)), &mut r);
    assert_eq!(t.table.count(Established), 1);
    t.on_event(tr(1, Established, FinWait1, 10 * MS, Some(8 * MS)), &mut r);
    t.on_event(tr(1, FinWait1, Close, 11 * MS, Some(MS)), &mut r);
    assert!(t.table.len() == 0);
    assert_eq!(r.transitions[1].prev_state_ns, Some(2 * MS));
    let syn_sent = t.stats.durations.percentiles()[1];
    assert_eq!((syn_sent.0, syn_sent.1.count), (SynSent, 1));
    assert_eq!(t.stats.transitions.get(SynSent, Established), 1);
}

#[test]
fn a_reused_id_starts_fresh() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.on_event(tr(1, Close, SynSent, 0, None), &mut r);
    t.on_event(tr(1, SynSent, Established, MS, None), &mut r);
    // Its close was lost; the address comes back as a new socket.
    t.on_event(tr(1, Close, SynSent, 5 * S, None), &mut r);
    t.on_event(tr(1, SynSent, Established, 5 * S + MS, None), &mut r);
    assert_eq!(t.table.len(), 1);
    assert_eq!(
        r.transitions[3].prev_state_ns,
        Some(MS),
        "{:?}",
        r.transitions[3]
    );
    let entry = t.table.get(&SockKey::Kernel(1)).unwrap();
    assert_eq!(entry.entered_ns(), 5 * S + MS);
    assert_eq!(entry.state(), Established);
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
        .stats
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
    assert_eq!(t.table.stuck().len(), 1);
    t.on_event(tr(1, CloseWait, LastAck, 6 * S, None), &mut r);
    t.on_event(tr(1, LastAck, Close, 6 * S + MS, None), &mut r);
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(r.unstuck[0].duration_ns, 5 * S);
    assert_eq!(r.unstuck[0].new, Some(LastAck));
    assert_eq!(t.table.stuck().len(), 0);
    // The transition is logged before its unstuck report.
    assert_eq!(pairs(&r).last(), Some(&(LastAck, Close)));
}

#[test]
fn reminders_come_at_most_every_repeat() {
    let mut t = tracker_with(1000, thresholds(CloseWait, 1), 10 * S);
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
    assert_eq!(t.table.count(TimeWait), 1);
    let entry = t.table.get(&SockKey::Kernel(99)).unwrap();
    assert!(entry.is_timewait());
    // Expiry: cancel, settled after the pairing grace.
    t.on_event(
        KernelEvent::TimewaitDisarmed(tw(99, 1, TimeWait, 60 * S, 0, 0)),
        &mut r,
    );
    assert_eq!(t.table.count(TimeWait), 1);
    t.tick(60 * S + PAIRING_GRACE_NS, &mut r);
    assert_eq!(pairs(&r).last(), Some(&(TimeWait, Close)));
    let last = r.transitions.last().unwrap();
    assert_eq!(
        (last.sock, last.prev_state_ns),
        (99, Some(60 * S - 20 * MS))
    );
    assert!(t.table.len() == 0);
    assert_eq!(
        t.stats
            .durations
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
    assert_eq!(t.table.count(FinWait2), 1);
    assert_eq!(t.table.lingering().len(), 1);
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
    assert_eq!(t.table.count(TimeWait), 1);
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
    assert!(t.table.len() == 0);
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
    assert_eq!(t.table.count(FinWait2), 1);
    t.check_lingering(&[], &ours(), 2 * S, 2 * S, &mut r);
    assert_eq!(t.table.count(TimeWait), 1);
    assert_eq!(pairs(&r).last(), Some(&(FinWait2, TimeWait)));
    assert!(t.table.lingering().is_empty());
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
    let fixes = t.stats.reconciliation;
    assert_eq!(
        (fixes.runs, fixes.added, fixes.removed, fixes.corrected),
        (1, 1, 1, 1)
    );
    assert!(t.table.get(&SockKey::Kernel(1)).is_none());
    assert_eq!(t.table.get(&SockKey::Kernel(2)).unwrap().state(), FinWait2);
    assert!(!t.table.get(&SockKey::Kernel(2)).unwrap().age_known());
    assert!(t.table.get(&SockKey::Kernel(4)).is_some());
    let added = t.table.get(&SockKey::Listed(50)).unwrap();
    assert_eq!((added.state(), added.age_known()), (CloseWait, false));
    // Its owner is for the caller to find, by inode.
    assert_eq!(unowned, vec![(SockKey::Listed(50), 1)]);
    t.owners_looked_up(&unowned, &HashMap::from([(1, owner().unwrap())]));
    assert_eq!(
        t.table.get(&SockKey::Listed(50)).unwrap().owner(),
        owner().as_ref()
    );
    // Stuck thresholds count from when it was first seen.
    t.tick(4 * S, &mut r);
    assert_eq!(r.stuck.len(), 1);
    assert!(!r.stuck[0].age_known);
    // Its first event names it: adopted, the kernel's duration is the true one.
    t.on_event(tr(5, CloseWait, LastAck, 5 * S, Some(100 * S)), &mut r);
    assert!(t.table.get(&SockKey::Listed(50)).is_none());
    assert_eq!(r.transitions.last().unwrap().prev_state_ns, Some(100 * S));
    assert_eq!(r.unstuck.len(), 1);
    assert_eq!(r.unstuck[0].duration_ns, 100 * S);
    assert!(r.unstuck[0].age_known);
}

#[test]
fn a_stuck_report_waits_for_the_owner_lookup() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.begin_reconcile(0);
    let unowned = t.reconcile(&[listed(1, CloseWait, 10)], &ours(), 0, true, &mut r);
    assert_eq!(unowned, vec![(SockKey::Listed(10), 1)]);
    t.tick(3 * S, &mut r);
    assert!(r.stuck.is_empty(), "held while its owner is looked up");
    assert_eq!(t.next_deadline(), None, "nothing to wake for meanwhile");
    t.owners_looked_up(&unowned, &HashMap::from([(1, owner().unwrap())]));
    t.tick(3 * S + MS, &mut r);
    assert_eq!(r.stuck.len(), 1);
    assert_eq!(r.stuck[0].owner, owner());
    assert_eq!(
        r.stuck[0].age_ns,
        3 * S + MS,
        "its age counts from start-up still"
    );
    // A lookup that finds nobody lets the report go too, without an owner.
    t.begin_reconcile(4 * S);
    let unowned = t.reconcile(&[listed(2, CloseWait, 20)], &ours(), 4 * S, false, &mut r);
    t.owners_looked_up(&unowned, &HashMap::new());
    t.tick(7 * S, &mut r);
    assert_eq!(r.stuck.len(), 2);
    assert_eq!(r.stuck[1].owner, None);
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
    assert_eq!(t.table.len(), 1);
    assert_eq!(t.stats.reconciliation.fixes(), 0);
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
    let record = |sock: u64, id: u64, state: TcpState, since_ns: u64| PinnedRecord {
        sock,
        endpoints: ends(id),
        state,
        since_ns,
        owner: owner(),
    };
    // Socket 1 has been in CLOSE_WAIT since 40 s; socket 2's record is stale (another state).
    let records = [
        record(0xaa, 1, CloseWait, 40 * S),
        record(0xbb, 2, FinWait1, 90 * S),
    ];
    assert_eq!(t.adopt_records(&records), 1);
    let entry = t
        .table
        .get(&SockKey::Kernel(0xaa))
        .expect("rekeyed to its address");
    assert_eq!((entry.entered_ns(), entry.age_known()), (40 * S, true));
    assert_eq!(entry.owner(), owner().as_ref());
    assert!(t.table.get(&SockKey::Listed(10)).is_none());
    assert!(!t.table.get(&SockKey::Listed(20)).unwrap().age_known());
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
    assert_eq!(t.stats.reconciliation.fixes(), 0);
    assert_eq!(
        *t.table.get(&SockKey::Kernel(1)).unwrap().endpoints(),
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
    assert_eq!(t.table.len(), 2);
    assert_eq!(t.table.count(Established), 1, "the newer event wins");
    assert_eq!(t.stats.reconciliation.fixes(), 0);
}

#[test]
fn sockets_closed_during_a_listing_are_not_added() {
    let (mut t, mut r) = (tracker(), Recorded::default());
    t.on_event(tr(1, Established, CloseWait, 0, None), &mut r);
    t.begin_reconcile(S);
    t.on_event(tr(1, CloseWait, LastAck, S + 1, None), &mut r);
    t.on_event(tr(1, LastAck, Close, S + 2, None), &mut r);
    t.reconcile(&[listed(1, CloseWait, 10)], &ours(), 2 * S, false, &mut r);
    assert!(t.table.len() == 0);
    assert_eq!(t.stats.reconciliation.fixes(), 0);
}

#[test]
fn the_table_is_bounded_and_evictions_end_stuck_episodes() {
    let mut t = tracker_with(8, thresholds(CloseWait, 1), 300 * S);
    let mut r = Recorded::default();
    t.on_event(tr(0, Established, CloseWait, 0, None), &mut r);
    t.tick(2 * S, &mut r);
    for id in 1..100 {
        t.on_event(tr(id, Close, SynSent, 2 * S + id, None), &mut r);
        assert!(t.table.len() <= 8);
    }
    assert!(t.table.evictions() >= 92);
    assert_eq!((r.stuck.len(), r.unstuck.len()), (1, 1));
    assert_eq!(r.unstuck[0].new, None);
    assert_eq!(t.table.stuck().len(), 0);
}

#[test]
fn the_owner_filter_selects_reports_and_stuck_counts() {
    let mut t = Tracker::new(Settings {
        max_sockets: 1000,
        thresholds: thresholds(CloseWait, 1),
        repeat_ns: 10 * S,
        owners: OwnerFilter {
            comms: vec!["server".into()],
            ..Default::default()
        },
    });
    let mut r = Recorded::default();
    let owned_by = |sock: u64, owner: Option<Owner>| {
        let KernelEvent::Transition(mut e) = tr(sock, Established, CloseWait, 0, None) else {
            unreachable!()
        };
        e.owner = owner;
        KernelEvent::Transition(e)
    };
    let other = Owner {
        pid: 8,
        comm: Comm::new("other"),
        cgroup: None,
    };
    t.on_event(owned_by(1, owner()), &mut r);
    t.on_event(owned_by(2, Some(other)), &mut r);
    t.on_event(owned_by(3, None), &mut r);
    assert_eq!(
        r.selected,
        vec![true, false, false],
        "lines of the owner only"
    );
    t.tick(2 * S, &mut r);
    assert_eq!(r.stuck.len(), 1);
    assert_eq!(r.stuck[0].sock, 1);
    let snapshot = t.snapshot();
    assert_eq!(
        snapshot.sockets[CloseWait as usize], 3,
        "totals count every socket"
    );
    assert_eq!(
        snapshot.stuck[CloseWait as usize], 1,
        "stuck counts the owner's"
    );
    let reminders = t.reminders(20 * S);
    assert_eq!(
        reminders.iter().map(|r| r.sock).collect::<Vec<_>>(),
        vec![1]
    );
    for sock in [1, 2, 3] {
        t.on_event(tr(sock, CloseWait, LastAck, 21 * S, None), &mut r);
    }
    assert_eq!(
        r.unstuck.iter().map(|u| u.sock).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(t.stats.transitions.get(CloseWait, LastAck), 3);
}

#[test]
fn transitions_carry_their_service_port() {
    #[derive(Default)]
    struct Ports(Vec<u16>);
    impl Sink for Ports {
        fn transition(&mut self, _: &Transition, info: TransitionInfo) {
            self.0.push(info.service_port);
        }
        fn stuck(&mut self, _: &StuckReport) {}
        fn unstuck(&mut self, _: &UnstuckReport) {}
    }
    let (mut t, mut ports) = (tracker(), Ports::default());
    // A listener on 10001 (socket 1), then a client of port 80 (socket 2).
    t.on_event(tr(1, Close, Listen, 0, None), &mut ports);
    t.on_event(tr(2, Close, SynSent, 0, None), &mut ports);
    let KernelEvent::Transition(mut accepted) = tr(3, Listen, SynRecv, 0, None) else {
        unreachable!()
    };
    accepted.endpoints.local_port = 10_001;
    t.on_event(KernelEvent::Transition(accepted), &mut ports);
    assert_eq!(ports.0, vec![10_001, 80, 10_001]);
}

mod properties;
