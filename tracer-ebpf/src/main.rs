//! Kernel side of the tracer. Programs stay short: copy what they need into locals, filter first,
//! update the per-socket record, write one event.
//!
//! - `inet_sock_set_state` (tp_btf): every TCP state transition.
//! - `timer_start` / `timer_cancel` (tp_btf): the timewait socket's timer, the only trace the kernel
//!   leaves of the TIME-WAIT phase; every other timer is dropped by the first comparison.
//! - `sys_exit_accept` / `sys_exit_accept4` (classic tracepoints): the process that accepts a socket
//!   becomes its owner, since the accepted socket's own transitions run in softirq.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{self, bpf_get_current_task, bpf_jiffies64, bpf_ktime_get_ns},
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tracer_common::{
    AF_INET, AF_INET6, Event, EventKind, KernelFilter, Offsets, Owner, SOCKET_RECORDS, SockRecord,
    TcpState, Tuple, UNKNOWN_DURATION, counter, normalize_family, runs_in_owner_context,
};

/// Sized by the daemon before load (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// `BPF_F_NO_COMMON_LRU`: per-CPU free lists, no global lock on insert.
const NO_COMMON_LRU: u32 = 1 << 1;

/// Per-socket records; the daemon may resize it and pin it.
#[map]
static SOCKETS: LruHashMap<u64, SockRecord> =
    LruHashMap::with_max_entries(SOCKET_RECORDS, NO_COMMON_LRU);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static LOCAL_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static REMOTE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[unsafe(no_mangle)]
static FILTER: Global<KernelFilter> = Global::new(KernelFilter {
    family: 0,
    local_ports: 0,
    remote_ports: 0,
    netns: 0,
});

#[unsafe(no_mangle)]
static OFFSETS: Global<Offsets> = Global::new(Offsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_net: 0,
    inet_sport: 0,
    inet_saddr: 0,
    net_inum: 0,
    tw_substate: 0,
    tw_timer: 0,
    timer_expires: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
});

/// Offset of `function` in `struct timer_list`, apart from [`OFFSETS`] so that the filter run on
/// every kernel timer loads one word.
#[unsafe(no_mangle)]
static TIMER_FUNCTION: Global<u32> = Global::new(0);

/// Address of `tw_timer_handler`, from /proc/kallsyms: a map rather than a load-time global, so
/// the daemon can load while it reads kallsyms (slow) and fill it in before attaching the timer
/// programs.
#[map]
static TW_TIMER_HANDLER: Array<u64> = Array::with_max_entries(1, 0);

/// Wake the reader only once this many bytes are waiting: one wake-up per batch, not per event.
/// The daemon also polls on a short timer, which bounds the delivery delay.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_owner() -> Owner {
    let mut owner = Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        ..Owner::default()
    };
    // The helper writes the name straight into the (word-aligned) record, which the safe wrapper's
    // byte array would copy again byte by byte. On failure it leaves zeroes: an empty name.
    // SAFETY: the buffer is the 16 bytes of `comm`.
    unsafe {
        generated::bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), owner.comm.len() as u32)
    };
    owner
}

#[inline(always)]
fn passes_filter(tuple: &Tuple) -> bool {
    let filter = FILTER.load();
    if filter.family != 0 && filter.family != tuple.family {
        return false;
    }
    if filter.netns != 0 && filter.netns != tuple.netns {
        return false;
    }
    // SAFETY: lookups only test presence.
    if filter.local_ports != 0 && unsafe { LOCAL_PORTS.get(tuple.sport) }.is_none() {
        return false;
    }
    if filter.remote_ports != 0 && unsafe { REMOTE_PORTS.get(tuple.dport) }.is_none() {
        return false;
    }
    true
}

/// Writes one event. The reader is woken only when enough data waits (see `WAKEUP_BYTES`).
#[inline(always)]
fn emit(event: Event) {
    let threshold = WAKEUP_BYTES.load();
    let flags = if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    };
    if EVENTS.output::<Event>(&event, flags).is_err() {
        count(if event.kind == EventKind::Transition as u8 {
            counter::LOST_TRANSITIONS
        } else {
            counter::LOST_OTHER
        });
    }
}

#[inline(always)]
fn event(
    kind: EventKind,
    sock: u64,
    ts_ns: u64,
    tuple: Tuple,
    owner: Owner,
    old: u8,
    new: u8,
) -> Event {
    Event {
        ts_ns,
        sock,
        prev_state_ns: UNKNOWN_DURATION,
        tuple,
        owner,
        jiffies: 0,
        timer_expires: 0,
        kind: kind as u8,
        old,
        new,
        _pad: [0; 5],
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = on_set_state(&ctx);
    0
}

/// A field of a BTF-typed kernel struct, loaded directly (no helper call): the offset is a
/// load-time constant from the kernel's BTF, which the verifier checks against the struct.
#[inline(always)]
fn member<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed pointer; a faulting load yields zero instead of an oops.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
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

/// Inode number of the network namespace of a socket (full or timewait).
#[inline(always)]
fn netns_of(sk: u64, offsets: &Offsets) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        match bpf_probe_read_kernel((sk + offsets.skc_net as u64) as *const u64) {
            Ok(net) => {
                bpf_probe_read_kernel((net + offsets.net_inum as u64) as *const u32).unwrap_or(0)
            }
            Err(_) => 0,
        }
    }
}

/// Reads a `struct sock_common`'s addresses and ports (a full socket or a timewait socket).
#[inline(always)]
fn read_sock_common(sk: u64, offsets: &Offsets) -> Result<Tuple, i64> {
    let at = |offset: u32| (sk + offset as u64) as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        let family: u16 = bpf_probe_read_kernel(at(offsets.skc_family).cast())?;
        let dport_be: u16 = bpf_probe_read_kernel(at(offsets.skc_dport).cast())?;
        let mut tuple = Tuple {
            sport: bpf_probe_read_kernel(at(offsets.skc_num).cast())?,
            dport: u16::from_be(dport_be),
            family,
            netns: netns_of(sk, offsets),
            ..Tuple::default()
        };
        if family == AF_INET {
            let s: [u8; 4] = bpf_probe_read_kernel(at(offsets.skc_rcv_saddr).cast())?;
            let d: [u8; 4] = bpf_probe_read_kernel(at(offsets.skc_daddr).cast())?;
            tuple.saddr[..4].copy_from_slice(&s);
            tuple.daddr[..4].copy_from_slice(&d);
        } else {
            tuple.saddr = bpf_probe_read_kernel(at(offsets.skc_v6_rcv_saddr).cast())?;
            tuple.daddr = bpf_probe_read_kernel(at(offsets.skc_v6_daddr).cast())?;
            normalize_family(&mut tuple);
        }
        Ok(tuple)
    }
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    let _ = on_timewait_timer(&ctx, EventKind::TimewaitStart);
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    let _ = on_timewait_timer(&ctx, EventKind::TimewaitStop);
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

/// A field of a classic tracepoint's record, loaded directly from the context at a constant
/// offset (checked against the tracepoint's format by the daemon).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset is inside the record; the verifier checks the access.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept(&ctx);
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
