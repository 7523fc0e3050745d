//! A connection's addresses and its owner as the kernel programs read them.
use crate::TcpState;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The connection's addresses. IPv4 addresses sit in the first four bytes of the arrays; an
/// IPv4-mapped IPv6 socket is reported as IPv4 (see [`normalize_family`]). Also the key of a
/// timewait socket's record: the same connection read from the full socket, from the timewait
/// socket or from a new connection reusing it gives the same key.
///
/// Aligned to 8 bytes so the kernel programs copy and clear it a word at a time, not byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Inode number of the socket's network namespace (`/proc/<pid>/ns/net`).
    pub netns: u32,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    pub family: u16,
    pub _pad: [u16; 3],
}

/// The process a socket belongs to, as far as the kernel knows it. `pid == 0` means unknown; an
/// empty `comm` means the kernel did not read it (the daemon names the process from /proc).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the process id users see).
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) carry IPv4 traffic on a dual-stack socket.
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Reports a dual-stack IPv6 socket that carries IPv4 as IPv4: its addresses move to the first four
/// bytes. A socket is IPv4 in disguise when its remote address is mapped, or, before it has one, when
/// its local address is.
pub fn normalize_family(tuple: &mut Tuple) {
    if tuple.family != AF_INET6 {
        return;
    }
    let remote_unset = tuple.daddr.iter().all(|b| *b == 0);
    if is_v4_mapped(&tuple.daddr) || (remote_unset && is_v4_mapped(&tuple.saddr)) {
        let (s, d) = (tuple.saddr, tuple.daddr);
        tuple.saddr = [0; 16];
        tuple.daddr = [0; 16];
        tuple.saddr[..4].copy_from_slice(&s[12..]);
        if !remote_unset {
            tuple.daddr[..4].copy_from_slice(&d[12..]);
        }
        tuple.family = AF_INET;
    }
}

/// The port a socket serves or uses, fixed at the first transition the tracer sees: its local
/// port when it listens or was accepted from a listener (first seen leaving LISTEN, or leaving
/// SYN_RECV where the kernel made its first transition under its listener's cookie), else its
/// remote port (a client's destination).
pub const fn service_port(first_old: u8, tuple: &Tuple) -> u16 {
    if first_old == TcpState::Listen as u8
        || first_old == TcpState::SynRecv as u8
        || tuple.dport == 0
    {
        tuple.sport
    } else {
        tuple.dport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(bytes: [u8; 16]) -> Tuple {
        Tuple {
            saddr: bytes,
            daddr: bytes,
            family: AF_INET6,
            ..Tuple::default()
        }
    }

    #[test]
    fn mapped_ipv4_becomes_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let mut t = v6(mapped);
        normalize_family(&mut t);
        assert_eq!(t.family, AF_INET);
        assert_eq!(&t.saddr[..4], &[127, 0, 0, 1]);
        assert_eq!(&t.daddr[..4], &[127, 0, 0, 1]);
        assert!(t.saddr[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn mapped_listener_without_peer_becomes_ipv4() {
        let mut t = v6([0; 16]);
        t.saddr[10] = 0xff;
        t.saddr[11] = 0xff;
        t.saddr[12..].copy_from_slice(&[10, 1, 2, 3]);
        normalize_family(&mut t);
        assert_eq!(t.family, AF_INET);
        assert_eq!(&t.saddr[..4], &[10, 1, 2, 3]);
        assert_eq!(t.daddr, [0; 16]);
    }

    #[test]
    fn real_ipv6_stays_ipv6() {
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        let mut t = v6(loopback);
        normalize_family(&mut t);
        assert_eq!(t.family, AF_INET6);
        assert_eq!(t.saddr, loopback);
        // A wildcard listener ([::]) is IPv6 too.
        let mut any = v6([0; 16]);
        normalize_family(&mut any);
        assert_eq!(any.family, AF_INET6);
    }

    #[test]
    fn service_ports() {
        let t = Tuple {
            sport: 40000,
            dport: 80,
            ..Tuple::default()
        };
        assert_eq!(service_port(TcpState::Close as u8, &t), 80, "a client");
        assert_eq!(service_port(TcpState::Listen as u8, &t), 40000, "accepted");
        assert_eq!(
            service_port(TcpState::SynRecv as u8, &t),
            40000,
            "accepted, first seen completing its handshake"
        );
        let listener = Tuple {
            sport: 8080,
            ..Tuple::default()
        };
        assert_eq!(service_port(TcpState::Close as u8, &listener), 8080);
    }
}
