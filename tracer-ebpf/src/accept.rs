//! `sys_exit_accept{,4}`: the process that accepts a socket becomes its owner (the accepted
//! socket's own transitions run in softirq, on behalf of whatever task was on the CPU).
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, EventKind};

use crate::{
    maps::{OFFSETS, SOCKETS},
    output::{emit, event, finish, passes_filter},
    read::{current_owner, field, now, read_sock_common},
};

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    finish(on_accept(&ctx));
    0
}

/// The accepted socket's file descriptor is the return value: follow it from the current task to
/// the socket and record the caller as the socket's owner.
fn on_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let fd: i64 = field(ctx, tracer_common::ACCEPT_RET_OFFSET);
    if fd < 0 {
        return Ok(());
    }
    let o = OFFSETS.load();
    // SAFETY: every pointer is read with bpf_probe_read_kernel.
    let sk = unsafe {
        let read = |addr: u64| bpf_probe_read_kernel(addr as *const u64);
        let task = bpf_get_current_task();
        let files = read(task + o.task_files as u64)?;
        let fdt = read(files + o.files_fdt as u64)?;
        let max_fds: u32 = bpf_probe_read_kernel((fdt + o.fdt_max_fds as u64) as *const u32)?;
        if fd as u64 >= max_fds as u64 {
            return Ok(());
        }
        let fd_array = read(fdt + o.fdt_fd as u64)?;
        let file = read(fd_array + 8 * fd as u64)?;
        let socket = read(file + o.file_private_data as u64)?;
        read(socket + o.socket_sk as u64)?
    };
    let owner = current_owner();
    // SAFETY: the pointer is used at once, under RCU.
    let (tuple, state) = match SOCKETS.get_ptr_mut(sk) {
        Some(record) => unsafe {
            (*record).owner = owner;
            ((*record).tuple, (*record).state)
        },
        None => (read_sock_common(sk, &o)?, 0),
    };
    // The accepted socket is TCP only if its record exists or the family says so.
    if state == 0 && tuple.family != AF_INET && tuple.family != AF_INET6 {
        return Ok(());
    }
    if passes_filter(&tuple) {
        emit(event(
            EventKind::Accepted,
            sk,
            now(),
            tuple,
            owner,
            state,
            state,
        ));
    }
    Ok(())
}
