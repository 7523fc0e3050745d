//! The kernel's own list of TCP sockets (netlink sock_diag, the source of `ss`), IPv4 and IPv6,
//! every state: timewait and request sockets included.
use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tracer_common::{TcpState, Tuple, normalize_family};

use crate::events::{Endpoints, endpoints};

/// One socket of the kernel's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSocket {
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// The kernel's socket cookie: a stable id for the socket's life.
    pub cookie: u64,
    /// The inode of the socket's file; 0 for sockets no process holds (timewait, request).
    pub inode: u32,
}

/// Inode number of the daemon's own network namespace: the one sock_diag lists.
pub fn own_netns() -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(meta.ino() as u32)
}

/// Lists the TCP sockets of the daemon's network namespace (`netns`): all of them, or those in
/// one state (for a timewait socket, its substate).
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
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .context("decoding the sock_diag reply")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    if let Some(listed) = listed_socket(
                        netns,
                        h.family,
                        h.state,
                        h.socket_id.source_address,
                        h.socket_id.source_port,
                        h.socket_id.destination_address,
                        h.socket_id.destination_port,
                        h.socket_id.cookie,
                        h.inode,
                    ) {
                        into.push(listed);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) => bail!("sock_diag dump failed: {err:?}"),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Builds a listed socket the way the kernel programs report sockets: IPv4-mapped IPv6 sockets as
/// IPv4.
#[allow(clippy::too_many_arguments)]
fn listed_socket(
    netns: u32,
    family: u8,
    state: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
    cookie: [u8; 8],
    inode: u32,
) -> Option<ListedSocket> {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            bytes
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut tuple = Tuple {
        saddr: octets(local),
        daddr: octets(remote),
        sport: local_port,
        dport: remote_port,
        family: u16::from(family),
        netns,
        _pad: 0,
    };
    normalize_family(&mut tuple);
    Some(ListedSocket {
        endpoints: endpoints(&tuple).ok()?,
        state: TcpState::from_u8(state)?,
        cookie: u64::from_ne_bytes(cookie),
        inode,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

    use super::*;
    use crate::events::Family;

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let listed = listed_socket(
            1,
            10,
            1,
            mapped,
            80,
            mapped,
            5000,
            [1, 0, 0, 0, 0, 0, 0, 0],
            7,
        )
        .unwrap();
        assert_eq!(listed.endpoints.family, Family::Ipv4);
        assert_eq!(listed.endpoints.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(listed.state, TcpState::Established);
        assert_eq!(listed.cookie, 1);
        let v6 = listed_socket(
            1,
            10,
            10,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            80,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            0,
            [0; 8],
            0,
        )
        .unwrap();
        assert_eq!(v6.endpoints.family, Family::Ipv6);
        assert_eq!(v6.state, TcpState::Listen);
        assert!(listed_socket(1, 10, 99, mapped, 1, mapped, 2, [0; 8], 0).is_none());
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
}
