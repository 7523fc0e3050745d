//! Names by which the daemon finds the kernel side's maps, programs and globals in the object
//! file. The eBPF crate names its statics and functions exactly so (aya derives the names from
//! the identifiers); a test of the daemon checks every name here against the embedded object.

/// Ring buffer of [`crate::Event`]s.
pub const EVENTS: &str = "EVENTS";
/// Full sockets' records ([`crate::SockRecord`]) by cookie, pinned across restarts.
pub const SOCKETS: &str = "SOCKETS";
/// Timewait records ([`crate::TwRecord`]) by [`crate::Tuple`], pinned across restarts.
pub const TIMEWAIT: &str = "TIMEWAIT";
/// Sockets in a watched state ([`crate::Watch`]) by cookie.
pub const WATCHED: &str = "WATCHED";
/// Timewait sockets lingering in FIN_WAIT2, by tuple: the kernel may move them to TIME_WAIT
/// without a trace, which the daemon checks.
pub const LINGERING: &str = "LINGERING";
/// Per-CPU aggregates ([`crate::aggregate`]).
pub const COUNTS: &str = "COUNTS";
pub const DURATIONS: &str = "DURATIONS";
pub const GAUGES: &str = "GAUGES";
pub const PORT_COUNTS: &str = "PORT_COUNTS";
pub const PORT_DURATIONS: &str = "PORT_DURATIONS";
/// Per-CPU connection ends ([`crate::EndCounts`]).
pub const ENDS: &str = "ENDS";
/// Per-CPU connect times ([`crate::aggregate::Durations`]): index 0 without a SYN retransmitted,
/// 1 with.
pub const CONNECT_DURATIONS: &str = "CONNECT_DURATIONS";
/// Per-CPU SYN-ACK retransmits by listener cookie (an LRU map).
pub const LISTENER_SYNACKS: &str = "LISTENER_SYNACKS";
/// Sockets whose holders the owner iterator looks for, by cookie (cookie -> 0).
pub const WANTED_SOCKETS: &str = "WANTED_SOCKETS";
/// Per-CPU accept waits ([`crate::aggregate::AcceptWaits`]) by
/// [`crate::aggregate::ListenerKey`].
pub const ACCEPT_WAITS: &str = "ACCEPT_WAITS";
/// `bind()`s under way ([`crate::BindCall`]) by thread.
pub const BIND_CALLS: &str = "BIND_CALLS";
/// Per-CPU health counters ([`crate::counter`]).
pub const COUNTERS: &str = "COUNTERS";
/// Local and remote ports of `--lport` / `--rport`.
pub const LOCAL_PORTS: &str = "LOCAL_PORTS";
pub const REMOTE_PORTS: &str = "REMOTE_PORTS";
/// Stuck threshold of each state in nanoseconds (0: not watched).
pub const THRESHOLDS: &str = "THRESHOLDS";
/// Address of `tw_timer_handler`; 0 keeps TIME-WAIT tracking off.
pub const TW_TIMER_HANDLER: &str = "TW_TIMER_HANDLER";

/// Read-only globals set at load time.
pub const CONFIG: &str = "CONFIG";
pub const FILTER: &str = "FILTER";
pub const OFFSETS: &str = "OFFSETS";
pub const TIMER_FUNCTION: &str = "TIMER_FUNCTION";
pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Programs; each BTF tracepoint program is named after its tracepoint.
pub const TRANSITION_PROGRAM: &str = "inet_sock_set_state";
pub const TIMER_EXPIRE_PROGRAM: &str = "timer_expire_entry";
pub const ACCEPT_PROGRAM: &str = "sys_exit_accept";
/// `bind()`: its entry keeps the arguments, its exit reports a TCP socket's failure.
pub const BIND_ENTER_PROGRAM: &str = "sys_enter_bind";
pub const BIND_EXIT_PROGRAM: &str = "sys_exit_bind";
pub const RESET_PROGRAM: &str = "tcp_send_reset";
pub const RETRANSMIT_PROGRAM: &str = "tcp_retransmit_skb";
pub const SYNACK_PROGRAM: &str = "tcp_retransmit_synack";
/// A task_file iterator: the processes holding wanted sockets ([`crate::OwnerHit`]).
pub const OWNER_ITER_PROGRAM: &str = "socket_owners";

/// The `syscalls/` tracepoints the accept program is attached to: `accept4` (what current
/// servers call) and `accept`.
pub const ACCEPT_TRACEPOINTS: [&str; 2] = ["sys_exit_accept4", "sys_exit_accept"];

/// Every map the daemon opens by name.
pub const MAPS: [&str; 21] = [
    EVENTS,
    SOCKETS,
    TIMEWAIT,
    WATCHED,
    LINGERING,
    COUNTS,
    DURATIONS,
    GAUGES,
    PORT_COUNTS,
    PORT_DURATIONS,
    ENDS,
    CONNECT_DURATIONS,
    LISTENER_SYNACKS,
    ACCEPT_WAITS,
    BIND_CALLS,
    WANTED_SOCKETS,
    COUNTERS,
    LOCAL_PORTS,
    REMOTE_PORTS,
    THRESHOLDS,
    TW_TIMER_HANDLER,
];
/// Every global the daemon sets.
pub const GLOBALS: [&str; 5] = [CONFIG, FILTER, OFFSETS, TIMER_FUNCTION, WAKEUP_BYTES];
/// Every program the daemon loads.
pub const PROGRAMS: [&str; 9] = [
    TRANSITION_PROGRAM,
    TIMER_EXPIRE_PROGRAM,
    ACCEPT_PROGRAM,
    BIND_ENTER_PROGRAM,
    BIND_EXIT_PROGRAM,
    RESET_PROGRAM,
    RETRANSMIT_PROGRAM,
    SYNACK_PROGRAM,
    OWNER_ITER_PROGRAM,
];
