//! A worker process of `cargo xtask scale` (the xtask binary re-run as `xtask scale-worker`): it
//! holds both ends of a few thousand loopback connections to a listener of its own, closes the
//! client end of some on request (leaving the server end in CLOSE_WAIT, held by this process),
//! and exits when its standard input closes. A process may hold at most 20,000 file
//! descriptors here, so a million sockets take dozens of workers.
//!
//! Protocol on standard output: `ready N` once N connections are established; after `plant K` on
//! standard input, one `planted LOCAL PEER` line per server socket left in CLOSE_WAIT, then
//! `planted-all`.
use std::{
    collections::HashMap,
    io::{BufRead as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address of this worker's listener.
    #[arg(long)]
    pub listen: SocketAddrV4,
    /// Connections to establish (each is two sockets, two file descriptors).
    #[arg(long)]
    pub connections: usize,
}

/// Connections made before they are accepted, within the listener's backlog (at least 128).
const BATCH: usize = 100;

/// A connection: the client end (dropped when planted) and the accepted end.
type Pair = (Option<TcpStream>, TcpStream);

pub fn run(args: &Args) -> Result<()> {
    // Die with the harness, even when it is killed: a worker must not outlive it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets the signal this process receives.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    raise_fd_limit()?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("binding the listener on {}", args.listen))?;
    let mut pairs: Vec<Pair> = Vec::with_capacity(args.connections);
    while pairs.len() < args.connections {
        let batch = (args.connections - pairs.len()).min(BATCH);
        let clients = (0..batch)
            .map(|_| TcpStream::connect(args.listen))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("connecting to {}", args.listen))?;
        let mut accepted: HashMap<SocketAddr, TcpStream> = HashMap::with_capacity(batch);
        for _ in 0..batch {
            let (server, peer) = listener.accept().context("accepting")?;
            accepted.insert(peer, server);
        }
        for client in clients {
            let local = client.local_addr()?;
            let server = accepted
                .remove(&local)
                .with_context(|| format!("no accepted connection from {local}"))?;
            pairs.push((Some(client), server));
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", pairs.len())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a command")?;
        let Some(count) = line.strip_prefix("plant ") else {
            bail!("unknown command {line:?}");
        };
        let count: usize = count.trim().parse().context("parsing the count to plant")?;
        for (client, server) in pairs.iter_mut().filter(|(c, _)| c.is_some()).take(count) {
            // The client closes; the server end, never closed, stays in CLOSE_WAIT.
            drop(client.take());
            writeln!(
                out,
                "planted {} {}",
                server.local_addr()?,
                server.peer_addr()?
            )?;
        }
        writeln!(out, "planted-all")?;
        out.flush()?;
    }
    // The harness is done. Reset rather than close, so that the namespace is not left with
    // hundreds of thousands of TIME-WAIT sockets (its table holds 131,072; the rest would
    // overflow with a kernel message each).
    for (client, server) in &pairs {
        for stream in client.iter().chain([server]) {
            abort_on_close(stream);
        }
    }
    Ok(())
}

/// Up to the hard limit, which root cannot raise here (no CAP_SYS_RESOURCE).
fn raise_fd_limit() -> Result<()> {
    let mut limit = nofile_limit()?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit with a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The hard file-descriptor limit, which a worker runs with.
pub fn fd_limit() -> Result<u64> {
    Ok(nofile_limit()?.rlim_max)
}

fn nofile_limit() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// SO_LINGER with a zero timeout: close sends a reset and leaves no TIME-WAIT.
fn abort_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
