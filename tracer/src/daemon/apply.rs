//! Writes a reconciliation plan to the kernel's maps and says what was written. The plan was made
//! from records read before the listing: each fix is checked against the record as it is when it
//! is written, so that a socket the programs changed meanwhile keeps what the programs wrote.
use anyhow::Result;
use tracer_common::{SockRecord, TwRecord};

use crate::{
    core::reconcile::{Outcome, Plan},
    source::{
        batch::Write,
        kernel_maps::{RecordMap, RecordMaps},
    },
};

pub(super) fn apply(maps: &RecordMaps, plan: &Plan) -> Result<Outcome> {
    let sockets_new = maps.write(RecordMap::Sockets, &plan.sockets_new, Write::New)?;
    let sockets_fixed = plan
        .sockets_fixed
        .iter()
        .map(|(cookie, fixed, was)| {
            write_if_unchanged(maps, RecordMap::Sockets, cookie, fixed, was)
        })
        .collect::<Result<Vec<bool>>>()?;
    // A cookie is never reused: a record of a socket gone stays gone.
    let gone: Vec<u64> = plan
        .sockets_gone
        .iter()
        .map(|(cookie, _)| *cookie)
        .collect();
    let sockets_gone = maps.delete(RecordMap::Sockets, &gone)?;
    let timewaits_new = maps.write(RecordMap::Timewait, &plan.timewaits_new, Write::New)?;
    let timewaits_fixed = plan
        .timewaits_fixed
        .iter()
        .map(|(key, fixed, was)| write_if_unchanged(maps, RecordMap::Timewait, key, fixed, was))
        .collect::<Result<Vec<bool>>>()?;
    // An address is reused: delete only the timewait record that was read.
    let timewaits_gone = plan
        .timewaits_gone
        .iter()
        .map(|(key, was)| {
            if maps.get::<_, TwRecord>(RecordMap::Timewait, key)? == Some(*was) {
                Ok(maps.delete(RecordMap::Timewait, &[*key])?[0])
            } else {
                Ok(false)
            }
        })
        .collect::<Result<Vec<bool>>>()?;
    // The indexes follow the records as they are now.
    for (cookie, entry) in &plan.watch_set {
        let record: Option<SockRecord> = maps.get(RecordMap::Sockets, cookie)?;
        if record.is_some_and(|r| r.state == entry.state && r.since_ns == entry.since_ns) {
            maps.write(RecordMap::Watched, &[(*cookie, *entry)], Write::Any)?;
        }
    }
    for (cookie, was) in &plan.watch_gone {
        let record: Option<SockRecord> = maps.get(RecordMap::Sockets, cookie)?;
        if record == *was {
            maps.delete(RecordMap::Watched, &[*cookie])?;
        }
    }
    let lingering: Vec<_> = plan.lingering_set.iter().map(|key| (*key, 0u8)).collect();
    maps.write(RecordMap::Lingering, &lingering, Write::New)?;
    maps.delete(RecordMap::Lingering, &plan.lingering_gone)?;
    Ok(Outcome {
        sockets_new,
        sockets_fixed,
        sockets_gone,
        timewaits_new,
        timewaits_fixed,
        timewaits_gone,
    })
}

/// Writes `fixed` over the record at `key` if it is still `was`.
pub(super) fn write_if_unchanged<K: aya::Pod, V: aya::Pod + PartialEq>(
    maps: &RecordMaps,
    map: RecordMap,
    key: &K,
    fixed: &V,
    was: &V,
) -> Result<bool> {
    if maps.get::<K, V>(map, key)?.as_ref() != Some(was) {
        return Ok(false);
    }
    Ok(maps.write(map, &[(*key, *fixed)], Write::Existing)?[0])
}
