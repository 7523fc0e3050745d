//! What leaves a program: one event in the ring buffer, or a count in the per-CPU counters when
//! it cannot (a full buffer, a failed read, a record not stored).
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tracer_common::{Event, EventKind, Owner, Tuple, UNKNOWN_DURATION, counter};

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

/// Whether the user's address filters (applied before an event is written) keep this socket.
#[inline(always)]
pub(crate) fn passes_filter(tuple: &Tuple) -> bool {
    let filter = FILTER.load();
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

/// Writes one event. The reader is woken only when enough data waits (see `WAKEUP_BYTES`).
#[inline(always)]
pub(crate) fn emit(event: Event) {
    let threshold = WAKEUP_BYTES.load();
    let flags = if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    };
    if EVENTS.output::<Event>(&event, flags).is_err() {
        count(if event.kind == EventKind::Transition as u8 {
            counter::LOST_TRANSITIONS
        } else {
            counter::LOST_OTHER
        });
    }
}

/// An event with no duration and no timer fields; callers fill in what they know.
#[inline(always)]
pub(crate) fn event(
    kind: EventKind,
    sock: u64,
    ts_ns: u64,
    tuple: Tuple,
    owner: Owner,
    old: u8,
    new: u8,
) -> Event {
    Event {
        ts_ns,
        sock,
        prev_state_ns: UNKNOWN_DURATION,
        tuple,
        owner,
        jiffies: 0,
        timer_expires: 0,
        kind: kind as u8,
        old,
        new,
        _pad: [0; 5],
    }
}
