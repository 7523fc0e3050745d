//! `timer_start` / `timer_cancel`: the timewait socket's timer, the only trace the kernel leaves of
//! a connection's TIME-WAIT phase (and of a FIN-WAIT-2 that lingers on a timewait socket).
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_jiffies64},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{Event, EventKind, Owner, TcpState};

use crate::{
    maps::{OFFSETS, TIMER_FUNCTION, TW_TIMER_HANDLER},
    output::{emit, event, finish, passes_filter},
    read::{member, now, read_sock_common},
};

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    finish(on_timewait_timer(&ctx, EventKind::TimewaitArmed));
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    finish(on_timewait_timer(&ctx, EventKind::TimewaitDisarmed));
    0
}

/// Every kernel timer passes here: the comparison with `tw_timer_handler` comes first.
fn on_timewait_timer(ctx: &BtfTracePointContext, kind: EventKind) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    // This runs for every timer of the kernel: one global, one load, one compare. The argument is
    // BTF-typed, so the verifier lets the field be loaded directly (no helper call).
    let function: u64 = member(timer, TIMER_FUNCTION.load());
    if TW_TIMER_HANDLER.get(0) != Some(&function) {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let tw = timer - offsets.tw_timer as u64;
    // SAFETY: probe reads check the addresses.
    let substate: u8 =
        unsafe { bpf_probe_read_kernel((tw + offsets.tw_substate as u64) as *const u8) }?;
    let tuple = read_sock_common(tw, &offsets)?;
    if passes_filter(&tuple) {
        // SAFETY: probe read of the timer's expiry.
        let timer_expires: u64 =
            unsafe { bpf_probe_read_kernel((timer + offsets.timer_expires as u64) as *const u64) }?;
        let time_wait = TcpState::TimeWait as u8;
        emit(Event {
            // SAFETY: helper without arguments.
            jiffies: unsafe { bpf_jiffies64() },
            timer_expires,
            ..event(
                kind,
                tw,
                now(),
                tuple,
                Owner::default(),
                time_wait,
                substate,
            )
        });
    }
    Ok(())
}
