//! Text of the port-pressure lines and of failed connects and binds, in the `TIME LEVEL kind
//! details` form of the other reports.
use std::io::{self, Write};

use super::{
    line::Line,
    model::{
        BindFailedLine, ConnectFailedLine, DestinationAddr, Head, PortPressureLine,
        PortRelievedLine,
    },
    text::{TextStyle, describe, destination, level, listener, seconds, time},
};

/// `TIME LEVEL  what: local -> remote:port netns=N uses IN_USE/AVAILABLE ephemeral ports`.
fn head(style: &TextStyle, h: &Head, what: &str, d: &DestinationAddr, used: [u32; 2]) -> String {
    format!(
        "{} {}  {what}: {} uses {}/{} ephemeral ports",
        time(h.ts),
        level(h.level, style),
        destination(d),
        used[0],
        used[1],
    )
}

pub(super) fn pressure(out: &mut Line, style: &TextStyle, l: &PortPressureLine) -> io::Result<()> {
    let holders: Vec<String> = l
        .holders
        .iter()
        .map(|h| format!("[{} ports: {}]", h.ports, describe(&h.owner)))
        .collect();
    let used = [l.in_use, l.available];
    writeln!(
        out,
        "{} ({}%, threshold {}%), {} in TIME_WAIT; holders: {}",
        head(style, &l.head, "port pressure", &l.destination, used),
        l.percent,
        l.threshold_percent,
        l.time_wait,
        if holders.is_empty() {
            "unknown".to_owned()
        } else {
            holders.join(" ")
        },
    )
}

pub(super) fn relieved(out: &mut Line, style: &TextStyle, l: &PortRelievedLine) -> io::Result<()> {
    let what = "port pressure relieved";
    let used = [l.in_use, l.available];
    writeln!(
        out,
        "{} after {} (peak {})",
        head(style, &l.head, what, &l.destination, used),
        seconds(l.duration_ns),
        l.peak,
    )
}

/// `TIME WARN  connect failed: local -> remote:port netns=N EADDRNOTAVAIL x COUNT  owner`.
pub(super) fn connect_failed(
    out: &mut Line,
    style: &TextStyle,
    l: &ConnectFailedLine,
) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  connect failed: {} {} x{}  {}",
        time(l.head.ts),
        level(l.head.level, style),
        destination(&l.at),
        l.error,
        l.count,
        describe(&l.owner),
    )
}

/// `TIME WARN  bind failed: address:port netns=N EADDRINUSE x COUNT  owner`.
pub(super) fn bind_failed(out: &mut Line, style: &TextStyle, l: &BindFailedLine) -> io::Result<()> {
    writeln!(
        out,
        "{} {}  bind failed: {} netns={} {} x{}  {}",
        time(l.head.ts),
        level(l.head.level, style),
        listener(l.at.saddr, l.at.sport),
        l.at.netns,
        l.error,
        l.count,
        describe(&l.owner),
    )
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::{
        LogFormat,
        tests::{owner, render},
    };
    use crate::core::report::{
        CallFailed, Destination, FailedCall, PortPressureRelieved, PortPressureReport, Sink as _,
    };
    use crate::source::events::Family;

    #[test]
    fn pressure_and_relief_name_the_destination_and_the_holders() {
        let destination = Destination {
            netns: 7,
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: 5432,
        };
        let text = render(LogFormat::Text, |o| {
            o.port_pressure(&PortPressureReport {
                ts_ns: 1,
                destination,
                in_use: 171,
                available: 200,
                time_wait: 120,
                threshold_percent: 80,
                holders: owner().map(|o| (o, 150)).into_iter().collect(),
            });
            o.port_pressure_relieved(&PortPressureRelieved {
                ts_ns: 2,
                destination,
                in_use: 20,
                available: 200,
                peak: 196,
                duration_ns: 150_000_000_000,
            });
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(
                "WARN  port pressure: 10.0.0.1 -> 10.0.0.2:5432 netns=7 uses 171/200 ephemeral ports (85.5%, threshold 80%), 120 in TIME_WAIT; holders: [150 ports: pid="
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                "INFO  port pressure relieved: 10.0.0.1 -> 10.0.0.2:5432 netns=7 uses 20/200 ephemeral ports after 150.000s (peak 196)"
            ),
            "{text}"
        );
    }

    #[test]
    fn failed_calls_name_the_address_the_error_and_the_process() {
        let text = render(LogFormat::Text, |o| {
            for (call, error) in [(FailedCall::Connect, 99), (FailedCall::Bind, 98)] {
                o.call_failed(&CallFailed {
                    ts_ns: 1,
                    call,
                    error,
                    endpoints: super::super::tests::endpoints(Family::Ipv4),
                    owner: owner(),
                    count: 3,
                });
            }
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(
                "WARN  connect failed: 127.0.0.1 -> 10.0.0.2:8080 netns=4026531840 EADDRNOTAVAIL x3  pid="
            ),
            "{text}"
        );
        assert!(
            lines[1].contains(
                "WARN  bind failed: 127.0.0.1:43210 netns=4026531840 EADDRINUSE x3  pid="
            ),
            "{text}"
        );
    }
}
