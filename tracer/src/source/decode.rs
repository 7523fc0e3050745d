//! Decoding of the kernel's records into typed events and plain data, and back (the daemon writes
//! records too, for sockets it found in the kernel's list). Ring-buffer records are read in place
//! (one unaligned copy of a fixed-size struct, no allocation).
use crate::owner::{Comm, Owner};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tracer_common::{
    AF_INET, AF_INET6, End, Event, EventKind, NO_RESET_REASON, TcpState, Tuple, UNKNOWN_DURATION,
    Watch, event_flags, record_flags,
};

use super::events::{
    BindFailure, ConnectionEnd, Endpoints, Family, KernelEvent, KernelTransition, Transition,
    Watched,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Size(usize),
    Kind(u8),
    State(u8),
    Family(u16),
    End(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size(len) => write!(f, "record of {len} bytes, expected {}", size_of::<Event>()),
            Self::Kind(kind) => write!(f, "unknown event kind {kind}"),
            Self::State(state) => write!(f, "unknown TCP state {state}"),
            Self::Family(family) => write!(f, "unknown address family {family}"),
            Self::End(end) => write!(f, "unknown connection end {end}"),
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
    Ok(
        match EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))? {
            EventKind::Transition => KernelEvent::Transition(KernelTransition {
                transition: Transition {
                    ts_ns: raw.ts_ns,
                    cookie: raw.cookie,
                    object: raw.sock,
                    endpoints: endpoints(&raw.tuple)?,
                    old: state(raw.old)?,
                    new: state(raw.new)?,
                    prev_state_ns: (raw.prev_state_ns != UNKNOWN_DURATION)
                        .then_some(raw.prev_state_ns),
                    owner: owner(raw.owner.pid, raw.owner.comm),
                    end: connection_end(raw.end, raw.error, raw.reset_reason)?,
                    syn_retransmits: (raw.old == TcpState::SynSent as u8
                        && raw.new == TcpState::Established as u8)
                        .then_some(raw.syn_retransmits),
                },
                service_port: raw.service_port,
                long_stay: raw.flags & event_flags::LONG_STAY != 0,
            }),
            EventKind::End => KernelEvent::ResetAfterClose {
                cookie: raw.cookie,
                reset_reason: (raw.reset_reason != NO_RESET_REASON).then_some(raw.reset_reason),
            },
            EventKind::BindFailed => KernelEvent::BindFailed(BindFailure {
                ts_ns: raw.ts_ns,
                endpoints: endpoints(&raw.tuple)?,
                owner: owner(raw.owner.pid, raw.owner.comm),
                error: raw.error,
            }),
        },
    )
}

/// The end an event carries: none (0), or a known kind.
fn connection_end(
    end: u8,
    error: u8,
    reset_reason: u8,
) -> Result<Option<ConnectionEnd>, DecodeError> {
    if end == 0 {
        return Ok(None);
    }
    let end = End::from_u8(end).ok_or(DecodeError::End(end))?;
    Ok(Some(ConnectionEnd {
        end,
        error: (error != 0).then_some(error),
        reset_reason: (end == End::ResetSent && reset_reason != NO_RESET_REASON)
            .then_some(reset_reason),
    }))
}

pub(crate) fn state(value: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_u8(value).ok_or(DecodeError::State(value))
}

/// The owner the kernel names, if any; an empty name is filled in from /proc later.
fn owner(pid: u32, comm: [u8; 16]) -> Option<Owner> {
    (pid != 0).then_some(Owner {
        pid,
        comm: Comm::from_kernel(comm),
        cgroup: None,
    })
}

/// A socket of the kernel's index of watched sockets.
pub(crate) fn watched(cookie: u64, watch: &Watch) -> Result<Watched, DecodeError> {
    Ok(Watched {
        cookie,
        endpoints: endpoints(&watch.tuple)?,
        state: state(watch.state)?,
        since_ns: watch.since_ns,
        age_known: watch.flags & record_flags::AGE_KNOWN != 0,
        owner: owner(watch.pid, [0; 16]),
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

/// An address as the kernel's tuple holds it: IPv4 in the first four bytes.
pub(crate) fn address_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            bytes
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The kernel's address tuple of some endpoints: the key of a timewait socket's record.
pub(crate) fn tuple(e: &Endpoints) -> Tuple {
    Tuple {
        saddr: address_bytes(e.local),
        daddr: address_bytes(e.remote),
        netns: e.netns,
        sport: e.local_port,
        dport: e.remote_port,
        family: match e.family {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        },
        _pad: [0; 3],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

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
            netns: 7,
            ..Tuple::default()
        };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        t
    }

    fn raw(old: u8, new: u8) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            ts_ns: 1_000,
            sock: 0x3a5c_0e11_7f20_4c80,
            cookie: 99,
            prev_state_ns: 52_000,
            tuple: tuple_v4(),
            owner: tracer_common::Owner {
                pid: 4242,
                _pad: 0,
                comm,
            },
            kind: EventKind::Transition as u8,
            old,
            new,
            flags: event_flags::LONG_STAY,
            service_port: 8080,
            end: 0,
            error: 0,
            reset_reason: 0,
            syn_retransmits: 0,
            _pad: [0; 6],
        }
    }

    fn transition(event: &Event) -> KernelTransition {
        match decode(&encode(event)).unwrap() {
            KernelEvent::Transition(t) => t,
            other => panic!("not a transition: {other:?}"),
        }
    }

    #[test]
    fn decodes_a_transition() {
        let mut connected = raw(2, 1);
        connected.syn_retransmits = 2;
        let event = transition(&connected);
        let t = &event.transition;
        assert_eq!(t.syn_retransmits, Some(2));
        assert_eq!(t.end, None);
        assert_eq!(t.old, TcpState::SynSent);
        assert_eq!(t.new, TcpState::Established);
        assert_eq!(t.prev_state_ns, Some(52_000));
        assert_eq!((t.cookie, t.object), (99, 0x3a5c_0e11_7f20_4c80));
        assert_eq!(t.endpoints.family, Family::Ipv4);
        assert_eq!(t.endpoints.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.endpoints.remote, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (t.endpoints.local_port, t.endpoints.remote_port),
            (43210, 8080)
        );
        let owner = t.owner.as_ref().unwrap();
        assert_eq!((owner.pid, owner.comm.as_str().as_ref()), (4242, "curl"));
        assert_eq!(owner.cgroup, None, "the enrich stage adds it");
        assert_eq!((event.service_port, event.long_stay), (8080, true));
    }

    #[test]
    fn unknown_duration_and_owner_are_none() {
        let mut event = raw(7, 2);
        event.prev_state_ns = UNKNOWN_DURATION;
        event.owner = tracer_common::Owner::default();
        event.flags = 0;
        let event = transition(&event);
        assert_eq!(event.transition.prev_state_ns, None);
        assert_eq!(event.transition.syn_retransmits, None, "not a connect");
        assert_eq!(event.transition.owner, None);
        assert!(!event.long_stay);
    }

    #[test]
    fn decodes_ipv6() {
        let mut event = raw(1, 8);
        event.tuple.family = AF_INET6;
        event.tuple.saddr = Ipv6Addr::LOCALHOST.octets();
        event.tuple.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let t = transition(&event).transition;
        assert_eq!(t.endpoints.family, Family::Ipv6);
        assert_eq!(t.endpoints.local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(t.endpoints.remote.to_string(), "2001:db8::1");
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut bad_kind = raw(1, 2);
        bad_kind.kind = 99;
        assert_eq!(decode(&encode(&bad_kind)), Err(DecodeError::Kind(99)));
        let bad_state = raw(1, 42);
        assert_eq!(decode(&encode(&bad_state)), Err(DecodeError::State(42)));
        let mut bad_family = raw(1, 2);
        bad_family.tuple.family = 1;
        assert_eq!(decode(&encode(&bad_family)), Err(DecodeError::Family(1)));
        let mut bad_end = raw(1, 7);
        bad_end.end = 42;
        assert_eq!(decode(&encode(&bad_end)), Err(DecodeError::End(42)));
    }

    #[test]
    fn decodes_ends() {
        let mut refused = raw(TcpState::SynSent as u8, TcpState::Close as u8);
        refused.end = End::Refused as u8;
        refused.error = 111;
        let end = transition(&refused).transition.end.unwrap();
        assert_eq!(
            (end.end, end.error, end.reset_reason),
            (End::Refused, Some(111), None)
        );
        let mut reset = raw(TcpState::Established as u8, TcpState::Close as u8);
        reset.end = End::ResetSent as u8;
        reset.reset_reason = 11;
        let end = transition(&reset).transition.end.unwrap();
        assert_eq!(
            (end.end, end.error, end.reset_reason),
            (End::ResetSent, None, Some(11))
        );
        let mut amended = raw(TcpState::Established as u8, TcpState::Close as u8);
        amended.kind = EventKind::End as u8;
        amended.reset_reason = 12;
        assert_eq!(
            decode(&encode(&amended)),
            Ok(KernelEvent::ResetAfterClose {
                cookie: 99,
                reset_reason: Some(12)
            })
        );
        // Kernels before 6.10 do not say why they reset.
        reset.reset_reason = NO_RESET_REASON;
        let end = transition(&reset).transition.end.unwrap();
        assert_eq!((end.end, end.reset_reason), (End::ResetSent, None));
    }

    #[test]
    fn tuples_round_trip() {
        let v4 = tuple_v4();
        assert_eq!(tuple(&endpoints(&v4).unwrap()), v4);
        let mut v6 = tuple_v4();
        v6.family = AF_INET6;
        v6.saddr = Ipv6Addr::LOCALHOST.octets();
        v6.daddr = "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(tuple(&endpoints(&v6).unwrap()), v6);
    }

    #[test]
    fn watched_sockets() {
        let watch = Watch {
            since_ns: 5,
            tuple: tuple_v4(),
            pid: 0,
            service_port: 8080,
            state: TcpState::CloseWait as u8,
            flags: record_flags::AGE_KNOWN,
        };
        let w = watched(3, &watch).unwrap();
        assert_eq!((w.cookie, w.state, w.since_ns), (3, TcpState::CloseWait, 5));
        assert!(w.age_known);
        assert_eq!(w.owner, None, "pid 0: no owner known");
    }

    /// The record these bytes hold, read as the kernel laid it out.
    fn record(bytes: &[u8]) -> Event {
        assert_eq!(bytes.len(), size_of::<Event>());
        // SAFETY: the length matches and `Event` is plain old data.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
    }

    /// The tuple the daemon can give back for an address tuple: an IPv4 address in its first
    /// four bytes, no padding.
    fn canonical(tuple: &Tuple) -> Tuple {
        let mut t = *tuple;
        if t.family == AF_INET {
            t.saddr[4..].fill(0);
            t.daddr[4..].fill(0);
        }
        t._pad = [0; 3];
        t
    }

    /// What a decoded record must say: exactly what the record holds, and an error only for a
    /// field the record gets wrong, the first one checked.
    fn assert_faithful(bytes: &[u8]) -> Result<(), TestCaseError> {
        let decoded = decode(bytes);
        if bytes.len() != size_of::<Event>() {
            prop_assert_eq!(decoded, Err(DecodeError::Size(bytes.len())));
            return Ok(());
        }
        let raw = record(bytes);
        let kind = EventKind::from_u8(raw.kind);
        match decoded {
            Ok(KernelEvent::Transition(t)) => {
                prop_assert_eq!(kind, Some(EventKind::Transition));
                let tr = &t.transition;
                prop_assert_eq!(
                    (tr.ts_ns, tr.cookie, tr.object),
                    (raw.ts_ns, raw.cookie, raw.sock)
                );
                prop_assert_eq!((tr.old as u8, tr.new as u8), (raw.old, raw.new));
                prop_assert_eq!(tuple(&tr.endpoints), canonical(&raw.tuple));
                prop_assert_eq!(
                    tr.prev_state_ns.unwrap_or(UNKNOWN_DURATION),
                    raw.prev_state_ns
                );
                prop_assert_eq!(tr.owner.as_ref().map_or(0, |o| o.pid), raw.owner.pid);
                prop_assert_eq!(tr.end.as_ref().map_or(0, |e| e.end as u8), raw.end);
                prop_assert_eq!(t.service_port, raw.service_port);
                prop_assert_eq!(t.long_stay, raw.flags & event_flags::LONG_STAY != 0);
            }
            Ok(KernelEvent::ResetAfterClose {
                cookie,
                reset_reason,
            }) => {
                prop_assert_eq!(kind, Some(EventKind::End));
                prop_assert_eq!(cookie, raw.cookie);
                prop_assert_eq!(reset_reason.unwrap_or(NO_RESET_REASON), raw.reset_reason);
            }
            Ok(KernelEvent::BindFailed(f)) => {
                prop_assert_eq!(kind, Some(EventKind::BindFailed));
                prop_assert_eq!(f.ts_ns, raw.ts_ns);
                prop_assert_eq!(tuple(&f.endpoints), canonical(&raw.tuple));
                prop_assert_eq!(f.owner.as_ref().map_or(0, |o| o.pid), raw.owner.pid);
                prop_assert_eq!(f.error, raw.error);
            }
            Err(DecodeError::Kind(k)) => prop_assert!(k == raw.kind && kind.is_none()),
            Err(DecodeError::Family(f)) => {
                prop_assert!(f == raw.tuple.family && f != AF_INET && f != AF_INET6)
            }
            Err(DecodeError::State(s)) => {
                prop_assert!((s == raw.old || s == raw.new) && TcpState::from_u8(s).is_none())
            }
            Err(DecodeError::End(e)) => prop_assert!(e == raw.end && End::from_u8(e).is_none()),
            Err(DecodeError::Size(_)) => prop_assert!(false, "the size was right"),
        }
        Ok(())
    }

    /// Records the kernel could write: every field valid, any values.
    fn valid_event() -> impl Strategy<Value = Event> {
        (
            prop::collection::vec(any::<u8>(), size_of::<Event>()),
            prop::sample::select(vec![EventKind::Transition, EventKind::End]),
            prop::sample::select(TcpState::ALL.to_vec()),
            prop::sample::select(TcpState::ALL.to_vec()),
            prop::sample::select(vec![AF_INET, AF_INET6]),
            prop::option::of(prop::sample::select(End::ALL.to_vec())),
        )
            .prop_map(|(bytes, kind, old, new, family, end)| {
                let mut event = record(&bytes);
                event.kind = kind as u8;
                (event.old, event.new) = (old as u8, new as u8);
                event.tuple.family = family;
                event.end = end.map_or(0, |e| e as u8);
                event
            })
    }

    proptest! {
        #[test]
        fn fuzz_decode_valid(event in valid_event()) {
            prop_assert!(decode(&encode(&event)).is_ok());
            assert_faithful(&encode(&event))?;
        }

        /// A valid record with bytes overwritten: the fields it then holds, or an error.
        #[test]
        fn fuzz_decode_corrupted(
            event in valid_event(),
            writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = encode(&event);
            for (at, value) in writes {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            assert_faithful(&bytes)?;
        }

        /// Cut short, grown or otherwise mangled: never a value from a record of the wrong size.
        #[test]
        fn fuzz_decode_mutated(bytes in valid_event().prop_flat_map(|e| crate::fuzz::mutated_bytes(encode(&e)))) {
            assert_faithful(&bytes)?;
        }

        #[test]
        fn fuzz_decode_arbitrary(bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(any::<u8>(), size_of::<Event>()),
        ]) {
            assert_faithful(&bytes)?;
        }

        /// The kernel's index of watched sockets: decoded as it holds them.
        #[test]
        fn fuzz_watched(
            cookie in any::<u64>(),
            since_ns in any::<u64>(),
            event in valid_event(),
            family in prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u16>()],
            state in any::<u8>(),
            pid in any::<u32>(),
            flags in any::<u8>(),
        ) {
            let mut t = event.tuple;
            t.family = family;
            let watch = Watch { since_ns, tuple: t, pid, service_port: 0, state, flags };
            match watched(cookie, &watch) {
                Ok(w) => {
                    prop_assert_eq!((w.cookie, w.since_ns, w.state as u8), (cookie, since_ns, state));
                    prop_assert_eq!(tuple(&w.endpoints), canonical(&t));
                    prop_assert_eq!(w.owner.map_or(0, |o| o.pid), pid);
                    prop_assert_eq!(w.age_known, flags & record_flags::AGE_KNOWN != 0);
                }
                Err(DecodeError::Family(f)) => prop_assert!(f == family && f != AF_INET && f != AF_INET6),
                Err(DecodeError::State(s)) => prop_assert!(s == state && TcpState::from_u8(s).is_none()),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
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
