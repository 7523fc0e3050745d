//! Aligned text in the columns of bcc's `tcpstates`, with a UTC timestamp first and room for
//! IPv6 addresses.
use std::io::{self, Write};

use super::millis;
use crate::{clock::WallClock, events::Transition};

pub fn transition_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<27} {:<16} {:<7} {:<15} {:<25} {:<5} {:<25} {:<5} {:<11}    {:<11} {:>10}",
        "TIME(UTC)",
        "SKADDR",
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

pub fn transition(out: &mut impl Write, clock: &WallClock, t: &Transition) -> io::Result<()> {
    let time = humantime::format_rfc3339_micros(clock.wall(t.ts_ns));
    let (pid, comm) = match &t.owner {
        Some(owner) => (owner.pid.to_string(), owner.comm.as_str().into_owned()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    let ms = t
        .prev_state_ns
        .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", millis(ns)));
    let e = &t.endpoints;
    writeln!(
        out,
        "{time:<27} {:016x} {pid:<7} {comm:<15} {:<25} {:<5} {:<25} {:<5} {:<11} -> {:<11} {ms:>10}",
        t.sock,
        e.local.to_string(),
        e.local_port,
        e.remote.to_string(),
        e.remote_port,
        t.old.name(),
        t.new.name(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{render, sample};
    use crate::{cli::LogFormat, events::Family};

    #[test]
    fn header_then_aligned_columns() {
        let text = render(LogFormat::Text, &sample(Family::Ipv4));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("TIME(UTC)"));
        let fields: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "2027-01-15T08:00:01.500000Z",
                "ffff88810a3c1200",
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
        // Columns line up with the header.
        assert_eq!(lines[0].find("LADDR"), lines[1].find("127.0.0.1"));
        assert_eq!(lines[0].find("OLDSTATE"), lines[1].find("SYN_SENT"));
    }

    #[test]
    fn ipv6_and_unknowns() {
        let mut t = sample(Family::Ipv6);
        t.owner = None;
        t.prev_state_ns = None;
        let text = render(LogFormat::Text, &t);
        let fields: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(fields[2], "-");
        assert_eq!(fields[3], "-");
        assert_eq!(fields[4], "::1");
        assert_eq!(fields[6], "2001:db8::2");
        assert_eq!(fields[11], "-");
    }
}
