//! Real-kernel tests of the first slice: every transition of a loopback connection reaches the
//! log, with the right sockets, addresses, ports, owners and durations.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use support::{Tracer, of_kind, patience, process_comm, states};
use xtask::workload::{self, V4, V6};

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn ms(event: &Value) -> Option<f64> {
    event["prev_state_ms"].as_f64()
}

fn full_sequences(ip: IpAddr, family: &str) {
    let tracer = Tracer::start(&["--log-transitions"]);
    let wall_start = SystemTime::now();
    let started = Instant::now();
    let comm = process_comm();
    let hold = Duration::from_millis(200);
    let ex = workload::connect_and_close(ip, hold).unwrap();
    let elapsed = started.elapsed();
    let (port, client) = (ex.listen_port, ex.client_port);

    let closed = |e: &Value, sport: u16| e["sport"] == sport && e["new"] == "CLOSE";
    tracer.wait_for(
        Duration::from_secs(5),
        "the sockets closing or in TIME_WAIT",
        |events| {
            events.iter().filter(|e| closed(e, port)).count() == 2
                && events
                    .iter()
                    .any(|e| e["sport"] == client && e["new"] == "TIME_WAIT")
        },
    );
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let transitions = of_kind(&done.events, "transition");

    let listener: Vec<&Value> = transitions
        .iter()
        .copied()
        .filter(|e| e["sport"] == port && e["dport"] == 0)
        .collect();
    let accepted: Vec<&Value> = transitions
        .iter()
        .copied()
        .filter(|e| e["sport"] == port && e["dport"] == client)
        .collect();
    let client_id = transitions
        .iter()
        .find(|e| e["sport"] == client && e["dport"] == port)
        .expect("no event of the client socket")["sock"]
        .clone();
    // The client's first transition (connect) happens before the kernel picks its port; its
    // TIME-WAIT phase is held by a timewait socket with an id of its own.
    let connecting: Vec<&Value> = transitions
        .iter()
        .copied()
        .filter(|e| e["dport"] == port)
        .filter(|e| e["sport"] == client || (e["sport"] == 0 && e["sock"] == client_id))
        .collect();

    assert_eq!(
        states(&listener),
        pairs(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")])
    );
    assert_eq!(
        states(&accepted),
        pairs(&[
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ])
    );
    assert_eq!(
        states(&connecting),
        pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "TIME_WAIT"),
        ])
    );

    // Addresses: loopback of the right family on both ends; the listener has no peer.
    let loopback = ip.to_string();
    let unspecified = if family == "ipv4" { "0.0.0.0" } else { "::" };
    for e in listener.iter().chain(&accepted).chain(&connecting) {
        assert_eq!(e["family"], family, "{e}");
        assert_eq!(e["saddr"], loopback.as_str(), "{e}");
        let peer = if e["dport"] == 0 {
            unspecified
        } else {
            loopback.as_str()
        };
        assert_eq!(e["daddr"], peer, "{e}");
    }
    // Each socket has one id for its whole life, its TIME-WAIT phase included.
    for socket in [&listener, &accepted, &connecting] {
        assert!(
            socket.iter().all(|e| e["sock"] == socket[0]["sock"]),
            "{socket:?}"
        );
    }

    // Durations: unknown for a socket's first transition, then consistent with the test's clock.
    assert_eq!(ms(listener[0]), None);
    assert_eq!(ms(connecting[0]), None);
    assert_eq!(
        ms(accepted[0]),
        None,
        "a new child socket has no time in LISTEN"
    );
    let established = ms(connecting[2]).expect("client ESTABLISHED duration");
    let hold_ms = hold.as_secs_f64() * 1e3;
    // Scheduling slack between the kernel's clock and the test's (longer under emulation).
    let slack_ms = patience(Duration::from_millis(20)).as_secs_f64() * 1e3;
    assert!(
        established >= hold_ms && established <= ex.established_for.as_secs_f64() * 1e3 + slack_ms,
        "client ESTABLISHED for {established} ms, test held {:?}",
        ex.established_for
    );
    let close_wait = ms(accepted[3]).expect("server CLOSE_WAIT duration");
    assert!(
        close_wait >= hold_ms && close_wait <= ex.close_wait_for.as_secs_f64() * 1e3 + slack_ms,
        "server CLOSE_WAIT for {close_wait} ms, test held {:?}",
        ex.close_wait_for
    );
    let listening = ms(listener[1]).expect("LISTEN duration");
    assert!(listening >= 2.0 * hold_ms && listening <= elapsed.as_secs_f64() * 1e3 + slack_ms);
    // FIN_WAIT2 lasts until the server's close; the kernel may move the timewait socket on
    // without an event, which the tracer notices within a second.
    let fin_wait2 = ms(connecting[4]).expect("FIN_WAIT2 duration");
    assert!(
        fin_wait2 >= hold_ms - slack_ms && fin_wait2 <= hold_ms + 1000.0 + slack_ms,
        "{fin_wait2}"
    );
    for e in listener
        .iter()
        .chain(&accepted)
        .chain(&connecting[..4])
        .skip(1)
    {
        if let Some(value) = ms(e) {
            assert!(
                (0.0..=elapsed.as_secs_f64() * 1e3 + slack_ms).contains(&value),
                "{e}"
            );
        }
    }

    // Owners: this process wherever it is known, never the task that happened to be on the CPU.
    let me = std::process::id();
    for e in [
        listener[0],
        listener[1],
        connecting[0],
        connecting[2],
        accepted[3],
    ] {
        assert_eq!(e["pid"], me, "transition in our own system call: {e}");
        assert_eq!(e["comm"], comm.as_str(), "{e}");
    }
    for e in listener.iter().chain(&accepted).chain(&connecting) {
        assert!(e["pid"].is_null() || e["pid"] == me, "foreign owner: {e}");
    }
    assert!(
        accepted[0]["pid"].is_null(),
        "nobody owns a socket before accept(): {}",
        accepted[0]
    );

    // Timestamps: RFC 3339 UTC inside the test's window, in order for each socket.
    let window = wall_start - Duration::from_secs(1)..SystemTime::now() + Duration::from_secs(1);
    for socket in [&listener, &accepted, &connecting] {
        let times: Vec<SystemTime> = socket
            .iter()
            .map(|e| humantime::parse_rfc3339(e["ts"].as_str().unwrap()).unwrap())
            .collect();
        assert!(times.iter().all(|t| window.contains(t)), "{times:?}");
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}

#[test]
fn ipv4_connection_is_traced_from_listen_to_close() {
    full_sequences(V4, "ipv4");
}

#[test]
fn ipv6_connection_is_traced_from_listen_to_close() {
    full_sequences(V6, "ipv6");
}

/// Only the filtered sockets are reported: a local port filter keeps the server's sockets, a
/// family filter drops the other family.
#[test]
fn port_and_family_filters() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let tracer = Tracer::start(&["--log-transitions", "--lport", &port.to_string(), "-4"]);
    // The port was free a moment ago; bind it again for the traced server.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    drop(server);
    drop(listener);
    let v6 = workload::connect_and_close(V6, Duration::ZERO).unwrap();
    tracer.wait_for(
        Duration::from_secs(5),
        "the server socket closing",
        |events| {
            events
                .iter()
                .any(|e| e["sport"] == port && e["dport"] == client_port && e["new"] == "CLOSE")
        },
    );
    // Give stray events of the unfiltered sockets time to arrive if the filter were broken.
    std::thread::sleep(Duration::from_millis(300));
    let done = tracer.stop();
    let transitions = of_kind(&done.events, "transition");
    assert!(
        transitions
            .iter()
            .all(|e| e["sport"] == port && e["family"] == "ipv4"),
        "{transitions:?}"
    );
    assert!(!transitions.iter().any(|e| e["sport"] == client_port));
    assert!(
        !transitions
            .iter()
            .any(|e| e["sport"] == v6.listen_port || e["dport"] == v6.listen_port)
    );
    assert_eq!(
        transitions
            .iter()
            .filter(|e| e["dport"] == client_port)
            .count(),
        5
    );
}

/// The kernel-address check the harness runs on every line of every real-kernel test.
#[test]
fn kernel_addresses_are_recognised() {
    for leak in [
        "sock=ffff88810a3c1200",
        r#""sock":"ffff000012345678""#,
        "at 18446612682260070912 bytes",
    ] {
        assert!(support::kernel_address_in(leak).is_some(), "{leak}");
    }
    for clean in [
        "cookie=1a3f7 ts=2026-12-07T08:00:00.000000Z",
        r#""sock":"3a5c0e117f204c80","netns":4026531840"#,
        "ts_ns 1765094400123456789, cgroup /kubepods/b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f",
    ] {
        assert_eq!(support::kernel_address_in(clean), None, "{clean}");
    }
}

/// Text lines for people: a socket is named by its cookie, the same in the COOKIE column of its
/// transition lines and in its stuck report, and no line carries a kernel address.
#[test]
fn text_lines_name_a_socket_by_its_cookie() {
    support::require_root();
    let mut command = Command::new(support::TRACER);
    let readiness = xtask::readiness::Readiness::for_command(&mut command).unwrap();
    let spawned = Instant::now();
    let mut child = command
        .args([
            "--log-format",
            "text",
            "--log-transitions",
            "always",
            "--no-pin",
        ])
        .args(["--stuck", "close-wait=1s", "--summary-interval", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the tracer binary");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|pipe| {
        let lines = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    })
    .collect();
    readiness
        .wait(
            &mut child,
            spawned,
            patience(Duration::from_secs(30)),
            || lines.lock().unwrap().join("\n"),
        )
        .unwrap();
    let server = support::Workload::close_wait("127.0.0.1", 2, None);
    let local = format!("127.0.0.1:{} <->", server.listen_port);
    let deadline = Instant::now() + patience(Duration::from_secs(20));
    while stuck_lines_of(&lines.lock().unwrap(), &local).len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", lines.lock().unwrap());
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("waiting for the tracer");
    for reader in readers {
        reader.join().expect("a reader of the tracer's output");
    }
    let lines = lines.lock().unwrap();
    for line in lines.iter() {
        assert_eq!(support::kernel_address_in(line), None, "{line}");
    }
    for stuck in stuck_lines_of(&lines, &local) {
        let cookie = stuck.rsplit("cookie=").next().unwrap().trim();
        let peer = stuck.split(" <-> ").nth(1).unwrap();
        let client_port = peer
            .split_whitespace()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap();
        // TIME COOKIE PID COMM LADDR LPORT RADDR RPORT OLD -> NEW MS
        let ids: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 11 && f[9] == "->")
            .filter(|f| f[5] == server.listen_port.to_string() && f[7] == client_port)
            .map(|f| f[1])
            .collect();
        assert!(
            ids.len() >= 3,
            "accept, establish, close-wait: {ids:?}\n{lines:#?}"
        );
        assert!(ids.iter().all(|id| *id == cookie), "{cookie} vs {ids:?}");
    }
}

fn stuck_lines_of<'a>(lines: &'a [String], local: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains(" stuck ") && l.contains(local))
        .collect()
}
