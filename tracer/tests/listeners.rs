//! Real-kernel test of a listener that stops accepting: its accept queue does not drain, its
//! clients give up and their connections sit in CLOSE_WAIT in the queue, owned by nobody.
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use support::{Tracer, of_kind};

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
