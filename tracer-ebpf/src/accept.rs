//! `sys_exit_accept{,4}`: the process that accepts a socket becomes its owner at once (the
//! accepted socket's own transitions run in softirq, on behalf of whatever task was on the CPU),
//! and the time the connection waited in its listener's accept queue is counted per listener.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};

use tracer_common::{TcpState, counter, record_flags, settings::watches};

use crate::{
    account,
    maps::{SOCKETS, WATCHED, global},
    output::{count, finish},
    read::{current_pid, disguised, field, now, socket_of_fd},
};

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    finish(on_accept(&ctx));
    0
}

/// The accepted socket's file descriptor is the return value: follow it from the current task to
/// the socket, record the caller as the socket's owner, and count how long the connection waited
/// since its handshake completed.
fn on_accept(ctx: &TracePointContext) -> Result<(), i64> {
    // A failed accept() returns an error, for which there is no socket.
    let sk = socket_of_fd(field(ctx, tracer_common::SYSCALL_RET_OFFSET))?;
    if sk == 0 {
        return Ok(());
    }
    let cookie = if global!(CONFIG.socket_cookies) == 0 {
        // Its id where the programs cannot ask for cookies (`read::socket_id`).
        disguised(sk)
    } else {
        // The transition program asked for the cookie already, which made the kernel assign it.
        // SAFETY: the helper checks the address.
        unsafe { bpf_probe_read_kernel((sk + global!(OFFSETS.skc_cookie) as u64) as *const u64)? }
    };
    if cookie == 0 {
        return Ok(());
    }
    // No record: a socket the filters leave out (or one whose record could not be stored, which
    // is counted where it failed).
    let Some(record) = SOCKETS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    let pid = current_pid();
    count(counter::ACCEPTS);
    // SAFETY: the map value lives while the program runs.
    let (state, flags, since, netns, port) = unsafe {
        (*record).pid = pid;
        let r = &*record;
        (r.state, r.flags, r.since_ns, r.netns, r.service_port)
    };
    // Still in ESTABLISHED since its handshake: the wait is known.
    if state == TcpState::Established as u8 && flags & record_flags::AGE_KNOWN != 0 {
        account::accept_wait(netns, port, now().saturating_sub(since), pid);
    } else {
        count(counter::ACCEPTS_UNTIMED);
    }
    if watches(global!(CONFIG.watched), state) {
        // SAFETY: as above.
        unsafe {
            if let Some(watch) = WATCHED.get_ptr_mut(cookie) {
                (*watch).pid = pid;
            }
        }
    }
    Ok(())
}
