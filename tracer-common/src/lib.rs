//! The contract between the kernel programs and the daemon, `no_std` so both sides share it:
//! the records the kernel keeps per socket ([`records`]), the aggregates it counts in
//! ([`aggregate`]), the events it writes to the ring buffer, the settings and struct offsets the
//! daemon hands it at load time ([`settings`]), the addresses it reads ([`tuple`]), the names of
//! maps, programs and globals ([`names`]) and TCP states ([`state`]). The `user` feature adds
//! `aya::Pod`.
#![no_std]

pub mod aggregate;
pub mod ends;
pub mod names;
pub mod records;
pub mod settings;
pub mod state;
pub mod tuple;

pub use ends::{End, EndCounts};
pub use records::{
    BindCall, Event, EventKind, LastClose, OwnerHit, RECENT_CLOSES, RecentCloses, SockRecord,
    TwRecord, Watch, event_flags, record_flags,
};
pub use settings::{
    BIND_ADDR_OFFSET, BIND_FD_OFFSET, Config, KernelFilter, Offsets, SYSCALL_RET_OFFSET,
};
pub use state::TcpState;
pub use tuple::{AF_INET, AF_INET6, Owner, Tuple, normalize_family};

/// A reset's `reset_reason` where the kernel does not say why it sent it (before Linux 6.10).
pub const NO_RESET_REASON: u8 = u8::MAX;

/// `prev_state_ns` when the kernel did not see the socket enter its old state.
pub const UNKNOWN_DURATION: u64 = u64::MAX;

/// Version of the pinned records' layout, part of the pinned maps' names: a daemon never reads
/// records written by an incompatible one.
pub const RECORD_VERSION: u32 = 5;

/// TIME-WAIT lasts this long (the kernel's fixed `TCP_TIMEWAIT_LEN`).
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// Indexes of the per-CPU counter array `COUNTERS`: every way a program gives up is counted,
/// and what the programs saw.
pub mod counter {
    /// Transitions that did not fit in the ring buffer.
    pub const LOST_TRANSITIONS: u32 = 0;
    /// Per-socket records (full or timewait sockets) that could not be stored: their ages and
    /// states are unknown to the tracer until the next reconciliation.
    pub const RECORD_FAILED: u32 = 1;
    /// Other events that did not fit in the ring buffer (or a listener's SYN-ACK count that
    /// found no room in its map).
    pub const LOST_OTHER: u32 = 2;
    /// Program runs that could not read a kernel structure and gave up.
    pub const READ_FAILED: u32 = 3;
    /// Sockets in a watched state that could not be indexed: they cannot be reported stuck.
    pub const WATCH_FAILED: u32 = 4;
    /// Transitions of full sockets the address filters let through.
    pub const TRANSITIONS: u32 = 5;
    /// Timewait phases that ended (expired, or their address reused).
    pub const TIMEWAIT_ENDS: u32 = 6;
    /// Owners set at accept().
    pub const ACCEPTS: u32 = 7;
    /// SYNs a connecting socket retransmitted (each costs its connect a second or more).
    pub const SYN_RETRANSMITS: u32 = 8;
    /// SYN-ACKs a listener retransmitted: handshakes its clients did not complete in time.
    pub const SYNACK_RETRANSMITS: u32 = 9;
    /// Resets a socket sent as it closed that could not be matched to its close (the closing
    /// task moved to another CPU in between): that end stays counted as it was.
    pub const UNMATCHED_RESETS: u32 = 10;
    /// Transitions or durations counted in total but under no port label: the port-labelled
    /// maps were full, even for their shared `other` entry.
    pub const UNLABELLED: u32 = 11;
    /// Transitions the kernel reported while the transition program ran twice nested on the
    /// same CPU already (an interrupt within an interrupt): not traced.
    pub const SKIPPED_NESTED: u32 = 12;
    /// Accepted connections whose wait in the accept queue is unknown: their handshake
    /// completed before the tracer started, or they left ESTABLISHED (the peer closed) before
    /// accept() took them.
    pub const ACCEPTS_UNTIMED: u32 = 13;
    pub const COUNT: u32 = 14;
}

/// Transitions that only a system call of the socket's own process makes (connect, listen, close,
/// shutdown), so `current` is the owner. Every other transition may run in softirq on behalf of
/// whatever task was on the CPU.
pub const fn runs_in_owner_context(old: u8, new: u8) -> bool {
    const CLOSE: u8 = TcpState::Close as u8;
    const SYN_SENT: u8 = TcpState::SynSent as u8;
    const LISTEN: u8 = TcpState::Listen as u8;
    const ESTABLISHED: u8 = TcpState::Established as u8;
    const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
    const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
    const LAST_ACK: u8 = TcpState::LastAck as u8;
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `repr(C)` aggregates of integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::TwRecord {}
    unsafe impl aya::Pod for super::Watch {}
    unsafe impl aya::Pod for super::Tuple {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::KernelFilter {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::aggregate::TransitionCounts {}
    unsafe impl aya::Pod for super::aggregate::Durations {}
    unsafe impl aya::Pod for super::aggregate::Gauges {}
    unsafe impl aya::Pod for super::aggregate::PortKey {}
    unsafe impl aya::Pod for super::aggregate::PortDurations {}
    unsafe impl aya::Pod for super::aggregate::ListenerKey {}
    unsafe impl aya::Pod for super::aggregate::AcceptWaits {}
    unsafe impl aya::Pod for super::EndCounts {}
    unsafe impl aya::Pod for super::OwnerHit {}
    unsafe impl aya::Pod for super::BindCall {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_context_transitions() {
        use TcpState::*;
        let yes = [
            (Close, SynSent),
            (Close, Listen),
            (Listen, Close),
            (Established, FinWait1),
            (CloseWait, LastAck),
        ];
        for (o, n) in yes {
            assert!(runs_in_owner_context(o as u8, n as u8), "{o:?}->{n:?}");
        }
        let no = [
            (Listen, SynRecv),
            (SynRecv, Established),
            (SynSent, Established),
            (Established, CloseWait),
            (FinWait1, FinWait2),
            (FinWait2, Close),
            (LastAck, Close),
            (SynSent, Close),
            (Established, Close),
        ];
        for (o, n) in no {
            assert!(!runs_in_owner_context(o as u8, n as u8), "{o:?}->{n:?}");
        }
    }
}
