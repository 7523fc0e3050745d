//! The Prometheus endpoint during a scripted workload: its counters and gauges equal the
//! workload's own counts, and its text parses. The workload runs in a network namespace of the
//! test's own and the tracer is limited to it, so other tests' traffic does not count.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{collections::HashMap, io::Write as _};

use support::{Namespace, Workload, promtool, samples, scrape_until, start_tracer, value};

#[test]
fn metrics_count_the_workload() {
    let ns = Namespace::new().unwrap();
    let (tracer, port) = start_tracer(&ns, &["--stuck", "close-wait=1s"]);
    let mut server = Workload::close_wait("127.0.0.1", 3, Some(&ns.wrapper()));

    // Three leaked sockets: counted by state, stuck, with their transitions.
    // The clients' FIN_WAIT1 -> FIN_WAIT2 waits for the server's ACK of their FIN, which the
    // kernel may delay (a second and more in an emulated VM under load): waited for too.
    let text = scrape_until(
        port,
        "3 stuck CLOSE_WAIT sockets, 3 clients in FIN_WAIT2",
        |s| {
            value(s, "tcpstate_stuck_sockets", "state=CLOSE_WAIT") == 3.0
                && counted(
                    s,
                    "tcpstate_transitions_total",
                    "new=FIN_WAIT2,old=FIN_WAIT1",
                    3.0,
                )
        },
    );
    let s = samples(&text);
    assert_eq!(
        value(&s, "tcpstate_sockets", "state=CLOSE_WAIT"),
        3.0,
        "{text}"
    );
    assert_eq!(value(&s, "tcpstate_sockets", "state=LISTEN"), 1.0, "{text}");
    assert_eq!(
        value(&s, "tcpstate_stuck_episodes_total", "state=CLOSE_WAIT"),
        3.0,
        "{text}"
    );
    for (old, new, count) in [
        ("CLOSE", "LISTEN", 1.0),
        ("CLOSE", "SYN_SENT", 3.0),
        ("SYN_SENT", "ESTABLISHED", 3.0),
        ("LISTEN", "SYN_RECV", 3.0),
        ("SYN_RECV", "ESTABLISHED", 3.0),
        ("ESTABLISHED", "FIN_WAIT1", 3.0),
        ("FIN_WAIT1", "FIN_WAIT2", 3.0),
        ("ESTABLISHED", "CLOSE_WAIT", 3.0),
        ("CLOSE_WAIT", "LAST_ACK", 0.0),
    ] {
        let labels = format!("new={new},old={old}");
        assert!(
            counted(&s, "tcpstate_transitions_total", &labels, count),
            "{old}->{new}: {count} expected:\n{text}"
        );
    }

    // Released: no longer stuck; the episode and the time in CLOSE_WAIT are counted.
    server.release();
    let text = scrape_until(port, "the stuck gauge back to 0", |s| {
        value(s, "tcpstate_stuck_sockets", "state=CLOSE_WAIT") == 0.0
            && counted(
                s,
                "tcpstate_transitions_total",
                "new=CLOSE,old=LAST_ACK",
                3.0,
            )
    });
    let s = samples(&text);
    for (labels, count) in [
        ("new=LAST_ACK,old=CLOSE_WAIT", 3.0),
        ("new=CLOSE,old=LISTEN", 1.0),
    ] {
        assert!(
            counted(&s, "tcpstate_transitions_total", labels, count),
            "{labels}: {count} expected:\n{text}"
        );
    }
    assert_eq!(value(&s, "tcpstate_sockets", "state=CLOSE_WAIT"), 0.0);
    assert_eq!(
        value(&s, "tcpstate_stuck_episodes_total", "state=CLOSE_WAIT"),
        3.0
    );
    assert_eq!(value(&s, "tcpstate_lost_events_total", ""), 0.0);
    assert!(
        counted(
            &s,
            "tcpstate_state_duration_seconds_count",
            "state=CLOSE_WAIT",
            3.0
        ),
        "{text}"
    );
    assert!(text.contains("tcpstate_build_info{version="), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
    // Low cardinality: no label names a socket, an address or a process; only the accept
    // waits name a port, a listener's (the kernel keeps 64 apart at most).
    for forbidden in ["pid=", "comm=", "saddr=", "daddr=", "sock=", "port="] {
        let found = text
            .lines()
            .filter(|line| !line.starts_with("tcpstate_accept_wait_seconds"))
            .any(|line| line.contains(forbidden));
        assert!(!found, "{forbidden} in:\n{text}");
    }
    promtool_check(&text);
    drop(tracer);
}

/// `expected` events were counted, or as many less as the kernel said it skipped: a program run
/// the kernel skips (a softirq's transition interrupting the program on the same CPU, more
/// frequent under load) is counted in `tcpstate_skipped_events_total`, never silently lost. The
/// skips are counted over every socket of the host, the other tests' too.
fn counted(s: &HashMap<(String, String), f64>, metric: &str, labels: &str, expected: f64) -> bool {
    let actual = value(s, metric, labels);
    let skipped = value(s, "tcpstate_skipped_events_total", "");
    actual <= expected && actual + skipped >= expected
}

/// `promtool check metrics` (Debian's prometheus package) parses and lints the classic text
/// format: the one finding OpenMetrics causes by design (a counter's HELP is on its family name,
/// without `_total`) is expected; anything else fails.
fn promtool_check(text: &str) {
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for finding in report.lines().filter(|l| !l.trim().is_empty()) {
        let expected = finding
            .strip_suffix("_total no help text")
            .is_some_and(|family| {
                text.contains(&format!("# HELP {family} "))
                    && text.contains(&format!("# TYPE {family} counter"))
            });
        assert!(expected, "promtool check metrics: {finding}\n{report}");
    }
}

/// With `--metrics-port-label`, transitions are labelled with the port the socket listens on or
/// connects to: the server's port for both ends of a connection.
#[test]
fn port_label_is_the_service_port() {
    let ns = Namespace::new().unwrap();
    let (tracer, port) = start_tracer(&ns, &["--metrics-port-label"]);
    let mut server = Workload::close_wait("127.0.0.1", 2, Some(&ns.wrapper()));
    let service = server.listen_port;
    let text = scrape_until(port, "labelled transitions", |s| {
        value(
            s,
            "tcpstate_transitions_total",
            &format!("new=CLOSE_WAIT,old=ESTABLISHED,port={service}"),
        ) == 2.0
    });
    let s = samples(&text);
    assert_eq!(
        value(
            &s,
            "tcpstate_transitions_total",
            &format!("new=ESTABLISHED,old=SYN_SENT,port={service}")
        ),
        2.0,
        "the client side carries the server's port:\n{text}"
    );
    server.release();
    drop(tracer);
}

/// The manifests parse and say what docs/operations.md says they do.
#[test]
fn kubernetes_manifest_is_valid_yaml() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/daemonset.yaml"
    ))
    .unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
    let ds = &docs[0];
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let template = &ds["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
        Some("true")
    );
    assert_eq!(
        template["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some("9977")
    );
    assert_eq!(template["spec"]["hostPID"].as_bool(), Some(true));
    assert_eq!(template["spec"]["hostNetwork"].as_bool(), Some(true));
    let container = &template["spec"]["containers"][0];
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9977"), "{args:?}");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, ["/sys/fs/bpf", "/sys/kernel/tracing"]);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    assert_eq!(
        selector, &template["metadata"]["labels"],
        "the selector matches the pods"
    );
}
