//! Decoding of the kernel's ring-buffer records into typed events. Records are read in place
//! (one unaligned copy of a fixed-size struct, no allocation).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tracer_common::{
    AF_INET, AF_INET6, Event, EventKind, Owner, TcpState, Tuple, UNKNOWN_DURATION,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
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

/// A process name as the kernel stores it: up to 15 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn new(text: &str) -> Self {
        let mut bytes = [0u8; 16];
        let len = text.len().min(15);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self(bytes)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub ts_ns: u64,
    pub sock: u64,
    pub endpoints: Endpoints,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, when the kernel saw the socket enter it.
    pub prev_state_ns: Option<u64>,
    pub owner: Option<Process>,
}

/// A timewait socket's timer armed or disarmed. `substate` is TIME_WAIT or FIN_WAIT2 (the
/// lingering FIN-WAIT-2 that the kernel also hands to a timewait socket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timewait {
    pub ts_ns: u64,
    pub sock: u64,
    pub endpoints: Endpoints,
    pub substate: TcpState,
    /// `jiffies` at the event, and the timer's expiry in jiffies.
    pub jiffies: u64,
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    pub ts_ns: u64,
    pub sock: u64,
    pub endpoints: Endpoints,
    pub owner: Process,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelEvent {
    Transition(Transition),
    TimewaitArmed(Timewait),
    TimewaitDisarmed(Timewait),
    Accepted(Accepted),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Size(usize),
    Kind(u8),
    State(u8),
    Family(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size(len) => write!(f, "record of {len} bytes, expected {}", size_of::<Event>()),
            Self::Kind(kind) => write!(f, "unknown event kind {kind}"),
            Self::State(state) => write!(f, "unknown TCP state {state}"),
            Self::Family(family) => write!(f, "unknown address family {family}"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() != size_of::<Event>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length matches and `Event` is plain old data; the read tolerates any alignment.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let state = |value: u8| TcpState::from_u8(value).ok_or(DecodeError::State(value));
    let endpoints = endpoints(&raw.tuple)?;
    let owner = process(&raw.owner);
    Ok(match kind {
        EventKind::Transition => KernelEvent::Transition(Transition {
            ts_ns: raw.ts_ns,
            sock: raw.sock,
            endpoints,
            old: state(raw.old)?,
            new: state(raw.new)?,
            prev_state_ns: (raw.prev_state_ns != UNKNOWN_DURATION).then_some(raw.prev_state_ns),
            owner,
        }),
        EventKind::TimewaitStart | EventKind::TimewaitStop => {
            let timewait = Timewait {
                ts_ns: raw.ts_ns,
                sock: raw.sock,
                endpoints,
                substate: state(raw.new)?,
                jiffies: raw.jiffies,
                expires: raw.timer_expires,
            };
            if kind == EventKind::TimewaitStart {
                KernelEvent::TimewaitArmed(timewait)
            } else {
                KernelEvent::TimewaitDisarmed(timewait)
            }
        }
        EventKind::Accepted => KernelEvent::Accepted(Accepted {
            ts_ns: raw.ts_ns,
            sock: raw.sock,
            endpoints,
            owner: owner.unwrap_or(Process {
                pid: 0,
                comm: Comm([0; 16]),
            }),
        }),
    })
}

/// The process of a kernel owner record, if known.
pub fn process(owner: &Owner) -> Option<Process> {
    (owner.pid != 0).then_some(Process {
        pid: owner.pid,
        comm: Comm(owner.comm),
    })
}

/// The endpoints of a kernel address tuple.
pub fn endpoints(tuple: &Tuple) -> Result<Endpoints, DecodeError> {
    let (family, local, remote) = match tuple.family {
        AF_INET => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (Family::Ipv4, v4(&tuple.saddr), v4(&tuple.daddr))
        }
        AF_INET6 => (
            Family::Ipv6,
            IpAddr::V6(Ipv6Addr::from(tuple.saddr)),
            IpAddr::V6(Ipv6Addr::from(tuple.daddr)),
        ),
        other => return Err(DecodeError::Family(other)),
    };
    Ok(Endpoints {
        netns: tuple.netns,
        family,
        local,
        local_port: tuple.sport,
        remote,
        remote_port: tuple.dport,
    })
}

/// Builds the kernel's record for an event: the inverse of [`decode`], for tests and benchmarks.
pub fn encode(event: &Event) -> Vec<u8> {
    // SAFETY: `Event` is plain old data without padding holes (explicit `_pad` fields).
    unsafe { std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>()) }
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple_v4() -> Tuple {
        let mut t = Tuple {
            sport: 43210,
            dport: 8080,
            family: AF_INET,
            ..Tuple::default()
        };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        t
    }

    fn raw(kind: EventKind, old: u8, new: u8) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            ts_ns: 1_000,
            sock: 0xffff_8881_0000_1000,
            prev_state_ns: 52_000,
            tuple: tuple_v4(),
            owner: Owner {
                pid: 4242,
                _pad: 0,
                comm,
            },
            jiffies: 5_000,
            timer_expires: 20_000,
            kind: kind as u8,
            old,
            new,
            _pad: [0; 5],
        }
    }

    #[test]
    fn decodes_a_transition() {
        let event = raw(EventKind::Transition, 2, 1);
        let KernelEvent::Transition(t) = decode(&encode(&event)).unwrap() else {
            panic!("not a transition");
        };
        assert_eq!(t.old, TcpState::SynSent);
        assert_eq!(t.new, TcpState::Established);
        assert_eq!(t.prev_state_ns, Some(52_000));
        assert_eq!(t.sock, 0xffff_8881_0000_1000);
        assert_eq!(t.endpoints.family, Family::Ipv4);
        assert_eq!(t.endpoints.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.endpoints.remote, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (t.endpoints.local_port, t.endpoints.remote_port),
            (43210, 8080)
        );
        let owner = t.owner.unwrap();
        assert_eq!((owner.pid, owner.comm.as_str().as_ref()), (4242, "curl"));
    }

    #[test]
    fn unknown_duration_and_owner_are_none() {
        let mut event = raw(EventKind::Transition, 7, 2);
        event.prev_state_ns = UNKNOWN_DURATION;
        event.owner = Owner::default();
        let KernelEvent::Transition(t) = decode(&encode(&event)).unwrap() else {
            panic!("not a transition");
        };
        assert_eq!(t.prev_state_ns, None);
        assert_eq!(t.owner, None);
    }

    #[test]
    fn decodes_ipv6() {
        let mut event = raw(EventKind::Transition, 1, 8);
        event.tuple.family = AF_INET6;
        event.tuple.saddr = Ipv6Addr::LOCALHOST.octets();
        event.tuple.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let KernelEvent::Transition(t) = decode(&encode(&event)).unwrap() else {
            panic!("not a transition");
        };
        assert_eq!(t.endpoints.family, Family::Ipv6);
        assert_eq!(t.endpoints.local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(t.endpoints.remote.to_string(), "2001:db8::1");
    }

    #[test]
    fn decodes_timewait_and_accept() {
        let armed = decode(&encode(&raw(EventKind::TimewaitStart, 6, 6))).unwrap();
        assert!(
            matches!(armed, KernelEvent::TimewaitArmed(tw) if tw.substate == TcpState::TimeWait)
        );
        let stop = decode(&encode(&raw(EventKind::TimewaitStop, 6, 5))).unwrap();
        assert!(
            matches!(stop, KernelEvent::TimewaitDisarmed(tw) if tw.substate == TcpState::FinWait2)
        );
        let accepted = decode(&encode(&raw(EventKind::Accepted, 1, 1))).unwrap();
        assert!(matches!(accepted, KernelEvent::Accepted(a) if a.owner.pid == 4242));
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut bad_kind = raw(EventKind::Transition, 1, 2);
        bad_kind.kind = 99;
        assert_eq!(decode(&encode(&bad_kind)), Err(DecodeError::Kind(99)));
        let bad_state = raw(EventKind::Transition, 1, 42);
        assert_eq!(decode(&encode(&bad_state)), Err(DecodeError::State(42)));
        let mut bad_family = raw(EventKind::Transition, 1, 2);
        bad_family.tuple.family = 1;
        assert_eq!(decode(&encode(&bad_family)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn comm_is_nul_terminated() {
        assert_eq!(Comm::new("nginx").as_str(), "nginx");
        assert_eq!(
            Comm::new("a-very-long-process-name").as_str(),
            "a-very-long-pro"
        );
    }
}
