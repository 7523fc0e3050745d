//! The kernel's own list of TCP sockets (netlink sock_diag, the source of `ss`), IPv4 and IPv6,
//! every state: timewait and request sockets included, in every network namespace. Listing is a
//! blocking scan (of /proc for the namespaces, of each namespace's sockets): the daemon runs it off
//! its event loop.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tracer_common::{TcpState, Tuple, normalize_family};

use super::port_range::{self, PortRange};
use crate::source::{
    clock::thread_cpu_time,
    decode::{address_bytes, endpoints},
    events::Endpoints,
    filter::SocketFilter,
};

/// One socket of the kernel's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSocket {
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// The kernel's socket cookie: a stable id for the socket's life.
    pub cookie: u64,
    /// The inode of the socket's file; 0 for sockets no process holds (timewait, request).
    pub inode: u32,
    /// A timewait socket (TIME-WAIT, or a FIN-WAIT-2 lingering on one), not a full socket.
    pub timewait: bool,
    /// A listener's accept queue and its backlog (0 for other sockets).
    pub queue: u32,
    pub backlog: u32,
}

/// The kernel's sockets as one listing found them, with the namespaces it covered.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) sockets: Vec<ListedSocket>,
    /// The network namespaces actually listed: only their sockets are judged by the listing.
    pub(crate) listed: HashSet<u32>,
    /// The host's network namespaces, each with a process in it (to enter it by).
    pub(crate) namespaces: HashMap<u32, u32>,
    /// The ephemeral port range of each namespace listed, read with a listing of every state
    /// (a namespace whose range could not be read has none).
    pub(crate) port_ranges: HashMap<u32, PortRange>,
    /// CPU time the listing took, on every thread it used (kernel time of the dumps included).
    pub(crate) cpu: Duration,
}

impl Listing {
    /// The ports listened on, by namespace: a socket on one of them is a listener's, or a
    /// connection it accepted.
    pub(crate) fn listening(&self) -> HashSet<(u32, u16)> {
        self.sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|s| (s.endpoints.netns, s.endpoints.local_port))
            .collect()
    }
}

/// Lists the TCP sockets (all, or those in one state) of the host's network namespaces that the
/// filter selects: the namespaces `known`, or found anew in /proc when `None`.
pub(crate) fn take_listing(
    known: Option<HashMap<u32, u32>>,
    only: Option<TcpState>,
    filter: &SocketFilter,
) -> Result<Listing> {
    let started = thread_cpu_time();
    let namespaces = known.unwrap_or_else(namespaces);
    let (mut sockets, listed, port_ranges, other_threads) = list_each(&namespaces, only)?;
    sockets.retain(|s| filter.matches(&s.endpoints));
    Ok(Listing {
        sockets,
        listed,
        namespaces,
        port_ranges,
        cpu: thread_cpu_time().saturating_sub(started) + other_threads,
    })
}

/// Inode number of the daemon's own network namespace.
pub fn own_netns() -> Result<u32> {
    netns_of("/proc/self/ns/net")
}

fn netns_of(path: &str) -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
    Ok(meta.ino() as u32)
}

/// The network namespaces among `wanted`, each with a process in it to enter it by: none to look
/// for when only the daemon's own is wanted (a listing always covers it), else found in /proc.
/// A check that concerns a few namespaces spares the walk through every process.
pub(crate) fn namespaces_among(wanted: &HashSet<u32>) -> HashMap<u32, u32> {
    let own = own_netns().ok();
    if wanted.iter().all(|netns| Some(*netns) == own) {
        return HashMap::new();
    }
    let mut found = namespaces();
    found.retain(|netns, _| wanted.contains(netns));
    found
}

/// The network namespaces in use on the host (containers have their own), each with a process
/// in it through which it can be entered.
fn namespaces() -> HashMap<u32, u32> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(netns) = netns_of(&format!("/proc/{pid}/ns/net")) {
            found.entry(netns).or_insert(pid);
        }
    }
    found
}

/// Lists the TCP sockets of every network namespace in `namespaces` (inode to a process in it):
/// the daemon's own directly, the others from a thread that enters them. Returns the sockets and
/// the namespaces actually listed (a namespace whose last process just exited is skipped).
pub fn list_namespaces(
    namespaces: &HashMap<u32, u32>,
    only: Option<TcpState>,
) -> Result<(Vec<ListedSocket>, HashSet<u32>)> {
    list_each(namespaces, only).map(|(sockets, listed, ..)| (sockets, listed))
}

/// What [`list_each`] found: the sockets, the namespaces listed, their port ranges, and the CPU
/// time of the threads it started.
type Found = (
    Vec<ListedSocket>,
    HashSet<u32>,
    HashMap<u32, PortRange>,
    Duration,
);

/// [`list_namespaces`], with the port ranges (when every state is listed: port usage is counted
/// from such listings only) and the CPU time of the threads it started.
fn list_each(namespaces: &HashMap<u32, u32>, only: Option<TcpState>) -> Result<Found> {
    let own = own_netns()?;
    let mut sockets = list_tcp_sockets(own, only)?;
    let mut listed = HashSet::from([own]);
    let mut ranges = HashMap::new();
    if let Some(range) = range_of(own, only) {
        ranges.insert(own, range);
    }
    let mut cpu = Duration::ZERO;
    for (&netns, &pid) in namespaces.iter().filter(|(netns, _)| **netns != own) {
        if let Ok((more, range, spent)) = list_in(netns, pid, only) {
            sockets.extend(more);
            listed.insert(netns);
            ranges.extend(range.map(|r| (netns, r)));
            cpu += spent;
        }
    }
    Ok((sockets, listed, ranges, cpu))
}

/// The calling thread's namespace's port range, when every state is listed.
fn range_of(netns: u32, only: Option<TcpState>) -> Option<PortRange> {
    if only.is_some() {
        return None;
    }
    port_range::read()
        .inspect_err(|e| tracing::debug!("network namespace {netns}: {e:#}"))
        .ok()
}

/// Lists the sockets of another network namespace from a thread that enters it (a network
/// namespace is a per-thread attribute; the netlink socket belongs to the namespace it is made in).
fn list_in(
    netns: u32,
    pid: u32,
    only: Option<TcpState>,
) -> Result<(Vec<ListedSocket>, Option<PortRange>, Duration)> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/{pid}/ns/net");
    let handle = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    if netns_of(&path)? != netns {
        bail!("process {pid} left network namespace {netns}");
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with an open namespace file.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "entering network namespace {netns}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                let sockets = list_tcp_sockets(netns, only)?;
                Ok((sockets, range_of(netns, only), thread_cpu_time()))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("listing thread panicked"))?
    })
}

/// Lists the TCP sockets of the calling thread's network namespace (`netns`): all of them, or
/// those in one state (for a timewait socket, its substate).
pub fn list_tcp_sockets(netns: u32, only: Option<TcpState>) -> Result<Vec<ListedSocket>> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut sockets = Vec::new();
    let states = match only {
        Some(state) => StateFlags::from_bits_retain(1 << state as u32),
        None => StateFlags::all(),
    };
    for family in [AF_INET, AF_INET6] {
        dump(&socket, netns, family, states.clone(), &mut sockets)?;
    }
    Ok(sockets)
}

fn dump(
    socket: &Socket,
    netns: u32,
    family: u8,
    states: StateFlags,
    into: &mut Vec<ListedSocket>,
) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;

    let mut receive = vec![0u8; 64 << 10];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .context("reading the sock_diag reply")?;
        if read_reply(receive.get(..size).unwrap_or(&receive), netns, into)? {
            return Ok(());
        }
    }
}

/// Reads one datagram of a dump's reply (messages back to back): the sockets it lists are added to
/// `into`; `true` at the message ending the dump.
fn read_reply(datagram: &[u8], netns: u32, into: &mut Vec<ListedSocket>) -> Result<bool> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
            .context("decoding the sock_diag reply")?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                if let Some(listed) = listed_socket(netns, &response.header) {
                    into.push(listed);
                }
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(err) => bail!("sock_diag dump failed: {err:?}"),
            _ => {}
        }
        // A length of 0 would never move on; past the end, nothing follows.
        match rest.get(message.header.length as usize..) {
            Some(next) if message.header.length != 0 => rest = next,
            _ => break,
        }
    }
    Ok(false)
}

/// The listeners of a listing by namespace and port, to find the one a connection arrived on: the
/// listener bound to its address, or else one bound to any (as the kernel prefers). Indexed: a
/// flood brings many connections to match.
pub(crate) struct ListenerIndex<'a> {
    by_port: HashMap<(u32, u16), Vec<&'a ListedSocket>>,
}

impl<'a> ListenerIndex<'a> {
    pub(crate) fn new(sockets: &'a [ListedSocket]) -> Self {
        let mut by_port: HashMap<(u32, u16), Vec<&ListedSocket>> = HashMap::new();
        for l in sockets.iter().filter(|s| s.state == TcpState::Listen) {
            by_port
                .entry((l.endpoints.netns, l.endpoints.local_port))
                .or_default()
                .push(l);
        }
        Self { by_port }
    }

    pub(crate) fn listener_of(&self, e: &Endpoints) -> Option<&'a ListedSocket> {
        let candidates = self.by_port.get(&(e.netns, e.local_port))?;
        let bound = |pick: &dyn Fn(&ListedSocket) -> bool| candidates.iter().find(|l| pick(l));
        bound(&|l| l.endpoints.local == e.local)
            .or_else(|| bound(&|l| l.endpoints.local.is_unspecified()))
            .copied()
    }
}

/// Builds a listed socket the way the kernel programs report sockets: IPv4-mapped IPv6 sockets as
/// IPv4.
fn listed_socket(netns: u32, h: &InetResponseHeader) -> Option<ListedSocket> {
    let id = &h.socket_id;
    let mut tuple = Tuple {
        saddr: address_bytes(id.source_address),
        daddr: address_bytes(id.destination_address),
        sport: id.source_port,
        dport: id.destination_port,
        family: u16::from(h.family),
        netns,
        _pad: [0; 3],
    };
    normalize_family(&mut tuple);
    let state = TcpState::from_u8(h.state)?;
    let listening = state == TcpState::Listen;
    Some(ListedSocket {
        endpoints: endpoints(&tuple).ok()?,
        state,
        cookie: u64::from_ne_bytes(id.cookie),
        inode: h.inode,
        timewait: matches!(h.timer, Some(Timer::TimeWait)),
        queue: if listening { h.recv_queue } else { 0 },
        backlog: if listening { h.send_queue } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

    use netlink_packet_core::DoneMessage;
    use proptest::prelude::*;

    use super::*;
    use crate::{fuzz::mutated_bytes, source::events::Family};

    /// One netlink message as the kernel sends it.
    fn message(payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn response(header: &InetResponseHeader) -> Vec<u8> {
        message(
            SockDiagMessage::InetResponse(Box::new(netlink_packet_sock_diag::inet::InetResponse {
                header: header.clone(),
                nlas: Default::default(),
            }))
            .into(),
        )
    }

    fn done() -> Vec<u8> {
        message(NetlinkPayload::Done(DoneMessage::default()))
    }

    /// The smallest message that lists a socket: a netlink header and an inet response's.
    const SMALLEST_RESPONSE: usize = 16 + 72;

    /// Reply headers the kernel could send: addresses of their family (IPv4-mapped ones too),
    /// any state number, any numbers.
    fn reply_header() -> impl Strategy<Value = InetResponseHeader> {
        let v4 = any::<[u8; 4]>().prop_map(IpAddr::from);
        let v6 = any::<[u8; 16]>().prop_map(IpAddr::from);
        let mapped = any::<[u8; 4]>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()));
        // A dual-stack socket carrying IPv4 has both ends mapped.
        let addresses = prop_oneof![
            (Just(AF_INET), v4.clone(), v4),
            (Just(AF_INET6), v6.clone(), v6),
            (Just(AF_INET6), mapped.clone(), mapped),
        ];
        (
            addresses,
            prop_oneof![0u8..16, any::<u8>()],
            any::<bool>(),
            any::<(u16, u16, u32, [u8; 8])>(),
            any::<(u32, u32, u32, u32)>(),
        )
            .prop_map(|((family, local, remote), state, timewait, id, numbers)| {
                let mut socket_id = SocketId::new_v6();
                (socket_id.source_port, socket_id.destination_port) = (id.0, id.1);
                (socket_id.source_address, socket_id.destination_address) = (local, remote);
                (socket_id.interface_id, socket_id.cookie) = (id.2, id.3);
                InetResponseHeader {
                    family,
                    state,
                    timer: timewait.then_some(Timer::TimeWait),
                    socket_id,
                    recv_queue: numbers.0,
                    send_queue: numbers.1,
                    uid: numbers.2,
                    inode: numbers.3,
                }
            })
    }

    /// A whole reply: its responses, then (or not) the message ending the dump.
    fn reply() -> impl Strategy<Value = (Vec<InetResponseHeader>, bool, Vec<u8>)> {
        (prop::collection::vec(reply_header(), 0..6), any::<bool>()).prop_map(|(headers, end)| {
            let mut bytes: Vec<u8> = headers.iter().flat_map(response).collect();
            if end {
                bytes.extend(done());
            }
            (headers, end, bytes)
        })
    }

    fn expected(netns: u32, headers: &[InetResponseHeader]) -> Vec<ListedSocket> {
        headers
            .iter()
            .filter_map(|h| listed_socket(netns, h))
            .collect()
    }

    proptest! {
        /// Each response with a known state is one socket, as the kernel describes it.
        #[test]
        fn fuzz_read_reply_valid((headers, end, bytes) in reply(), netns in any::<u32>()) {
            let mut into = Vec::new();
            prop_assert_eq!(read_reply(&bytes, netns, &mut into).ok(), Some(end));
            prop_assert_eq!(&into, &expected(netns, &headers));
            let known = headers.iter().filter(|h| TcpState::from_u8(h.state).is_some());
            prop_assert_eq!(into.len(), known.clone().count());
            for (listed, h) in into.iter().zip(known) {
                let e = &listed.endpoints;
                prop_assert_eq!(listed.state as u8, h.state);
                prop_assert_eq!((e.netns, e.local_port, e.remote_port), (netns, h.socket_id.source_port, h.socket_id.destination_port));
                prop_assert_eq!(e.local, h.socket_id.source_address.to_canonical());
                prop_assert_eq!(e.remote, h.socket_id.destination_address.to_canonical());
                prop_assert_eq!((listed.cookie, listed.inode), (u64::from_ne_bytes(h.socket_id.cookie), h.inode));
                prop_assert_eq!(listed.timewait, h.timer.is_some());
            }
        }

        /// A reply cut short anywhere gives the sockets before the cut, never a wrong one.
        #[test]
        fn fuzz_read_reply_truncated((headers, _, bytes) in reply(), cut in any::<prop::sample::Index>()) {
            let bytes = &bytes[..cut.index(bytes.len() + 1)];
            let mut into = Vec::new();
            let ended = read_reply(bytes, 7, &mut into);
            let all = expected(7, &headers);
            prop_assert!(into.len() <= all.len() && into[..] == all[..into.len()], "{into:?}");
            prop_assert!(!matches!(ended, Ok(true)) || into == all);
        }

        /// Mangled replies: an error or some sockets, at most one per message's worth of bytes.
        #[test]
        fn fuzz_read_reply_mutated(bytes in reply().prop_flat_map(|(_, _, bytes)| mutated_bytes(bytes))) {
            let mut into = Vec::new();
            let _ = read_reply(&bytes, 7, &mut into);
            prop_assert!(into.len() <= bytes.len() / SMALLEST_RESPONSE);
            prop_assert!(into.iter().all(|s| s.endpoints.netns == 7));
        }

        #[test]
        fn fuzz_read_reply_arbitrary(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut into = Vec::new();
            let _ = read_reply(&bytes, 7, &mut into);
            prop_assert!(into.len() <= bytes.len() / SMALLEST_RESPONSE);
        }
    }

    fn header(
        family: u8,
        state: u8,
        local: IpAddr,
        remote: IpAddr,
        cookie: u8,
    ) -> InetResponseHeader {
        let mut socket_id = SocketId::new_v6();
        socket_id.source_address = local;
        socket_id.source_port = 80;
        socket_id.destination_address = remote;
        socket_id.destination_port = 5000;
        socket_id.cookie = [cookie, 0, 0, 0, 0, 0, 0, 0];
        InetResponseHeader {
            family,
            state,
            timer: None,
            socket_id,
            recv_queue: 3,
            send_queue: 128,
            uid: 0,
            inode: 7,
        }
    }

    #[test]
    fn connections_find_their_listener() {
        let listening = |netns: u32, local: IpAddr, cookie: u8| {
            let mut h = header(
                if local.is_ipv4() { 2 } else { 10 },
                10,
                local,
                local,
                cookie,
            );
            h.socket_id.destination_port = 0;
            listed_socket(netns, &h).unwrap()
        };
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let sockets = [
            listening(1, any4, 1),
            listening(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 2),
            listening(2, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 3),
        ];
        let index = ListenerIndex::new(&sockets);
        let to = |netns: u32, local: &str, port: u16| {
            let mut e = sockets[0].endpoints;
            (e.netns, e.local, e.local_port) = (netns, local.parse().unwrap(), port);
            index.listener_of(&e).map(|l| l.cookie)
        };
        assert_eq!(to(1, "127.0.0.1", 80), Some(2), "its own address first");
        assert_eq!(to(1, "10.0.0.1", 80), Some(1), "else any");
        assert_eq!(to(1, "10.0.0.1", 81), None, "another port");
        assert_eq!(
            to(2, "10.0.0.1", 80),
            Some(3),
            "an IPv6 listener takes IPv4"
        );
        assert_eq!(to(3, "127.0.0.1", 80), None, "another namespace");
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let listed = listed_socket(1, &header(10, 1, mapped, mapped, 1)).unwrap();
        assert_eq!(listed.endpoints.family, Family::Ipv4);
        assert_eq!(listed.endpoints.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(listed.state, TcpState::Established);
        assert_eq!((listed.cookie, listed.inode), (1, 7));
        assert!(!listed.timewait);
        assert_eq!((listed.queue, listed.backlog), (0, 0), "not a listener");
        let v6 = listed_socket(
            1,
            &header(
                10,
                10,
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                0,
            ),
        )
        .unwrap();
        assert_eq!(v6.endpoints.family, Family::Ipv6);
        assert_eq!(v6.state, TcpState::Listen);
        assert_eq!((v6.queue, v6.backlog), (3, 128), "a listener's queue");
        let mut tw = header(
            2,
            6,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            2,
        );
        tw.timer = Some(Timer::TimeWait);
        assert!(listed_socket(1, &tw).unwrap().timewait);
        assert!(listed_socket(1, &header(10, 99, mapped, mapped, 0)).is_none());
    }

    /// The real kernel lists a connection this test holds, on both ends, with its inode.
    #[test]
    fn lists_live_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let (_server, _) = listener.accept().unwrap();
        let netns = own_netns().unwrap();
        let sockets = list_tcp_sockets(netns, None).unwrap();
        let find = |local: u16, remote: u16| {
            sockets
                .iter()
                .find(|s| s.endpoints.local_port == local && s.endpoints.remote_port == remote)
                .unwrap_or_else(|| panic!("{local}->{remote} not listed"))
        };
        assert_eq!(find(port, 0).state, TcpState::Listen);
        let c = find(client_port, port);
        assert_eq!(c.state, TcpState::Established);
        assert!(c.inode != 0);
        assert_eq!(find(port, client_port).state, TcpState::Established);
        assert!(sockets.iter().all(|s| s.endpoints.netns == netns));
        let listening = list_tcp_sockets(netns, Some(TcpState::Listen)).unwrap();
        assert!(listening.iter().all(|s| s.state == TcpState::Listen));
        assert!(listening.iter().any(|s| s.endpoints.local_port == port));
    }

    /// A listener in a namespace of its own is listed through that namespace, tagged with it.
    #[cfg_attr(
        not(feature = "kernel-tests"),
        ignore = "needs root: cargo xtask test runs it"
    )]
    #[test]
    fn lists_other_namespaces() {
        let ns = xtask::netns::Namespace::new().unwrap();
        let (own, theirs) = (own_netns().unwrap(), ns.inode().unwrap());
        assert_ne!(own, theirs);
        // A thread of this process listens there.
        let listener = ns
            .enter(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let all = namespaces();
        assert_eq!(all.get(&theirs), Some(&ns.holder_pid()));
        let (sockets, listed) = list_namespaces(&all, Some(TcpState::Listen)).unwrap();
        drop(ns);
        assert!(listed.contains(&theirs) && listed.contains(&own));
        assert!(
            sockets
                .iter()
                .any(|s| s.endpoints.netns == theirs && s.endpoints.local_port == port),
            "{sockets:?}"
        );
        assert!(
            !sockets
                .iter()
                .any(|s| s.endpoints.netns == own && s.endpoints.local_port == port)
        );
    }
}
