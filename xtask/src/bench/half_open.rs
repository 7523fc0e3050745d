//! Handshakes left unanswered: connects from a client namespace (joined to the benchmark's by a
//! veth pair) that drops the SYN-ACKs it receives, so each stays half-open at the listener, which
//! retransmits its SYN-ACK (after 1 s, 3 s, …, and for each SYN the client repeats). The only
//! workload that runs the SYN-ACK hook and the tracer's listing of half-open connections.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use xtask::netns::Namespace;

use crate::cargo::checked;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

/// The clients' namespace, joined to the benchmark's by a veth pair, dropping SYN-ACKs.
struct Clients {
    ns: Namespace,
}

impl Clients {
    fn start() -> Result<Self> {
        let ns = Namespace::new()?;
        let pid = ns.holder_pid().to_string();
        checked(Command::new("ip").args([
            "link", "add", "hb0", "type", "veth", "peer", "name", "hb1", "netns", &pid,
        ]))?;
        let clients = Self { ns };
        checked(Command::new("ip").args(["addr", "add", "10.78.0.1/24", "dev", "hb0"]))?;
        checked(Command::new("ip").args(["link", "set", "hb0", "up"]))?;
        clients
            .ns
            .sh("ip addr add 10.78.0.2/24 dev hb1 && ip link set hb1 up")?;
        clients.ns.sh("nft add table inet bench && \
             nft add chain inet bench input '{ type filter hook input priority 0; }' && \
             nft add rule inet bench input 'tcp flags & (syn | ack) == syn | ack' drop")?;
        Ok(clients)
    }

    /// `n` connects to `to` from inside, left pending.
    fn connect(&self, to: SocketAddr, n: usize) -> Result<Vec<OwnedFd>> {
        self.ns
            .enter(|| (0..n).map(|_| connect_pending(to)).collect())?
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // Both ends at once, now: a namespace is torn down later, and the next run makes the
        // pair again under the same name.
        let _ = Command::new("ip").args(["link", "del", "hb0"]).status();
    }
}

/// A non-blocking connect, in progress.
fn connect_pending(to: SocketAddr) -> Result<OwnedFd> {
    let SocketAddr::V4(to) = to else {
        bail!("IPv4 only");
    };
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid descriptor and address of the size given.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
        bail!("connect: {err}");
    }
    Ok(socket)
}

/// `n` handshakes left half-open for `hold`; returns the listener's port.
pub fn run(n: usize, hold: Duration) -> Result<u16> {
    let clients_ns = Clients::start()?;
    // Room for every request socket: the listen backlog bounds them, and so does the
    // namespace's SYN backlog (beyond it the kernel answers with SYN cookies and keeps none).
    std::fs::write(
        "/proc/sys/net/ipv4/tcp_max_syn_backlog",
        (n + 64).to_string(),
    )
    .context("raising tcp_max_syn_backlog")?;
    let listener = TcpListener::bind((SERVER, 0))?;
    let backlog = libc::c_int::try_from(n + 64).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen again on a listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    let server = listener.local_addr()?;
    let clients = clients_ns.connect(server, n)?;
    thread::sleep(hold);
    drop(clients);
    drop(listener);
    Ok(server.port())
}
