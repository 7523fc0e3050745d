//! Kernel side of the tracer, one file per hook. Programs stay short: copy what they need into
//! locals, filter first, keep the per-socket record, count in per-CPU aggregates, and write an
//! event only when the daemon needs it. Every way a program can give up is counted (`counter` in
//! tracer-common), never dropped silently.
//!
//! - [`transition`]: `inet_sock_set_state` (tp_btf), every TCP state transition, the hand-over of
//!   an active close to its timewait socket, and TIME-WAIT ended by a reused address.
//! - [`timewait`]: `timer_expire_entry` (tp_btf), the end of a timewait socket; every other
//!   expiring timer is dropped by the first comparison.
//! - [`accept`]: `sys_exit_accept{,4}` (classic tracepoints, only with `--accept-wait` or when
//!   every transition is logged), the process that accepts a socket becomes its owner, and how
//!   long the connection waited to be accepted is counted.
//! - [`bind`]: `sys_enter_bind` and `sys_exit_bind` (classic tracepoints, only with
//!   `--bind-failures`), a TCP socket's bind() that failed for want of its address or port.
//! - [`ends`]: `tcp_send_reset`, `tcp_retransmit_skb`, `tcp_retransmit_synack` (tp_btf): resets a
//!   socket sends as it ends, SYNs and SYN-ACKs sent again. They run only when something goes
//!   wrong.
//! - [`owners`]: `socket_owners`, a task_file iterator the daemon reads to find the processes
//!   holding the sockets it reports.
//! - [`maps`] holds the maps and load-time globals, [`read`] the readers of kernel structures the
//!   hooks share, [`account`] the aggregates, [`output`] the ring buffer and the counters.
#![no_std]
#![no_main]
// Keys and values are passed to the map helpers by reference: by value, each call would copy
// them onto the program's small stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

mod accept;
mod account;
mod bind;
mod ends;
mod maps;
mod output;
mod owners;
mod read;
mod timewait;
mod transition;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
