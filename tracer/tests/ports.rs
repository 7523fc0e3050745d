//! Real-kernel tests of ephemeral-port pressure: a client namespace with a range of 200 ports and
//! `tcp_tw_reuse` off fills one destination with open connections and closed ones in TIME-WAIT;
//! the pressure report names the destination and the process before `connect()` fails with
//! `EADDRNOTAVAIL`, each failed connect is counted (and logged with its process), and a second
//! destination (another port of the same server) is unaffected.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
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

fn pressure_fills_one_destination_only(ip: IpAddr) {
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
        "always",
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
    pressure_fills_one_destination_only(IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn an_ipv6_destination_uses_the_same_range() {
    pressure_fills_one_destination_only(IpAddr::V6(Ipv6Addr::LOCALHOST));
}
