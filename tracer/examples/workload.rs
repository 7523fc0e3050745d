//! Loopback workloads in a process of their own, for the integration tests: the sockets they hold
//! have a known owner (this process, named `workload`) that is not the test itself.
//!
//! - `workload close-wait <ip> <count>`: leaves `count` accepted sockets in CLOSE_WAIT; their
//!   clients, closed first, linger in FIN_WAIT2 (held by timewait sockets) until
//!   `tcp_fin_timeout`. Closes the accepted sockets when a line arrives on stdin.
//! - `workload serve <ip> <count>`: accepts `count` connections from outside, prints `accepted`,
//!   then closes each once its client has closed, and prints `closed`.
//! - `workload burst <ip> <connections>`: that many connections from 8 parallel clients, as fast
//!   as they go; prints `done`.
//! - `workload backlog <ip> <count>`: a listener that never accepts (backlog 1), and `count`
//!   connections to it that pile up in its queues or hang in SYN_SENT.
//!
//! Each prints one JSON line first, with the pid and ports, and exits at the end of stdin.
use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
};

use anyhow::{Context as _, Result, bail};
use xtask::workload::CloseWaitLeak;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, ip, count] = args.as_slice() else {
        bail!("usage: workload close-wait|serve|burst|backlog <ip> <count>");
    };
    let ip: IpAddr = ip.parse().context("ip")?;
    let count: usize = count.parse().context("count")?;
    match mode.as_str() {
        "close-wait" => close_wait(ip, count),
        "serve" => serve(ip, count),
        "burst" => burst(ip, count),
        "backlog" => backlog(ip, count),
        other => bail!("unknown workload {other}"),
    }
}

fn say(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")?;
    Ok(stdout.flush()?)
}

fn close_wait(ip: IpAddr, count: usize) -> Result<()> {
    let leak = CloseWaitLeak::start(ip, count)?;
    let info = serde_json::json!({
        "pid": std::process::id(),
        "listen_port": leak.listen_port,
        "client_ports": leak.client_ports,
    });
    say(&info.to_string())?;
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    leak.release();
    say("released")?;
    for _ in lines {}
    Ok(())
}

fn serve(ip: IpAddr, count: usize) -> Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).context("binding")?;
    let info = serde_json::json!({
        "pid": std::process::id(),
        "listen_port": listener.local_addr()?.port(),
        "client_ports": [],
    });
    say(&info.to_string())?;
    let mut accepted = Vec::with_capacity(count);
    for _ in 0..count {
        accepted.push(listener.accept().context("accepting")?.0);
    }
    say("accepted")?;
    for mut stream in accepted {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    say("closed")?;
    for _ in std::io::stdin().lock().lines() {}
    Ok(())
}

fn burst(ip: IpAddr, count: usize) -> Result<()> {
    const CLIENTS: usize = 8;
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).context("binding")?;
    say(&serde_json::json!({ "pid": std::process::id(), "listen_port": listener.local_addr()?.port(), "client_ports": [] }).to_string())?;
    xtask::workload::burst(listener, CLIENTS, count.div_ceil(CLIENTS))?;
    say("done")?;
    for _ in std::io::stdin().lock().lines() {}
    Ok(())
}

fn backlog(ip: IpAddr, count: usize) -> Result<()> {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )?;
    listener.bind(&SocketAddr::new(ip, 0).into())?;
    listener.listen(1)?;
    let addr = listener
        .local_addr()?
        .as_socket()
        .context("listener address")?;
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        // In progress: completes into the accept queue, or waits in SYN_SENT once it is full.
        let _ = socket.connect(&addr.into());
        pending.push(socket);
    }
    say(&serde_json::json!({ "pid": std::process::id(), "listen_port": addr.port(), "client_ports": [] }).to_string())?;
    for _ in std::io::stdin().lock().lines() {}
    drop(pending);
    Ok(())
}
