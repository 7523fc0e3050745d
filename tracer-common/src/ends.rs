//! How a connection ended, as the kernel shows it when its socket reaches CLOSE: the error the
//! kernel set on the socket (`sk_err`: it is set before the transition when a reset arrives or a
//! timer gives up), a reset the socket sent itself (the `tcp_send_reset` tracepoint with no
//! packet to answer), or none of these: an orderly close. Shared so that the kernel's
//! classification is unit-tested here.
use crate::TcpState;

/// Error numbers of Linux on every architecture the tracer builds for (x86, arm, riscv, …).
pub mod errno {
    pub const EPIPE: u8 = 32;
    pub const ECONNRESET: u8 = 104;
    pub const ETIMEDOUT: u8 = 110;
    pub const ECONNREFUSED: u8 = 111;
    pub const EADDRINUSE: u8 = 98;
    pub const EADDRNOTAVAIL: u8 = 99;
}

/// The error a connection ended with: the socket's own (`sk_err`), or, for a connect that closed
/// before it had a local port, EADDRNOTAVAIL. `connect()` moves the socket to SYN_SENT before it
/// picks a port and closes it again when none is free toward that destination; it returns the
/// error to the caller without setting `sk_err`, so only the missing port tells. (A socket bound
/// to its port beforehand whose address is taken fails the same way with its port set: that one
/// reads as abandoned.)
pub const fn socket_error(old: u8, sk_err: u8, local_port: u16) -> u8 {
    if sk_err == 0 && local_port == 0 && old == TcpState::SynSent as u8 {
        errno::EADDRNOTAVAIL
    } else {
        sk_err
    }
}

/// A connection's end.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    /// Closed in order: FINs exchanged (the active closer's end is its entry into TIME-WAIT).
    Fin = 1,
    /// The peer reset it.
    ResetReceived = 2,
    /// This side reset it (closed with unread data, linger 0, keepalive timeout, …).
    ResetSent = 3,
    /// A connect answered by a reset (ECONNREFUSED).
    Refused = 4,
    /// A connect whose SYNs went unanswered, or a connection that hit its retransmission or
    /// keepalive limit (ETIMEDOUT).
    Timeout = 5,
    /// Closed by its application before the handshake completed, with no error.
    Abandoned = 6,
    /// Another error, named by its errno.
    Error = 7,
}

impl End {
    /// Array length of counts indexed by `End as usize` (slot 0 unused).
    pub const COUNT: usize = 8;
    pub const ALL: [End; 7] = [
        End::Fin,
        End::ResetReceived,
        End::ResetSent,
        End::Refused,
        End::Timeout,
        End::Abandoned,
        End::Error,
    ];

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Fin),
            2 => Some(Self::ResetReceived),
            3 => Some(Self::ResetSent),
            4 => Some(Self::Refused),
            5 => Some(Self::Timeout),
            6 => Some(Self::Abandoned),
            7 => Some(Self::Error),
            _ => None,
        }
    }

    /// The name in logs, summaries and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Abandoned => "abandoned",
            Self::Error => "error",
        }
    }

    /// Classifies a transition to CLOSE (or a handover to a timewait socket, `handover`) from
    /// `old`, with the socket's error (`sk_err`, 0 for none) and whether it sent a reset of its
    /// own before. `None` for a listener closing: it ends no connection.
    pub const fn classify(old: u8, handover: bool, err: u8, reset_sent: bool) -> Option<Self> {
        const LISTEN: u8 = TcpState::Listen as u8;
        const SYN_SENT: u8 = TcpState::SynSent as u8;
        const SYN_RECV: u8 = TcpState::SynRecv as u8;
        Some(if old == LISTEN {
            return None;
        } else if handover {
            Self::Fin
        } else if err == errno::ECONNREFUSED {
            Self::Refused
        } else if err == errno::ECONNRESET || err == errno::EPIPE {
            // EPIPE: a reset received in CLOSE_WAIT.
            Self::ResetReceived
        } else if err == errno::ETIMEDOUT {
            Self::Timeout
        } else if reset_sent {
            Self::ResetSent
        } else if err != 0 {
            Self::Error
        } else if old == SYN_SENT || old == SYN_RECV {
            Self::Abandoned
        } else {
            Self::Fin
        })
    }
}

/// Errors by number up to this; larger numbers share the last slot.
pub const ERRNO_SLOTS: usize = 136;

/// Connection ends the kernel counted, per CPU: `ends[end]`, `connect_failures[end]` (of sockets
/// that were connecting: SYN_SENT), and the ends of kind `Error` by errno (`errors[errno]`,
/// `connect_errors[errno]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndCounts {
    pub ends: [u64; End::COUNT],
    pub connect_failures: [u64; End::COUNT],
    pub errors: [u64; ERRNO_SLOTS],
    pub connect_errors: [u64; ERRNO_SLOTS],
}

/// The symbolic name of a Linux error number, for those a TCP socket can end with; `None` for
/// others.
pub const fn errno_name(errno: u8) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        64 => "ENONET",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        92 => "ENOPROTOOPT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{errno::*, *};

    const fn s(state: TcpState) -> u8 {
        state as u8
    }

    #[test]
    fn classifies_ends() {
        use TcpState::*;
        let cases = [
            // (old, handover, err, reset sent) -> end
            ((s(Listen), false, 0, false), None),
            ((s(FinWait2), true, 0, false), Some(End::Fin)),
            ((s(LastAck), false, 0, false), Some(End::Fin)),
            ((s(SynSent), false, ECONNREFUSED, false), Some(End::Refused)),
            ((s(SynSent), false, ETIMEDOUT, false), Some(End::Timeout)),
            ((s(SynSent), false, 113, false), Some(End::Error)),
            ((s(SynSent), false, 0, false), Some(End::Abandoned)),
            ((s(SynRecv), false, 0, false), Some(End::Abandoned)),
            (
                (s(Established), false, ECONNRESET, false),
                Some(End::ResetReceived),
            ),
            (
                (s(CloseWait), false, EPIPE, false),
                Some(End::ResetReceived),
            ),
            ((s(Established), false, 0, true), Some(End::ResetSent)),
            // A keepalive timeout sends a reset and sets ETIMEDOUT: a timeout.
            ((s(Established), false, ETIMEDOUT, true), Some(End::Timeout)),
            ((s(Established), false, 103, false), Some(End::Error)),
        ];
        for ((old, handover, err, reset), end) in cases {
            assert_eq!(
                End::classify(old, handover, err, reset),
                end,
                "{old} {err} {reset}"
            );
        }
    }

    #[test]
    fn a_connect_closed_before_it_had_a_port_found_none_free() {
        let syn_sent = s(TcpState::SynSent);
        assert_eq!(socket_error(syn_sent, 0, 0), EADDRNOTAVAIL);
        assert_eq!(
            End::classify(syn_sent, false, socket_error(syn_sent, 0, 0), false),
            Some(End::Error)
        );
        // With a port, or with an error of its own, the socket's error stands.
        assert_eq!(socket_error(syn_sent, 0, 40000), 0);
        assert_eq!(socket_error(syn_sent, ECONNREFUSED, 0), ECONNREFUSED);
        assert_eq!(socket_error(s(TcpState::Established), 0, 0), 0);
        assert_eq!(errno_name(EADDRNOTAVAIL), Some("EADDRNOTAVAIL"));
    }

    #[test]
    fn names_round_trip() {
        for end in End::ALL {
            assert_eq!(End::from_u8(end as u8), Some(end));
            assert!((end as usize) < End::COUNT);
        }
        assert_eq!(End::from_u8(0), None);
        assert_eq!(errno_name(ECONNREFUSED), Some("ECONNREFUSED"));
        assert_eq!(errno_name(0), None);
    }
}
