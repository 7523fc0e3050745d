//! Real-kernel tests of ephemeral-port pressure: a client namespace with a range of 200 ports and
//! `tcp_tw_reuse` off fills one destination with open connections and closed ones in TIME-WAIT;
//! the pressure report names the destination and the process before `connect()` fails with
//! `EADDRNOTAVAIL`, each failed connect is counted and reported with its process (in quiet mode
//! too), and a second destination (another port of the same server) is unaffected. With
//! `--bind-failures`, TCP binds that fail for want of a port are reported, UDP ones are not.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};
use support::{Namespace, Tracer, of_kind};

/// The namespace's ephemeral range: 200 ports.
const RANGE: (u16, u16) = (40_000, 40_199);
/// Servers listen outside it, so that their ports are not taken from it.
const FULL_PORT: u16 = 5432;
const OTHER_PORT: u16 = 6432;
/// Toward the full destination: closed connections left in TIME-WAIT, then open ones (90 %).
const CLOSED: usize = 80;
const OPEN: usize = 100;
/// Connects tried once the range has run out: each fails, and each is counted.
const FAILURES: usize = 3;

fn connect(listener: &TcpListener) -> std::io::Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

/// Both ends of the connections held open.
type Open = Vec<(TcpStream, TcpStream)>;

/// Fills the destination `ip`:FULL_PORT of `ns` with TIME-WAIT and open connections, and opens a
/// few toward `ip`:OTHER_PORT; returns them, and the two listeners.
fn fill(ns: &Namespace, ip: IpAddr) -> (Open, TcpListener, TcpListener) {
    ns.enter(|| {
        let full = TcpListener::bind(SocketAddr::new(ip, FULL_PORT)).unwrap();
        let other = TcpListener::bind(SocketAddr::new(ip, OTHER_PORT)).unwrap();
        // The client closes first: its end goes to TIME-WAIT when the server's FIN comes.
        for _ in 0..CLOSED {
            let (client, server) = connect(&full).unwrap();
            drop(client);
            drop(server);
        }
        let mut open: Open = (0..OPEN).map(|_| connect(&full).unwrap()).collect();
        open.extend((0..10).map(|_| connect(&other).unwrap()));
        (open, full, other)
    })
    .unwrap()
}

/// bind() of a new TCP socket (no SO_REUSEADDR) to `ip`:`port`.
fn bind_tcp(ip: IpAddr, port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(ip, port).into())?;
    Ok(socket)
}

/// `log_transitions`: the tracer's `--log-transitions` (`never`: quiet mode).
fn pressure_fills_one_destination_only(ip: IpAddr, log_transitions: &str) {
    let ns = Namespace::new().unwrap();
    ns.sh(&format!(
        "echo '{} {}' > /proc/sys/net/ipv4/ip_local_port_range && \
         echo 0 > /proc/sys/net/ipv4/tcp_tw_reuse",
        RANGE.0, RANGE.1
    ))
    .unwrap();
    let netns = ns.inode().unwrap();
    let tracer = Tracer::start(&[
        "--netns",
        &ns.path(),
        "--reconcile-interval",
        "1s",
        "--summary-interval",
        "1s",
        "--log-transitions",
        log_transitions,
        "--bind-failures",
    ]);
    let (open, full, other) = fill(&ns, ip);
    let dport = |port: u16| move |e: &&Value| e["dport"] == port && e["netns"] == netns;
    tracer.wait_for(Duration::from_secs(20), "the pressure report", |events| {
        of_kind(events, "port_pressure")
            .iter()
            .any(dport(FULL_PORT))
    });
    let events = tracer.events();
    let reports = of_kind(&events, "port_pressure");
    let report = reports.iter().copied().find(dport(FULL_PORT)).unwrap();
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    assert_eq!(report["family"], family, "{report}");
    assert_eq!(report["saddr"], ip.to_string(), "{report}");
    assert_eq!(report["daddr"], ip.to_string(), "{report}");
    assert_eq!(report["available"], 200, "{report}");
    assert_eq!(report["threshold_percent"], 80, "{report}");
    let in_use = report["in_use"].as_u64().unwrap();
    let time_wait = report["time_wait"].as_u64().unwrap();
    // Every connection made, when the listing came after the last (it may come between).
    assert!((160..=(CLOSED + OPEN) as u64).contains(&in_use), "{report}");
    assert!(
        time_wait <= CLOSED as u64 && in_use - time_wait <= OPEN as u64,
        "{report}"
    );
    // The process that connected holds them (the kernel recorded it at connect()). Before Linux
    // 5.12 the records are not matched to the kernel's socket list (no socket cookies): no
    // holders are named, as the docs say.
    if support::kernel_features().socket_cookies {
        let holder = &report["holders"][0];
        assert_eq!(holder["pid"], std::process::id(), "{report}");
        assert!(holder["ports"].as_u64().unwrap() >= 150, "{report}");
    } else {
        assert_eq!(report["holders"], serde_json::json!([]), "{report}");
    }
    assert!(
        !reports.iter().any(dport(OTHER_PORT)),
        "the other destination is not pressed: {reports:?}"
    );
    // Reported before the range runs out: the remaining ports connect, then EADDRNOTAVAIL; the
    // other destination still connects.
    let (more, failures, other_ok) = ns
        .enter(|| {
            let mut more = Vec::new();
            let first = loop {
                match connect(&full) {
                    Ok(pair) => more.push(pair),
                    Err(err) => break err,
                }
                assert!(more.len() <= 200, "the range never ran out");
            };
            let mut failures = vec![first.kind()];
            failures.extend((1..FAILURES).filter_map(|_| connect(&full).err().map(|e| e.kind())));
            (more, failures, connect(&other).is_ok())
        })
        .unwrap();
    assert_eq!(
        failures,
        vec![ErrorKind::AddrNotAvailable; FAILURES],
        "every connect past the range fails"
    );
    assert_eq!(more.len(), 200 - CLOSED - OPEN, "ports left at the report");
    assert!(other_ok, "the other destination still connects");
    // No port is left for bind(port 0), and the server's port is taken: both EADDRINUSE. A UDP
    // socket failing the same way is not a TCP socket's failure.
    let binds = ns
        .enter(|| {
            let udp = UdpSocket::bind(SocketAddr::new(ip, FULL_PORT)).unwrap();
            let udp_again = UdpSocket::bind(SocketAddr::new(ip, FULL_PORT)).map(|_| ());
            let any = bind_tcp(ip, 0).map(|_| ());
            let taken = bind_tcp(ip, FULL_PORT).map(|_| ());
            drop(udp);
            [udp_again, any, taken].map(|r| r.err().map(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(binds, [Some(ErrorKind::AddrInUse); 3], "the binds fail");
    // The summary lists the full destination first.
    tracer.wait_for(Duration::from_secs(10), "a summary naming it", |events| {
        of_kind(events, "summary").iter().any(|s| {
            let first = &s["port_pressure"]["most_used"][0];
            first["dport"] == FULL_PORT && first["in_use"] == 200
        })
    });
    let done = tracer.stop();
    let summary = of_kind(&done.events, "summary")
        .last()
        .copied()
        .cloned()
        .unwrap();
    assert_eq!(summary["port_pressure"]["pressed_now"], 1, "{summary}");
    assert_eq!(summary["port_pressure"]["reports"], 1, "{summary}");
    // Each failed connect is counted by its error (the tracer sees this namespace alone), and
    // its transition names the destination and the process.
    assert_eq!(
        summary["connect_failures"]["total"]["EADDRNOTAVAIL"], FAILURES,
        "{summary}"
    );
    // ... and reported with them, in quiet mode too: lines per process and destination whose
    // counts add up.
    let reported: Vec<&Value> = of_kind(&done.events, "connect_failed")
        .into_iter()
        .filter(|e| e["netns"] == netns)
        .collect();
    assert!(!reported.is_empty(), "connect_failed lines");
    for line in &reported {
        assert_eq!(
            (
                &line["dport"],
                &line["daddr"],
                &line["saddr"],
                &line["error"]
            ),
            (
                &FULL_PORT.into(),
                &ip.to_string().into(),
                &ip.to_string().into(),
                &"EADDRNOTAVAIL".into()
            ),
            "{line}"
        );
        assert_eq!(line["pid"], std::process::id(), "{line}");
        assert_eq!(line["level"], "warn", "{line}");
    }
    let count: u64 = reported.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(count, FAILURES as u64, "{reported:?}");
    // The two TCP binds, each on its own line, and nothing of the UDP one.
    let bind_lines: Vec<&Value> = of_kind(&done.events, "bind_failed")
        .into_iter()
        .filter(|e| e["netns"] == netns)
        .collect();
    let mut asked: Vec<u64> = bind_lines
        .iter()
        .map(|l| l["sport"].as_u64().unwrap())
        .collect();
    asked.sort_unstable();
    assert_eq!(asked, [0, u64::from(FULL_PORT)], "{bind_lines:?}");
    for line in &bind_lines {
        assert_eq!(
            (
                &line["error"],
                &line["count"],
                &line["saddr"],
                &line["family"]
            ),
            (
                &"EADDRINUSE".into(),
                &1.into(),
                &ip.to_string().into(),
                &family.into()
            ),
            "{line}"
        );
        assert_eq!(line["pid"], std::process::id(), "{line}");
    }
    assert_eq!(
        summary["bind_failures"]["total"]["EADDRINUSE"], 2,
        "{summary}"
    );
    if log_transitions == "never" {
        assert!(of_kind(&done.events, "transition").is_empty(), "quiet mode");
        drop((open, more));
        return;
    }
    let failed: Vec<&Value> = of_kind(&done.events, "transition")
        .into_iter()
        .filter(|e| e["error"] == "EADDRNOTAVAIL")
        .collect();
    assert_eq!(failed.len(), FAILURES, "{failed:?}");
    for line in failed {
        assert_eq!(
            (&line["old"], &line["new"], &line["end"]),
            (&"SYN_SENT".into(), &"CLOSE".into(), &"error".into()),
            "{line}"
        );
        assert_eq!(
            (&line["dport"], &line["daddr"]),
            (&FULL_PORT.into(), &ip.to_string().into()),
            "{line}"
        );
        assert_eq!(line["pid"], std::process::id(), "{line}");
    }
    drop((open, more));
}

#[test]
fn an_ipv4_destination_short_of_ports_is_reported_before_connect_fails() {
    pressure_fills_one_destination_only(IpAddr::V4(Ipv4Addr::LOCALHOST), "never");
}

#[test]
fn an_ipv6_destination_uses_the_same_range() {
    pressure_fills_one_destination_only(IpAddr::V6(Ipv6Addr::LOCALHOST), "always");
}
