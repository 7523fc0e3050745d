//! Writes a reconciliation plan to the kernel's maps and says what was written. The plan was made
//! from records read before the listing: each fix is checked against the record as it is when it
//! is written, so that a socket the programs changed meanwhile keeps what the programs wrote.
use anyhow::Result;
use tracer_common::Tuple;

use super::{
    port::{RecordStore, Table, write_if_unchanged},
    reconcile::{Outcome, Plan},
};
use crate::source::batch::Write;

pub(crate) fn apply(store: &impl RecordStore, plan: &Plan) -> Result<Outcome> {
    let (sockets, timewaits) = (store.sockets(), store.timewaits());
    let sockets_new = sockets.write(&plan.sockets_new, Write::New)?;
    let sockets_fixed = plan
        .sockets_fixed
        .iter()
        .map(|(cookie, fixed, was)| write_if_unchanged(&sockets, cookie, fixed, was))
        .collect::<Result<Vec<bool>>>()?;
    // A cookie is never reused: a record of a socket gone stays gone.
    let gone: Vec<u64> = plan
        .sockets_gone
        .iter()
        .map(|(cookie, _)| *cookie)
        .collect();
    let sockets_gone = sockets.delete(&gone)?;
    let timewaits_new = timewaits.write(&plan.timewaits_new, Write::New)?;
    let timewaits_fixed = plan
        .timewaits_fixed
        .iter()
        .map(|(key, fixed, was)| write_if_unchanged(&timewaits, key, fixed, was))
        .collect::<Result<Vec<bool>>>()?;
    // An address is reused: delete only the timewait record that was read.
    let timewaits_gone = plan
        .timewaits_gone
        .iter()
        .map(|(key, was)| {
            if timewaits.get(key)? == Some(*was) {
                Ok(timewaits.delete(&[*key])?.contains(&true))
            } else {
                Ok(false)
            }
        })
        .collect::<Result<Vec<bool>>>()?;
    // The indexes follow the records as they are now.
    let watched = store.watched();
    for (cookie, entry) in &plan.watch_set {
        let record = sockets.get(cookie)?;
        if record.is_some_and(|r| r.state == entry.state && r.since_ns == entry.since_ns) {
            watched.write(&[(*cookie, *entry)], Write::Any)?;
        }
    }
    for (cookie, was) in &plan.watch_gone {
        if sockets.get(cookie)? == *was {
            watched.delete(&[*cookie])?;
        }
    }
    let lingering = store.lingering();
    let entries: Vec<(Tuple, u8)> = plan.lingering_set.iter().map(|key| (*key, 0)).collect();
    lingering.write(&entries, Write::New)?;
    lingering.delete(&plan.lingering_gone)?;
    Ok(Outcome {
        sockets_new,
        sockets_fixed,
        sockets_gone,
        timewaits_new,
        timewaits_fixed,
        timewaits_gone,
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::{SockRecord, TcpState, TwRecord, Watch};

    use super::*;
    use crate::core::port::fake::FakeStore;

    fn record(state: TcpState, since_ns: u64) -> SockRecord {
        SockRecord {
            since_ns,
            state: state as u8,
            ..SockRecord::default()
        }
    }

    fn key(port: u16) -> Tuple {
        Tuple {
            sport: port,
            ..Tuple::default()
        }
    }

    /// Every fix is checked against the record as it is when written: what the programs wrote
    /// after the records were read wins.
    #[test]
    fn what_the_programs_changed_meanwhile_is_kept() -> Result<()> {
        let store = FakeStore::default();
        let was = record(TcpState::Established, 10);
        let theirs = record(TcpState::CloseWait, 20);
        let tw_was = TwRecord {
            substate: TcpState::TimeWait as u8,
            ..TwRecord::default()
        };
        let tw_theirs = TwRecord {
            since_ns: 30,
            ..tw_was
        };
        store.sockets.0.borrow_mut().extend([(1, theirs), (2, was)]);
        store
            .timewaits
            .0
            .borrow_mut()
            .extend([(key(1), tw_theirs), (key(2), tw_was)]);
        store.watched.0.borrow_mut().insert(2, Watch::default());
        let fixed = record(TcpState::LastAck, 50);
        let plan = Plan {
            sockets_new: vec![(1, record(TcpState::SynSent, 50)), (3, fixed)],
            sockets_fixed: vec![(1, fixed, was), (2, fixed, was)],
            timewaits_gone: vec![(key(1), tw_was), (key(2), tw_was)],
            watch_set: vec![(
                1,
                Watch {
                    state: fixed.state,
                    since_ns: fixed.since_ns,
                    ..Watch::default()
                },
            )],
            watch_gone: vec![(2, Some(fixed))],
            lingering_set: vec![key(7)],
            ..Plan::default()
        };
        let outcome = apply(&store, &plan)?;
        assert_eq!(outcome.sockets_new, vec![false, true], "theirs was there");
        assert_eq!(outcome.sockets_fixed, vec![false, true], "theirs changed");
        assert_eq!(outcome.timewaits_gone, vec![false, true]);
        let sockets = store.sockets.0.borrow();
        assert_eq!(
            (sockets[&1], sockets[&2], sockets[&3]),
            (theirs, fixed, fixed)
        );
        assert_eq!(store.timewaits.0.borrow().len(), 1);
        assert!(
            store.watched.0.borrow().is_empty(),
            "cookie 1's record is not the one planned for; cookie 2's entry follows its fix"
        );
        assert!(store.lingering.0.borrow().contains_key(&key(7)));
        Ok(())
    }
}
