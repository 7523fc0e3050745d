//! How connections end and how handshakes struggle, from three tp_btf hooks that run only when
//! something goes wrong (a reset sent, a segment retransmitted), never on a healthy connection:
//!
//! - `tcp_send_reset`: a reset the socket sends of its own (no packet to answer). Sent before the
//!   socket closes (keepalive timeout, out of memory), it is recorded and the close counts it;
//!   sent just after (close() with unread data, linger 0: the kernel closes first), it amends the
//!   end the close counted, and a line that was written says so.
//! - `tcp_retransmit_skb`: a connecting socket's SYN sent again; the connect's line and its time
//!   say so.
//! - `tcp_retransmit_synack`: a listener's SYN-ACK sent again: a handshake its client did not
//!   complete in time (lost ACKs, a SYN flood). Counted per listener: the daemon lists the
//!   half-open connections of the listeners whose count moved.
use aya_ebpf::{helpers::generated, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    End, EventKind, NO_RESET_REASON, RECENT_CLOSES as RECENT_CLOSES_LEN, TcpState, Tuple, counter,
    record_flags, settings::watches,
};

use crate::{
    account,
    maps::{LISTENER_SYNACKS, RECENT_CLOSES, SOCKETS, WATCHED, global},
    output::{Fields, count, emit, finish, passes_filter},
    read::{full_socket_tuple, listener_id, member, now, socket_id},
};

const CLOSE: u8 = TcpState::Close as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    finish(on_reset(&ctx));
    0
}

fn on_reset(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    // A reset answering a packet (no socket, or one that got a bad segment) is not a socket
    // ending by its own reset.
    if sk == 0 || skb != 0 {
        return Ok(());
    }
    // SAFETY: the helper checks its argument.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
    if tcp == 0 {
        return Ok(());
    }
    // The reason is an argument from Linux 6.10 on; never read where the kernel has no such
    // argument (the verifier would refuse the program).
    let reason = if global!(CONFIG.reset_reason_arg) != 0 {
        ctx.arg::<u32>(2).min((NO_RESET_REASON - 1).into()) as u8
    } else {
        NO_RESET_REASON
    };
    let cookie = socket_id(sk);
    let state: u8 = member(sk, global!(OFFSETS.skc_state));
    if state != CLOSE {
        // Before the close: the close counts it.
        if let Some(record) = SOCKETS.get_ptr_mut(cookie) {
            // SAFETY: the map value lives while the program runs; serialized by the socket lock.
            unsafe {
                (*record).flags |= record_flags::RESET_SENT;
                (*record).reset_reason = reason;
            }
        }
        return Ok(());
    }
    // Just after the close, in the same call: amend the end it counted.
    let Some(recent) = RECENT_CLOSES.get_ptr_mut(0) else {
        return Ok(());
    };
    // The latest close of this id first: before Linux 5.12 the id is the socket's address,
    // which a new socket takes over as soon as the old one is freed, so an older entry may carry
    // the same id (a refused connect's, whose end must stay refused).
    let mut found = None;
    // SAFETY: this CPU's slots, no one else's while the program runs.
    let next = unsafe { (*recent).next } as usize;
    for back in 1..=RECENT_CLOSES_LEN {
        let slot = next.wrapping_sub(back) & (RECENT_CLOSES_LEN - 1);
        // SAFETY: as above; the slot is masked into bounds.
        if unsafe { (*recent).entries[slot].cookie } == cookie {
            found = Some(slot);
            break;
        }
    }
    let Some(slot) = found else {
        // Not among the sockets this CPU saw close last: the closing task moved between CPUs.
        let mut tuple = Tuple::default();
        if full_socket_tuple(sk, tcp, &mut tuple) && passes_filter(&tuple) {
            count(counter::UNMATCHED_RESETS);
        }
        return Ok(());
    };
    // SAFETY: as above; the slot was found in bounds.
    let (last_end, last_old) = unsafe {
        let entry = &mut (*recent).entries[slot];
        entry.cookie = 0;
        (entry.end, entry.old)
    };
    let Some(counted) = End::from_u8(last_end) else {
        return Ok(());
    };
    if counted == End::ResetSent {
        return Ok(());
    }
    let connecting = last_old == SYN_SENT;
    account::end(counted, connecting, 0, u64::MAX);
    account::end(End::ResetSent, connecting, 0, 1);
    if global!(CONFIG.log_all) != 0 {
        // The line of the close went out already: the daemon amends it.
        emit(
            &Fields {
                kind: EventKind::End,
                ts_ns: now(),
                sock: sk,
                cookie,
                prev_state_ns: 0,
                old: last_old,
                new: CLOSE,
                flags: 0,
                service_port: 0,
                end: End::ResetSent as u8,
                error: 0,
                reset_reason: reason,
                syn_retransmits: 0,
                pid: 0,
                with_comm: false,
            },
            &Default::default(),
            counter::LOST_OTHER,
        );
    }
    Ok(())
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    // Data retransmissions are the common case here: dropped at the first comparison.
    if sk == 0 || member::<u8>(sk, global!(OFFSETS.skc_state)) != SYN_SENT {
        return 0;
    }
    let cookie = socket_id(sk);
    if let Some(record) = SOCKETS.get_ptr_mut(cookie) {
        count(counter::SYN_RETRANSMITS);
        // SAFETY: the map value lives while the program runs; serialized by the socket lock.
        unsafe { (*record).syn_retransmits = (*record).syn_retransmits.saturating_add(1) };
    }
    // A connect enters SYN_SENT before its local port is chosen: its index entry learns the port
    // here, before the connect can be reported stuck (a second at the first retransmit).
    if !watches(global!(CONFIG.watched), SYN_SENT) {
        return 0;
    }
    if let Some(watch) = WATCHED.get_ptr_mut(cookie) {
        // SAFETY: the map value lives while the program runs; serialized by the socket lock.
        if unsafe { (*watch).tuple.sport } == 0 {
            // SAFETY: the helper checks its argument.
            let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
            if tcp != 0 {
                let port = u16::from_be(member(tcp, global!(OFFSETS.inet_sport)));
                // SAFETY: as above.
                unsafe { (*watch).tuple.sport = port };
            }
        }
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    let listener: u64 = ctx.arg(0);
    // SAFETY: the helper checks its argument.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(listener as *mut _) } as u64;
    if tcp == 0 {
        return 0;
    }
    let mut tuple = Tuple::default();
    if full_socket_tuple(listener, tcp, &mut tuple) && passes_filter(&tuple) {
        count(counter::SYNACK_RETRANSMITS);
        count_synack(listener_id(listener));
    }
    0
}

/// One more SYN-ACK retransmitted by the listener `cookie`, on this CPU.
fn count_synack(cookie: u64) {
    const NOEXIST: u64 = 1;
    if let Some(slot) = LISTENER_SYNACKS.get_ptr_mut(&cookie) {
        // SAFETY: this CPU's value; no other writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    } else if LISTENER_SYNACKS.insert(&cookie, &1, NOEXIST).is_err() {
        // Another CPU made the listener's entry meanwhile.
        match LISTENER_SYNACKS.get_ptr_mut(&cookie) {
            // SAFETY: as above.
            Some(slot) => unsafe { *slot += 1 },
            None => {
                count(counter::LOST_OTHER);
            }
        }
    }
}
