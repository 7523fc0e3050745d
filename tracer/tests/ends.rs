//! Real-kernel tests of how connections end: each test makes loopback connections end one way
//! (in order, refused, reset by either side, timed out, connected after a SYN was retransmitted)
//! and finds the tracer's lines of its own ports saying so, and the summary counting it.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use support::{Tracer, kernel_features, of_kind};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn tracer() -> Tracer {
    Tracer::start(&["--log-transitions", "--summary-interval", "1s"])
}

/// The transition lines to CLOSE (or into TIME_WAIT) of sockets with these ports.
fn ends_of(events: &[Value], sport: Option<u16>, dport: Option<u16>) -> Vec<Value> {
    of_kind(events, "transition")
        .into_iter()
        .filter(|e| e.get("end").is_some())
        .filter(|e| sport.is_none_or(|p| e["sport"] == p))
        .filter(|e| dport.is_none_or(|p| e["dport"] == p))
        .cloned()
        .collect()
}

fn last_summary(events: &[Value]) -> Value {
    of_kind(events, "summary")
        .last()
        .map(|s| (*s).clone())
        .expect("a summary")
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: i32) {
    // SAFETY: a valid descriptor and an int-sized option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

#[test]
fn orderly_closes_end_in_fin() {
    let tracer = tracer();
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect((LOCALHOST, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client); // active close: FIN_WAIT2 -> TIME_WAIT
    thread::sleep(Duration::from_millis(50));
    drop(server); // passive close: LAST_ACK -> CLOSE
    tracer.wait_for(Duration::from_secs(5), "both ends", |events| {
        ends_of(events, None, Some(port)).len() == 1
            && ends_of(events, Some(port), None)
                .iter()
                .any(|e| e["dport"] != 0)
    });
    let done = tracer.stop();
    let client_end = &ends_of(&done.events, None, Some(port))[0];
    assert_eq!(client_end["new"], "TIME_WAIT", "{client_end}");
    assert_eq!(client_end["end"], "fin");
    let server_end = ends_of(&done.events, Some(port), None)
        .into_iter()
        .find(|e| e["dport"] != 0)
        .unwrap();
    assert_eq!(
        (server_end["old"].as_str(), server_end["end"].as_str()),
        (Some("LAST_ACK"), Some("fin"))
    );
    assert!(server_end.get("error").is_none(), "{server_end}");
}

#[test]
fn a_connect_to_a_closed_port_is_refused() {
    let tracer = tracer();
    let port = closed_port();
    let err = TcpStream::connect((LOCALHOST, port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    tracer.wait_for(Duration::from_secs(5), "the refused connect", |events| {
        !ends_of(events, None, Some(port)).is_empty()
    });
    thread::sleep(Duration::from_millis(1200));
    let done = tracer.stop();
    let end = &ends_of(&done.events, None, Some(port))[0];
    assert_eq!(end["old"], "SYN_SENT");
    assert_eq!(end["end"], "refused", "{end}");
    assert_eq!(end["error"], "ECONNREFUSED");
    let summary = last_summary(&done.events);
    assert!(summary["connect_failures"]["total"]["refused"].as_u64() >= Some(1));
    assert!(summary["ends"]["total"]["refused"].as_u64() >= Some(1));
}

/// close() with unread data resets the connection: this side sends the reset (the kernel's
/// reason says why), the peer receives it.
#[test]
fn closing_with_unread_data_resets() {
    let tracer = tracer();
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect((LOCALHOST, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.write_all(b"never read").unwrap();
    thread::sleep(Duration::from_millis(50));
    drop(server);
    // The client learns of the reset when it next reads.
    let mut buf = [0; 16];
    let _ = client.read(&mut buf);
    tracer.wait_for(Duration::from_secs(5), "both ends", |events| {
        ends_of(events, Some(port), None)
            .iter()
            .any(|e| e["dport"] != 0)
            && !ends_of(events, None, Some(port)).is_empty()
    });
    let done = tracer.stop();
    let server_end = ends_of(&done.events, Some(port), None)
        .into_iter()
        .find(|e| e["dport"] != 0)
        .unwrap();
    assert_eq!(server_end["end"], "reset_sent", "{server_end}");
    // Kernels before 6.10 do not say why they reset: no reason rather than a made-up one.
    if kernel_features().reset_reasons {
        assert_eq!(server_end["reset_reason"], "tcp_abort_on_close");
    } else {
        assert!(server_end.get("reset_reason").is_none(), "{server_end}");
    }
    let client_end = &ends_of(&done.events, None, Some(port))[0];
    assert_eq!(client_end["end"], "reset_received", "{client_end}");
    assert_eq!(client_end["error"], "ECONNRESET");
}

/// A zero linger resets the connection on close().
#[test]
fn a_zero_linger_resets() {
    let tracer = tracer();
    let listener = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    client
        .connect(&SocketAddr::from((LOCALHOST, port)).into())
        .unwrap();
    let (_server, _) = listener.accept().unwrap();
    client.set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    tracer.wait_for(Duration::from_secs(5), "both ends", |events| {
        !ends_of(events, None, Some(port)).is_empty()
            && ends_of(events, Some(port), None)
                .iter()
                .any(|e| e["dport"] != 0)
    });
    let done = tracer.stop();
    let client_end = &ends_of(&done.events, None, Some(port))[0];
    assert_eq!(client_end["end"], "reset_sent", "{client_end}");
    assert_eq!(
        client_end["reset_reason"].is_string(),
        kernel_features().reset_reasons,
        "{client_end}"
    );
    let server_end = ends_of(&done.events, Some(port), None)
        .into_iter()
        .find(|e| e["dport"] != 0)
        .unwrap();
    assert_eq!(server_end["end"], "reset_received", "{server_end}");
}

/// A listener whose accept queue is full drops SYNs: a client with one SYN retry times out, one
/// let in after its first retry connects in a second or more, and says it retransmitted.
#[test]
fn dropped_syns_time_out_or_slow_the_connect() {
    let tracer = tracer();
    // Backlog 0: one queued connection fills the queue.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from((LOCALHOST, 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let _queued = TcpStream::connect((LOCALHOST, port)).unwrap();

    let give_up = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    set_int_option(&give_up, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 1);
    let started = Instant::now();
    let err = give_up
        .connect(&SocketAddr::from((LOCALHOST, port)).into())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Now let one in after its first retry: accept the queued one meanwhile.
    let accepting = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        listener.accept().map(|(s, _)| (listener, s))
    });
    let started = Instant::now();
    let patient = TcpStream::connect((LOCALHOST, port)).unwrap();
    let waited = started.elapsed();
    let patient_port = patient.local_addr().unwrap().port();
    let _kept = accepting.join().unwrap().unwrap();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    tracer.wait_for(
        Duration::from_secs(5),
        "the timeout and the slow connect",
        |events| {
            ends_of(events, None, Some(port))
                .iter()
                .any(|e| e["end"] == "timeout")
                && of_kind(events, "transition")
                    .iter()
                    .any(|e| e["sport"] == patient_port && e["new"] == "ESTABLISHED")
        },
    );
    thread::sleep(Duration::from_millis(1200));
    let done = tracer.stop();
    let timeout = ends_of(&done.events, None, Some(port))
        .into_iter()
        .find(|e| e["end"] == "timeout")
        .unwrap();
    assert_eq!(timeout["old"], "SYN_SENT");
    assert_eq!(timeout["error"], "ETIMEDOUT");
    let connected = of_kind(&done.events, "transition")
        .into_iter()
        .find(|e| e["sport"] == patient_port && e["new"] == "ESTABLISHED")
        .unwrap();
    assert_eq!(connected["syn_retransmits"], 1, "{connected}");
    assert!(
        connected["prev_state_ms"].as_f64() >= Some(900.0),
        "{connected}"
    );
    let summary = last_summary(&done.events);
    assert!(summary["connect_failures"]["total"]["timeout"].as_u64() >= Some(1));
    assert!(summary["handshakes"]["syn_retransmits"].as_u64() >= Some(2));
    let retried = &summary["connect_ms"]["total"]["retransmitted"];
    assert!(retried["count"].as_u64() >= Some(1), "{summary}");
    assert!(retried["max"].as_f64() >= Some(900.0), "{summary}");
}
