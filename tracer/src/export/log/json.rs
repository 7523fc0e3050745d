//! JSON lines: each line's serde form (`model`), and the same bytes written by hand for
//! transitions, which can come by the hundred thousand a second.
use std::io::{self, Write};

use serde::Serialize;

use super::{line::Line, model::TransitionLine};

/// A line in its serde form.
pub(super) fn line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// A transition line built without serde or `core::fmt`: byte for byte what `line` writes of it
/// (the property tests of `equivalence` hold them equal).
pub(super) fn transition(line: &mut Line, t: &TransitionLine) {
    let s = &t.socket;
    // Fields in the order of the model's (Head, Socket, ..., OwnerFields). Family and state
    // names are plain ASCII words: nothing to escape.
    line.raw(br#"{"event":"transition","level":"info","ts":""#);
    line.time(t.head.ts);
    line.raw(br#"","sock":""#);
    line.hex(s.sock, 1);
    line.raw(br#"","netns":"#);
    line.int(s.netns);
    line.raw(br#","family":""#);
    line.raw(s.family.as_bytes());
    line.raw(br#"","saddr":""#);
    line.ip(s.saddr);
    line.raw(br#"","sport":"#);
    line.int(s.sport);
    line.raw(br#","daddr":""#);
    line.ip(s.daddr);
    line.raw(br#"","dport":"#);
    line.int(s.dport);
    line.raw(br#","old":""#);
    line.raw(t.old.as_bytes());
    line.raw(br#"","new":""#);
    line.raw(t.new.as_bytes());
    line.raw(br#"","prev_state_ms":"#);
    match t.prev_state_ns {
        Some(ns) => line.millis_shortest(ns),
        None => line.raw(b"null"),
    }
    let words = [
        (&br#","end":"#[..], t.end),
        (br#","error":"#, t.error.as_deref()),
        (br#","reset_reason":"#, t.reset_reason.as_deref()),
    ];
    for (key, value) in words {
        if let Some(value) = value {
            line.raw(key);
            line.json_str(value);
        }
    }
    if let Some(n) = t.syn_retransmits {
        line.raw(br#","syn_retransmits":"#);
        line.int(n);
    }
    let o = &t.owner;
    match (o.pid, &o.comm) {
        (Some(pid), Some(comm)) => {
            line.raw(br#","pid":"#);
            line.int(pid);
            line.raw(br#","comm":"#);
            line.json_str(comm);
            line.raw(br#","cgroup":"#);
            match o.cgroup {
                Some(path) => {
                    line.json_str(path);
                    let names = [
                        (&br#","container_runtime":"#[..], o.container_runtime),
                        (br#","container_id":"#, o.container_id),
                        (br#","pod_uid":"#, o.pod_uid),
                        (br#","pod_qos":"#, o.pod_qos),
                        (br#","unit":"#, o.unit),
                    ];
                    for (key, value) in names {
                        if let Some(value) = value {
                            line.raw(key);
                            line.json_str(value);
                        }
                    }
                }
                None => line.raw(b"null"),
            }
        }
        _ => line.raw(br#","pid":null,"comm":null,"cgroup":null"#),
    }
    line.raw(b"}\n");
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::{
        LogFormat,
        tests::{SELECTED, owner_in, render, reset_close, sample, stuck, summary, unstuck},
    };
    use tracer_common::End;

    use crate::{
        core::report::Sink as _,
        source::events::{ConnectionEnd, Family},
    };

    fn parse(text: &str) -> Value {
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn transition_schema() {
        let value = parse(&render(LogFormat::Json, |o| {
            o.transition(&sample(Family::Ipv4), SELECTED)
        }));
        assert_eq!(
            value,
            json!({
                "event": "transition",
                "level": "info",
                "ts": "2027-01-15T08:00:01.500000Z",
                "sock": "1a3f7",
                "netns": 4026531840u32,
                "family": "ipv4",
                "saddr": "127.0.0.1",
                "sport": 43210,
                "daddr": "10.0.0.2",
                "dport": 8080,
                "old": "SYN_SENT",
                "new": "ESTABLISHED",
                "prev_state_ms": 0.052125,
                "syn_retransmits": 0,
                "pid": 4242,
                "comm": "curl",
                "cgroup": "/system.slice/curl.service",
                "unit": "curl.service",
            })
        );
    }

    #[test]
    fn ends_by_name() {
        let mut t = reset_close();
        let value = parse(&render(LogFormat::Json, |o| o.transition(&t, SELECTED)));
        assert_eq!(value["end"], "reset_sent");
        assert_eq!(value["reset_reason"], "tcp_abort_on_close");
        assert!(value.get("error").is_none());
        assert!(value.get("syn_retransmits").is_none(), "not a connect");
        t.end = Some(ConnectionEnd {
            end: End::Error,
            error: Some(113),
            reset_reason: None,
        });
        let value = parse(&render(LogFormat::Json, |o| o.transition(&t, SELECTED)));
        assert_eq!(
            (value["end"].as_str(), value["error"].as_str()),
            (Some("error"), Some("EHOSTUNREACH"))
        );
        // A reason or an error the tracer has no name for is given by number.
        t.end = Some(ConnectionEnd {
            end: End::ResetSent,
            error: Some(200),
            reset_reason: Some(99),
        });
        let value = parse(&render(LogFormat::Json, |o| o.transition(&t, SELECTED)));
        assert_eq!(
            (value["error"].as_str(), value["reset_reason"].as_str()),
            (Some("errno_200"), Some("99"))
        );
    }

    #[test]
    fn containers_by_name() {
        let id = "b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f";
        let uid = "60e5cfb5-11a2-40d0-9f86-8c4075cd5d0a";
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        );
        let mut t = sample(Family::Ipv4);
        t.owner = owner_in(&path);
        let mut r = stuck();
        r.owner = owner_in(&path);
        for value in [
            parse(&render(LogFormat::Json, |o| o.transition(&t, SELECTED))),
            parse(&render(LogFormat::Json, |o| o.stuck(&r))),
        ] {
            assert_eq!(value["cgroup"], path.as_str());
            assert_eq!(value["container_runtime"], "containerd");
            assert_eq!(value["container_id"], id);
            assert_eq!(value["pod_uid"], uid);
            assert_eq!(value["pod_qos"], "burstable");
            assert_eq!(value["unit"], format!("cri-containerd-{id}.scope"));
        }
    }

    #[test]
    fn unknowns_are_null() {
        let mut t = sample(Family::Ipv6);
        t.prev_state_ns = None;
        t.owner = None;
        let value = parse(&render(LogFormat::Json, |o| o.transition(&t, SELECTED)));
        assert_eq!(value["family"], "ipv6");
        assert_eq!(value["saddr"], "::1");
        assert_eq!(value["daddr"], "2001:db8::2");
        assert!(value["prev_state_ms"].is_null());
        assert!(value["pid"].is_null());
        assert!(value["comm"].is_null());
        assert!(value["cgroup"].is_null());
        // Names a cgroup does not give are left out, not null.
        assert!(value.get("container_id").is_none());
        assert!(value.get("unit").is_none());
    }

    #[test]
    fn stuck_and_unstuck_schema() {
        let value = parse(&render(LogFormat::Json, |o| o.stuck(&stuck())));
        assert_eq!(
            value,
            json!({
                "event": "stuck", "level": "warn", "ts": "2027-01-15T08:00:02.000000Z",
                "sock": "1a3f7", "netns": 4026531840u32, "family": "ipv4",
                "saddr": "127.0.0.1", "sport": 43210, "daddr": "10.0.0.2", "dport": 8080,
                "state": "CLOSE_WAIT", "age_ms": 62500.0, "age_known": true, "threshold_ms": 60000.0,
                "pid": 4242, "comm": "curl", "cgroup": "/system.slice/curl.service",
                "unit": "curl.service",
            })
        );
        let value = parse(&render(LogFormat::Json, |o| o.unstuck(&unstuck())));
        assert_eq!(value["event"], "unstuck");
        assert_eq!(value["level"], "info");
        assert_eq!(value["state"], "CLOSE_WAIT");
        assert_eq!(value["new"], "LAST_ACK");
        assert_eq!(value["duration_ms"], 75250.0);
        assert_eq!(value["pid"], 4242);
    }

    #[test]
    fn summary_schema() {
        let value = parse(&render(LogFormat::Json, |o| o.summary(&summary())));
        assert_eq!(value["event"], "summary");
        assert_eq!(value["final"], false);
        assert_eq!(value["uptime_s"], 60.0);
        assert_eq!(value["sockets"], json!({"ESTABLISHED": 2, "CLOSE_WAIT": 1}));
        assert_eq!(value["tracked"], 3);
        assert_eq!(value["transitions"]["total"]["SYN_SENT->ESTABLISHED"], 3);
        assert_eq!(value["transitions"]["interval"]["SYN_SENT->ESTABLISHED"], 1);
        assert_eq!(value["durations_ms"]["total"]["SYN_SENT"]["p99"], 0.12);
        assert_eq!(value["durations_ms"]["interval"]["SYN_SENT"]["count"], 1);
        assert_eq!(value["stuck"]["now"], 1);
        assert_eq!(value["stuck"]["by_state"]["CLOSE_WAIT"], 1);
        let reminder = &value["stuck"]["reminders"][0];
        assert_eq!(reminder["state"], "CLOSE_WAIT");
        assert_eq!(reminder["pid"], 4242);
        assert!(reminder.get("event").is_none());
        assert_eq!(value["time_wait_by_remote_port"]["8080"], 4);
        assert_eq!(value["ends"]["total"], json!({"fin": 2, "refused": 1}));
        assert_eq!(value["ends"]["interval"], json!({"fin": 1}));
        assert_eq!(value["connect_failures"]["total"]["EHOSTUNREACH"], 1);
        assert_eq!(value["connect_ms"]["interval"]["first_try"]["count"], 1);
        assert!(value["connect_ms"]["total"]["retransmitted"].is_null());
        assert_eq!(value["handshakes"]["syn_retransmits"], 2);
        assert_eq!(value["lost_events"], 0);
        assert_eq!(value["skipped_events"], 2);
        assert_eq!(value["events"]["transitions_skipped"], 1);
        assert_eq!(value["failed_reads"], 0);
        assert_eq!(value["unrecorded_sockets"], 0);
        assert_eq!(value["unwatched_sockets"], 0);
        assert_eq!(value["events"]["transitions"], 12);
        assert_eq!(value["evictions"], 0);
        assert_eq!(value["reconciliation"]["fixes"], 1);
        assert_eq!(value["reconciliation"]["removed"], 1);
    }
}
