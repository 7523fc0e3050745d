//! Real-kernel test of a listener that stops accepting: its accept queue does not drain, its
//! clients give up and their connections sit in CLOSE_WAIT in the queue, owned by nobody.
mod support;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
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
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Two clients connect and give up; nobody accepts them.
    for _ in 0..2 {
        drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap());
    }
    let mine = |e: &&Value| e["sport"] == port;
    tracer.wait_for(
        Duration::from_secs(15),
        "the stall and the unaccepted sockets",
        |events| {
            of_kind(events, "listener_stalled").iter().any(mine)
                && of_kind(events, "stuck").into_iter().filter(mine).count() == 2
        },
    );
    // The process accepts again: the queue drains.
    for _ in 0..2 {
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
    assert_eq!(stalled["queue"], 2, "{stalled}");
    assert!(stalled["backlog"].as_u64() >= Some(2), "{stalled}");
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
