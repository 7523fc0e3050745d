//! Keeps the kernel's records equal to its own list of sockets. The start-up snapshot seeds them
//! (sockets older than the tracer), later listings heal what the programs missed (a skipped run, a
//! record that did not fit, a request socket the tracepoint never reports), each fix counted. The
//! records are read through the [`RecordStore`] port; the plan is plain data, which
//! `apply` writes back (checking each fix against the record as it is then), and what
//! was written is what the counts follow. The lingering index is checked the same way.
use std::collections::{HashMap, HashSet};

use anyhow::Result;
use tracer_common::{SockRecord, TcpState, Tuple, TwRecord, Watch, record_flags};

use super::{
    port::{RecordStore, Table, write_if_unchanged},
    report::Reconciliation,
    stuck::Thresholds,
};
use crate::{
    enrich::socket_list::{ListedSocket, Listing},
    source::decode::tuple,
};

/// What to write to the kernel's maps so that they match a listing.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Plan {
    /// The start-up snapshot: what it adds is not a fix.
    pub(crate) seed: bool,
    /// Full sockets without a record (written only where none exists by then).
    pub(crate) sockets_new: Vec<(u64, SockRecord)>,
    /// Records in another state than the kernel lists, and the record they were read as (written
    /// only if the record is still so).
    pub(crate) sockets_fixed: Vec<(u64, SockRecord, SockRecord)>,
    /// Records of sockets the kernel no longer lists.
    pub(crate) sockets_gone: Vec<(u64, SockRecord)>,
    pub(crate) timewaits_new: Vec<(Tuple, TwRecord)>,
    pub(crate) timewaits_fixed: Vec<(Tuple, TwRecord, TwRecord)>,
    pub(crate) timewaits_gone: Vec<(Tuple, TwRecord)>,
    /// The index of watched sockets and of lingering timewait sockets, kept in step. Each index
    /// change goes with the record it follows, as read (written only if the record is still so).
    pub(crate) watch_set: Vec<(u64, Watch)>,
    pub(crate) watch_gone: Vec<(u64, Option<SockRecord>)>,
    pub(crate) lingering_set: Vec<Tuple>,
    pub(crate) lingering_gone: Vec<Tuple>,
}

/// Which of a plan's writes took place, in the plan's order.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) sockets_new: Vec<bool>,
    pub(crate) sockets_fixed: Vec<bool>,
    pub(crate) sockets_gone: Vec<bool>,
    pub(crate) timewaits_new: Vec<bool>,
    pub(crate) timewaits_fixed: Vec<bool>,
    pub(crate) timewaits_gone: Vec<bool>,
}

/// The kernel's records as the daemon read them, before the listing was taken.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// The records of full sockets are named by cookie, as the listing's are; else (kernels whose
    /// programs cannot ask for cookies) only timewait records are reconciled.
    pub(crate) full_sockets: bool,
    pub(crate) sockets: Vec<(u64, SockRecord)>,
    pub(crate) timewaits: Vec<(Tuple, TwRecord)>,
    pub(crate) watched: Vec<(u64, Watch)>,
    pub(crate) lingering: Vec<Tuple>,
}

impl Records {
    /// Reads the records, to be compared with a listing taken after.
    pub(crate) fn read(store: &impl RecordStore, full_sockets: bool) -> Result<Self> {
        // Records named by address cannot be matched with the listing's cookies: left alone.
        let (sockets, watched) = if full_sockets {
            (store.sockets().all()?, store.watched().all()?)
        } else {
            (Vec::new(), Vec::new())
        };
        // The lingering index before the timewait records: the programs write a record before its
        // index entry, so every entry read has its record read too (unless it ended meanwhile).
        let lingering: Vec<Tuple> = store
            .lingering()
            .all()?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let timewaits = store.timewaits().all()?;
        Ok(Self {
            full_sockets,
            sockets,
            timewaits,
            watched,
            lingering,
        })
    }
}

/// Compares the records (read first) with the listing (taken after) and plans the fixes. A
/// record changed meanwhile is caught when the daemon checks each fix before writing it.
pub(crate) fn plan(
    records: &Records,
    listing: &Listing,
    thresholds: &Thresholds,
    now_ns: u64,
    seed: bool,
) -> Plan {
    let mut plan = Plan {
        seed,
        ..Plan::default()
    };
    let watched = |state: u8| TcpState::from_u8(state).is_some_and(|s| thresholds.watches(s));
    let listening = listing.listening();
    let service_port = |s: &ListedSocket| {
        let e = &s.endpoints;
        if s.state == TcpState::Listen || listening.contains(&(e.netns, e.local_port)) {
            e.local_port
        } else {
            e.remote_port
        }
    };
    let sockets: HashMap<u64, SockRecord> = records.sockets.iter().copied().collect();
    let timewaits: HashMap<Tuple, TwRecord> = records.timewaits.iter().copied().collect();
    let indexed: HashMap<u64, Watch> = records.watched.iter().copied().collect();
    let lingering: HashSet<Tuple> = records.lingering.iter().copied().collect();
    let mut listed_full = HashSet::new();
    let mut listed_timewait = HashSet::new();

    for socket in listing.sockets.iter().filter(|s| {
        !matches!(s.state, TcpState::Close | TcpState::BoundInactive)
            && listing.listed.contains(&s.endpoints.netns)
    }) {
        let state = socket.state as u8;
        let port = service_port(socket);
        if socket.timewait {
            let key = tuple(&socket.endpoints);
            listed_timewait.insert(key);
            let fresh = TwRecord {
                since_ns: now_ns,
                cookie: socket.cookie,
                pid: 0,
                service_port: port,
                substate: state,
                flags: 0,
            };
            let lingered = lingering.contains(&key);
            match timewaits.get(&key) {
                None => plan.timewaits_new.push((key, fresh)),
                // The peer's FIN moved a lingering FIN-WAIT-2 on without a trace: a transition
                // the lingering check reports (with its index entry), not a record to correct.
                Some(r)
                    if lingered
                        && r.substate == TcpState::FinWait2 as u8
                        && socket.state == TcpState::TimeWait =>
                {
                    continue;
                }
                Some(r) if r.substate != state => {
                    plan.timewaits_fixed.push((
                        key,
                        TwRecord {
                            pid: r.pid,
                            ..fresh
                        },
                        *r,
                    ));
                }
                Some(_) => {}
            }
            // A lingering entry listed in TIME_WAIT is the kernel's silent move, which the
            // lingering check reports (and then drops the entry): left to it.
            if socket.state == TcpState::FinWait2 && !lingered {
                plan.lingering_set.push(key);
            }
            continue;
        }
        if !records.full_sockets {
            continue;
        }
        listed_full.insert(socket.cookie);
        let record = match sockets.get(&socket.cookie) {
            None => {
                let fresh = SockRecord {
                    since_ns: now_ns,
                    pid: 0,
                    netns: socket.endpoints.netns,
                    service_port: port,
                    state,
                    flags: 0,
                    reset_reason: 0,
                    syn_retransmits: 0,
                    _pad: 0,
                };
                plan.sockets_new.push((socket.cookie, fresh));
                fresh
            }
            Some(r) if r.state != state => {
                let fixed = SockRecord {
                    since_ns: now_ns,
                    state,
                    flags: 0,
                    ..*r
                };
                plan.sockets_fixed.push((socket.cookie, fixed, *r));
                fixed
            }
            Some(r) => *r,
        };
        // The index holds every full socket in a watched state (a restarted daemon's records
        // have none yet).
        let in_index = indexed.get(&socket.cookie);
        if watched(record.state) {
            if in_index.is_none_or(|w| w.state != record.state || w.since_ns != record.since_ns) {
                plan.watch_set.push((
                    socket.cookie,
                    Watch {
                        since_ns: record.since_ns,
                        tuple: tuple(&socket.endpoints),
                        pid: record.pid,
                        service_port: record.service_port,
                        state: record.state,
                        flags: record.flags,
                    },
                ));
            }
        } else if in_index.is_some() {
            plan.watch_gone.push((socket.cookie, Some(record)));
        }
    }
    for (cookie, record) in records.sockets.iter().filter(|_| records.full_sockets) {
        if listing.listed.contains(&record.netns) && !listed_full.contains(cookie) {
            plan.sockets_gone.push((*cookie, *record));
        }
    }
    for (key, record) in &records.timewaits {
        if listing.listed.contains(&key.netns) && !listed_timewait.contains(key) {
            plan.timewaits_gone.push((*key, *record));
            if lingering.contains(key) {
                plan.lingering_gone.push(*key);
            }
        }
    }
    // Index entries of sockets whose record is gone or not in a watched state (once each).
    let mut unwatched: HashSet<u64> = plan.watch_gone.iter().map(|(c, _)| *c).collect();
    for (cookie, entry) in records.watched.iter().filter(|_| records.full_sockets) {
        let record = sockets.get(cookie);
        let stale = record.is_none_or(|r| !watched(r.state))
            || (listing.listed.contains(&entry.tuple.netns) && !listed_full.contains(cookie));
        if stale && unwatched.insert(*cookie) {
            plan.watch_gone.push((*cookie, record.copied()));
        }
    }
    plan
}

impl Reconciliation {
    /// Counts what a plan fixed, as written (the start-up snapshot fixes nothing).
    pub(crate) fn count(&mut self, plan: &Plan, outcome: &Outcome) {
        if plan.seed {
            return;
        }
        let written = |flags: &[bool]| flags.iter().filter(|w| **w).count() as u64;
        self.runs += 1;
        self.added += written(&outcome.sockets_new) + written(&outcome.timewaits_new);
        self.removed += written(&outcome.sockets_gone) + written(&outcome.timewaits_gone);
        self.corrected += written(&outcome.sockets_fixed) + written(&outcome.timewaits_fixed);
    }
}

/// The changes to the records by state that a plan made, as written: what the kernel's own counts
/// do not include.
pub(crate) fn record_changes(plan: &Plan, outcome: &Outcome) -> Vec<(u8, i64)> {
    let mut changes = Vec::new();
    let mut each = |written: &[bool],
                    states: &mut dyn Iterator<Item = (Option<u8>, Option<u8>)>| {
        for (done, (old, new)) in written.iter().zip(states) {
            if *done {
                changes.extend(old.map(|s| (s, -1)));
                changes.extend(new.map(|s| (s, 1)));
            }
        }
    };
    each(
        &outcome.sockets_new,
        &mut plan.sockets_new.iter().map(|(_, r)| (None, Some(r.state))),
    );
    each(
        &outcome.sockets_fixed,
        &mut plan
            .sockets_fixed
            .iter()
            .map(|(_, new, old)| (Some(old.state), Some(new.state))),
    );
    each(
        &outcome.sockets_gone,
        &mut plan.sockets_gone.iter().map(|(_, r)| (Some(r.state), None)),
    );
    each(
        &outcome.timewaits_new,
        &mut plan
            .timewaits_new
            .iter()
            .map(|(_, r)| (None, Some(r.substate))),
    );
    each(
        &outcome.timewaits_fixed,
        &mut plan
            .timewaits_fixed
            .iter()
            .map(|(_, new, old)| (Some(old.substate), Some(new.substate))),
    );
    each(
        &outcome.timewaits_gone,
        &mut plan
            .timewaits_gone
            .iter()
            .map(|(_, r)| (Some(r.substate), None)),
    );
    changes
}

/// Lingering timewait sockets the kernel moved to TIME_WAIT without a trace: gone from its list
/// of FIN_WAIT2 sockets (taken after the records were read). They moved at about `now_ns`.
pub(crate) fn silent_moves(
    lingering: &[(Tuple, TwRecord)],
    fin_wait2: &Listing,
    now_ns: u64,
) -> Vec<(Tuple, TwRecord, TwRecord)> {
    let still: HashSet<Tuple> = fin_wait2
        .sockets
        .iter()
        .filter(|s| s.timewait && s.state == TcpState::FinWait2)
        .map(|s| tuple(&s.endpoints))
        .collect();
    lingering
        .iter()
        .filter(|(key, record)| {
            record.substate == TcpState::FinWait2 as u8
                && fin_wait2.listed.contains(&key.netns)
                && !still.contains(key)
        })
        .map(|(key, record)| {
            let moved = TwRecord {
                since_ns: now_ns,
                substate: TcpState::TimeWait as u8,
                flags: record_flags::AGE_KNOWN,
                ..*record
            };
            (*key, moved, *record)
        })
        .collect()
}

/// The index of lingering timewait sockets as one check read it, each entry with its record.
#[derive(Debug, Default)]
pub(crate) struct Lingering {
    /// Entries with their timewait record, as read.
    pub(crate) records: Vec<(Tuple, TwRecord)>,
    /// Entries whose record is gone: their socket ended.
    pub(crate) ended: Vec<Tuple>,
}

impl Lingering {
    /// Reads the index, then each entry's record.
    pub(crate) fn read(store: &impl RecordStore) -> Result<Self> {
        let (index, timewaits) = (store.lingering(), store.timewaits());
        let mut lingering = Self::default();
        for (key, _) in index.all()? {
            match timewaits.get(&key)? {
                Some(record) => lingering.records.push((key, record)),
                None => lingering.ended.push(key),
            }
        }
        Ok(lingering)
    }

    /// The network namespaces of the sockets with a record: the only ones to list.
    pub(crate) fn namespaces(&self) -> HashSet<u32> {
        self.records.iter().map(|(key, _)| key.netns).collect()
    }

    /// Writes the [`silent_moves`] found, each only if its record is still as read, and drops the
    /// index entries of those written and of the sockets that ended. Returns which were written.
    pub(crate) fn write_moves(
        &self,
        store: &impl RecordStore,
        moves: &[(Tuple, TwRecord, TwRecord)],
    ) -> Result<Vec<bool>> {
        let (index, timewaits) = (store.lingering(), store.timewaits());
        let mut written = Vec::with_capacity(moves.len());
        for (key, moved, was) in moves {
            let done = write_if_unchanged(&timewaits, key, moved, was)?;
            if done {
                index.delete(&[*key])?;
            }
            written.push(done);
        }
        index.delete(&self.ended)?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use super::*;
    use crate::{
        core::port::fake::FakeStore,
        source::events::{Endpoints, Family},
    };

    const NETNS: u32 = 4026531840;

    fn ends(port: u16, remote: u16) -> Endpoints {
        Endpoints {
            netns: NETNS,
            family: Family::Ipv4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: remote,
        }
    }

    fn listed(cookie: u64, state: TcpState, port: u16, remote: u16) -> ListedSocket {
        ListedSocket {
            endpoints: ends(port, remote),
            state,
            cookie,
            inode: 1,
            timewait: false,
            queue: 0,
            backlog: 0,
        }
    }

    fn listing(sockets: Vec<ListedSocket>) -> Listing {
        Listing {
            sockets,
            listed: HashSet::from([NETNS]),
            ..Listing::default()
        }
    }

    fn record(state: TcpState, since_ns: u64) -> SockRecord {
        SockRecord {
            since_ns,
            pid: 7,
            netns: NETNS,
            service_port: 80,
            state: state as u8,
            flags: record_flags::AGE_KNOWN,
            ..SockRecord::default()
        }
    }

    /// A lingering FIN-WAIT-2's timewait record, entered at `since_ns`.
    fn lingering_record(since_ns: u64) -> TwRecord {
        TwRecord {
            since_ns,
            cookie: 0xabc,
            pid: 7,
            service_port: 80,
            substate: TcpState::FinWait2 as u8,
            flags: record_flags::AGE_KNOWN,
        }
    }

    fn thresholds() -> Thresholds {
        let mut t = Thresholds::default();
        t.set(TcpState::CloseWait, Some(Duration::from_secs(2)));
        t
    }

    fn no_records() -> Records {
        Records {
            full_sockets: true,
            ..Records::default()
        }
    }

    /// Records read, then the peer's FIN, then the listing: the kernel's silent move is left to
    /// the lingering check, which reports it as a transition (a correction would hide it).
    #[test]
    fn a_lingering_socket_found_in_time_wait_is_left_to_the_lingering_check() {
        let key = tuple(&ends(40001, 80));
        let was = lingering_record(50);
        let records = Records {
            timewaits: vec![(key, was)],
            lingering: vec![key],
            ..no_records()
        };
        let mut moved = listed(4, TcpState::TimeWait, 40001, 80);
        moved.timewait = true;
        let plan = plan(
            &records,
            &listing(vec![moved.clone()]),
            &thresholds(),
            100,
            false,
        );
        assert!(plan.timewaits_fixed.is_empty(), "{plan:?}");
        assert!(plan.timewaits_gone.is_empty(), "{plan:?}");
        assert!(plan.lingering_gone.is_empty(), "{plan:?}");
        // The same when its record was not read yet (the move to the timewait socket came
        // between reading the records and reading the lingering index).
        let no_record = Records {
            lingering: vec![key],
            ..no_records()
        };
        let plan = super::plan(&no_record, &listing(vec![moved]), &thresholds(), 100, false);
        assert!(plan.lingering_gone.is_empty(), "{plan:?}");
        // Gone from the list altogether (it ended): the record and its index entry go.
        let plan = super::plan(&records, &listing(Vec::new()), &thresholds(), 100, false);
        assert_eq!(plan.timewaits_gone, vec![(key, was)]);
        assert_eq!(plan.lingering_gone, vec![key]);
    }

    #[test]
    fn the_seed_records_every_listed_socket() {
        let mut time_wait = listed(3, TcpState::TimeWait, 40000, 80);
        time_wait.timewait = true;
        let mut lingering = listed(4, TcpState::FinWait2, 40001, 80);
        lingering.timewait = true;
        let sockets = vec![
            listed(1, TcpState::Listen, 80, 0),
            listed(2, TcpState::CloseWait, 80, 5000),
            time_wait,
            lingering,
            listed(5, TcpState::Close, 9, 0),
        ];
        let plan = plan(&no_records(), &listing(sockets), &thresholds(), 100, true);
        let states: Vec<(u64, u8, u16)> = plan
            .sockets_new
            .iter()
            .map(|(c, r)| (*c, r.state, r.service_port))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, TcpState::Listen as u8, 80),
                (2, TcpState::CloseWait as u8, 80)
            ],
            "a socket of a listener serves its port; CLOSE is not a state sockets stay in"
        );
        assert!(
            plan.sockets_new
                .iter()
                .all(|(_, r)| r.flags == 0 && r.since_ns == 100)
        );
        assert_eq!(plan.timewaits_new.len(), 2);
        assert_eq!(plan.lingering_set, vec![tuple(&ends(40001, 80))]);
        assert_eq!(plan.watch_set.len(), 1, "CLOSE_WAIT is watched");
        let outcome = Outcome {
            sockets_new: vec![true, false],
            timewaits_new: vec![true, true],
            ..Outcome::default()
        };
        let mut fixes = Reconciliation::default();
        fixes.count(&plan, &outcome);
        assert_eq!(fixes, Reconciliation::default(), "the seed fixes nothing");
        let changes = record_changes(&plan, &outcome);
        assert_eq!(
            changes,
            vec![
                (TcpState::Listen as u8, 1),
                (TcpState::TimeWait as u8, 1),
                (TcpState::FinWait2 as u8, 1)
            ],
            "only what was written counts"
        );
    }

    #[test]
    fn later_listings_fix_and_count() {
        let sockets = [
            (1, record(TcpState::Established, 10)),
            (2, record(TcpState::Established, 10)),
            (3, record(TcpState::Listen, 10)),
        ];
        let watched = [(9, Watch::default())];
        let records = Records {
            sockets: sockets.to_vec(),
            watched: watched.to_vec(),
            ..no_records()
        };
        let listing = listing(vec![
            listed(2, TcpState::CloseWait, 80, 6000),
            listed(3, TcpState::Listen, 80, 0),
            listed(4, TcpState::SynSent, 6001, 443),
        ]);
        let plan = plan(&records, &listing, &thresholds(), 50, false);
        assert_eq!(
            plan.sockets_gone
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(plan.sockets_fixed.len(), 1);
        let (cookie, fixed, was) = plan.sockets_fixed[0];
        assert_eq!(
            (cookie, fixed.state, was.state),
            (2, TcpState::CloseWait as u8, TcpState::Established as u8)
        );
        assert_eq!(
            (fixed.pid, fixed.flags, fixed.since_ns),
            (7, 0, 50),
            "its age is unknown"
        );
        assert_eq!(plan.sockets_new.len(), 1);
        assert_eq!(plan.sockets_new[0].1.service_port, 443);
        assert_eq!(
            plan.watch_set.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            vec![2, 4],
            "CLOSE_WAIT and SYN_SENT are watched"
        );
        assert_eq!(
            plan.watch_gone,
            vec![(9, None)],
            "an index entry without a record"
        );
        let outcome = Outcome {
            sockets_new: vec![true],
            sockets_fixed: vec![true],
            sockets_gone: vec![true],
            ..Outcome::default()
        };
        let mut fixes = Reconciliation::default();
        fixes.count(&plan, &outcome);
        assert_eq!(
            (fixes.runs, fixes.added, fixes.removed, fixes.corrected),
            (1, 1, 1, 1)
        );
    }

    /// Where the programs name full sockets by (disguised) address, the listing's cookies cannot
    /// be matched with them: only timewait sockets (named by address and ports) are reconciled.
    #[test]
    fn records_named_by_address_are_left_alone() {
        let sockets = [(0x3a5c_0e11_7f20_4c80, record(TcpState::Established, 10))];
        let watched = [(0x3a5c_0e11_7f20_4c80, Watch::default())];
        let records = Records {
            full_sockets: false,
            sockets: sockets.to_vec(),
            watched: watched.to_vec(),
            ..no_records()
        };
        let mut time_wait = listed(3, TcpState::TimeWait, 40000, 80);
        time_wait.timewait = true;
        let listing = listing(vec![listed(2, TcpState::CloseWait, 80, 5000), time_wait]);
        for seed in [true, false] {
            let plan = plan(&records, &listing, &thresholds(), 50, seed);
            assert!(plan.sockets_new.is_empty() && plan.sockets_gone.is_empty());
            assert!(plan.sockets_fixed.is_empty());
            assert!(plan.watch_set.is_empty() && plan.watch_gone.is_empty());
            assert_eq!(plan.timewaits_new.len(), 1);
        }
    }

    #[test]
    fn other_namespaces_are_left_alone() {
        let mut elsewhere = record(TcpState::Established, 10);
        elsewhere.netns = NETNS + 1;
        let sockets = [(1, elsewhere)];
        let records = Records {
            sockets: sockets.to_vec(),
            ..no_records()
        };
        let plan = plan(&records, &listing(vec![]), &thresholds(), 50, false);
        assert!(plan.sockets_gone.is_empty());
    }

    #[test]
    fn lingering_sockets_gone_from_fin_wait2_moved() {
        let key = tuple(&ends(40001, 80));
        let other = tuple(&ends(40002, 80));
        let lingering = lingering_record(10);
        let mut still = listed(5, TcpState::FinWait2, 40002, 80);
        still.timewait = true;
        let moves = silent_moves(
            &[(key, lingering), (other, lingering)],
            &listing(vec![still]),
            99,
        );
        assert_eq!(moves.len(), 1);
        let (moved_key, moved, was) = moves[0];
        assert_eq!(moved_key, key);
        assert_eq!(
            (moved.substate, moved.since_ns, moved.cookie),
            (TcpState::TimeWait as u8, 99, 0xabc)
        );
        assert_eq!(was, lingering);
    }

    /// An index entry stale on two counts goes once; many stale entries go in one pass (each was
    /// looked for among those already going, once a quadratic scan).
    #[test]
    fn stale_index_entries_go_once_each() {
        let established = record(TcpState::Established, 10);
        const MANY: u64 = 100_000;
        let watched: Vec<(u64, Watch)> = (1..=MANY).map(|c| (c, Watch::default())).collect();
        let records = Records {
            sockets: vec![(1, established)],
            watched,
            ..no_records()
        };
        let listing = listing(vec![listed(1, TcpState::Established, 80, 5000)]);
        let plan = plan(&records, &listing, &thresholds(), 50, false);
        assert_eq!(plan.watch_gone.len(), MANY as usize);
        assert_eq!(
            plan.watch_gone[0],
            (1, Some(established)),
            "listed, not in a watched state: its entry goes with its record as listed"
        );
        let cookies: HashSet<u64> = plan.watch_gone.iter().map(|(c, _)| *c).collect();
        assert_eq!(cookies.len(), MANY as usize, "each once");
        assert!(plan.watch_gone[1..].iter().all(|(_, r)| r.is_none()));
    }

    /// A lingering check over a large index: the moves found are written where the record is
    /// still as read, their entries dropped, and so are the entries of sockets that ended (each
    /// once looked for among the records read, a quadratic scan).
    #[test]
    fn a_lingering_check_writes_its_moves_and_drops_what_ended() -> Result<()> {
        const MANY: u16 = 50_000;
        let store = FakeStore::default();
        let lingering_keys: Vec<Tuple> = (1..=MANY).map(|p| tuple(&ends(p, 80))).collect();
        let ended: Vec<Tuple> = (1..=MANY).map(|p| tuple(&ends(p, 81))).collect();
        store.timewaits.0.borrow_mut().extend(
            lingering_keys
                .iter()
                .map(|key| (*key, lingering_record(10))),
        );
        store
            .lingering
            .0
            .borrow_mut()
            .extend(lingering_keys.iter().chain(&ended).map(|key| (*key, 0)));
        let lingering = Lingering::read(&store)?;
        assert_eq!(
            (lingering.records.len(), lingering.ended.len()),
            (usize::from(MANY), usize::from(MANY))
        );
        assert_eq!(lingering.namespaces(), HashSet::from([NETNS]));
        // The programs change one record between the read and the write.
        let theirs = lingering_record(20);
        store
            .timewaits
            .0
            .borrow_mut()
            .insert(lingering_keys[0], theirs);
        let moves = silent_moves(&lingering.records, &listing(Vec::new()), 99);
        assert_eq!(
            moves.len(),
            usize::from(MANY),
            "none is listed in FIN_WAIT2 any more"
        );
        let written = lingering.write_moves(&store, &moves)?;
        let key_written: HashMap<Tuple, bool> = moves
            .iter()
            .zip(&written)
            .map(|((key, ..), done)| (*key, *done))
            .collect();
        assert_eq!(key_written.values().filter(|w| !**w).count(), 1);
        assert!(!key_written[&lingering_keys[0]], "theirs wins");
        let index = store.lingering.0.borrow();
        assert_eq!(
            index.keys().collect::<Vec<_>>(),
            vec![&lingering_keys[0]],
            "the entry of the move not written stays"
        );
        let timewaits = store.timewaits.0.borrow();
        assert_eq!(timewaits[&lingering_keys[0]], theirs);
        assert_eq!(
            timewaits[&lingering_keys[1]].substate,
            TcpState::TimeWait as u8
        );
        Ok(())
    }
}
