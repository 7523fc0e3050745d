//! What leaves a program: one event in the ring buffer, or a count in the per-CPU counters when
//! it cannot (a full buffer, a failed read, a record not stored).
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated,
    maps::ring_buf::RingBufEntry,
};
use aya_log_ebpf::warn;
use tracer_common::{Event, EventKind, Tuple, counter};

use crate::maps::{COUNTERS, EVENTS, LOCAL_PORTS, REMOTE_PORTS, global};

/// Counts one more of `index` on this CPU; returns this CPU's count.
#[inline(always)]
pub(crate) fn count(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Counts a record the kernel could not store (a full map) and says so in the daemon's log,
/// rate-limited: at this CPU's 1st, 2nd, 4th, 8th… failure, so that a flood of them writes a few
/// dozen lines, not one per socket. The daemon's health figures carry the exact count.
#[inline(always)]
pub(crate) fn count_failure<C: EbpfContext>(ctx: &C, index: u32) {
    let n = count(index);
    if n.is_power_of_two() {
        warn!(
            ctx,
            "tcpstate: a per-socket record or index entry was not stored (map full; counter {}, {} times on this CPU): raise --max-sockets",
            index,
            n
        );
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
    let family = global!(FILTER.family);
    if family != 0 && family != tuple.family {
        return false;
    }
    let netns = global!(FILTER.netns);
    if netns != 0 && netns != tuple.netns {
        return false;
    }
    // SAFETY: lookups only test presence.
    if global!(FILTER.local_ports) != 0 && unsafe { LOCAL_PORTS.get(tuple.sport) }.is_none() {
        return false;
    }
    if global!(FILTER.remote_ports) != 0 && unsafe { REMOTE_PORTS.get(tuple.dport) }.is_none() {
        return false;
    }
    true
}

/// What an event says, besides its addresses.
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
    /// The owner's pid (0: unknown).
    pub(crate) pid: u32,
    /// The current task is the owner: its name is read too.
    pub(crate) with_comm: bool,
}

/// Room for one event in the ring buffer, where it is built in place (not on the program's small
/// stack); `None`, counted under `lost`, when the buffer is full.
#[inline(always)]
pub(crate) fn reserve(lost: u32) -> Option<RingBufEntry<Event>> {
    let entry = EVENTS.reserve::<Event>(0);
    if entry.is_none() {
        count(lost);
    }
    entry
}

/// Hands a built event to the daemon. The reader is woken only when enough data waits (see
/// `WAKEUP_BYTES`).
#[inline(always)]
pub(crate) fn submit(entry: RingBufEntry<Event>) {
    let threshold = global!(WAKEUP_BYTES);
    let flags = if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    };
    entry.submit(flags);
}

/// The owner's name, when the current task is the owner, written straight into the event's
/// (word-aligned) field; on failure the helper leaves zeroes: an empty name, which the daemon
/// fills in from /proc.
#[inline(always)]
pub(crate) fn write_current_comm(event: *mut Event) {
    // SAFETY: the event's 16-byte `comm`.
    unsafe {
        let comm = &raw mut (*event).owner.comm;
        generated::bpf_get_current_comm(comm.cast(), 16);
    }
}

/// Writes one event from its fields, or counts it under `lost` when the buffer is full.
#[inline(always)]
pub(crate) fn emit(fields: &Fields, tuple: &Tuple, lost: u32) {
    let Some(mut entry) = reserve(lost) else {
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
        (*event).owner.pid = fields.pid;
        (*event).owner._pad = 0;
        (*event).owner.comm = [0; 16];
        if fields.with_comm {
            write_current_comm(event);
        }
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
    submit(entry);
}
