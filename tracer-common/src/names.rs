//! Names by which the daemon finds the kernel side's maps, programs and globals in the object
//! file. The eBPF crate names its statics and functions exactly so (aya derives the names from
//! the identifiers); a test of the daemon checks every name here against the embedded object.

/// Ring buffer of [`crate::Event`]s.
pub const EVENTS: &str = "EVENTS";
/// Per-socket records ([`crate::SockRecord`]), pinned across restarts.
pub const SOCKETS: &str = "SOCKETS";
/// Per-CPU health counters ([`crate::counter`]).
pub const COUNTERS: &str = "COUNTERS";
/// Local and remote ports of `--lport` / `--rport`.
pub const LOCAL_PORTS: &str = "LOCAL_PORTS";
pub const REMOTE_PORTS: &str = "REMOTE_PORTS";
/// Address of `tw_timer_handler`, set before the timer programs are attached.
pub const TW_TIMER_HANDLER: &str = "TW_TIMER_HANDLER";

/// Read-only globals set at load time.
pub const FILTER: &str = "FILTER";
pub const OFFSETS: &str = "OFFSETS";
pub const TIMER_FUNCTION: &str = "TIMER_FUNCTION";
pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Programs; each BTF tracepoint program is named after its tracepoint.
pub const TRANSITION_PROGRAM: &str = "inet_sock_set_state";
pub const TIMER_START_PROGRAM: &str = "timer_start";
pub const TIMER_CANCEL_PROGRAM: &str = "timer_cancel";
pub const ACCEPT_PROGRAM: &str = "sys_exit_accept";

/// The syscall tracepoints the accept program is attached to.
pub const ACCEPT_TRACEPOINTS: [(&str, &str); 2] = [
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_exit_accept"),
];

/// Every map the daemon opens by name.
pub const MAPS: [&str; 6] = [
    EVENTS,
    SOCKETS,
    COUNTERS,
    LOCAL_PORTS,
    REMOTE_PORTS,
    TW_TIMER_HANDLER,
];
/// Every global the daemon sets.
pub const GLOBALS: [&str; 4] = [FILTER, OFFSETS, TIMER_FUNCTION, WAKEUP_BYTES];
/// Every program the daemon loads.
pub const PROGRAMS: [&str; 4] = [
    TRANSITION_PROGRAM,
    TIMER_START_PROGRAM,
    TIMER_CANCEL_PROGRAM,
    ACCEPT_PROGRAM,
];
