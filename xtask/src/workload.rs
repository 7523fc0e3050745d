//! Loopback TCP workloads with known counts and ports, for tests and benchmarks. Every function
//! reports the ports it used so callers match the tracer's events by their own sockets.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// One connection's life, with the times the caller waited in each phase.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub listen_port: u16,
    pub client_port: u16,
    /// Time between the connection being established and the client closing it.
    pub established_for: Duration,
    /// Time between the client's close and the server's close (the server sits in CLOSE_WAIT).
    pub close_wait_for: Duration,
}

/// Listens on `ip`, connects, accepts, holds the connection for `hold`, closes the client,
/// leaves the server in CLOSE_WAIT for `hold`, then closes the server and the listener.
pub fn connect_and_close(ip: IpAddr, hold: Duration) -> Result<Exchange> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).context("binding the listener")?;
    let listen_port = listener.local_addr()?.port();
    let client = TcpStream::connect(listener.local_addr()?).context("connecting")?;
    let established = Instant::now();
    let (server, _) = listener.accept().context("accepting")?;
    let client_port = client.local_addr()?.port();
    thread::sleep(hold);
    drop(client);
    let closed = Instant::now();
    let established_for = closed - established;
    thread::sleep(hold);
    drop(server);
    let close_wait_for = closed.elapsed();
    drop(listener);
    Ok(Exchange {
        listen_port,
        client_port,
        established_for,
        close_wait_for,
    })
}

/// A server that accepted `count` connections whose clients have all closed: its sockets sit in
/// CLOSE_WAIT until [`CloseWaitLeak::release`] (or drop).
pub struct CloseWaitLeak {
    pub listen_port: u16,
    /// Local ports of the clients, i.e. remote ports of the leaked server sockets.
    pub client_ports: Vec<u16>,
    accepted: Vec<TcpStream>,
    _listener: TcpListener,
}

impl CloseWaitLeak {
    pub fn start(ip: IpAddr, count: usize) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).context("binding the listener")?;
        let addr = listener.local_addr()?;
        let mut accepted = Vec::with_capacity(count);
        let mut client_ports = Vec::with_capacity(count);
        for _ in 0..count {
            let client = TcpStream::connect(addr).context("connecting")?;
            client_ports.push(client.local_addr()?.port());
            accepted.push(listener.accept().context("accepting")?.0);
            drop(client);
        }
        Ok(Self {
            listen_port: addr.port(),
            client_ports,
            accepted,
            _listener: listener,
        })
    }

    /// Closes the leaked sockets (CLOSE_WAIT → LAST_ACK → CLOSE).
    pub fn release(self) {
        drop(self.accepted);
    }
}

/// `count` sequential connect / one request / close exchanges against an echo-once server on
/// `listener` (closed at the end). Returns the number of completed connections.
pub fn sequential(listener: TcpListener, count: usize) -> Result<usize> {
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || serve(listener, count));
    for _ in 0..count {
        exchange(addr)?;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
}

/// `clients` threads each doing `per_client` sequential exchanges against one server on
/// `listener` (closed at the end).
pub fn burst(listener: TcpListener, clients: usize, per_client: usize) -> Result<usize> {
    let addr = listener.local_addr()?;
    let total = clients * per_client;
    let server = thread::spawn(move || serve(listener, total));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            thread::spawn(move || -> Result<()> {
                for _ in 0..per_client {
                    exchange(addr)?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
}

/// Client side of one exchange: connect, send a byte, read the reply, close first (so the client
/// holds the TIME-WAIT, as busy clients do).
fn exchange(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(addr).context("connecting")?;
    stream.write_all(b"x").context("sending")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).context("reading the reply")?;
    Ok(())
}

/// Transitions the kernel reports for one exchange (or one leaked connection): five for the
/// client (CLOSE → SYN_SENT → ESTABLISHED → FIN_WAIT1 → FIN_WAIT2 → CLOSE, its TIME-WAIT
/// going to a timewait socket), five for the accepted socket (LISTEN → SYN_RECV → ESTABLISHED →
/// CLOSE_WAIT → LAST_ACK → CLOSE).
pub const TRANSITIONS_PER_CONNECTION: u64 = 10;
/// Transitions of the listening socket (CLOSE → LISTEN → CLOSE).
pub const TRANSITIONS_PER_LISTENER: u64 = 2;

/// Accepts `count` connections, answers one byte each and waits for the client's close.
fn serve(listener: TcpListener, count: usize) -> Result<usize> {
    for _ in 0..count {
        let (mut stream, _) = listener.accept().context("accepting")?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .context("reading the request")?;
        stream.write_all(&byte).context("replying")?;
        // Read until the client's FIN so the server closes second (no TIME-WAIT on this side),
        // then close without shutdown(): a shutdown then a close can report LAST_ACK -> LAST_ACK
        // when the peer's ACK is slow, which would make the transition count vary.
        let _ = stream.read(&mut byte);
    }
    Ok(count)
}
