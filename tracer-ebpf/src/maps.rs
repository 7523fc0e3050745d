//! Maps and load-time globals. Their identifiers are the names the daemon opens them by
//! (`tracer_common::names`); the daemon resizes the record maps (`--max-sockets`) before load.
use core::mem::MaybeUninit;

use crate::transition::Change;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{
    BindCall, Config, EndCounts, KernelFilter, Offsets, RecentCloses, SockRecord, TcpState, Tuple,
    TwRecord, Watch,
    aggregate::{
        AcceptWaits, Durations, Gauges, ListenerKey, PortDurations, PortKey, TransitionCounts,
    },
    counter,
};

/// `BPF_F_NO_PREALLOC`: a record's memory is taken when a socket appears and given back when it
/// goes, so an idle tracer holds none (a preallocated map holds all of it from the start).
const NO_PREALLOC: u32 = 1;

/// Sized by the daemon before load (`--ring-buffer-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Full sockets by cookie.
#[map]
pub(crate) static SOCKETS: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(1 << 18, NO_PREALLOC);

/// Connections in their timewait phase, by address.
#[map]
pub(crate) static TIMEWAIT: HashMap<Tuple, TwRecord> =
    HashMap::with_max_entries(1 << 17, NO_PREALLOC);

/// Full sockets in a watched state, by cookie: what the daemon looks through for stuck sockets.
#[map]
pub(crate) static WATCHED: HashMap<u64, Watch> = HashMap::with_max_entries(1 << 16, NO_PREALLOC);

/// Timewait sockets lingering in FIN_WAIT2, by address.
#[map]
pub(crate) static LINGERING: HashMap<Tuple, u8> = HashMap::with_max_entries(1 << 14, NO_PREALLOC);

#[map]
pub(crate) static COUNTS: PerCpuArray<TransitionCounts> = PerCpuArray::with_max_entries(1, 0);

/// One histogram per state.
#[map]
pub(crate) static DURATIONS: PerCpuArray<Durations> =
    PerCpuArray::with_max_entries(TcpState::COUNT as u32, 0);

#[map]
pub(crate) static GAUGES: PerCpuArray<Gauges> = PerCpuArray::with_max_entries(1, 0);

/// How connections ended.
#[map]
pub(crate) static ENDS: PerCpuArray<EndCounts> = PerCpuArray::with_max_entries(1, 0);

/// Connect times: 0 without a SYN retransmitted, 1 with.
#[map]
pub(crate) static CONNECT_DURATIONS: PerCpuArray<Durations> = PerCpuArray::with_max_entries(2, 0);

/// Sockets whose holders the owner iterator looks for, by cookie; filled by the daemon.
#[map]
pub(crate) static WANTED_SOCKETS: HashMap<u64, u8> = HashMap::with_max_entries(1 << 16, 0);

/// The last sockets each CPU saw close, for a reset sent right after.
#[map]
pub(crate) static RECENT_CLOSES: PerCpuArray<RecentCloses> = PerCpuArray::with_max_entries(1, 0);

/// With `--metrics-port-label`: transitions and durations per service port. Ports past the
/// maps' room are counted under port 0 (`other`).
#[map]
pub(crate) static PORT_COUNTS: PerCpuHashMap<PortKey, u64> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

#[map]
pub(crate) static PORT_DURATIONS: PerCpuHashMap<PortKey, PortDurations> =
    PerCpuHashMap::with_max_entries(1024, NO_PREALLOC);

/// SYN-ACKs each listener sent again, by the listener's cookie: its half-open connections. The
/// least recently counted listeners make room for new ones.
#[map]
pub(crate) static LISTENER_SYNACKS: LruPerCpuHashMap<u64, u64> =
    LruPerCpuHashMap::with_max_entries(1024, 0);

/// How long each listener's connections waited to be accepted. Listeners past its room share the
/// entry of netns and port 0. (Per CPU: no atomics; a listener that accepts holds one histogram
/// per CPU, 2.5 KiB each.)
#[map]
pub(crate) static ACCEPT_WAITS: PerCpuHashMap<ListenerKey, AcceptWaits> =
    PerCpuHashMap::with_max_entries(ACCEPT_WAIT_LISTENERS, NO_PREALLOC);

/// Listeners whose accept waits are kept apart (a host serves on a few ports).
const ACCEPT_WAIT_LISTENERS: u32 = 64;

/// An all-zero value to insert new accept-wait histograms from (too large for the stack).
#[map]
pub(crate) static ZERO_ACCEPT_WAITS: Array<AcceptWaits> = Array::with_max_entries(1, 0);

/// `bind()`s under way, by thread: a few at a time (a call lasts microseconds).
#[map]
pub(crate) static BIND_CALLS: LruHashMap<u64, BindCall> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU room for the transition program's change (`transition::Change`), one slot per level
/// of nesting, and the level this CPU is at.
#[map]
pub(crate) static CHANGES: PerCpuArray<Change> = PerCpuArray::with_max_entries(2, 0);

#[map]
pub(crate) static NESTING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room to build an index entry in (the program's stack is small).
#[map]
pub(crate) static SCRATCH_WATCH: PerCpuArray<Watch> = PerCpuArray::with_max_entries(1, 0);

/// An all-zero value to insert new port histograms from (too large for the program's stack).
#[map]
pub(crate) static ZERO_PORT_DURATIONS: Array<PortDurations> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub(crate) static LOCAL_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map]
pub(crate) static REMOTE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Stuck threshold per state, in nanoseconds; read only when a socket leaves a watched state.
#[map]
pub(crate) static THRESHOLDS: Array<u64> = Array::with_max_entries(TcpState::COUNT as u32, 0);

/// Address of `tw_timer_handler`, from /proc/kallsyms: a map rather than a load-time global, so
/// the daemon can load while it reads kallsyms (slow) and fill it in before attaching. While it
/// is 0, TIME-WAIT tracking is off.
#[map]
pub(crate) static TW_TIMER_HANDLER: Array<u64> = Array::with_max_entries(1, 0);

/// A read-only global the daemon sets before load. Programs read it one field at a time with
/// [`global!`]: the kernel freezes these globals, so the verifier knows each value and prunes the
/// branches the settings rule out, and a program holds the one field it needs in a register
/// instead of the whole struct spilled on its small stack. (`MaybeUninit` keeps the compiler from
/// folding the placeholder value into the code.)
#[repr(transparent)]
pub(crate) struct Rodata<T>(MaybeUninit<T>);

// SAFETY: read-only for the program's whole life.
unsafe impl<T> Sync for Rodata<T> {}

impl<T> Rodata<T> {
    const fn new(value: T) -> Self {
        Self(MaybeUninit::new(value))
    }

    #[inline(always)]
    pub(crate) const fn as_ptr(&self) -> *const T {
        self.0.as_ptr()
    }
}

/// One field of a load-time global: `global!(OFFSETS.skc_daddr)`, or a whole scalar global:
/// `global!(WAKEUP_BYTES)`.
macro_rules! global {
    ($global:ident . $field:ident) => {{
        // (Also used inside unsafe blocks.)
        #[allow(unused_unsafe)]
        // SAFETY: a read of one field of an initialised static.
        let value = unsafe {
            core::ptr::read_volatile(&raw const (*$crate::maps::$global.as_ptr()).$field)
        };
        value
    }};
    ($global:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: a read of an initialised static.
        let value = unsafe { core::ptr::read_volatile($crate::maps::$global.as_ptr()) };
        value
    }};
}
pub(crate) use global;

#[unsafe(no_mangle)]
pub(crate) static CONFIG: Rodata<Config> = Rodata::new(Config {
    ns_per_jiffy: 0,
    watched: 0,
    log_all: 0,
    port_labels: 0,
    reset_reason_arg: 0,
    socket_cookies: 0,
    _pad: [0; 2],
    disguise_key: 0,
    disguise_factor: 0,
});

#[unsafe(no_mangle)]
pub(crate) static FILTER: Rodata<KernelFilter> = Rodata::new(KernelFilter {
    family: 0,
    local_ports: 0,
    remote_ports: 0,
    netns: 0,
});

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Rodata<Offsets> = Rodata::new(Offsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_net: 0,
    skc_cookie: 0,
    skc_flags: 0,
    skc_nulls_pprev: 0,
    sock_done_bit: 0,
    skc_state: 0,
    sk_err: 0,
    sk_protocol: 0,
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
    file_f_inode: 0,
    inode_i_mode: 0,
    task_tgid: 0,
});

/// Offset of `function` in `struct timer_list`, apart from [`OFFSETS`] so that the filter run on
/// every expiring kernel timer loads one word.
#[unsafe(no_mangle)]
pub(crate) static TIMER_FUNCTION: Rodata<u32> = Rodata::new(0);

/// Wake the reader only once this many bytes are waiting: one wake-up per batch, not per event.
/// The daemon also polls on a short timer, which bounds the delivery delay.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: Rodata<u64> = Rodata::new(0);
