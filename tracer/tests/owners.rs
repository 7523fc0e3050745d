//! Real-kernel tests of what the tracer knows of sockets it did not see open, and of whom it
//! names as their owner.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{net::TcpStream, time::Duration};

use serde_json::Value;
use support::{Tracer, Workload, kernel_features, of_kind, patience, stuck_on_port};

/// Sockets a server put into CLOSE_WAIT before the tracer started are found by the start-up
/// snapshot, owned by that server (found by socket inode), flagged as of unknown age.
#[test]
fn close_wait_sockets_older_than_the_tracer_are_reported() {
    let server = Workload::close_wait("127.0.0.1", 5, None);
    let tracer = Tracer::start(&["--stuck", "close-wait=1s"]);
    let mine = |events: &[Value]| stuck_on_port(events, server.listen_port);
    if !kernel_features().socket_cookies {
        // Named by address (before Linux 5.12), sockets cannot be matched with the kernel's
        // list: those older than the tracer are not tracked, and the tracer says so.
        std::thread::sleep(patience(Duration::from_secs(3)));
        let done = tracer.stop();
        assert!(mine(&done.events).is_empty(), "{:?}", done.events);
        assert!(
            done.stderr
                .contains("sockets open before the tracer started are not tracked"),
            "{}",
            done.stderr
        );
        return;
    }
    tracer.wait_for(Duration::from_secs(10), "5 stuck reports", |events| {
        mine(events).len() >= 5
    });
    std::thread::sleep(Duration::from_millis(1500));
    let done = tracer.stop();
    // The owners were found by the kernel's task_file iterator, not by reading /proc.
    assert!(
        !done.stderr.contains("finding socket owners in the kernel"),
        "{}",
        done.stderr
    );
    let stuck = mine(&done.events);
    assert_eq!(stuck.len(), 5, "{stuck:#?}");
    let mut ports: Vec<u16> = stuck
        .iter()
        .map(|e| e["dport"].as_u64().unwrap() as u16)
        .collect();
    ports.sort_unstable();
    let mut expected = server.client_ports.clone();
    expected.sort_unstable();
    assert_eq!(ports, expected);
    for e in &stuck {
        assert_eq!(e["state"], "CLOSE_WAIT");
        assert_eq!(e["pid"], server.pid, "{e}");
        assert_eq!(e["comm"], "workload", "{e}");
        assert_eq!(
            e["age_known"], false,
            "the tracer did not see it enter CLOSE_WAIT: {e}"
        );
        let age = e["age_ms"].as_f64().unwrap();
        assert!(
            (1000.0..2500.0).contains(&age),
            "at least since start-up: {e}"
        );
    }
}

/// A server in another process accepts the test's connections: every event of its accepted
/// sockets names the server once it has accepted them, including ESTABLISHED -> CLOSE_WAIT, which
/// runs in softirq; before accept() no owner is guessed.
#[test]
fn accepted_sockets_belong_to_the_accepting_process() {
    let tracer = Tracer::start(&["--log-transitions"]);
    let mut server = Workload::serve("127.0.0.1", 3);
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", server.listen_port)).unwrap())
        .collect();
    let ports: Vec<u16> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().port())
        .collect();
    server.expect_line("accepted");
    drop(clients);
    server.expect_line("closed");
    let of_server = |events: &[Value]| -> Vec<Value> {
        of_kind(events, "transition")
            .into_iter()
            .filter(|e| {
                e["sport"] == server.listen_port
                    && ports.contains(&(e["dport"].as_u64().unwrap() as u16))
            })
            .cloned()
            .collect()
    };
    tracer.wait_for(
        Duration::from_secs(5),
        "15 server-side transitions",
        |events| of_server(events).len() >= 15,
    );
    let done = tracer.stop();
    let events = of_server(&done.events);
    assert_eq!(events.len(), 15, "{events:#?}");
    let me = std::process::id();
    for e in &events {
        let (old, new) = (e["old"].as_str().unwrap(), e["new"].as_str().unwrap());
        match (old, new) {
            ("LISTEN", "SYN_RECV") | ("SYN_RECV", "ESTABLISHED") => {
                assert!(
                    e["pid"].is_null() && e["comm"].is_null(),
                    "nobody accepted it yet: {e}"
                );
            }
            _ => {
                assert_eq!(e["pid"], server.pid, "{e}");
                assert_eq!(e["comm"], "workload", "{e}");
            }
        }
        assert_ne!(e["pid"], me, "never the client: {e}");
        assert_ne!(e["pid"], 0);
    }
    let softirq: Vec<&Value> = events
        .iter()
        .filter(|e| e["old"] == "ESTABLISHED" && e["new"] == "CLOSE_WAIT")
        .collect();
    assert_eq!(softirq.len(), 3);
}

/// The first cgroup v2 mount, where a test can make a cgroup of its own.
fn cgroup2_mount() -> String {
    procfs::mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .expect("no cgroup2 mount")
        .fs_file
}

/// Two processes leak CLOSE_WAIT sockets, one of them in a cgroup of the test's own named `name`;
/// the tracer runs with `filter`. Returns every stuck report (each checked to be of the process in
/// the cgroup: the filter kept only its sockets).
fn stuck_reports_in_a_cgroup(name: &str, filter: &[&str]) -> Vec<Value> {
    let dir = format!("{}/{name}", cgroup2_mount());
    std::fs::create_dir(&dir).unwrap();
    let mut args = vec!["--stuck", "close-wait=1s"];
    args.extend_from_slice(filter);
    let tracer = Tracer::start(&args);
    let inside = Workload::close_wait(
        "127.0.0.1",
        2,
        Some(&format!("echo $$ > {dir}/cgroup.procs && exec {{}}")),
    );
    let outside = Workload::close_wait("127.0.0.1", 2, None);
    tracer.wait_for(Duration::from_secs(10), "2 stuck reports", |events| {
        of_kind(events, "stuck")
            .iter()
            .filter(|e| e["sport"] == inside.listen_port)
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_millis(1000));
    let done = tracer.stop();
    let stuck: Vec<Value> = of_kind(&done.events, "stuck")
        .into_iter()
        .cloned()
        .collect();
    assert!(!stuck.is_empty());
    for e in &stuck {
        assert_eq!(
            e["sport"], inside.listen_port,
            "only the cgroup's sockets: {e}"
        );
        assert_eq!(e["pid"], inside.pid);
        assert_eq!(e["cgroup"], format!("/{name}"));
    }
    drop(inside);
    drop(outside);
    std::fs::remove_dir(&dir).unwrap();
    stuck
}

/// A socket owned by a process in a cgroup made by the test reports that cgroup's path, and
/// `--cgroup` keeps only sockets of processes under it.
#[test]
fn owners_carry_their_cgroup() {
    let name = format!("tcpstate-test-{}", std::process::id());
    stuck_reports_in_a_cgroup(&name, &["--cgroup", &format!("/{name}")]);
}

/// A process in a container's cgroup (named as Docker's systemd driver names it) is reported with
/// the container's id, runtime and unit, and `--container` with the short id `docker ps` shows
/// keeps only its sockets.
#[test]
fn owners_carry_their_container() {
    let id = format!(
        "{:016x}",
        u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
    .repeat(4);
    let unit = format!("docker-{id}.scope");
    for e in stuck_reports_in_a_cgroup(&unit, &["--container", &id[..12]]) {
        assert_eq!(e["container_id"], id.as_str());
        assert_eq!(e["container_runtime"], "docker");
        assert_eq!(e["unit"], unit.as_str());
        assert!(e.get("pod_uid").is_none(), "no pod: {e}");
    }
}
