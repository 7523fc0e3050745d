//! Kernel side of the tracer, one file per hook. Programs stay short: copy what they need into
//! locals, filter first, update the per-socket record, write one event. Every way a program can
//! give up is counted (`counter` in tracer-common), never dropped silently.
//!
//! - [`transition`]: `inet_sock_set_state` (tp_btf), every TCP state transition.
//! - [`timewait`]: `timer_start` / `timer_cancel` (tp_btf), the timewait socket's timer, the only
//!   trace the kernel leaves of the TIME-WAIT phase; every other timer is dropped at once.
//! - [`accept`]: `sys_exit_accept{,4}` (classic tracepoints), the process that accepts a socket
//!   becomes its owner, since the accepted socket's own transitions run in softirq.
//! - [`maps`] holds the maps and load-time globals, [`read`] the readers of kernel structures the
//!   hooks share, [`output`] the ring buffer and the counters.
#![no_std]
#![no_main]

mod accept;
mod maps;
mod output;
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
