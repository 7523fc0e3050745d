//! Text for people. Transitions in the columns of bcc's `tcpstates`, with a UTC timestamp first
//! and room for IPv6 addresses; other events as `TIME LEVEL kind details` lines. Every line shows
//! the values of its `model` line. The summary's lines are `text_summary`'s, the port-pressure
//! lines `text_ports`'; both use the parts here.
use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use super::{
    line::Line,
    model::{
        DestinationAddr, HalfOpenLine, HealthLine, Level, OwnerFields, RecoveredLine, Socket,
        StalledLine, StuckBody, StuckLine, TransitionLine, UnstuckLine,
    },
};
use crate::core::report::Trouble;

/// How text lines look, and what was written already.
pub(super) struct TextStyle {
    /// Colour the level of warnings (stdout is a terminal); plain otherwise.
    pub(super) color: bool,
    /// The transitions' column header, written before the first of them.
    pub(super) header_written: bool,
}

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

pub(super) fn time(ts: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_micros(ts)
}

/// A transition in the columns of `transition_header`, built in `line` without `core::fmt`;
/// byte for byte what `reference::transition` writes.
pub(super) fn transition(
    line: &mut Line,
    style: &mut TextStyle,
    t: &TransitionLine,
) -> io::Result<()> {
    if !style.header_written {
        style.header_written = true;
        transition_header(line)?;
    }
    let s = &t.socket;
    line.left(27, |l| l.time(t.head.ts));
    line.raw(b" ");
    line.left(16, |l| l.hex(s.sock, 1));
    line.raw(b" ");
    match (t.owner.pid, &t.owner.comm) {
        (Some(pid), Some(comm)) => {
            line.left(7, |l| l.int(pid));
            line.raw(b" ");
            line.left_str(15, comm);
        }
        _ => {
            line.left(7, |l| l.raw(b"-"));
            line.raw(b" ");
            line.left_str(15, "-");
        }
    }
    line.raw(b" ");
    line.left(25, |l| l.ip(s.saddr));
    line.raw(b" ");
    line.left(5, |l| l.int(s.sport));
    line.raw(b" ");
    line.left(25, |l| l.ip(s.daddr));
    line.raw(b" ");
    line.left(5, |l| l.int(s.dport));
    line.raw(b" ");
    line.left_str(11, t.old);
    line.raw(b" -> ");
    line.left_str(11, t.new);
    line.raw(b" ");
    line.right(10, |l| match t.prev_state_ns {
        Some(ns) => l.millis_fixed3(ns),
        None => l.raw(b"-"),
    });
    // After the columns, where they apply: how the connection ended, the SYNs it retransmitted.
    let words = [
        (&b" end="[..], t.end),
        (b" error=", t.error.as_deref()),
        (b" reason=", t.reset_reason.as_deref()),
    ];
    for (key, value) in words {
        if let Some(value) = value {
            line.raw(key);
            line.raw(value.as_bytes());
        }
    }
    // For people, only a connect that needed them.
    if let Some(n) = t.syn_retransmits.filter(|n| *n > 0) {
        line.raw(b" syn_retransmits=");
        line.int(n);
    }
    line.raw(b"\n");
    Ok(())
}

pub(super) fn seconds(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn socket(s: &Socket) -> String {
    format!(
        "{} <-> {}",
        SocketAddr::new(s.saddr, s.sport),
        SocketAddr::new(s.daddr, s.dport)
    )
}

pub(super) fn listener(saddr: IpAddr, sport: u16) -> SocketAddr {
    SocketAddr::new(saddr, sport)
}

/// Where connections go: `local -> remote:port`, with the namespace.
pub(super) fn destination(d: &DestinationAddr) -> String {
    format!(
        "{} -> {} netns={}",
        d.saddr,
        SocketAddr::new(d.daddr, d.dport),
        d.netns
    )
}

/// The prefix of a container id that `docker ps`, `podman ps` and `nerdctl ps` show.
const SHORT_ID_LEN: usize = 12;

/// The owner, then the container (its short id), pod and unit its cgroup names, where it names
/// them.
pub(super) fn describe(o: &OwnerFields) -> String {
    let (Some(pid), Some(comm)) = (o.pid, &o.comm) else {
        return "pid=- comm=- cgroup=-".to_owned();
    };
    let mut text = format!("pid={pid} comm={comm} cgroup={}", o.cgroup.unwrap_or("-"));
    let names = [
        (
            "container",
            o.container_id
                .map(|id| id.get(..SHORT_ID_LEN).unwrap_or(id)),
        ),
        ("pod", o.pod_uid),
        ("unit", o.unit),
    ];
    for (name, value) in names {
        if let Some(value) = value {
            text.push_str(&format!(" {name}={value}"));
        }
    }
    text
}

/// The level, a warning's yellow on a terminal.
pub(super) fn level(level: Level, style: &TextStyle) -> &'static str {
    match (level, style.color) {
        (Level::Info, _) => "INFO",
        (Level::Warn, false) => "WARN",
        (Level::Warn, true) => "\x1b[33mWARN\x1b[0m",
    }
}

fn at_least(known: bool) -> &'static str {
    if known { "" } else { ">=" }
}

pub(super) fn stuck_details(b: &StuckBody) -> String {
    format!(
        "{:<11} for {}{} (threshold {})  {}  {}{}  cookie={:x}",
        b.state,
        at_least(b.age_known),
        seconds(b.age_ns),
        seconds(b.threshold_ns),
        socket(&b.socket),
        if b.accepted == Some(false) {
            "never accepted, listener's "
        } else {
            ""
        },
        describe(&b.owner),
        b.socket.sock
    )
}

pub(super) fn stuck(out: &mut Line, style: &TextStyle, l: &StuckLine) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  stuck    {}",
        time(l.head.ts),
        level(l.head.level, style),
        stuck_details(&l.body)
    )
}

pub(super) fn unstuck(out: &mut Line, style: &TextStyle, l: &UnstuckLine) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  unstuck  {:<11} -> {} after {}{}  {}  {}  cookie={:x}",
        time(l.head.ts),
        level(l.head.level, style),
        l.state,
        l.new.unwrap_or("gone"),
        at_least(l.age_known),
        seconds(l.duration_ns),
        socket(&l.socket),
        describe(&l.owner),
        l.socket.sock
    )
}

pub(super) fn listener_stalled(
    out: &mut Line,
    style: &TextStyle,
    l: &StalledLine,
) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  listener stalled: {} accept queue {}/{} not drained for {} (threshold {})  {}",
        time(l.head.ts),
        level(l.head.level, style),
        listener(l.listener.saddr, l.listener.sport),
        l.queue,
        l.backlog,
        seconds(l.stalled_ns),
        seconds(l.threshold_ns),
        describe(&l.owner),
    )
}

pub(super) fn listener_half_open(
    out: &mut Line,
    style: &TextStyle,
    l: &HalfOpenLine,
) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  listener half-open: {} {} handshakes unfinished, the oldest for >={} (threshold {}), {} SYN-ACKs retransmitted  {}",
        time(l.head.ts),
        level(l.head.level, style),
        listener(l.listener.saddr, l.listener.sport),
        l.half_open,
        seconds(l.oldest_ns),
        seconds(l.threshold_ns),
        l.synack_retransmits,
        describe(&l.owner),
    )
}

pub(super) fn listener_recovered(
    out: &mut Line,
    style: &TextStyle,
    l: &RecoveredLine,
) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  listener {}: {} after {}  {}",
        time(l.head.ts),
        level(l.head.level, style),
        match (l.closed, l.from) {
            (true, _) => "closed",
            (false, Trouble::Stalled) => "drained",
            (false, Trouble::HalfOpen) => "handshakes completing",
        },
        listener(l.listener.saddr, l.listener.sport),
        seconds(l.duration_ns),
        describe(&l.owner),
    )
}

/// What a reader can do about each loss.
fn remedy(name: &str) -> &'static str {
    match name {
        "lost_events" => " (the ring buffer was full: raise --ring-buffer-size)",
        "skipped_events" => {
            " (the kernel did not run the tracer while it was already running on the same CPU)"
        }
        "unrecorded_sockets" | "unwatched_sockets" => " (raise --max-sockets)",
        _ => "",
    }
}

pub(super) fn health(out: &mut Line, style: &TextStyle, l: &HealthLine) -> io::Result<()> {
    let counts: Vec<String> = l
        .losses
        .named()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{}={n}{}", name.replace('_', " "), remedy(name)))
        .collect();
    writeln!(
        out,
        "{} {}  health   {}since start-up: {}; grew: {}",
        time(l.head.ts),
        level(l.head.level, style),
        if l.last { "at exit, " } else { "" },
        counts.join("; "),
        l.grew.join(" ")
    )
}

/// The `format!` implementation the hand-built lines replaced: the oracle they are tested
/// against, and the baseline of the benchmark.
#[cfg(test)]
pub(super) mod reference {
    use super::*;
    use crate::units::millis;

    pub(in super::super) fn transition(out: &mut impl Write, t: &TransitionLine) -> io::Result<()> {
        let (pid, comm) = match (t.owner.pid, &t.owner.comm) {
            (Some(pid), Some(comm)) => (pid.to_string(), comm.to_string()),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let ms = t
            .prev_state_ns
            .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", millis(ns)));
        let s = &t.socket;
        let mut tail = String::new();
        if let Some(end) = t.end {
            tail += &format!(" end={end}");
        }
        if let Some(error) = &t.error {
            tail += &format!(" error={error}");
        }
        if let Some(reason) = &t.reset_reason {
            tail += &format!(" reason={reason}");
        }
        if let Some(n) = t.syn_retransmits.filter(|n| *n > 0) {
            tail += &format!(" syn_retransmits={n}");
        }
        writeln!(
            out,
            "{:<27} {:<16x} {pid:<7} {comm:<15} {:<25} {:<5} {:<25} {:<5} {:<11} -> {:<11} {ms:>10}{tail}",
            time(t.head.ts),
            s.sock,
            s.saddr.to_string(),
            s.sport,
            s.daddr.to_string(),
            s.dport,
            t.old,
            t.new,
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
    fn health_line_says_what_grew_and_what_to_do() {
        use crate::{
            core::losses::{LossWatch, Losses},
            source::health::KernelHealth,
        };
        let losses = Losses {
            kernel: KernelHealth {
                lost_transitions: 3,
                ..KernelHealth::default()
            },
            malformed_events: 0,
        };
        let report = LossWatch::default().check(losses, 1, false).unwrap();
        let text = render(LogFormat::Text, |o| o.health(&report));
        assert_eq!(
            text,
            "2027-01-15T08:00:00.000000Z WARN  health   since start-up: lost events=3 (the ring \
             buffer was full: raise --ring-buffer-size); grew: lost_events\n"
        );
    }

    #[test]
    fn summary_block() {
        let text = render(LogFormat::Text, |o| o.summary(&summary()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
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
        assert!(lines[5].contains(
            "accept wait, ms, last 60.000s: :8080 n=2 p50=0.060 p99=0.120 max=0.120 pid="
        ));
        assert!(lines[6].contains("still stuck: CLOSE_WAIT"));
    }
}
