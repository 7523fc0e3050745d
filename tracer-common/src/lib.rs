//! The contract between the kernel programs and the daemon: the event layout written to the ring
//! buffer, the per-socket record kept in the kernel, struct offsets handed to the programs at load
//! time, the names of maps, programs and globals, and TCP state names. `no_std` so the eBPF crate
//! can use it; the `user` feature adds `aya::Pod`.
#![no_std]

pub mod names;
pub mod state;

pub use state::TcpState;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `prev_state_ns` when the kernel did not see the socket enter its old state.
pub const UNKNOWN_DURATION: u64 = u64::MAX;

/// What an [`Event`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `inet_sock_set_state` fired for a TCP socket.
    Transition = 1,
    /// A timewait socket's timer was armed: it entered (or changed) its substate, held in `new`.
    TimewaitArmed = 2,
    /// A timewait socket's timer was cancelled or expired; `new` holds the substate at that moment.
    TimewaitDisarmed = 3,
    /// A process accepted the socket: the owner fields name it.
    Accepted = 4,
}

impl EventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Transition),
            2 => Some(Self::TimewaitArmed),
            3 => Some(Self::TimewaitDisarmed),
            4 => Some(Self::Accepted),
            _ => None,
        }
    }
}

/// The connection's addresses as the kernel program saw them. IPv4 addresses sit in the first four
/// bytes of the arrays; an IPv4-mapped IPv6 socket is reported as IPv4 (see [`normalize_family`]).
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

/// The process a socket belongs to, as far as the kernel knows it. `pid == 0` means unknown.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the process id users see).
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// One record of the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the socket (of the timewait socket for timewait events).
    pub sock: u64,
    /// Time spent in `old`, or [`UNKNOWN_DURATION`].
    pub prev_state_ns: u64,
    pub tuple: Tuple,
    pub owner: Owner,
    /// Timewait events: `jiffies` when the event fired and the timer's expiry, in jiffies. The
    /// kernel may re-arm a timewait timer without an event; its expiry then still tells when.
    pub jiffies: u64,
    pub timer_expires: u64,
    /// An [`EventKind`].
    pub kind: u8,
    /// Kernel state numbers ([`TcpState`]).
    pub old: u8,
    pub new: u8,
    pub _pad: [u8; 5],
}

/// Version of the [`SockRecord`] layout, part of the pinned map's name: a daemon never reads
/// records written by an incompatible one.
pub const SOCK_RECORD_VERSION: u32 = 2;

/// Entries of the per-socket map.
pub const SOCKET_RECORDS: u32 = 1 << 18;

/// The kernel's per-socket record, keyed by socket address: when it entered its current state,
/// which state that is, and its owner. Kept in a map that can be pinned, so a restarted daemon
/// still knows true ages.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockRecord {
    pub since_ns: u64,
    pub tuple: Tuple,
    pub owner: Owner,
    pub state: u8,
    pub _pad: [u8; 7],
}

// The shared records have no implicit padding: every byte is a field, so the daemon may read them
// as bytes and the kernel never leaves a hole uninitialised.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Tuple>() == 16 + 16 + 4 + 2 * 6);
    assert!(size_of::<Owner>() == 4 + 4 + 16);
    assert!(size_of::<Event>() == 8 * 3 + size_of::<Tuple>() + size_of::<Owner>() + 8 * 2 + 8);
    assert!(size_of::<SockRecord>() == 8 + size_of::<Tuple>() + size_of::<Owner>() + 8);
};

/// Indexes of the per-CPU counter array `COUNTERS`.
pub mod counter {
    /// Transitions that did not fit in the ring buffer.
    pub const LOST_TRANSITIONS: u32 = 0;
    /// Per-socket records that could not be stored (socket ages become unknown).
    pub const RECORD_FAILED: u32 = 1;
    /// Other events (timewait, accept) that did not fit in the ring buffer.
    pub const LOST_OTHER: u32 = 2;
    /// Program runs that could not read a kernel structure and gave up (no event written).
    pub const READ_FAILED: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Field offsets the programs need, read from the running kernel's BTF (and the tracepoint's
/// format file) at start-up, so the programs do not depend on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // `struct sock_common`
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_net: u32,
    /// `struct inet_sock`: the local port and address as the classic tracepoint reports them
    /// (the kernel clears `skc_num` before the transition to CLOSE).
    pub inet_sport: u32,
    pub inet_saddr: u32,
    /// `struct net` to its namespace inode number (`ns.inum`).
    pub net_inum: u32,
    // `struct inet_timewait_sock`
    pub tw_substate: u32,
    pub tw_timer: u32,
    // `struct timer_list` (its `function` is the separate `TIMER_FUNCTION` global)
    pub timer_expires: u32,
    // current task -> open file -> socket, for accept()
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
}

/// Offset of the return value in the records of `syscalls/sys_exit_accept4` and
/// `sys_exit_accept` (the accepted socket's descriptor); the daemon checks it against the format
/// file before loading.
pub const ACCEPT_RET_OFFSET: usize = 16;

/// Filters applied in the kernel before an event is written (sockets are tracked regardless, so
/// durations stay right).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// 0: any; else [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Non-zero: only sockets whose local port is in the `LOCAL_PORTS` map.
    pub local_ports: u8,
    /// Non-zero: only sockets whose remote port is in the `REMOTE_PORTS` map.
    pub remote_ports: u8,
    /// Non-zero: only sockets of this network namespace (inode number).
    pub netns: u32,
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
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::KernelFilter {}
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

    #[test]
    fn layouts_are_stable() {
        // The ring buffer and the pinned map are read by other builds of the daemon: keep sizes fixed.
        assert_eq!(core::mem::size_of::<Tuple>(), 48);
        assert_eq!(core::mem::size_of::<Owner>(), 24);
        assert_eq!(core::mem::size_of::<Event>(), 120);
        assert_eq!(core::mem::size_of::<SockRecord>(), 88);
    }
}
