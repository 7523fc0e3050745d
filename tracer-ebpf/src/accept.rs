//! `sys_exit_accept{,4}`, attached only when every transition is logged: the process that accepts
//! a socket becomes its owner at once (the accepted socket's own transitions run in softirq, on
//! behalf of whatever task was on the CPU). Otherwise the daemon looks the owner up when it
//! reports the socket.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};

use tracer_common::counter;

use crate::{
    maps::{SOCKETS, WATCHED, global},
    output::{count, finish},
    read::{current_pid, disguised, field},
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
    // SAFETY: every pointer is read with bpf_probe_read_kernel.
    let cookie = unsafe {
        let read = |addr: u64| bpf_probe_read_kernel(addr as *const u64);
        let task = bpf_get_current_task();
        let files = read(task + global!(OFFSETS.task_files) as u64)?;
        let fdt = read(files + global!(OFFSETS.files_fdt) as u64)?;
        let max_fds: u32 =
            bpf_probe_read_kernel((fdt + global!(OFFSETS.fdt_max_fds) as u64) as *const u32)?;
        if fd as u64 >= max_fds as u64 {
            return Ok(());
        }
        let fd_array = read(fdt + global!(OFFSETS.fdt_fd) as u64)?;
        let file = read(fd_array + 8 * fd as u64)?;
        let socket = read(file + global!(OFFSETS.file_private_data) as u64)?;
        let sk = read(socket + global!(OFFSETS.socket_sk) as u64)?;
        if global!(CONFIG.socket_cookies) == 0 {
            // Its id where the programs cannot ask for cookies (`read::socket_id`).
            disguised(sk)
        } else {
            // The transition program asked for the cookie already, which made the kernel
            // assign it.
            read(sk + global!(OFFSETS.skc_cookie) as u64)?
        }
    };
    if cookie == 0 {
        return Ok(());
    }
    let pid = current_pid();
    count(counter::ACCEPTS);
    // SAFETY: the map values live while the program runs.
    unsafe {
        if let Some(record) = SOCKETS.get_ptr_mut(cookie) {
            (*record).pid = pid;
        }
        if let Some(watch) = WATCHED.get_ptr_mut(cookie) {
            (*watch).pid = pid;
        }
    }
    Ok(())
}
