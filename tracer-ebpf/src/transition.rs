//! `inet_sock_set_state`: every TCP state transition, with the time spent in the old state and the
//! socket's owner from the per-socket record.
use aya_ebpf::{helpers::generated, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::warn;
use tracer_common::{
    AF_INET, AF_INET6, Event, EventKind, Owner, SockRecord, TcpState, Tuple, UNKNOWN_DURATION,
    counter, normalize_family, runs_in_owner_context,
};

use crate::{
    maps::{OFFSETS, SOCKETS},
    output::{count, emit, event, finish, passes_filter},
    read::{current_owner, member, netns_of, now},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    finish(on_set_state(&ctx));
    0
}

fn on_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // tp_btf rather than the classic tracepoint: no record is formatted for it, and the kernel
    // skips it only while it interrupts itself, not while any tracing program runs on the CPU.
    let sock: u64 = ctx.arg(0);
    // The kernel's own cast: null unless a full TCP socket, and typed as `struct tcp_sock`, so
    // the `inet_sock` fields past `struct sock` may be loaded.
    // SAFETY: the helper checks its argument.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sock as *mut _) } as u64;
    if tcp == 0 {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let ts_ns = now();
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let mut tuple = Tuple {
        sport: u16::from_be(member(tcp, offsets.inet_sport)),
        dport: u16::from_be(member(sock, offsets.skc_dport)),
        family: member(sock, offsets.skc_family),
        ..Tuple::default()
    };
    if tuple.family == AF_INET {
        let s: u32 = member(tcp, offsets.inet_saddr);
        let d: u32 = member(sock, offsets.skc_daddr);
        tuple.saddr[..4].copy_from_slice(&s.to_ne_bytes());
        tuple.daddr[..4].copy_from_slice(&d.to_ne_bytes());
    } else if tuple.family == AF_INET6 {
        let words: [u64; 4] = [
            member(sock, offsets.skc_v6_rcv_saddr),
            member(sock, offsets.skc_v6_rcv_saddr + 8),
            member(sock, offsets.skc_v6_daddr),
            member(sock, offsets.skc_v6_daddr + 8),
        ];
        tuple.saddr[..8].copy_from_slice(&words[0].to_ne_bytes());
        tuple.saddr[8..].copy_from_slice(&words[1].to_ne_bytes());
        tuple.daddr[..8].copy_from_slice(&words[2].to_ne_bytes());
        tuple.daddr[8..].copy_from_slice(&words[3].to_ne_bytes());
        normalize_family(&mut tuple);
    } else {
        return Ok(());
    }

    // What the kernel knew of this socket: valid only if it was left in the state now being left
    // (a record left by a freed socket whose address was reused is not). Records are written in
    // place and never deleted: a closed socket's record is marked CLOSE and taken over by the
    // next socket at that address (the allocator reuses addresses at once), or evicted by the LRU
    // map. Inserting into or deleting from an LRU map costs several times a lookup.
    let mut prev_state_ns = UNKNOWN_DURATION;
    let mut owner = Owner::default();
    let record = SOCKETS.get_ptr_mut(sock);
    // SAFETY: the map value lives while the program runs (RCU).
    let known = record.filter(|r| old != TcpState::Close as u8 && unsafe { (**r).state } == old);
    match known {
        Some(r) => unsafe {
            prev_state_ns = ts_ns.saturating_sub((*r).since_ns);
            owner = (*r).owner;
            tuple.netns = (*r).tuple.netns;
        },
        None => tuple.netns = netns_of(sock, &offsets),
    }
    if runs_in_owner_context(old, new) {
        owner = current_owner();
    }
    let fresh = SockRecord {
        since_ns: ts_ns,
        tuple,
        owner,
        state: new,
        _pad: [0; 7],
    };
    match record {
        // A state set again (close() after shutdown() in LAST_ACK) does not restart the clock.
        Some(_) if old == new && known.is_some() => {}
        // SAFETY: as above; a socket's transitions are serialized by its lock.
        Some(r) => unsafe { *r = fresh },
        None if new != TcpState::Close as u8 && SOCKETS.insert(sock, fresh, 0).is_err() => {
            count(counter::RECORD_FAILED);
            warn!(ctx, "tcpstate: per-socket record not stored");
        }
        None => {}
    }

    if passes_filter(&tuple) {
        emit(Event {
            prev_state_ns,
            ..event(EventKind::Transition, sock, ts_ns, tuple, owner, old, new)
        });
    }
    Ok(())
}
