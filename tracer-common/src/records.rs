//! What the kernel keeps per socket, and the events it writes. A full socket's record is keyed
//! by its cookie (stable for its life, never reused, and what the kernel's socket list reports);
//! a timewait socket's by its [`crate::Tuple`] (which the full socket, the timewait socket and a
//! connection reusing its address all give).
use crate::{Owner, Tuple};

/// A full socket: since when it is in its state, its owner when known, the port it serves.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    pub since_ns: u64,
    /// 0: not known to the kernel (the daemon looks it up when it reports the socket).
    pub pid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub service_port: u16,
    /// A [`crate::TcpState`] number.
    pub state: u8,
    /// [`record_flags`].
    pub flags: u8,
    /// The kernel's `enum sk_rst_reason` of a reset the socket sent (with `RESET_SENT`).
    pub reset_reason: u8,
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u8,
    pub _pad: u16,
}

/// A connection in its timewait phase (TIME-WAIT, or a lingering FIN-WAIT-2).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwRecord {
    pub since_ns: u64,
    /// The full socket's id: the connection keeps it in its timewait phase.
    pub cookie: u64,
    pub pid: u32,
    pub service_port: u16,
    /// TIME_WAIT or FIN_WAIT2.
    pub substate: u8,
    pub flags: u8,
}

/// A socket in a watched state (one with a stuck threshold), with what a stuck report says.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub since_ns: u64,
    pub tuple: Tuple,
    pub pid: u32,
    pub service_port: u16,
    pub state: u8,
    pub flags: u8,
}

pub mod record_flags {
    /// `since_ns` is when the socket entered its state; without it, when the tracer first saw it
    /// there (older than the tracer, or fixed by a reconciliation).
    pub const AGE_KNOWN: u8 = 1;
    /// The socket sent a reset of its own (not an answer to a packet): it ends by it.
    pub const RESET_SENT: u8 = 2;
}

/// The last sockets a CPU saw reach CLOSE, so that a reset sent right after (close() with unread
/// data, linger 0: the kernel closes first) amends its end. Several: between the close and the
/// reset's tracepoint the kernel sends the reset, and over loopback the peer's softirq closes
/// other sockets on the same CPU meanwhile.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentCloses {
    pub entries: [LastClose; RECENT_CLOSES],
    /// Where the next close is written (modulo [`RECENT_CLOSES`]).
    pub next: u64,
}

pub const RECENT_CLOSES: usize = 8;

/// One socket that reached CLOSE.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastClose {
    pub cookie: u64,
    /// The [`crate::End`] counted for it.
    pub end: u8,
    /// The state it closed from.
    pub old: u8,
    pub _pad: [u8; 6],
}

/// A process holding a wanted socket, as the owner iterator writes it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerHit {
    /// The socket's cookie.
    pub cookie: u64,
    /// The process (thread group) id.
    pub pid: u32,
    pub fd: u32,
}

/// A `bind()` under way, kept from its entry to its exit by thread (`pid_tgid`): its socket's
/// descriptor and the address it asked for (a pointer into the caller's memory).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindCall {
    pub fd: i64,
    pub addr: u64,
}

/// What an [`Event`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A state transition (of a full socket, or of a connection in its timewait phase).
    Transition = 1,
    /// The socket of `cookie`, whose transition to CLOSE was written just before, sent a reset
    /// as it closed: its end is `end`, with `reset_reason`.
    End = 2,
    /// A TCP socket's `bind()` failed (`error`: EADDRINUSE or EADDRNOTAVAIL): `tuple` holds the
    /// address and port it asked for, `owner` the caller.
    BindFailed = 3,
}

impl EventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Transition),
            2 => Some(Self::End),
            3 => Some(Self::BindFailed),
            _ => None,
        }
    }
}

pub mod event_flags {
    /// The socket left a watched state after its threshold: it was stuck.
    pub const LONG_STAY: u8 = 1;
    /// The connection is in its timewait phase (held by a timewait socket).
    pub const TIMEWAIT: u8 = 2;
}

/// One record of the ring buffer. The kernel writes one for every transition when the daemon logs
/// them all, and otherwise only for a socket leaving a watched state after its threshold.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// The kernel socket, disguised (`read::disguised` in the programs: a keyed bijection of its
    /// address, never the address): tells apart sockets accepted from one listener, whose first
    /// line carries the listener's cookie before Linux 6.x. 0 for a timewait socket.
    pub sock: u64,
    /// The socket's id: its cookie (never reused), or before Linux 5.12 its disguised address.
    /// A connection keeps it in its timewait phase.
    pub cookie: u64,
    /// Time spent in `old`, or [`crate::UNKNOWN_DURATION`].
    pub prev_state_ns: u64,
    pub tuple: Tuple,
    pub owner: Owner,
    /// An [`EventKind`].
    pub kind: u8,
    /// Kernel state numbers ([`crate::TcpState`]).
    pub old: u8,
    pub new: u8,
    /// [`event_flags`].
    pub flags: u8,
    pub service_port: u16,
    /// How the connection ended ([`crate::End`], 0 when it did not: not a transition to CLOSE),
    /// with the socket's error (`sk_err`, 0 for none).
    pub end: u8,
    pub error: u8,
    /// The kernel's `enum sk_rst_reason`, with `End::ResetSent`.
    pub reset_reason: u8,
    /// SYNs retransmitted before the connection was established (on SYN_SENT -> ESTABLISHED).
    pub syn_retransmits: u8,
    pub _pad: [u8; 6],
}

// The shared records have no implicit padding: every byte is a field, so the daemon may read them
// as bytes and the kernel never leaves a hole uninitialised.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Tuple>() == 16 + 16 + 4 + 2 * 6);
    assert!(size_of::<Owner>() == 4 + 4 + 16);
    assert!(size_of::<SockRecord>() == 8 + 4 + 4 + 2 + 1 + 1 + 1 + 1 + 2);
    assert!(size_of::<LastClose>() == 8 + 1 + 1 + 6);
    assert!(size_of::<OwnerHit>() == 16);
    assert!(size_of::<RecentCloses>() == RECENT_CLOSES * size_of::<LastClose>() + 8);
    assert!(size_of::<TwRecord>() == 8 + 8 + 4 + 2 + 1 + 1);
    assert!(size_of::<Watch>() == 8 + size_of::<Tuple>() + 4 + 2 + 1 + 1);
    assert!(size_of::<Event>() == 8 * 4 + size_of::<Tuple>() + size_of::<Owner>() + 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        // The ring buffer and the pinned maps are read by other builds of the daemon.
        assert_eq!(core::mem::size_of::<Tuple>(), 48);
        assert_eq!(core::mem::size_of::<SockRecord>(), 24);
        assert_eq!(core::mem::size_of::<TwRecord>(), 24);
        assert_eq!(core::mem::size_of::<Watch>(), 64);
        assert_eq!(core::mem::size_of::<Event>(), 120);
    }
}
