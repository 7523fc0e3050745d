//! Text for people. Transitions in the columns of bcc's `tcpstates`, with a UTC timestamp first
//! and room for IPv6 addresses; other events as `TIME LEVEL kind details` lines.
use std::{
    borrow::Cow,
    io::{self, Write},
    net::SocketAddr,
};

use super::{EndFields, line::Line};
use crate::{
    core::{
        report::{
            ListenerHalfOpen, ListenerRecovered, ListenerStalled, StuckReport, Trouble,
            UnstuckReport,
        },
        totals::Percentiles,
    },
    export::{summary::Summary, wall_clock::WallClock},
    source::events::{Endpoints, Owner, Transition},
};

pub(super) fn transition_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<27} {:<16} {:<7} {:<15} {:<25} {:<5} {:<25} {:<5} {:<11}    {:<11} {:>10}",
        "TIME(UTC)",
        "COOKIE",
        "PID",
        "COMM",
        "LADDR",
        "LPORT",
        "RADDR",
        "RPORT",
        "OLDSTATE",
        "NEWSTATE",
        "MS"
    )
}

fn time(clock: &WallClock, ts_ns: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_micros(clock.wall(ts_ns))
}

/// A transition in the columns of `transition_header`, built in `line` without `core::fmt`;
/// byte for byte what `reference::transition` writes.
pub(super) fn transition(line: &mut Line, clock: &WallClock, t: &Transition, reasons: &[String]) {
    let e = &t.endpoints;
    line.left(27, |l| l.time(clock.wall(t.ts_ns)));
    line.raw(b" ");
    line.left(16, |l| l.hex(t.cookie, 1));
    line.raw(b" ");
    match &t.owner {
        Some(owner) => {
            line.left(7, |l| l.int(owner.pid));
            line.raw(b" ");
            line.left_str(15, &owner.comm.as_str());
        }
        None => {
            line.left(7, |l| l.raw(b"-"));
            line.raw(b" ");
            line.left_str(15, "-");
        }
    }
    line.raw(b" ");
    line.left(25, |l| l.ip(e.local));
    line.raw(b" ");
    line.left(5, |l| l.int(e.local_port));
    line.raw(b" ");
    line.left(25, |l| l.ip(e.remote));
    line.raw(b" ");
    line.left(5, |l| l.int(e.remote_port));
    line.raw(b" ");
    line.left_str(11, t.old.name());
    line.raw(b" -> ");
    line.left_str(11, t.new.name());
    line.raw(b" ");
    line.right(10, |l| match t.prev_state_ns {
        Some(ns) => l.millis_fixed3(ns),
        None => l.raw(b"-"),
    });
    // After the columns, where they apply: how the connection ended, the SYNs it retransmitted.
    let fields = EndFields::of(t, reasons);
    let words = [
        (&b" end="[..], fields.end.map(Cow::Borrowed)),
        (b" error=", fields.error),
        (b" reason=", fields.reset_reason),
    ];
    for (key, value) in words {
        if let Some(value) = value {
            line.raw(key);
            line.raw(value.as_bytes());
        }
    }
    // For people, only a connect that needed them.
    if let Some(n) = fields.syn_retransmits.filter(|n| *n > 0) {
        line.raw(b" syn_retransmits=");
        line.int(n);
    }
    line.raw(b"\n");
}

fn seconds(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn socket(e: &Endpoints) -> String {
    format!(
        "{} <-> {}",
        SocketAddr::new(e.local, e.local_port),
        SocketAddr::new(e.remote, e.remote_port)
    )
}

/// The owner, then the container, pod and unit its cgroup names, where it names them.
fn describe(owner: Option<&Owner>) -> String {
    let Some(o) = owner else {
        return "pid=- comm=- cgroup=-".to_owned();
    };
    let cgroup = o.cgroup.as_deref();
    let mut text = format!(
        "pid={} comm={} cgroup={}",
        o.pid,
        o.comm.as_str(),
        cgroup.map_or("-", |c| &c.path)
    );
    if let Some(c) = cgroup {
        let names = [
            ("container", c.short_container_id()),
            ("pod", c.pod_uid.as_deref()),
            ("unit", c.unit.as_deref()),
        ];
        for (name, value) in names {
            if let Some(value) = value {
                text.push_str(&format!(" {name}={value}"));
            }
        }
    }
    text
}

/// The level of a warning, yellow on a terminal.
fn warn(color: bool) -> &'static str {
    if color { "\x1b[33mWARN\x1b[0m" } else { "WARN" }
}

fn at_least(known: bool) -> &'static str {
    if known { "" } else { ">=" }
}

fn stuck_details(r: &StuckReport) -> String {
    format!(
        "{:<11} for {}{} (threshold {})  {}  {}{}  cookie={:x}",
        r.state.name(),
        at_least(r.age_known),
        seconds(r.age_ns),
        seconds(r.threshold_ns),
        socket(&r.endpoints),
        if r.accepted == Some(false) {
            "never accepted, listener's "
        } else {
            ""
        },
        describe(r.owner.as_ref()),
        r.cookie
    )
}

pub(super) fn stuck(
    out: &mut impl Write,
    clock: &WallClock,
    r: &StuckReport,
    color: bool,
) -> io::Result<()> {
    let details = stuck_details(r);
    let level = warn(color);
    writeln!(out, "{} {level}  stuck    {details}", time(clock, r.ts_ns))
}

pub(super) fn unstuck(
    out: &mut impl Write,
    clock: &WallClock,
    r: &UnstuckReport,
) -> io::Result<()> {
    let new = r.new.map_or("gone", |s| s.name());
    writeln!(
        out,
        "{} INFO  unstuck  {:<11} -> {new} after {}{}  {}  {}  cookie={:x}",
        time(clock, r.ts_ns),
        r.state.name(),
        at_least(r.age_known),
        seconds(r.duration_ns),
        socket(&r.endpoints),
        describe(r.owner.as_ref()),
        r.cookie
    )
}

pub(super) fn listener_stalled(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerStalled,
    color: bool,
) -> io::Result<()> {
    let level = warn(color);
    writeln!(
        out,
        "{} {level}  listener stalled: {} accept queue {}/{} not drained for {} (threshold {})  {}",
        time(clock, r.ts_ns),
        SocketAddr::new(r.endpoints.local, r.endpoints.local_port),
        r.queue,
        r.backlog,
        seconds(r.stalled_ns),
        seconds(r.threshold_ns),
        describe(r.owner.as_ref()),
    )
}

pub(super) fn listener_half_open(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerHalfOpen,
    color: bool,
) -> io::Result<()> {
    let level = warn(color);
    writeln!(
        out,
        "{} {level}  listener half-open: {} {} handshakes unfinished, the oldest for >={} (threshold {}), {} SYN-ACKs retransmitted  {}",
        time(clock, r.ts_ns),
        SocketAddr::new(r.endpoints.local, r.endpoints.local_port),
        r.half_open,
        seconds(r.oldest_ns),
        seconds(r.threshold_ns),
        r.synack_retransmits,
        describe(r.owner.as_ref()),
    )
}

pub(super) fn listener_recovered(
    out: &mut impl Write,
    clock: &WallClock,
    r: &ListenerRecovered,
) -> io::Result<()> {
    writeln!(
        out,
        "{} INFO  listener {}: {} after {}  {}",
        time(clock, r.ts_ns),
        match (r.closed, r.trouble) {
            (true, _) => "closed",
            (false, Trouble::Stalled) => "drained",
            (false, Trouble::HalfOpen) => "handshakes completing",
        },
        SocketAddr::new(r.endpoints.local, r.endpoints.local_port),
        seconds(r.duration_ns),
        describe(r.owner.as_ref()),
    )
}

pub(super) fn summary(out: &mut impl Write, clock: &WallClock, s: &Summary) -> io::Result<()> {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(" ")
        }
    };
    let sockets = list(
        s.sockets
            .iter()
            .map(|(st, n)| format!("{}={n}", st.name()))
            .collect(),
    );
    writeln!(
        out,
        "{} INFO  summary  {}uptime {}, {} sockets: {sockets}",
        time(clock, s.ts_ns),
        if s.last { "final, " } else { "" },
        seconds(s.uptime_ns),
        s.tracked,
    )?;
    let total = |old, new| {
        s.transitions
            .iter()
            .find(|(o, n, _)| *o == old && *n == new)
            .map_or(0, |(_, _, c)| *c)
    };
    let transitions = list(
        s.interval_transitions
            .iter()
            .map(|(o, n, c)| format!("{}->{}={c}({})", o.name(), n.name(), total(*o, *n)))
            .collect(),
    );
    writeln!(
        out,
        "    transitions in the last {} (since start): {transitions}",
        seconds(s.interval_ns)
    )?;
    let durations = list(
        s.interval_durations
            .iter()
            .map(|(st, p)| {
                format!(
                    "{} n={} min={:.3} p50={:.3} p90={:.3} p99={:.3} max={:.3};",
                    st.name(),
                    p.count,
                    p.min_ms,
                    p.p50_ms,
                    p.p90_ms,
                    p.p99_ms,
                    p.max_ms
                )
            })
            .collect(),
    );
    writeln!(
        out,
        "    time in state, ms, last {}: {durations}",
        seconds(s.interval_ns)
    )?;
    // Counts of the interval, with the total since start in parentheses; zeros left out.
    let with_total = |interval: Vec<(String, u64)>, total: Vec<(String, u64)>| {
        list(
            interval
                .iter()
                .zip(&total)
                .filter(|((_, n), (_, t))| *n > 0 || *t > 0)
                .map(|((name, n), (_, t))| format!("{name}={n}({t})"))
                .collect(),
        )
    };
    let ends = |list: &[(tracer_common::End, u64)]| {
        list.iter()
            .map(|(e, n)| (e.name().to_owned(), *n))
            .collect()
    };
    let reasons = |list: &[(std::borrow::Cow<'static, str>, u64)]| {
        list.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    };
    // Errors by name may appear in the total only: pair each total with its interval count.
    let failures: Vec<(String, u64)> = s
        .connect_failures
        .iter()
        .map(|(reason, _)| {
            let n = s
                .interval_connect_failures
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n);
            (reason.to_string(), n)
        })
        .collect();
    let connect = |name: &str, p: Option<Percentiles>| {
        p.map(|p| {
            format!(
                "{name} n={} p50={:.3} p99={:.3} max={:.3}",
                p.count, p.p50_ms, p.p99_ms, p.max_ms
            )
        })
    };
    let connects = list(
        [
            connect("first try", s.interval_connects.first_try),
            connect("after a SYN retransmit", s.interval_connects.retransmitted),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    writeln!(
        out,
        "    connections ended (since start): {}; failed connects: {}; connect ms: {connects}; SYN retransmits: {}, SYN-ACK retransmits: {}{}",
        with_total(ends(&s.interval_ends), ends(&s.ends)),
        with_total(failures, reasons(&s.connect_failures)),
        s.seen.syn_retransmits,
        s.seen.synack_retransmits,
        if s.synack_retransmits_by_listener.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                s.synack_retransmits_by_listener
                    .iter()
                    .map(|(e, n)| format!("{}={n}", SocketAddr::new(e.local, e.local_port)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
    )?;
    let by_state = list(
        s.stuck_by_state
            .iter()
            .map(|(st, n)| format!("{}={n}", st.name()))
            .collect(),
    );
    let ports = list(
        s.time_wait_by_remote_port
            .iter()
            .map(|(p, n)| format!("{p}={n}"))
            .collect(),
    );
    writeln!(
        out,
        "    stuck now: {} ({by_state}); stalled listeners: {} (accept queue overflows {}, listen drops {}); listeners with old half-open connections: {}; TIME_WAIT by remote port: {ports}; lost events: {}; skipped events: {}; reconciliation: {} runs, {} fixes",
        s.stuck,
        s.stalled_listeners,
        s.listen_drops.overflows,
        s.listen_drops.drops,
        s.half_open_listeners,
        s.health.lost(),
        s.health.skipped_all,
        s.reconciliation.runs,
        s.reconciliation.fixes()
    )?;
    let h = &s.health;
    if h.failed_reads
        + h.unrecorded_sockets
        + h.unwatched_sockets
        + h.unmatched_resets
        + h.unlabelled
        > 0
    {
        writeln!(
            out,
            "    kernel: failed reads: {}; sockets without a record: {}; watched sockets not indexed: {}; resets not matched to their close: {}; counts without a port label: {}",
            h.failed_reads,
            h.unrecorded_sockets,
            h.unwatched_sockets,
            h.unmatched_resets,
            h.unlabelled
        )?;
    }
    for r in &s.reminders {
        writeln!(out, "    still stuck: {}", stuck_details(r))?;
    }
    if s.reminders_omitted > 0 {
        writeln!(out, "    … and {} more stuck sockets", s.reminders_omitted)?;
    }
    Ok(())
}

/// The `format!` implementation the hand-built lines replaced: the oracle they are tested
/// against, and the baseline of the benchmark.
#[cfg(test)]
pub(super) mod reference {
    use super::*;
    use crate::units::millis;

    pub(in super::super) fn transition(
        out: &mut impl Write,
        clock: &WallClock,
        t: &Transition,
        reasons: &[String],
    ) -> io::Result<()> {
        let (pid, comm) = match &t.owner {
            Some(owner) => (owner.pid.to_string(), owner.comm.as_str().into_owned()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let ms = t
            .prev_state_ns
            .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", millis(ns)));
        let e = &t.endpoints;
        let f = EndFields::of(t, reasons);
        let mut tail = String::new();
        if let Some(end) = f.end {
            tail += &format!(" end={end}");
        }
        if let Some(error) = f.error {
            tail += &format!(" error={error}");
        }
        if let Some(reason) = f.reset_reason {
            tail += &format!(" reason={reason}");
        }
        if let Some(n) = f.syn_retransmits.filter(|n| *n > 0) {
            tail += &format!(" syn_retransmits={n}");
        }
        writeln!(
            out,
            "{:<27} {:<16x} {pid:<7} {comm:<15} {:<25} {:<5} {:<25} {:<5} {:<11} -> {:<11} {ms:>10}{tail}",
            time(clock, t.ts_ns),
            t.cookie,
            e.local.to_string(),
            e.local_port,
            e.remote.to_string(),
            e.remote_port,
            t.old.name(),
            t.new.name(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        LogFormat,
        tests::{SELECTED, owner_in, render, reset_close, sample, stuck, summary, unstuck},
    };
    use crate::{core::report::Sink as _, source::events::Family};

    #[test]
    fn header_then_aligned_columns() {
        let text = render(LogFormat::Text, |o| {
            o.transition(&sample(Family::Ipv4), SELECTED)
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("TIME(UTC)"));
        let fields: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "2027-01-15T08:00:01.500000Z",
                "1a3f7",
                "4242",
                "curl",
                "127.0.0.1",
                "43210",
                "10.0.0.2",
                "8080",
                "SYN_SENT",
                "->",
                "ESTABLISHED",
                "0.052"
            ]
        );
        assert_eq!(lines[0].find("LADDR"), lines[1].find("127.0.0.1"));
        assert_eq!(lines[0].find("OLDSTATE"), lines[1].find("SYN_SENT"));
        assert_eq!(lines[0].find("NEWSTATE"), lines[1].find("ESTABLISHED"));
    }

    #[test]
    fn ends_and_retransmits_follow_the_columns() {
        let mut t = sample(Family::Ipv4);
        t.syn_retransmits = Some(1);
        let text = render(LogFormat::Text, |o| o.transition(&t, SELECTED));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("     0.052 syn_retransmits=1"),
            "{text}"
        );
        let t = reset_close();
        let text = render(LogFormat::Text, |o| o.transition(&t, SELECTED));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with(" end=reset_sent reason=tcp_abort_on_close"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_and_unknowns() {
        let mut t = sample(Family::Ipv6);
        t.owner = None;
        t.prev_state_ns = None;
        let text = render(LogFormat::Text, |o| o.transition(&t, SELECTED));
        let fields: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(fields[2], "-");
        assert_eq!(fields[3], "-");
        assert_eq!(fields[4], "::1");
        assert_eq!(fields[6], "2001:db8::2");
        assert_eq!(fields[11], "-");
    }

    #[test]
    fn stuck_and_unstuck_lines() {
        let text = render(LogFormat::Text, |o| o.stuck(&stuck()));
        assert_eq!(
            text,
            "2027-01-15T08:00:02.000000Z WARN  stuck    CLOSE_WAIT  for 62.500s (threshold 60.000s)  \
             127.0.0.1:43210 <-> 10.0.0.2:8080  pid=4242 comm=curl cgroup=/system.slice/curl.service \
             unit=curl.service  cookie=1a3f7\n"
        );
        // A container's short id (as `docker ps` shows it) and its pod, where the cgroup names them.
        let id = "b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f";
        let mut in_pod = stuck();
        in_pod.owner = owner_in(&format!(
            "/kubepods/besteffort/pod60e5cfb5-11a2-40d0-9f86-8c4075cd5d0a/{id}"
        ));
        assert!(
            render(LogFormat::Text, |o| o.stuck(&in_pod)).contains(
                "comm=curl cgroup=/kubepods/besteffort/pod60e5cfb5-11a2-40d0-9f86-8c4075cd5d0a/b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f \
                 container=b9ec786121db pod=60e5cfb5-11a2-40d0-9f86-8c4075cd5d0a  cookie="
            )
        );
        let mut unknown_age = stuck();
        unknown_age.age_known = false;
        assert!(render(LogFormat::Text, |o| o.stuck(&unknown_age)).contains("for >=62.500s"));
        let text = render(LogFormat::Text, |o| o.unstuck(&unstuck()));
        assert!(
            text.contains("INFO  unstuck  CLOSE_WAIT  -> LAST_ACK after 75.250s"),
            "{text}"
        );
    }

    #[test]
    fn summary_block() {
        let text = render(LogFormat::Text, |o| o.summary(&summary()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[0].contains("summary  uptime 60.000s, 3 sockets: ESTABLISHED=2 CLOSE_WAIT=1")
        );
        assert!(lines[1].contains("SYN_SENT->ESTABLISHED=1(3)"));
        assert!(lines[2].contains("SYN_SENT n=1 min=0.050 p50=0.060"));
        assert!(lines[3].contains("connections ended (since start): fin=1(2) refused=0(1);"));
        assert!(lines[3].contains("failed connects: refused=0(1) EHOSTUNREACH=1(1);"));
        assert!(lines[3].contains("connect ms: first try n=1 p50=0.060"));
        assert!(lines[3].contains("SYN retransmits: 2, SYN-ACK retransmits: 0"));
        assert!(lines[4].contains("stuck now: 1 (CLOSE_WAIT=1)"));
        assert!(lines[4].contains("TIME_WAIT by remote port: 8080=4"));
        assert!(lines[4].contains("reconciliation: 1 runs, 1 fixes"));
        assert!(lines[5].contains("still stuck: CLOSE_WAIT"));
    }
}
