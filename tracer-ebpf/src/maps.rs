//! Maps and load-time globals. Their identifiers are the names the daemon opens them by
//! (`tracer_common::names`).
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{KernelFilter, Offsets, SOCKET_RECORDS, SockRecord, counter};

/// Sized by the daemon before load (`--ring-buffer-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// `BPF_F_NO_COMMON_LRU`: per-CPU free lists, no global lock on insert.
const NO_COMMON_LRU: u32 = 1 << 1;

/// Per-socket records; the daemon may pin it.
#[map]
pub(crate) static SOCKETS: LruHashMap<u64, SockRecord> =
    LruHashMap::with_max_entries(SOCKET_RECORDS, NO_COMMON_LRU);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub(crate) static LOCAL_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map]
pub(crate) static REMOTE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Address of `tw_timer_handler`, from /proc/kallsyms: a map rather than a load-time global, so
/// the daemon can load while it reads kallsyms (slow) and fill it in before attaching the timer
/// programs.
#[map]
pub(crate) static TW_TIMER_HANDLER: Array<u64> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
pub(crate) static FILTER: Global<KernelFilter> = Global::new(KernelFilter {
    family: 0,
    local_ports: 0,
    remote_ports: 0,
    netns: 0,
});

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Global<Offsets> = Global::new(Offsets {
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
pub(crate) static TIMER_FUNCTION: Global<u32> = Global::new(0);

/// Wake the reader only once this many bytes are waiting: one wake-up per batch, not per event.
/// The daemon also polls on a short timer, which bounds the delivery delay.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: Global<u64> = Global::new(0);
