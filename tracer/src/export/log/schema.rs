//! The JSON schema in docs/output.md against the lines the daemon writes: every field of every
//! kind of line is documented with its type, and every documented field is written. Lines are
//! rendered from fixtures that carry every optional field, and from ones that carry none.
use crate::owner::Owner;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tracer_common::{End, TcpState};

use super::{
    LogFormat,
    tests::{SELECTED, owner_in, render, reset_close, sample, stuck, summary, unstuck},
};
use crate::{
    core::interval::AcceptWait,
    core::losses::{LossWatch, Losses},
    core::report::{
        CallFailed, FailedCall, ListenerHalfOpen, ListenerRecovered, ListenerStalled,
        PortPressureRelieved, PortPressureReport, Sink as _, Trouble,
    },
    core::report::{Destination, PressureView, Usage},
    source::{
        events::{ConnectionEnd, Family},
        health::KernelHealth,
    },
};

const DOC: &str = include_str!("../../../../docs/output.md");

/// A documented field: its type as the table says it.
#[derive(Debug, Clone)]
struct Field {
    kind: String,
    meaning: String,
}

/// The schema's sections, by title (`Socket fields`, `` `stuck` (warn)`` …): their first paragraph
/// and their table's fields.
fn sections() -> BTreeMap<String, (String, BTreeMap<String, Field>)> {
    let schema = &DOC[DOC
        .find("## JSON schema")
        .expect("docs/output.md has a JSON schema")..];
    let mut out = BTreeMap::new();
    for section in schema.split("\n### ").skip(1) {
        let (title, body) = section.split_once('\n').unwrap();
        let intro = body
            .trim_start()
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut fields = BTreeMap::new();
        for row in body.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {row}");
            let names: Vec<&str> = cells[0].split(", ").map(|n| n.trim_matches('`')).collect();
            let kinds: Vec<&str> = cells[1].split(", ").collect();
            // `a`, `b` | string, integer: one type each; `a`, `b` | integer: the same type.
            let paired = kinds.len() == names.len() && !cells[1].contains(", only");
            for (i, name) in names.iter().enumerate() {
                let kind = if paired { kinds[i] } else { cells[1] };
                fields.insert(
                    (*name).to_owned(),
                    Field {
                        kind: kind.to_owned(),
                        meaning: cells[2].to_owned(),
                    },
                );
            }
        }
        out.insert(title.trim().to_owned(), (intro, fields));
    }
    out
}

/// The fields of one kind of line: its own table's and those of the groups its first paragraph
/// names ("The common, socket and owner fields, and:").
fn documented(event: &str) -> BTreeMap<String, Field> {
    let sections = sections();
    let (intro, own) = sections
        .iter()
        .find(|(title, _)| title.starts_with(&format!("`{event}`")))
        .map(|(_, section)| section)
        .unwrap_or_else(|| panic!("docs/output.md documents `{event}`"));
    let mut fields = own.clone();
    for group in ["common", "socket", "listener", "destination", "owner"] {
        if intro.contains(&format!("{group} ")) || intro.contains(&format!("{group},")) {
            fields.extend(group_fields(&sections, group));
        }
    }
    fields
}

fn group_fields(
    sections: &BTreeMap<String, (String, BTreeMap<String, Field>)>,
    group: &str,
) -> BTreeMap<String, Field> {
    let title = format!("{}{} fields", group[..1].to_uppercase(), &group[1..]);
    let (intro, fields) = &sections[&title];
    if !fields.is_empty() {
        return fields.clone();
    }
    // The listener's and destination's fields are named in prose, with the socket fields' types.
    let socket = &sections["Socket fields"].1;
    intro
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|name| Some((name.to_owned(), socket.get(name)?.clone())))
        .collect()
}

fn type_matches(kind: &str, value: &Value) -> bool {
    let base = kind.split([',', ' ']).next().unwrap_or_default();
    let nullable = kind.contains("or null");
    match value {
        Value::Null => nullable,
        Value::Bool(_) => base == "boolean",
        Value::Number(n) => base == "number" || (base == "integer" && n.is_u64()),
        Value::String(_) => base == "string",
        Value::Array(_) => base == "array",
        Value::Object(_) => base == "object",
    }
}

/// Checks a line's fields against the documented ones, under `prefix` for nested objects;
/// returns the documented paths it carried.
fn check(
    line: &BTreeMap<String, Value>,
    prefix: &str,
    fields: &BTreeMap<String, Field>,
    seen: &mut BTreeSet<String>,
) {
    for (key, value) in line {
        let path = format!("{prefix}{key}");
        match (fields.get(&path), value) {
            (Some(field), _) => {
                assert!(
                    type_matches(&field.kind, value),
                    "`{path}` is documented as {}, written as {value}",
                    field.kind
                );
                seen.insert(path.clone());
                if let (Value::Array(items), true) = (value, field.kind == "array of strings") {
                    assert!(items.iter().all(Value::is_string), "`{path}`: {value}");
                } else if let Value::Array(items) = value {
                    // Each element's fields documented; each documented one in some element.
                    let mut elements = elements_of(&path, field, fields);
                    let mut inner = BTreeSet::new();
                    for item in items {
                        check(&object(item), "", &elements, &mut inner);
                    }
                    if !items.is_empty() {
                        elements.retain(|name, _| !inner.contains(name));
                        assert!(
                            elements.is_empty(),
                            "no `{path}[]` has {:?}",
                            elements.keys()
                        );
                    }
                }
            }
            // An object of named figures: its keys are documented as `path.key`.
            (None, Value::Object(_)) => check(&object(value), &format!("{path}."), fields, seen),
            (None, _) => panic!("`{path}` ({value}) is written but not in docs/output.md"),
        }
    }
}

/// The fields of an array's elements: its `path[].x` rows, and the groups its meaning names.
fn elements_of(
    path: &str,
    field: &Field,
    fields: &BTreeMap<String, Field>,
) -> BTreeMap<String, Field> {
    let prefix = format!("{path}[].");
    let mut elements: BTreeMap<String, Field> = fields
        .iter()
        .filter_map(|(name, f)| Some((name.strip_prefix(&prefix)?.to_owned(), f.clone())))
        .collect();
    for group in ["listener", "destination", "owner"] {
        if field.meaning.contains(&format!("{group} fields")) {
            elements.extend(group_fields(&sections(), group));
        }
    }
    if field
        .meaning
        .contains("a `stuck` line without `event` and `level`")
    {
        let mut stuck = documented("stuck");
        stuck.retain(|name, _| name != "event" && name != "level");
        elements.extend(stuck);
    }
    elements
}

fn object(value: &Value) -> BTreeMap<String, Value> {
    serde_json::from_value(value.clone()).expect("a JSON object")
}

fn lines(write: impl FnOnce(&mut super::LogWriter<&mut Vec<u8>>)) -> Vec<BTreeMap<String, Value>> {
    render(LogFormat::Json, write)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every documented field of `event` is in one of `full`, none of any line is undocumented, and
/// each has its documented type.
fn holds(event: &str, full: Vec<BTreeMap<String, Value>>) {
    let fields = documented(event);
    let mut seen = BTreeSet::new();
    for line in &full {
        assert_eq!(line["event"], event);
        check(line, "", &fields, &mut seen);
    }
    let missing: Vec<&String> = fields
        .keys()
        .filter(|name| !seen.contains(*name) && !name.contains("[]."))
        .collect();
    assert!(
        missing.is_empty(),
        "documented for `{event}` but never written: {missing:?}"
    );
}

/// An owner whose cgroup names a container, a pod and a unit.
fn in_pod() -> Option<Owner> {
    owner_in(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod60e5cfb5_11a2_40d0_9f86_8c4075cd5d0a.slice/cri-containerd-b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f.scope",
    )
}

#[test]
fn transition_lines_match_the_schema() {
    let mut connect = sample(Family::Ipv6);
    connect.owner = in_pod();
    let mut failed = reset_close();
    failed.end = Some(ConnectionEnd {
        end: End::ResetSent,
        error: Some(104),
        reset_reason: Some(11),
    });
    let mut unknown = sample(Family::Ipv4);
    unknown.owner = None;
    unknown.prev_state_ns = None;
    unknown.syn_retransmits = None;
    holds(
        "transition",
        lines(|o| {
            for t in [&connect, &failed, &unknown] {
                o.transition(t, SELECTED);
            }
        }),
    );
}

#[test]
fn socket_reports_match_the_schema() {
    let mut never_accepted = stuck();
    never_accepted.accepted = Some(false);
    never_accepted.owner = in_pod();
    holds("stuck", lines(|o| o.stuck(&never_accepted)));
    let mut gone = unstuck();
    gone.new = None;
    gone.owner = in_pod();
    holds(
        "unstuck",
        lines(|o| {
            o.unstuck(&unstuck());
            o.unstuck(&gone);
        }),
    );
}

#[test]
fn listener_reports_match_the_schema() {
    let endpoints = super::tests::endpoints(Family::Ipv4);
    holds(
        "listener_stalled",
        lines(|o| {
            o.listener_stalled(&ListenerStalled {
                ts_ns: 1,
                endpoints,
                queue: 129,
                backlog: 128,
                stalled_ns: 11_000_000_000,
                threshold_ns: 10_000_000_000,
                owner: in_pod(),
            })
        }),
    );
    holds(
        "listener_half_open",
        lines(|o| {
            o.listener_half_open(&ListenerHalfOpen {
                ts_ns: 1,
                endpoints,
                half_open: 3,
                oldest_ns: 12_000_000_000,
                threshold_ns: 10_000_000_000,
                synack_retransmits: 9,
                owner: in_pod(),
            })
        }),
    );
    holds(
        "listener_recovered",
        lines(|o| {
            o.listener_recovered(&ListenerRecovered {
                ts_ns: 1,
                endpoints,
                trouble: Trouble::HalfOpen,
                closed: false,
                duration_ns: 5_000_000_000,
                owner: in_pod(),
            })
        }),
    );
}

fn destination(family: Family) -> Destination {
    Destination::of(&super::tests::endpoints(family))
}

#[test]
fn port_reports_match_the_schema() {
    let mut unknown = in_pod().unwrap();
    unknown.cgroup = None;
    holds(
        "port_pressure",
        lines(|o| {
            o.port_pressure(&PortPressureReport {
                ts_ns: 1,
                destination: destination(Family::Ipv6),
                in_use: 170,
                available: 200,
                time_wait: 120,
                threshold_percent: 80,
                holders: vec![(in_pod().unwrap(), 150), (unknown, 20)],
            });
            o.port_pressure(&PortPressureReport {
                ts_ns: 2,
                destination: destination(Family::Ipv4),
                in_use: 170,
                available: 200,
                time_wait: 0,
                threshold_percent: 80,
                holders: Vec::new(),
            });
        }),
    );
    holds(
        "port_pressure_relieved",
        lines(|o| {
            o.port_pressure_relieved(&PortPressureRelieved {
                ts_ns: 1,
                destination: destination(Family::Ipv4),
                in_use: 20,
                available: 200,
                peak: 196,
                duration_ns: 150_000_000_000,
            })
        }),
    );
}

#[test]
fn failed_calls_match_the_schema() {
    for (event, call) in [
        ("connect_failed", FailedCall::Connect),
        ("bind_failed", FailedCall::Bind),
    ] {
        holds(
            event,
            lines(|o| {
                for (family, owner) in [(Family::Ipv4, in_pod()), (Family::Ipv6, None)] {
                    o.call_failed(&CallFailed {
                        ts_ns: 1,
                        call,
                        error: 99,
                        endpoints: super::tests::endpoints(family),
                        owner,
                        count: 3,
                    });
                }
            }),
        );
    }
}

#[test]
fn summary_lines_match_the_schema() {
    let mut full = summary();
    let used = Usage {
        destination: destination(Family::Ipv4),
        in_use: 170,
        available: 200,
        time_wait: 120,
        holders: Vec::new(),
    };
    full.port_pressure = PressureView {
        most_used: vec![used],
        pressed_now: 1,
        reports: 2,
    };
    full.reminders[0].accepted = Some(false);
    full.reminders[0].owner = in_pod();
    full.synack_retransmits_by_listener = vec![(super::tests::endpoints(Family::Ipv6), 7)];
    full.accept_waits[0].owner = in_pod();
    full.accept_waits.push(AcceptWait {
        owner: None,
        ..full.accept_waits[0].clone()
    });
    full.connects.retransmitted = full.connects.first_try;
    full.interval_connects.retransmitted = full.connects.first_try;
    let mut empty = summary();
    empty.reminders.clear();
    empty.accept_waits.clear();
    empty.sockets = vec![(TcpState::Listen, 1)];
    holds(
        "summary",
        lines(|o| {
            o.summary(&full);
            o.summary(&empty);
        }),
    );
}

#[test]
fn health_lines_match_the_schema() {
    let losses = Losses {
        kernel: KernelHealth {
            lost_transitions: 3,
            skipped_all: 1,
            ..KernelHealth::default()
        },
        malformed_events: 1,
    };
    let report = LossWatch::default()
        .check(losses, 1, true)
        .expect("a report");
    holds("health", lines(|o| o.health(&report)));
}

/// The check itself fails on a field the docs do not list, and on one they list but no line has.
#[test]
fn the_check_can_fail() {
    let undocumented = std::panic::catch_unwind(|| {
        let mut line = lines(|o| o.stuck(&stuck())).remove(0);
        line.insert("surprise".to_owned(), Value::Bool(true));
        holds("stuck", vec![line]);
    });
    assert!(undocumented.is_err());
    let unwritten = std::panic::catch_unwind(|| {
        let mut line = lines(|o| o.stuck(&stuck())).remove(0);
        line.remove("threshold_ms");
        holds("stuck", vec![line]);
    });
    assert!(unwritten.is_err());
    let retyped = std::panic::catch_unwind(|| {
        let mut line = lines(|o| o.stuck(&stuck())).remove(0);
        line.insert("age_known".to_owned(), Value::from(1));
        holds("stuck", vec![line]);
    });
    assert!(retyped.is_err());
}
