//! Real-kernel tests of the socket table: stuck and unstuck reports with the owner to blame, the
//! TIME-WAIT phase the tracepoint never reports, and the summaries that count them.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use support::{Namespace, Tracer, Workload, of_kind, patience};
use tracer::enrich::socket_list as kernel_view;
use tracer_common::TcpState;

fn for_server<'a>(events: &'a [Value], kind: &str, server: &Workload) -> Vec<&'a Value> {
    of_kind(events, kind)
        .into_iter()
        .filter(|e| {
            e["sport"] == server.listen_port
                && server
                    .client_ports
                    .contains(&(e["dport"].as_u64().unwrap() as u16))
        })
        .collect()
}

/// 17 accepted sockets sit in CLOSE_WAIT for 5 s against a 2 s threshold: exactly 17 stuck
/// reports naming the server process, then exactly 17 unstuck reports when it closes them.
#[test]
fn close_wait_leak_is_reported_once_per_socket() {
    let tracer = Tracer::start(&["--stuck", "close-wait=2s", "--summary-interval", "1s"]);
    let mut server = Workload::close_wait("127.0.0.1", 17, None);
    let leaked_at = Instant::now();
    tracer.wait_for(Duration::from_secs(10), "17 stuck reports", |events| {
        for_server(events, "stuck", &server).len() >= 17
    });
    thread::sleep(Duration::from_secs(5).saturating_sub(leaked_at.elapsed()));
    let released_at = Instant::now();
    server.release();
    let held = leaked_at.elapsed();
    tracer.wait_for(Duration::from_secs(5), "17 unstuck reports", |events| {
        for_server(events, "unstuck", &server).len() >= 17
    });
    // Room for duplicates to show up if there were any.
    thread::sleep(Duration::from_millis(1500));
    let done = tracer.stop();
    let events = &done.events;

    let expected_ports: BTreeSet<u16> = server.client_ports.iter().copied().collect();
    let stuck = for_server(events, "stuck", &server);
    assert_eq!(stuck.len(), 17, "{stuck:#?}");
    let ports: BTreeSet<u16> = stuck
        .iter()
        .map(|e| e["dport"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(ports, expected_ports);
    for e in &stuck {
        assert_eq!(e["level"], "warn");
        assert_eq!(e["state"], "CLOSE_WAIT");
        assert_eq!(
            e["pid"], server.pid,
            "the server owns it, not the client: {e}"
        );
        assert_eq!(e["comm"], "workload", "{e}");
        assert_eq!(e["age_known"], true);
        assert_eq!(e["threshold_ms"], 2000.0);
        let age = e["age_ms"].as_f64().unwrap();
        assert!(
            (2000.0..3000.0).contains(&age),
            "reported within a second of its threshold: {e}"
        );
    }

    let unstuck = for_server(events, "unstuck", &server);
    assert_eq!(unstuck.len(), 17, "{unstuck:#?}");
    let ports: BTreeSet<u16> = unstuck
        .iter()
        .map(|e| e["dport"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(ports, expected_ports);
    for e in &unstuck {
        assert_eq!(e["state"], "CLOSE_WAIT");
        assert_eq!(e["new"], "LAST_ACK");
        assert_eq!(e["pid"], server.pid);
        let ms = e["duration_ms"].as_f64().unwrap();
        // Scheduling slack between the kernel's clock and the test's (longer under emulation).
        let slack = patience(Duration::from_millis(100)).as_secs_f64() * 1e3;
        let upper = held.as_secs_f64() * 1e3 + slack;
        assert!(
            ms >= 5000.0 - slack && ms <= upper,
            "CLOSE_WAIT for {ms} ms, held {held:?}: {e}"
        );
    }

    // A summary taken while they were stuck counts them, with their owner.
    let summaries = of_kind(events, "summary");
    let during = summaries
        .iter()
        .find(|s| s["stuck"]["by_state"]["CLOSE_WAIT"].as_u64().unwrap_or(0) >= 17)
        .expect("a summary while 17 sockets were stuck");
    assert!(during["sockets"]["CLOSE_WAIT"].as_u64().unwrap() >= 17);
    assert!(
        during["transitions"]["total"]["ESTABLISHED->CLOSE_WAIT"]
            .as_u64()
            .unwrap()
            >= 17
    );
    let last = summaries.last().unwrap();
    assert_eq!(last["final"], true);
    assert!(
        last["durations_ms"]["total"]["CLOSE_WAIT"]["count"]
            .as_u64()
            .unwrap()
            >= 17
    );
    assert!(released_at.elapsed() < Duration::from_secs(30));
}

fn client_socket(port: u16, reuse: bool) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(reuse).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    socket
}

fn transitions_of(events: &[Value], sport: u16, dport: u16) -> Vec<&Value> {
    of_kind(events, "transition")
        .into_iter()
        .filter(|e| e["sport"] == sport && e["dport"] == dport)
        .collect()
}

/// An active close puts the client in TIME-WAIT: the transition is reported, the socket is
/// counted as the kernel lists it, and its early end (the 4-tuple reused) is reported with the
/// time it spent there.
#[test]
fn active_close_enters_time_wait_and_its_reuse_ends_it() {
    let tracer = Tracer::start(&["--log-transitions", "--summary-interval", "1s"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = client_socket(0, true);
    client
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    let client_port = client.local_addr().unwrap().as_socket().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    thread::sleep(Duration::from_millis(100));
    drop(server);
    let time_wait_from = Instant::now();

    let entered = |events: &[Value]| {
        transitions_of(events, client_port, port)
            .iter()
            .any(|e| e["old"] == "FIN_WAIT2" && e["new"] == "TIME_WAIT")
    };
    tracer.wait_for(Duration::from_secs(5), "FIN_WAIT2 -> TIME_WAIT", entered);
    // The kernel agrees.
    let netns = kernel_view::own_netns().unwrap();
    let listed = kernel_view::list_tcp_sockets(netns, Some(TcpState::TimeWait)).unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s.endpoints.local_port == client_port && s.endpoints.remote_port == port)
    );
    // Counted in a summary.
    tracer.wait_for(Duration::from_secs(5), "a summary counting it", |events| {
        of_kind(events, "summary").iter().any(|s| {
            // Other tests' connections count too: these are lower bounds. (The per-port list
            // holds the ten largest ports only; the unit tests check it.)
            s["sockets"]["TIME_WAIT"].as_u64().unwrap_or(0) >= 1
                && s["transitions"]["total"]["FIN_WAIT2->TIME_WAIT"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 1
        })
    });

    // The same 4-tuple again (loopback allows TIME-WAIT reuse after a second): the old
    // TIME-WAIT ends early.
    thread::sleep(Duration::from_millis(1200));
    let again = client_socket(client_port, true);
    again
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    let spent = time_wait_from.elapsed();
    tracer.wait_for(Duration::from_secs(5), "TIME_WAIT -> CLOSE", |events| {
        transitions_of(events, client_port, port)
            .iter()
            .any(|e| e["old"] == "TIME_WAIT" && e["new"] == "CLOSE")
    });
    let done = tracer.stop();
    let mine = transitions_of(&done.events, client_port, port);
    let states: Vec<(&str, &str)> = mine
        .iter()
        .map(|e| (e["old"].as_str().unwrap(), e["new"].as_str().unwrap()))
        .collect();
    let tw_at = states
        .iter()
        .position(|s| *s == ("FIN_WAIT2", "TIME_WAIT"))
        .unwrap();
    let end_at = states
        .iter()
        .position(|s| *s == ("TIME_WAIT", "CLOSE"))
        .unwrap();
    assert!(end_at > tw_at, "{states:?}");
    let ended = mine[end_at];
    assert_eq!(ended["sock"], mine[tw_at]["sock"]);
    let ms = ended["prev_state_ms"].as_f64().unwrap();
    // Entry into TIME_WAIT is dated within a second when the kernel re-arms its timer silently.
    assert!(
        ms > 1000.0 && ms <= spent.as_secs_f64() * 1e3 + 50.0,
        "TIME_WAIT for {ms} ms, at most {spent:?}"
    );
    assert_eq!(
        ended["sock"], mine[1]["sock"],
        "the connection keeps its socket's id in TIME-WAIT"
    );
    drop(again);
    let _ = TcpStream::connect(listener.local_addr().unwrap());
}

/// In a network namespace with `tcp_fin_timeout` = 2 s, a client whose peer never closes lingers
/// in FIN_WAIT2 on a timewait socket, which the kernel drops after 2 s.
#[test]
fn lingering_fin_wait2_ends_after_the_fin_timeout() {
    let ns = Namespace::new().unwrap();
    ns.sh("echo 2 > /proc/sys/net/ipv4/tcp_fin_timeout")
        .unwrap();
    let tracer = Tracer::start(&["--log-transitions"]);
    let server = Workload::close_wait("127.0.0.1", 1, Some(&ns.wrapper()));
    let client_port = server.client_ports[0];
    let ended = |events: &[Value]| {
        transitions_of(events, client_port, server.listen_port)
            .iter()
            .any(|e| e["old"] == "FIN_WAIT2" && e["new"] == "CLOSE")
    };
    tracer.wait_for(Duration::from_secs(8), "FIN_WAIT2 -> CLOSE", ended);
    let done = tracer.stop();
    let mine = transitions_of(&done.events, client_port, server.listen_port);
    let states: Vec<(&str, &str)> = mine
        .iter()
        .map(|e| (e["old"].as_str().unwrap(), e["new"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE")
        ][1..],
        "the connect is reported before its port is known: {mine:#?}"
    );
    let lingered = mine.last().unwrap()["prev_state_ms"].as_f64().unwrap();
    assert!(
        (1900.0..4000.0).contains(&lingered),
        "FIN_WAIT2 for {lingered} ms"
    );
    // The namespace is not the daemon's: its sockets are traced all the same.
    assert_eq!(mine[0]["netns"], ns.inode().unwrap());
    assert_ne!(mine[0]["netns"], kernel_view::own_netns().unwrap());
}
