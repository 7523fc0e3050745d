//! Decoding of the kernel's records into typed events. Ring-buffer records are read in place (one
//! unaligned copy of a fixed-size struct, no allocation).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tracer_common::{
    AF_INET, AF_INET6, Event, EventKind, SockRecord, TcpState, Tuple, UNKNOWN_DURATION,
};

use super::events::{
    Accepted, Comm, Endpoints, Family, KernelEvent, Owner, PinnedRecord, Timewait, Transition,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
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

pub(crate) fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() != size_of::<Event>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length matches and `Event` is plain old data; the read tolerates any alignment.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let endpoints = endpoints(&raw.tuple)?;
    let owner = owner(&raw.owner);
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
        EventKind::TimewaitArmed | EventKind::TimewaitDisarmed => {
            let timewait = Timewait {
                ts_ns: raw.ts_ns,
                sock: raw.sock,
                endpoints,
                substate: state(raw.new)?,
                jiffies: raw.jiffies,
                expires: raw.timer_expires,
            };
            if kind == EventKind::TimewaitArmed {
                KernelEvent::TimewaitArmed(timewait)
            } else {
                KernelEvent::TimewaitDisarmed(timewait)
            }
        }
        EventKind::Accepted => KernelEvent::Accepted(Accepted {
            ts_ns: raw.ts_ns,
            sock: raw.sock,
            endpoints,
            owner: owner.unwrap_or(Owner {
                pid: 0,
                comm: Comm::from_kernel([0; 16]),
                cgroup: None,
            }),
        }),
    })
}

fn state(value: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_u8(value).ok_or(DecodeError::State(value))
}

/// The process of a kernel owner record, if known.
fn owner(raw: &tracer_common::Owner) -> Option<Owner> {
    (raw.pid != 0).then_some(Owner {
        pid: raw.pid,
        comm: Comm::from_kernel(raw.comm),
        cgroup: None,
    })
}

/// The endpoints of a kernel address tuple.
pub(crate) fn endpoints(tuple: &Tuple) -> Result<Endpoints, DecodeError> {
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

/// A per-socket record of the kernel's map, if it is of a live socket and well formed.
pub(crate) fn pinned_record(sock: u64, record: &SockRecord) -> Option<PinnedRecord> {
    let state = TcpState::from_u8(record.state).filter(|s| *s != TcpState::Close)?;
    Some(PinnedRecord {
        sock,
        endpoints: endpoints(&record.tuple).ok()?,
        state,
        since_ns: record.since_ns,
        owner: owner(&record.owner),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds the kernel's record for an event: the inverse of [`decode`].
    pub(crate) fn encode(event: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain old data without padding holes (explicit `_pad` fields).
        unsafe {
            std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

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

    fn raw_owner() -> tracer_common::Owner {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        tracer_common::Owner {
            pid: 4242,
            _pad: 0,
            comm,
        }
    }

    fn raw(kind: EventKind, old: u8, new: u8) -> Event {
        Event {
            ts_ns: 1_000,
            sock: 0xffff_8881_0000_1000,
            prev_state_ns: 52_000,
            tuple: tuple_v4(),
            owner: raw_owner(),
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
        assert_eq!(owner.cgroup, None, "the enrich stage adds it");
    }

    #[test]
    fn unknown_duration_and_owner_are_none() {
        let mut event = raw(EventKind::Transition, 7, 2);
        event.prev_state_ns = UNKNOWN_DURATION;
        event.owner = tracer_common::Owner::default();
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
        let armed = decode(&encode(&raw(EventKind::TimewaitArmed, 6, 6))).unwrap();
        assert!(
            matches!(armed, KernelEvent::TimewaitArmed(tw) if tw.substate == TcpState::TimeWait)
        );
        let stop = decode(&encode(&raw(EventKind::TimewaitDisarmed, 6, 5))).unwrap();
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
    fn pinned_records_of_live_sockets_only() {
        let record = |state: TcpState| SockRecord {
            since_ns: 40,
            tuple: tuple_v4(),
            owner: raw_owner(),
            state: state as u8,
            _pad: [0; 7],
        };
        let live = pinned_record(0xaa, &record(TcpState::CloseWait)).unwrap();
        assert_eq!(
            (live.sock, live.state, live.since_ns),
            (0xaa, TcpState::CloseWait, 40)
        );
        assert_eq!(live.owner.map(|o| o.pid), Some(4242));
        assert_eq!(pinned_record(0xaa, &record(TcpState::Close)), None);
        let mut garbled = record(TcpState::Listen);
        garbled.state = 99;
        assert_eq!(pinned_record(0xaa, &garbled), None);
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
