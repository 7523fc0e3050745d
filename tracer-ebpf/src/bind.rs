//! `sys_enter_bind` and `sys_exit_bind` (classic tracepoints, only with `--bind-failures`): a TCP
//! socket's `bind()` that failed because the address is taken or not the host's (EADDRINUSE,
//! EADDRNOTAVAIL; port 0 failing with EADDRINUSE means no ephemeral port is left) becomes an event
//! naming the caller and the address it asked for. A failed bind changes no TCP state, so the
//! transition program never sees it. The entry keeps the call's arguments per thread, the exit
//! looks at them only when the call failed so.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    AF_INET, AF_INET6, BIND_ADDR_OFFSET, BIND_FD_OFFSET, BindCall, EventKind, SYSCALL_RET_OFFSET,
    Tuple, counter, ends::errno, normalize_family,
};

use crate::{
    maps::{BIND_CALLS, global},
    output::{Fields, count, emit, finish, passes_filter},
    read::{current_pid, field, netns_of, now, socket_of_fd},
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let call = BindCall {
        // An `int` in an 8-byte slot: its low half, as the kernel reads it.
        fd: i64::from(field::<i32>(&ctx, BIND_FD_OFFSET)),
        addr: field(&ctx, BIND_ADDR_OFFSET),
    };
    // An LRU map: a call whose exit never came (the tracer attached in between) gives way.
    let _ = BIND_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    finish(on_exit(&ctx));
    0
}

fn on_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret: i64 = field(ctx, SYSCALL_RET_OFFSET);
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let call = unsafe { BIND_CALLS.get(&thread) }.copied();
    if call.is_some() {
        let _ = BIND_CALLS.remove(&thread);
    }
    let error = if ret == -i64::from(errno::EADDRINUSE) {
        errno::EADDRINUSE
    } else if ret == -i64::from(errno::EADDRNOTAVAIL) {
        errno::EADDRNOTAVAIL
    } else {
        return Ok(());
    };
    let Some(call) = call else {
        // Its entry was not kept: a failure not reported, counted.
        count(counter::LOST_OTHER);
        return Ok(());
    };
    let sk = socket_of_fd(call.fd)?;
    if sk == 0 {
        return Ok(());
    }
    // SAFETY: the helper checks the address.
    let protocol: u16 =
        unsafe { bpf_probe_read_kernel((sk + global!(OFFSETS.sk_protocol) as u64) as *const u16)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let mut tuple = Tuple::default();
    read_sockaddr(call.addr, &mut tuple)?;
    if tuple.family != AF_INET && tuple.family != AF_INET6 {
        return Ok(());
    }
    tuple.netns = netns_of(sk);
    if !passes_filter(&tuple) {
        return Ok(());
    }
    let fields = Fields {
        kind: EventKind::BindFailed,
        ts_ns: now(),
        sock: 0,
        cookie: 0,
        prev_state_ns: 0,
        old: 0,
        new: 0,
        flags: 0,
        service_port: tuple.sport,
        end: 0,
        error,
        reset_reason: 0,
        syn_retransmits: 0,
        pid: current_pid(),
        with_comm: true,
    };
    emit(&fields, &tuple, counter::LOST_OTHER);
    Ok(())
}

/// The caller's `struct sockaddr_in` or `sockaddr_in6`: family, port, address, into `tuple`.
#[inline(always)]
fn read_sockaddr(addr: u64, tuple: &mut Tuple) -> Result<(), i64> {
    // Family and port, then the address where its family puts it (a `sockaddr_in` is 16 bytes:
    // reading 28 could run past the caller's buffer).
    let mut head = [0u8; 4];
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user_buf(addr as *const u8, &mut head)? };
    tuple.family = u16::from_ne_bytes([head[0], head[1]]);
    tuple.sport = u16::from_be_bytes([head[2], head[3]]);
    // SAFETY: as above.
    unsafe {
        if tuple.family == AF_INET {
            bpf_probe_read_user_buf((addr + 4) as *const u8, &mut tuple.saddr[..4])?;
        } else if tuple.family == AF_INET6 {
            bpf_probe_read_user_buf((addr + 8) as *const u8, &mut tuple.saddr)?;
            normalize_family(tuple);
        }
    }
    Ok(())
}
