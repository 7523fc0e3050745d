//! The aggregates the kernel keeps instead of sending every transition: transitions by
//! (old, new), time in each state, live records by state, and the same per service port when the
//! daemon asks for port labels. All per CPU: no lock, no atomic.
use tracer_common::{
    End, TcpState,
    aggregate::{
        DURATION_BUCKETS, Durations, ListenerKey, OCTAVES, PortKey, duration_bucket, octave,
    },
    counter,
    ends::ERRNO_SLOTS,
};

use crate::{
    maps::{
        ACCEPT_WAITS, CONNECT_DURATIONS, COUNTS, DURATIONS, ENDS, GAUGES, PORT_COUNTS,
        PORT_DURATIONS, ZERO_ACCEPT_WAITS, ZERO_PORT_DURATIONS,
    },
    output::count,
};

const STATES: usize = TcpState::COUNT;

/// An array index the verifier can see is in bounds: read back through the stack, so that the
/// compiler cannot fold the check into arithmetic the verifier does not follow. Checked right
/// before the access, after every helper call: verifiers before 6.x do not carry a bound over to
/// a copy spilled across a call.
#[inline(always)]
fn bounded(index: usize, len: usize) -> Option<usize> {
    // SAFETY: a read of a local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    (index < len).then_some(index)
}

/// One transition of a socket that serves or uses `port` (`port_labels`: counted per port too).
#[inline(always)]
pub(crate) fn transition(old: u8, new: u8, port: u16, port_labels: bool) {
    let (o, n) = (old as usize, new as usize);
    if o >= STATES || n >= STATES {
        return;
    }
    if let Some(counts) = COUNTS.get_ptr_mut(0)
        && let Some(index) = bounded(o * STATES + n, STATES * STATES)
    {
        // SAFETY: per-CPU value; the index is bounded above.
        unsafe { (*counts).counts[index] += 1 };
    }
    if port_labels {
        port_transition(port, old, new);
    }
}

/// A socket spent `ns` in `state`.
#[inline(always)]
pub(crate) fn duration(state: u8, ns: u64, port: u16, port_labels: bool) {
    if let Some(d) = DURATIONS.get_ptr_mut(state as u32) {
        add_duration(d, ns);
    }
    if port_labels {
        port_duration(port, state, ns);
    }
}

/// A connect took `ns` (SYN_SENT to ESTABLISHED), with a SYN retransmitted or not.
#[inline(always)]
pub(crate) fn connect_duration(ns: u64, retransmitted: bool) {
    if let Some(d) = CONNECT_DURATIONS.get_ptr_mut(u32::from(retransmitted)) {
        add_duration(d, ns);
    }
}

/// A connection of the listener on `port` in namespace `netns` waited `ns` to be accepted, by
/// process `pid`. Listeners past the map's room are counted together, under port 0.
#[inline(always)]
pub(crate) fn accept_wait(netns: u32, port: u16, ns: u64, pid: u32) {
    let own = ListenerKey {
        netns,
        port,
        _pad: 0,
    };
    for key in [own, ListenerKey::default()] {
        let mut value = ACCEPT_WAITS.get_ptr_mut(&key);
        if value.is_none()
            && let Some(zero) = ZERO_ACCEPT_WAITS.get(0)
            && ACCEPT_WAITS.insert(&key, zero, 0).is_ok()
        {
            value = ACCEPT_WAITS.get_ptr_mut(&key);
        }
        if let Some(w) = value {
            // SAFETY: a per-CPU value.
            unsafe {
                add_duration(&raw mut (*w).waits, ns);
                (*w).pid = pid;
            }
            return;
        }
    }
    count(counter::UNLABELLED);
}

#[inline(always)]
fn add_duration(d: *mut Durations, ns: u64) {
    let Some(bucket) = bounded(duration_bucket(ns), DURATION_BUCKETS) else {
        return;
    };
    // (No helper call between the check and the access.)
    // SAFETY: a per-CPU value; the bucket is bounded above.
    unsafe {
        (*d).buckets[bucket] += 1;
        (*d).count += 1;
        (*d).sum_ns += ns;
        if (*d).min_ns == 0 || ns < (*d).min_ns {
            (*d).min_ns = ns.max(1);
        }
        if ns > (*d).max_ns {
            (*d).max_ns = ns;
        }
    }
}

/// A connection ended (`change` 1), or an end counted before is taken back (`change` -1, as a
/// wrapping add: per CPU a slot may wrap, the sum over CPUs is right). `connecting`: it never
/// got past SYN_SENT. `err`: the socket's error, counted by number for an `End::Error`.
#[inline(always)]
pub(crate) fn end(end: End, connecting: bool, err: u8, change: u64) {
    let Some(counts) = ENDS.get_ptr_mut(0) else {
        return;
    };
    let Some(slot) = bounded(end as usize, End::COUNT) else {
        return;
    };
    // SAFETY: a per-CPU value; the indexes are bounded above.
    unsafe {
        (*counts).ends[slot] = (*counts).ends[slot].wrapping_add(change);
        if connecting {
            (*counts).connect_failures[slot] =
                (*counts).connect_failures[slot].wrapping_add(change);
        }
        if end == End::Error
            && let Some(errno) = bounded((err as usize).min(ERRNO_SLOTS - 1), ERRNO_SLOTS)
        {
            (*counts).errors[errno] = (*counts).errors[errno].wrapping_add(change);
            if connecting {
                (*counts).connect_errors[errno] =
                    (*counts).connect_errors[errno].wrapping_add(change);
            }
        }
    }
}

/// A record entered (`+1`) or left (`-1`) `state`.
#[inline(always)]
pub(crate) fn gauge(state: u8, change: i64) {
    if let Some(g) = GAUGES.get_ptr_mut(0)
        && let Some(s) = bounded(state as usize, STATES)
    {
        // SAFETY: per-CPU value; the index is bounded above.
        unsafe { (*g).by_state[s] += change };
    }
}

/// A record moved from `old` to `new` (`None`: no record on that side).
#[inline(always)]
pub(crate) fn moved(old: Option<u8>, new: Option<u8>) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        gauge(old, -1);
    }
    if let Some(new) = new {
        gauge(new, 1);
    }
}

fn port_key(port: u16, old: u8, new: u8) -> PortKey {
    PortKey {
        port,
        old,
        new,
        _pad: [0; 4],
    }
}

#[inline(always)]
fn port_transition(port: u16, old: u8, new: u8) {
    for key in [port_key(port, old, new), port_key(0, old, new)] {
        if let Some(count) = PORT_COUNTS.get_ptr_mut(&key) {
            // SAFETY: per-CPU value.
            unsafe { *count += 1 };
            return;
        }
        if PORT_COUNTS.insert(&key, &1, 0).is_ok() {
            return;
        }
        // The map is full: count it under port 0.
    }
    count(counter::UNLABELLED);
}

#[inline(always)]
fn port_duration(port: u16, state: u8, ns: u64) {
    for key in [port_key(port, state, 0), port_key(0, state, 0)] {
        let mut value = PORT_DURATIONS.get_ptr_mut(&key);
        if value.is_none()
            && let Some(zero) = ZERO_PORT_DURATIONS.get(0)
            && PORT_DURATIONS.insert(&key, zero, 0).is_ok()
        {
            value = PORT_DURATIONS.get_ptr_mut(&key);
        }
        if let Some(d) = value
            && let Some(slot) = bounded(octave(ns), OCTAVES)
        {
            // SAFETY: per-CPU value; the slot is bounded above.
            unsafe {
                (*d).buckets[slot] += 1;
                (*d).count += 1;
                (*d).sum_ns += ns;
            }
            return;
        }
    }
    count(counter::UNLABELLED);
}
