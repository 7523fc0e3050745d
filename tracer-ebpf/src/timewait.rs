//! `timer_expire_entry`: the end of a timewait socket's life, the only trace the kernel leaves of
//! a connection's TIME-WAIT ending (besides a new connection reusing its address, which the
//! transition program sees). Only expiring timers run it, not every timer the kernel arms.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_jiffies64},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{
    End, EventKind, TIMEWAIT_LEN_NS, TcpState, Tuple, TwRecord, UNKNOWN_DURATION, counter,
    event_flags, record_flags,
};

use crate::{
    account,
    maps::{LINGERING, TIMEWAIT, TW_TIMER_HANDLER, global},
    output::{Fields, count, emit, finish, passes_filter},
    read::{member, now, read_sock_common},
};

const CLOSE: u8 = TcpState::Close as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const TIME_WAIT: u8 = TcpState::TimeWait as u8;

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    finish(on_expire(&ctx));
    0
}

fn on_expire(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    // Every expiring timer of the kernel comes here: one global, one load, one compare. The
    // argument is BTF-typed, so the field is loaded directly (no helper call).
    let function: u64 = member(timer, global!(TIMER_FUNCTION));
    if function == 0 || TW_TIMER_HANDLER.get(0) != Some(&function) {
        return Ok(());
    }
    let tw = timer - global!(OFFSETS.tw_timer) as u64;
    let mut tuple = Tuple::default();
    read_sock_common(tw, &mut tuple)?;
    if !passes_filter(&tuple) {
        return Ok(());
    }
    // SAFETY: probe reads check the addresses.
    let (substate, expires): (u8, u64) = unsafe {
        (
            bpf_probe_read_kernel((tw + global!(OFFSETS.tw_substate) as u64) as *const u8)?,
            bpf_probe_read_kernel((timer + global!(OFFSETS.timer_expires) as u64) as *const u64)?,
        )
    };
    // SAFETY: helper without arguments.
    let late_ns = unsafe { bpf_jiffies64() }.saturating_sub(expires) * global!(CONFIG.ns_per_jiffy);
    end_timewait(&tuple, now(), late_ns.max(1) | substate_marker(substate));
    Ok(())
}

/// Bit 63 of `expired_late_ns` carries the substate the timewait socket expired in (TIME_WAIT
/// set): a lingering FIN-WAIT-2 the kernel moved to TIME-WAIT without a trace shows it here.
const EXPIRED_IN_TIME_WAIT: u64 = 1 << 63;

fn substate_marker(substate: u8) -> u64 {
    if substate == TIME_WAIT {
        EXPIRED_IN_TIME_WAIT
    } else {
        0
    }
}

/// The connection at `tuple` left its timewait phase at `at`: reused by a new connection
/// (`expired` 0), or expired (`expired` non-zero: how late the timer ran, in ns, with the
/// substate it expired in in bit 63). Unknown times are `UNKNOWN_DURATION` (the verifier follows
/// plain scalars better than options).
pub(crate) fn end_timewait(tuple: &Tuple, at: u64, expired: u64) {
    let Some(record) = TIMEWAIT.get_ptr(tuple) else {
        return;
    };
    // SAFETY: copied at once; the map value lives while the program runs.
    let record = unsafe { *record };
    let _ = TIMEWAIT.remove(tuple);
    count(counter::TIMEWAIT_ENDS);
    if record.substate == FIN_WAIT2 {
        let _ = LINGERING.remove(tuple);
    }
    account::moved(Some(record.substate), None);
    let port_labels = global!(CONFIG.port_labels) != 0;
    let log = global!(CONFIG.log_all) != 0;
    let late_ns = expired & !EXPIRED_IN_TIME_WAIT;
    let mut from = record.substate;
    let mut since = if record.flags & record_flags::AGE_KNOWN != 0 {
        record.since_ns
    } else {
        UNKNOWN_DURATION
    };
    if expired & EXPIRED_IN_TIME_WAIT != 0 {
        // Its timer last ran TIMEWAIT_LEN before it expired: that is when TIME-WAIT began.
        let time_wait_began = at.saturating_sub(late_ns + TIMEWAIT_LEN_NS);
        if record.substate == FIN_WAIT2 {
            // The peer's FIN came and the kernel moved it on without a trace.
            let began = time_wait_began.max(record.since_ns);
            leave(
                tuple,
                &record,
                FIN_WAIT2,
                TIME_WAIT,
                since,
                began,
                port_labels,
                log,
            );
            from = TIME_WAIT;
            since = began;
        } else if since == UNKNOWN_DURATION {
            // Older than the tracer: its timer tells when it began.
            since = time_wait_began;
        }
    }
    leave(tuple, &record, from, CLOSE, since, at, port_labels, log);
}

/// The connection left `from` for `to` at `at`, in `from` since `since` (or
/// `UNKNOWN_DURATION`): counted, its time in `from` too when known, and logged when asked.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // inlined: no call, no argument registers
fn leave(
    tuple: &Tuple,
    record: &TwRecord,
    from: u8,
    to: u8,
    since: u64,
    at: u64,
    port_labels: bool,
    log: bool,
) {
    let spent = if since == UNKNOWN_DURATION {
        UNKNOWN_DURATION
    } else {
        at.saturating_sub(since)
    };
    let port = record.service_port;
    account::transition(from, to, port, port_labels);
    if spent != UNKNOWN_DURATION {
        account::duration(from, spent, port, port_labels);
    }
    if log {
        emit_timewait(tuple, record, at, spent, from, to);
    }
}

fn emit_timewait(tuple: &Tuple, record: &TwRecord, ts_ns: u64, spent: u64, old: u8, new: u8) {
    // A lingering FIN-WAIT-2 that reaches TIME-WAIT ended in order; its entry into TIME-WAIT
    // is the line that says so. The end of TIME-WAIT itself ends no connection.
    let end = if old == FIN_WAIT2 && new == TIME_WAIT {
        End::Fin as u8
    } else {
        0
    };
    emit(
        &Fields {
            kind: EventKind::Transition,
            ts_ns,
            sock: 0,
            cookie: record.cookie,
            prev_state_ns: spent,
            old,
            new,
            flags: event_flags::TIMEWAIT,
            service_port: record.service_port,
            end,
            error: 0,
            reset_reason: 0,
            syn_retransmits: 0,
            pid: record.pid,
            with_comm: false,
        },
        tuple,
        counter::LOST_TRANSITIONS,
    );
}
