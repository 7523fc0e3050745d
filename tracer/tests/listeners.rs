//! Real-kernel tests of listeners in trouble: one that stops accepting (its accept queue does not
//! drain, its clients give up and their connections sit in CLOSE_WAIT in the queue, owned by
//! nobody), and one whose handshakes never complete (its SYN-ACKs dropped on the way back).
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use support::{Namespace, Tracer, of_kind};

#[test]
fn a_listener_that_stops_accepting_is_reported_and_its_queue_named() {
    let tracer = Tracer::start(&[
        "--stuck",
        "listen=2s",
        "--stuck",
        "close-wait=1s",
        "--summary-interval",
        "1s",
    ]);
    // A backlog of 2: the queue holds 3 connections, a fourth's SYN is dropped (an overflow).
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    listener.listen(2).unwrap();
    let listener: TcpListener = listener.into();
    let port = listener.local_addr().unwrap().port();
    // Three clients connect and give up; nobody accepts them.
    for _ in 0..3 {
        drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap());
    }
    // A fourth finds the queue full: its SYNs are dropped until it gives up (one retry).
    let turned_away = std::thread::spawn(move || {
        let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let retries: libc::c_int = 1;
        // SAFETY: a valid descriptor and an int-sized option value.
        let rc = unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&raw const retries).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        client
            .connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .unwrap_err()
    });
    let mine = |e: &&Value| e["sport"] == port;
    tracer.wait_for(
        Duration::from_secs(15),
        "the stall and the unaccepted sockets",
        |events| {
            of_kind(events, "listener_stalled").iter().any(mine)
                && of_kind(events, "stuck").into_iter().filter(mine).count() == 3
        },
    );
    assert_eq!(
        turned_away.join().unwrap().kind(),
        std::io::ErrorKind::TimedOut
    );
    // The process accepts again: the queue drains.
    for _ in 0..3 {
        drop(listener.accept().unwrap());
    }
    tracer.wait_for(Duration::from_secs(10), "the recovery", |events| {
        of_kind(events, "listener_recovered").iter().any(mine)
    });
    let done = tracer.stop();
    let stalled = of_kind(&done.events, "listener_stalled")
        .into_iter()
        .find(mine)
        .unwrap();
    assert_eq!(stalled["level"], "warn");
    assert_eq!(stalled["queue"], 3, "{stalled}");
    assert_eq!(stalled["backlog"], 2, "{stalled}");
    assert!(stalled["stalled_ms"].as_f64() >= Some(2000.0), "{stalled}");
    assert_eq!(stalled["pid"], std::process::id(), "the listener's owner");
    for stuck in of_kind(&done.events, "stuck").into_iter().filter(mine) {
        assert_eq!(stuck["state"], "CLOSE_WAIT");
        assert_eq!(stuck["accepted"], false, "{stuck}");
        assert_eq!(
            stuck["pid"],
            std::process::id(),
            "its listener's owner: {stuck}"
        );
    }
    let recovered = of_kind(&done.events, "listener_recovered")
        .into_iter()
        .find(mine)
        .unwrap();
    assert_eq!(recovered["closed"], false);
    assert!(
        recovered["duration_ms"].as_f64() >= Some(2000.0),
        "{recovered}"
    );
    let summary = of_kind(&done.events, "summary").last().copied().unwrap();
    assert!(
        summary["listeners"]["stalls"].as_u64() >= Some(1),
        "{summary}"
    );
}

/// A server namespace and a client namespace joined by a veth pair; the client's namespace drops
/// the SYN-ACKs it receives (nftables), so its connections stay half-open at the server, whose
/// listener retransmits SYN-ACKs for them. Reported past the syn-recv threshold with the
/// listener's owner, as many as the kernel lists; recovered once the SYN-ACKs pass again.
#[test]
fn half_open_connections_are_counted_and_reported_past_the_threshold() {
    const CLIENTS: usize = 3;
    let (server_ns, client_ns) = (Namespace::new().unwrap(), Namespace::new().unwrap());
    server_ns
        .sh(&format!(
            "ip link add veth0 type veth peer name veth1 netns {} && \
         ip addr add 10.77.0.1/24 dev veth0 && ip link set veth0 up",
            client_ns.holder_pid()
        ))
        .unwrap();
    client_ns
        .sh("ip addr add 10.77.0.2/24 dev veth1 && ip link set veth1 up")
        .unwrap();
    client_ns
        .sh("nft add table inet half_open && \
         nft add chain inet half_open input '{ type filter hook input priority 0; }' && \
         nft add rule inet half_open input 'tcp flags & (syn | ack) == syn | ack' drop")
        .unwrap();
    let tracer = Tracer::start(&[
        "--stuck",
        "syn-recv=3s",
        "--stuck",
        "syn-sent=3s",
        "--summary-interval",
        "1s",
    ]);
    let listener = server_ns
        .enter(|| TcpListener::bind((Ipv4Addr::new(10, 77, 0, 1), 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server: SocketAddr = (Ipv4Addr::new(10, 77, 0, 1), port).into();
    let clients: Vec<Socket> = client_ns
        .enter(|| {
            (0..CLIENTS)
                .map(|_| {
                    let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                    client.set_nonblocking(true).unwrap();
                    let pending = client.connect(&server.into()).unwrap_err();
                    assert_eq!(pending.raw_os_error(), Some(libc::EINPROGRESS));
                    client
                })
                .collect()
        })
        .unwrap();
    let mine = |e: &&Value| e["sport"] == port;
    let connecting = |e: &&Value| e["dport"] == port && e["state"] == "SYN_SENT";
    tracer.wait_for(Duration::from_secs(30), "the half-open report", |events| {
        of_kind(events, "listener_half_open").iter().any(mine)
            && of_kind(events, "stuck")
                .into_iter()
                .filter(connecting)
                .count()
                == CLIENTS
    });
    // The clients' connects are stuck too, each named by its own port (chosen after the socket
    // entered SYN_SENT).
    let mut client_ports: Vec<u64> = clients
        .iter()
        .map(|c| u64::from(c.local_addr().unwrap().as_socket().unwrap().port()))
        .collect();
    let mut stuck_ports: Vec<u64> = of_kind(&tracer.events(), "stuck")
        .into_iter()
        .filter(connecting)
        .map(|e| e["sport"].as_u64().unwrap())
        .collect();
    client_ports.sort_unstable();
    stuck_ports.sort_unstable();
    assert_eq!(stuck_ports, client_ports);
    // The kernel's own list agrees while the SYN-ACKs are still dropped.
    assert_eq!(syn_recv_count(&server_ns, port), CLIENTS);
    let report = of_kind(&tracer.events(), "listener_half_open")
        .into_iter()
        .find(mine)
        .cloned()
        .unwrap();
    assert_eq!(report["level"], "warn");
    assert_eq!(report["half_open"], CLIENTS, "{report}");
    assert_eq!(report["netns"], server_ns.inode().unwrap(), "{report}");
    assert_eq!(report["saddr"], "10.77.0.1", "{report}");
    assert_eq!(report["threshold_ms"], 3000.0, "{report}");
    assert!(report["oldest_ms"].as_f64() >= Some(3000.0), "{report}");
    assert!(
        report["synack_retransmits"].as_u64() >= Some(CLIENTS as u64),
        "each handshake's SYN-ACK was sent again: {report}"
    );
    assert_eq!(report["pid"], std::process::id(), "the listener's owner");

    // The SYN-ACKs pass again: the next one completes each handshake.
    client_ns.sh("nft delete table inet half_open").unwrap();
    tracer.wait_for(Duration::from_secs(40), "the recovery", |events| {
        of_kind(events, "listener_recovered")
            .iter()
            .any(|e| mine(e) && e["from"] == "half_open")
    });
    assert_eq!(syn_recv_count(&server_ns, port), 0);
    for client in &clients {
        assert!(client.peer_addr().is_ok(), "the handshake completed");
    }
    let done = tracer.stop();
    let recovered = of_kind(&done.events, "listener_recovered")
        .into_iter()
        .find(|e| mine(e) && e["from"] == "half_open")
        .unwrap();
    assert_eq!(recovered["closed"], false, "{recovered}");
    assert!(
        recovered["duration_ms"].as_f64() >= report["oldest_ms"].as_f64(),
        "{recovered}"
    );
    let summary = of_kind(&done.events, "summary").last().copied().unwrap();
    let listeners = &summary["listeners"];
    assert!(
        listeners["half_open_reports"].as_u64() >= Some(1),
        "{summary}"
    );
    let counted = listeners["synack_retransmits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["sport"] == port)
        .unwrap_or_else(|| panic!("the listener's SYN-ACK retransmits: {summary}"));
    assert!(counted["count"].as_u64() >= report["synack_retransmits"].as_u64());
    drop(listener);
}

/// Half-open connections (request sockets) of a port, as the kernel lists them.
fn syn_recv_count(ns: &Namespace, port: u16) -> usize {
    ns.output(&format!("ss -Htn state syn-recv '( sport = :{port} )'"))
        .unwrap()
        .lines()
        .count()
}
