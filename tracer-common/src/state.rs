//! TCP states, numbered as in the kernel's `include/net/tcp_states.h`.

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    BoundInactive = 13,
}

impl TcpState {
    /// Slots of an array indexed by `state as usize`: the kernel numbers states from 1 to 13.
    pub const COUNT: usize = 14;

    /// Every state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    pub const fn from_u8(value: u8) -> Option<Self> {
        // A match, not a table lookup: the eBPF verifier rejects indexing read-only data with a
        // value it cannot bound.
        Some(match value {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            _ => return None,
        })
    }

    /// The kernel's name without its `TCP_` prefix, as users read it in `ss` and in our JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }

    /// Parses a state name in any of the spellings users type: `CLOSE_WAIT`, `close-wait`,
    /// `closewait`, `TCP_CLOSE_WAIT`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text
            .strip_prefix("TCP_")
            .or_else(|| text.strip_prefix("tcp_"))
            .unwrap_or(text);
        let wanted = text
            .bytes()
            .filter(|b| *b != b'_' && *b != b'-')
            .map(|b| b.to_ascii_uppercase());
        Self::ALL.into_iter().find(|state| {
            state
                .name()
                .bytes()
                .filter(|b| *b != b'_')
                .eq(wanted.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_u8(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(TcpState::COUNT as u8), None);
        assert!(
            TcpState::ALL
                .iter()
                .all(|s| (*s as usize) < TcpState::COUNT)
        );
    }

    #[test]
    fn parses_user_spellings() {
        for text in [
            "CLOSE_WAIT",
            "close-wait",
            "closewait",
            "TCP_CLOSE_WAIT",
            " Close_Wait ",
        ] {
            assert_eq!(TcpState::parse(text), Some(TcpState::CloseWait), "{text}");
        }
        assert_eq!(TcpState::parse("fin-wait-1"), Some(TcpState::FinWait1));
        assert_eq!(TcpState::parse("syn-sent"), Some(TcpState::SynSent));
        // `close` must not match `closing` or `close-wait`.
        assert_eq!(TcpState::parse("close"), Some(TcpState::Close));
        assert_eq!(TcpState::parse("nope"), None);
        assert_eq!(TcpState::parse(""), None);
    }
}
