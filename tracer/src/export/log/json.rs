//! JSON lines. The field names and types are a contract with users' log pipelines (documented in
//! docs/output.md): fields may be added, never renamed or retyped.
use std::{
    borrow::Cow,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use super::{EndFields, line::Line};
use crate::{
    core::report::{
        ListenerHalfOpen, ListenerRecovered, ListenerStalled, StuckReport, UnstuckReport,
    },
    export::wall_clock::WallClock,
    source::events::{Cgroup, Endpoints, Owner, Transition},
    units::millis,
};

/// Fields every event carries.
#[derive(Serialize)]
struct Head {
    event: &'static str,
    level: &'static str,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
}

impl Head {
    fn new(event: &'static str, level: &'static str, clock: &WallClock, ts_ns: u64) -> Self {
        Self {
            event,
            level,
            ts: humantime::format_rfc3339_micros(clock.wall(ts_ns)),
        }
    }
}

/// A socket's identity: id, family, addresses and ports.
#[derive(Serialize)]
struct Socket {
    /// The socket's cookie (the field's name predates it: it once held the kernel address).
    #[serde(serialize_with = "as_hex")]
    sock: u64,
    netns: u32,
    family: &'static str,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
}

impl Socket {
    fn new(cookie: u64, e: &Endpoints) -> Self {
        Self {
            sock: cookie,
            netns: e.netns,
            family: e.family.name(),
            saddr: e.local,
            sport: e.local_port,
            daddr: e.remote,
            dport: e.remote_port,
        }
    }
}

/// The owning process, `null`s when unknown; the container, pod and unit its cgroup names, only
/// where it names them.
#[derive(Serialize)]
struct OwnerFields {
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
}

impl OwnerFields {
    fn new(owner: Option<&Owner>) -> Self {
        let cgroup = owner.and_then(|o| o.cgroup.as_deref());
        let text = |field: fn(&Cgroup) -> Option<&str>| cgroup.and_then(field).map(str::to_owned);
        Self {
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.as_str().into_owned()),
            cgroup: cgroup.map(|c| c.path.to_string()),
            container_runtime: cgroup.and_then(|c| c.runtime),
            container_id: text(|c| c.container_id.as_deref()),
            pod_uid: text(|c| c.pod_uid.as_deref()),
            pod_qos: cgroup.and_then(|c| c.qos),
            unit: text(|c| c.unit.as_deref()),
        }
    }
}

#[derive(Serialize)]
struct StuckLine {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    body: StuckBody,
}

/// What a stuck line says of its socket; a summary's reminders say it too.
#[derive(Serialize)]
pub(super) struct StuckBody {
    #[serde(flatten)]
    socket: Socket,
    state: &'static str,
    age_ms: f64,
    age_known: bool,
    threshold_ms: f64,
    /// `false` for a socket no process ever accepted (its owner is its listener's).
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<bool>,
    #[serde(flatten)]
    owner: OwnerFields,
}

#[derive(Serialize)]
struct UnstuckLine {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    socket: Socket,
    state: &'static str,
    new: Option<&'static str>,
    duration_ms: f64,
    age_known: bool,
    #[serde(flatten)]
    owner: OwnerFields,
}

pub(super) fn as_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn as_hex<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:x}"))
}

pub(super) fn line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// A transition line built in `line` without serde or `core::fmt`; byte for byte what
/// `reference::transition` writes.
pub(super) fn transition(line: &mut Line, clock: &WallClock, t: &Transition, reasons: &[String]) {
    let e = &t.endpoints;
    // Fields in the order of the serde structs (Head, Socket, ..., OwnerFields). Family and state
    // names are plain ASCII words: nothing to escape.
    line.raw(br#"{"event":"transition","level":"info","ts":""#);
    line.time(clock.wall(t.ts_ns));
    line.raw(br#"","sock":""#);
    line.hex(t.cookie, 1);
    line.raw(br#"","netns":"#);
    line.int(e.netns);
    line.raw(br#","family":""#);
    line.raw(e.family.name().as_bytes());
    line.raw(br#"","saddr":""#);
    line.ip(e.local);
    line.raw(br#"","sport":"#);
    line.int(e.local_port);
    line.raw(br#","daddr":""#);
    line.ip(e.remote);
    line.raw(br#"","dport":"#);
    line.int(e.remote_port);
    line.raw(br#","old":""#);
    line.raw(t.old.name().as_bytes());
    line.raw(br#"","new":""#);
    line.raw(t.new.name().as_bytes());
    line.raw(br#"","prev_state_ms":"#);
    match t.prev_state_ns {
        Some(ns) => line.millis_shortest(ns),
        None => line.raw(b"null"),
    }
    let fields = EndFields::of(t, reasons);
    let words = [
        (&br#","end":"#[..], fields.end.map(Cow::Borrowed)),
        (br#","error":"#, fields.error),
        (br#","reset_reason":"#, fields.reset_reason),
    ];
    for (key, value) in words {
        if let Some(value) = value {
            line.raw(key);
            line.json_str(&value);
        }
    }
    if let Some(n) = fields.syn_retransmits {
        line.raw(br#","syn_retransmits":"#);
        line.int(n);
    }
    match &t.owner {
        Some(owner) => {
            line.raw(br#","pid":"#);
            line.int(owner.pid);
            line.raw(br#","comm":"#);
            line.json_str(&owner.comm.as_str());
            line.raw(br#","cgroup":"#);
            match owner.cgroup.as_deref() {
                Some(cgroup) => {
                    line.json_str(&cgroup.path);
                    let names = [
                        (&br#","container_runtime":"#[..], cgroup.runtime),
                        (br#","container_id":"#, cgroup.container_id.as_deref()),
                        (br#","pod_uid":"#, cgroup.pod_uid.as_deref()),
                        (br#","pod_qos":"#, cgroup.qos),
                        (br#","unit":"#, cgroup.unit.as_deref()),
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
        None => line.raw(br#","pid":null,"comm":null,"cgroup":null"#),
    }
    line.raw(b"}\n");
}

pub(super) fn stuck_body(r: &StuckReport) -> StuckBody {
    StuckBody {
        socket: Socket::new(r.cookie, &r.endpoints),
        state: r.state.name(),
        age_ms: millis(r.age_ns),
        age_known: r.age_known,
        threshold_ms: millis(r.threshold_ns),
        accepted: r.accepted,
        owner: OwnerFields::new(r.owner.as_ref()),
    }
}

pub(super) fn stuck(out: &mut impl Write, clock: &WallClock, r: &StuckReport) -> io::Result<()> {
    let stuck = StuckLine {
        head: Head::new("stuck", "warn", clock, r.ts_ns),
        body: stuck_body(r),
    };
    line(out, &stuck)
}

pub(super) fn unstuck(
    out: &mut impl Write,
    clock: &WallClock,
    r: &UnstuckReport,
) -> io::Result<()> {
    line(
        out,
        &UnstuckLine {
            head: Head::new("unstuck", "info", clock, r.ts_ns),
            socket: Socket::new(r.cookie, &r.endpoints),
            state: r.state.name(),
            new: r.new.map(|s| s.name()),
            duration_ms: millis(r.duration_ns),
            age_known: r.age_known,
            owner: OwnerFields::new(r.owner.as_ref()),
        },
    )
}

/// A listener's address: where it listens.
#[derive(Serialize)]
pub(super) struct Listener {
    netns: u32,
    family: &'static str,
    saddr: IpAddr,
    sport: u16,
}

impl Listener {
    pub(super) fn new(e: &Endpoints) -> Self {
        Self {
            netns: e.netns,
            family: e.family.name(),
            saddr: e.local,
            sport: e.local_port,
        }
    }
}

#[derive(Serialize)]
struct StalledLine {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    listener: Listener,
    queue: u32,
    backlog: u32,
    stalled_ms: f64,
    threshold_ms: f64,
    #[serde(flatten)]
    owner: OwnerFields,
}

#[derive(Serialize)]
struct HalfOpenLine {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    listener: Listener,
    half_open: u32,
    oldest_ms: f64,
    threshold_ms: f64,
    synack_retransmits: u64,
    #[serde(flatten)]
    owner: OwnerFields,
}

#[derive(Serialize)]
struct RecoveredLine {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    listener: Listener,
    /// What it recovered from: `stalled` or `half_open`.
    from: &'static str,
    closed: bool,
    duration_ms: f64,
    #[serde(flatten)]
    owner: OwnerFields,
}

pub(super) fn listener_stalled(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerStalled,
) -> io::Result<()> {
    line(
        out,
        &StalledLine {
            head: Head::new("listener_stalled", "warn", clock, r.ts_ns),
            listener: Listener::new(&r.endpoints),
            queue: r.queue,
            backlog: r.backlog,
            stalled_ms: millis(r.stalled_ns),
            threshold_ms: millis(r.threshold_ns),
            owner: OwnerFields::new(r.owner.as_ref()),
        },
    )
}

pub(super) fn listener_half_open(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerHalfOpen,
) -> io::Result<()> {
    line(
        out,
        &HalfOpenLine {
            head: Head::new("listener_half_open", "warn", clock, r.ts_ns),
            listener: Listener::new(&r.endpoints),
            half_open: r.half_open,
            oldest_ms: millis(r.oldest_ns),
            threshold_ms: millis(r.threshold_ns),
            synack_retransmits: r.synack_retransmits,
            owner: OwnerFields::new(r.owner.as_ref()),
        },
    )
}

pub(super) fn listener_recovered(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerRecovered,
) -> io::Result<()> {
    line(
        out,
        &RecoveredLine {
            head: Head::new("listener_recovered", "info", clock, r.ts_ns),
            listener: Listener::new(&r.endpoints),
            from: r.trouble.name(),
            closed: r.closed,
            duration_ms: millis(r.duration_ns),
            owner: OwnerFields::new(r.owner.as_ref()),
        },
    )
}

/// The serde implementation the hand-built transition lines replaced: the oracle they are
/// tested against, and the baseline of the benchmark.
#[cfg(test)]
pub(super) mod reference {
    use super::*;

    #[derive(Serialize)]
    struct TransitionLine<'a> {
        #[serde(flatten)]
        head: Head,
        #[serde(flatten)]
        socket: Socket,
        old: &'static str,
        new: &'static str,
        prev_state_ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        end: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Cow<'static, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reset_reason: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        syn_retransmits: Option<u8>,
        #[serde(flatten)]
        owner: OwnerFields,
    }

    pub(in super::super) fn transition(
        out: &mut impl Write,
        clock: &WallClock,
        t: &Transition,
        reasons: &[String],
    ) -> io::Result<()> {
        let f = EndFields::of(t, reasons);
        line(
            out,
            &TransitionLine {
                head: Head::new("transition", "info", clock, t.ts_ns),
                socket: Socket::new(t.cookie, &t.endpoints),
                old: t.old.name(),
                new: t.new.name(),
                prev_state_ms: t.prev_state_ns.map(millis),
                end: f.end,
                error: f.error,
                reset_reason: f.reset_reason,
                syn_retransmits: f.syn_retransmits,
                owner: OwnerFields::new(t.owner.as_ref()),
            },
        )
    }
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
