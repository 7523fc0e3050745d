//! `inet_sock_set_state`: every TCP state transition. The program keeps the socket's record (since
//! when it is in its state, its owner, the port it serves), counts the transition and the time
//! spent in the old state, keeps the index of sockets in watched states, follows an active close
//! to the timewait socket that takes the connection over, and writes an event only when the
//! daemon logs every transition or a socket leaves a watched state after its threshold.
//!
//! The record is read into plain locals: the verifier follows scalars better than copies of
//! structs held in options.
use aya_ebpf::{
    cty::c_void, helpers::generated, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    End, EventKind, LastClose, Owner, RECENT_CLOSES as RECENT_CLOSES_LEN, SockRecord, TcpState,
    Tuple, TwRecord, UNKNOWN_DURATION, counter, event_flags, record_flags, runs_in_owner_context,
    tuple::service_port,
};

use crate::{
    account,
    maps::{
        CONFIG, LINGERING, OFFSETS, RECENT_CLOSES, SCRATCH_WATCH, SOCKETS, THRESHOLDS, TIMEWAIT,
        TW_TIMER_HANDLER, WATCHED,
    },
    output::{Fields, count, emit, finish, passes_filter},
    read::{current_owner, current_pid, full_socket_tuple, member, netns_of, now},
    timewait::end_timewait,
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const CLOSING: u8 = TcpState::Closing as u8;
const TIME_WAIT: u8 = TcpState::TimeWait as u8;
/// A state number no socket has: no record.
const NONE: u8 = 0;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    finish(on_set_state(&ctx));
    0
}

fn on_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // tp_btf rather than the classic tracepoint: no record is formatted for it, and the kernel
    // skips it only while it interrupts itself, not while any tracing program runs on the CPU.
    let sk: u64 = ctx.arg(0);
    // The kernel's own cast: null unless a full TCP socket, and typed as `struct tcp_sock`, so
    // the `inet_sock` fields past `struct sock` may be loaded.
    // SAFETY: the helper checks its argument.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
    if tcp == 0 {
        return Ok(());
    }
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    if old as usize >= TcpState::COUNT || new as usize >= TcpState::COUNT {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let Some(mut tuple) = full_socket_tuple(sk, tcp, &offsets) else {
        return Ok(());
    };
    tuple.netns = netns_of(sk, &offsets);
    if !passes_filter(&tuple) {
        return Ok(());
    }
    count(counter::TRANSITIONS);
    let config = CONFIG.load();
    let port_labels = config.port_labels != 0;
    let ts = now();
    // SAFETY: a BTF-typed socket pointer, as the helper requires.
    let cookie = unsafe { generated::bpf_get_socket_cookie(sk as *mut c_void) };

    // What the kernel knew of this socket, in locals; it speaks for the old state only if it
    // shows it.
    let record = SOCKETS.get_ptr_mut(cookie);
    let (had, since, had_state, had_flags, had_pid, had_port, reset_reason, syn_retransmits) =
        match record {
            // SAFETY: the map value lives while the program runs (RCU); a socket's transitions
            // are serialized by its lock.
            Some(r) => unsafe {
                (
                    true,
                    (*r).since_ns,
                    (*r).state,
                    (*r).flags,
                    (*r).pid,
                    (*r).service_port,
                    (*r).reset_reason,
                    (*r).syn_retransmits,
                )
            },
            None => (false, 0, NONE, 0, 0, 0, 0, 0),
        };
    let known = had && had_state == old;
    let age_known = known && had_flags & record_flags::AGE_KNOWN != 0;
    let spent = if age_known {
        ts.saturating_sub(since)
    } else {
        UNKNOWN_DURATION
    };
    let in_owner_context = runs_in_owner_context(old, new);
    let pid = if in_owner_context {
        current_pid()
    } else {
        had_pid
    };
    let port = if had {
        had_port
    } else {
        service_port(old, &tuple)
    };

    // At an active close the kernel hands the connection to a timewait socket, which took the
    // full socket's place in the connection table: TIME_WAIT, or FIN_WAIT2 lingering on (a
    // closed socket whose FIN was acknowledged but whose peer has not closed; no transition).
    let handover = new == CLOSE
        && (old == FIN_WAIT2 || old == CLOSING)
        && TW_TIMER_HANDLER.get(0).is_some_and(|h| *h != 0)
        && member::<u64>(sk, offsets.skc_nulls_pprev) == 0;
    let next = if !handover {
        new
    } else if old == CLOSING || fin_received(sk, offsets.skc_flags, offsets.sock_done_bit) {
        TIME_WAIT
    } else {
        FIN_WAIT2
    };
    let lingers = handover && next == FIN_WAIT2;

    if !lingers {
        account::transition(old, next, port, port_labels);
        if age_known && old != next {
            account::duration(old, spent, port, port_labels);
        }
    }
    let connected = old == SYN_SENT && new == ESTABLISHED;
    if connected && age_known {
        account::connect_duration(spent, syn_retransmits != 0);
    }

    // How the connection ended, when it did: the kernel set the socket's error before closing
    // it, and a reset of its own was recorded. A reset sent right after the close amends it.
    let (end, error) = if new == CLOSE {
        let err: i32 = member(sk, offsets.sk_err);
        let err = if (0..=255).contains(&err) {
            err as u8
        } else {
            255
        };
        let reset_sent = had && had_flags & record_flags::RESET_SENT != 0;
        match End::classify(old, handover, err, reset_sent) {
            Some(end) => {
                account::end(end, old == SYN_SENT, err, 1);
                if let Some(recent) = RECENT_CLOSES.get_ptr_mut(0) {
                    // SAFETY: this CPU's slots, no one else's while the program runs (a nested
                    // run writes a slot of its own); the index is masked into bounds.
                    unsafe {
                        let slot = ((*recent).next as usize) & (RECENT_CLOSES_LEN - 1);
                        (*recent).entries[slot] = LastClose {
                            cookie,
                            end: end as u8,
                            old,
                            _pad: [0; 6],
                        };
                        (*recent).next += 1;
                    }
                }
                (end as u8, err)
            }
            None => (0, err),
        }
    } else {
        (0, 0)
    };

    // The event goes before the index changes: the daemon reads the index, then the ring buffer,
    // so a socket gone from the index always has its event there already.
    let long_stay = known
        && !lingers
        && old != next
        && config.watches(old)
        && THRESHOLDS
            .get(old as u32)
            .is_some_and(|threshold| ts.saturating_sub(since) >= *threshold);
    if (config.log_all != 0 || long_stay) && !lingers {
        let owner = if in_owner_context {
            current_owner()
        } else {
            Owner {
                pid,
                ..Owner::default()
            }
        };
        let mut flags = 0;
        if long_stay {
            flags |= event_flags::LONG_STAY;
        }
        if handover {
            flags |= event_flags::TIMEWAIT;
        }
        emit(
            &Fields {
                kind: EventKind::Transition,
                ts_ns: ts,
                sock: sk,
                cookie,
                prev_state_ns: spent,
                old,
                new: next,
                flags,
                service_port: port,
                end,
                error,
                reset_reason: if end == End::ResetSent as u8 {
                    reset_reason
                } else {
                    0
                },
                syn_retransmits: if connected { syn_retransmits } else { 0 },
            },
            &tuple,
            &owner,
        );
    }

    // The record. `kept`: the state the record holds afterwards (NONE: no record).
    let kept = if handover {
        let tw = TwRecord {
            since_ns: if lingers && known { since } else { ts },
            sock: sk,
            pid,
            service_port: port,
            substate: next,
            flags: if !lingers || age_known {
                record_flags::AGE_KNOWN
            } else {
                0
            },
        };
        let stored = TIMEWAIT.insert(&tuple, &tw, 0).is_ok();
        if !stored {
            count(counter::RECORD_FAILED);
        } else if lingers {
            let _ = LINGERING.insert(&tuple, &0, 0);
        }
        if had {
            let _ = SOCKETS.remove(cookie);
        }
        account::moved(had.then_some(had_state), stored.then_some(next));
        NONE
    } else if new == CLOSE {
        if had {
            let _ = SOCKETS.remove(cookie);
        }
        account::moved(had.then_some(had_state), None);
        NONE
    } else if let Some(r) = record {
        if old == new && known {
            // A state set again (close() after shutdown() in LAST_ACK) keeps its clock.
            // SAFETY: as above.
            unsafe { (*r).pid = pid };
        } else {
            // SAFETY: as above.
            unsafe {
                (*r).since_ns = ts;
                (*r).pid = pid;
                (*r).netns = tuple.netns;
                (*r).service_port = port;
                (*r).state = new;
                (*r).flags = record_flags::AGE_KNOWN;
                (*r).reset_reason = 0;
                (*r).syn_retransmits = 0;
            }
            account::moved(Some(had_state), Some(new));
        }
        new
    } else {
        let fresh = SockRecord {
            since_ns: ts,
            pid,
            netns: tuple.netns,
            service_port: port,
            state: new,
            flags: record_flags::AGE_KNOWN,
            reset_reason: 0,
            syn_retransmits: 0,
            _pad: 0,
        };
        if SOCKETS.insert(cookie, &fresh, 0).is_ok() {
            account::moved(None, Some(new));
            new
        } else {
            count(counter::RECORD_FAILED);
            warn!(ctx, "tcpstate: per-socket record not stored");
            NONE
        }
    };

    // The index of full sockets in watched states follows the record.
    let was_watched = had && config.watches(had_state);
    if kept != NONE && config.watches(kept) {
        if let Some(e) = WATCHED.get_ptr_mut(cookie).filter(|_| was_watched) {
            if kept != had_state || !(old == new && known) {
                // SAFETY: the map value lives while the program runs; serialized per socket.
                unsafe {
                    (*e).since_ns = ts;
                    (*e).sock = sk;
                    (*e).pid = pid;
                    (*e).state = kept;
                    (*e).flags = record_flags::AGE_KNOWN;
                }
            }
        } else {
            index_watched(cookie, sk, &tuple, ts, pid, port, kept);
        }
    } else if was_watched {
        let _ = WATCHED.remove(cookie);
    }

    // A connection reusing the address of a timewait socket ends it (TIME-WAIT reuse on connect,
    // or a SYN accepted on a TIME-WAIT address).
    if (old == SYN_SENT && new == ESTABLISHED) || (old == LISTEN && new == SYN_RECV) {
        let at = if old == SYN_SENT && known { since } else { ts };
        end_timewait(&tuple, at, 0, &config);
    }
    Ok(())
}

/// Adds a socket to the index of watched sockets, built in per-CPU scratch space.
#[inline(always)]
fn index_watched(cookie: u64, sk: u64, tuple: &Tuple, ts: u64, pid: u32, port: u16, state: u8) {
    let Some(entry) = SCRATCH_WATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, no one else's while the program runs.
    let entry = unsafe {
        (*entry).since_ns = ts;
        (*entry).sock = sk;
        (*entry).tuple = *tuple;
        (*entry).pid = pid;
        (*entry).service_port = port;
        (*entry).state = state;
        (*entry).flags = record_flags::AGE_KNOWN;
        &*entry
    };
    if WATCHED.insert(cookie, entry, 0).is_err() {
        count(counter::WATCH_FAILED);
    }
}

/// Whether the socket received its peer's FIN (`SOCK_DONE` in `sk_flags`).
#[inline(always)]
fn fin_received(sk: u64, flags_offset: u32, done_bit: u32) -> bool {
    let flags: u64 = member(sk, flags_offset);
    done_bit < 64 && (flags >> done_bit) & 1 != 0
}
