//! What leaves a program: one event in the ring buffer, or a count in the per-CPU counters when
//! it cannot (a full buffer, a failed read, a record not stored).
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tracer_common::{Event, EventKind, Owner, Tuple, counter};

use crate::maps::{COUNTERS, EVENTS, FILTER, LOCAL_PORTS, REMOTE_PORTS, WAKEUP_BYTES};

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The end of a program: a run that gave up on a kernel read is counted.
#[inline(always)]
pub(crate) fn finish(result: Result<(), i64>) {
    if result.is_err() {
        count(counter::READ_FAILED);
    }
}

/// Whether the user's address filters keep this socket: what they leave out is neither recorded,
/// counted nor reported.
#[inline(always)]
pub(crate) fn passes_filter(tuple: &Tuple) -> bool {
    let filter = FILTER.load();
    if filter.is_empty() {
        return true;
    }
    if filter.family != 0 && filter.family != tuple.family {
        return false;
    }
    if filter.netns != 0 && filter.netns != tuple.netns {
        return false;
    }
    // SAFETY: lookups only test presence.
    if filter.local_ports != 0 && unsafe { LOCAL_PORTS.get(tuple.sport) }.is_none() {
        return false;
    }
    if filter.remote_ports != 0 && unsafe { REMOTE_PORTS.get(tuple.dport) }.is_none() {
        return false;
    }
    true
}

/// What an event says, besides its addresses and owner.
pub(crate) struct Fields {
    pub(crate) kind: EventKind,
    pub(crate) ts_ns: u64,
    pub(crate) sock: u64,
    pub(crate) cookie: u64,
    pub(crate) prev_state_ns: u64,
    pub(crate) old: u8,
    pub(crate) new: u8,
    pub(crate) flags: u8,
    pub(crate) service_port: u16,
    pub(crate) end: u8,
    pub(crate) error: u8,
    pub(crate) reset_reason: u8,
    pub(crate) syn_retransmits: u8,
}

/// Writes one event, built in place in the ring buffer (not on the program's small
/// stack). The reader is woken only when enough data waits (see `WAKEUP_BYTES`).
#[inline(always)]
pub(crate) fn emit(fields: &Fields, tuple: &Tuple, owner: &Owner) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::LOST_TRANSITIONS);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation holds one `Event`; every field is written before it is submitted.
    unsafe {
        (*event).ts_ns = fields.ts_ns;
        (*event).sock = fields.sock;
        (*event).cookie = fields.cookie;
        (*event).prev_state_ns = fields.prev_state_ns;
        (*event).tuple = *tuple;
        (*event).owner = *owner;
        (*event).kind = fields.kind as u8;
        (*event).old = fields.old;
        (*event).new = fields.new;
        (*event).flags = fields.flags;
        (*event).service_port = fields.service_port;
        (*event).end = fields.end;
        (*event).error = fields.error;
        (*event).reset_reason = fields.reset_reason;
        (*event).syn_retransmits = fields.syn_retransmits;
        (*event)._pad = [0; 6];
    }
    let threshold = WAKEUP_BYTES.load();
    let flags = if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    };
    entry.submit(flags);
}
