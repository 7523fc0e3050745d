//! The typed events the source emits, and the small value types the later stages share: a
//! connection's endpoints, a process name, a socket's owner.
use std::net::IpAddr;

use crate::owner::Owner;
use tracer_common::{End, TcpState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A connection's two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// Inode number of the network namespace (0 when unknown).
    pub netns: u32,
    pub family: Family,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    pub(crate) ts_ns: u64,
    /// The socket's id, as lines show it: its cookie (as `ss -e` shows it, `sk:`), or before
    /// Linux 5.12 its disguised address. A connection keeps it in its timewait phase.
    pub(crate) cookie: u64,
    /// The kernel socket, disguised (never shown): before Linux 6.x a socket accepted from a
    /// listener makes its first line under the listener's cookie, and this tells it apart from
    /// the others accepted meanwhile. 0 for a timewait socket.
    pub(crate) object: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) old: TcpState,
    pub(crate) new: TcpState,
    /// Time spent in `old`, when the kernel saw the socket enter it.
    pub(crate) prev_state_ns: Option<u64>,
    pub(crate) owner: Option<Owner>,
    /// How the connection ended, on the transition that ends it (to CLOSE, or into its
    /// timewait phase).
    pub(crate) end: Option<ConnectionEnd>,
    /// SYNs retransmitted before the connection was established (on SYN_SENT -> ESTABLISHED).
    pub(crate) syn_retransmits: Option<u8>,
}

/// A connection's end, with the socket's error and the kernel's reason for a reset it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionEnd {
    pub(crate) end: End,
    /// The socket's errno, when it had one.
    pub(crate) error: Option<u8>,
    /// The kernel's `enum sk_rst_reason` number, with `End::ResetSent`.
    pub(crate) reset_reason: Option<u8>,
}

/// What the kernel writes to the ring buffer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KernelEvent {
    Transition(KernelTransition),
    /// The socket of `cookie`, whose transition to CLOSE was written just before, sent a reset as
    /// it closed (close() with unread data, linger 0): its end is a reset sent.
    ResetAfterClose {
        cookie: u64,
        /// `None` where the kernel does not say (before 6.10).
        reset_reason: Option<u8>,
    },
    BindFailed(BindFailure),
}

/// A TCP socket's bind() that failed with EADDRINUSE or EADDRNOTAVAIL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BindFailure {
    pub(crate) ts_ns: u64,
    /// The address and port asked for (`local`, `local_port`; port 0: any ephemeral port); the
    /// remote end unspecified.
    pub(crate) endpoints: Endpoints,
    pub(crate) owner: Option<Owner>,
    pub(crate) error: u8,
}

/// A transition the kernel wrote to the ring buffer: every one while the daemon logs them all,
/// else only a socket leaving a watched state after its threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KernelTransition {
    pub(crate) transition: Transition,
    /// The port the socket serves or uses.
    pub(crate) service_port: u16,
    /// It left a watched state after that state's threshold.
    pub(crate) long_stay: bool,
}

/// A full socket in a watched state, as the kernel's index of them shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Watched {
    pub(crate) cookie: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) state: TcpState,
    pub(crate) since_ns: u64,
    pub(crate) age_known: bool,
    /// The owner the kernel knows (0: none), described by the enrich stage.
    pub(crate) owner: Option<Owner>,
}
