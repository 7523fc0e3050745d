//! JSON lines. The field names and types are a contract with users' log pipelines (documented in
//! the README): add fields, never rename or retype them.
use std::io::{self, Write};

use serde::Serialize;

use super::millis;
use crate::{clock::WallClock, events::Transition};

#[derive(Serialize)]
struct TransitionLine<'a> {
    event: &'static str,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
    sock: String,
    family: &'static str,
    saddr: std::net::IpAddr,
    sport: u16,
    daddr: std::net::IpAddr,
    dport: u16,
    old: &'static str,
    new: &'static str,
    prev_state_ms: Option<f64>,
    pid: Option<u32>,
    comm: Option<std::borrow::Cow<'a, str>>,
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub fn transition(out: &mut impl Write, clock: &WallClock, t: &Transition) -> io::Result<()> {
    let line = TransitionLine {
        event: "transition",
        ts: humantime::format_rfc3339_micros(clock.wall(t.ts_ns)),
        sock: format!("{:x}", t.sock),
        family: t.endpoints.family.name(),
        saddr: t.endpoints.local,
        sport: t.endpoints.local_port,
        daddr: t.endpoints.remote,
        dport: t.endpoints.remote_port,
        old: t.old.name(),
        new: t.new.name(),
        prev_state_ms: t.prev_state_ns.map(millis),
        pid: t.owner.map(|o| o.pid),
        comm: t.owner.as_ref().map(|o| o.comm.as_str()),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{render, sample};
    use crate::{cli::LogFormat, events::Family};

    #[test]
    fn transition_schema() {
        let line = render(LogFormat::Json, &sample(Family::Ipv4));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "event": "transition",
                "ts": "2027-01-15T08:00:01.500000Z",
                "sock": "ffff88810a3c1200",
                "family": "ipv4",
                "saddr": "127.0.0.1",
                "sport": 43210,
                "daddr": "10.0.0.2",
                "dport": 8080,
                "old": "SYN_SENT",
                "new": "ESTABLISHED",
                "prev_state_ms": 0.052125,
                "pid": 4242,
                "comm": "curl",
            })
        );
    }

    #[test]
    fn unknowns_are_null() {
        let mut t = sample(Family::Ipv6);
        t.prev_state_ns = None;
        t.owner = None;
        let value: Value = serde_json::from_str(&render(LogFormat::Json, &t)).unwrap();
        assert_eq!(value["family"], "ipv6");
        assert_eq!(value["saddr"], "::1");
        assert_eq!(value["daddr"], "2001:db8::2");
        assert!(value["prev_state_ms"].is_null());
        assert!(value["pid"].is_null());
        assert!(value["comm"].is_null());
    }
}
