//! Writes the daemon's events as log lines: aligned text for people, one JSON object per line for
//! pipelines. Lines are buffered and flushed once per batch; the first write error is kept for
//! the daemon to act on.
mod json;
mod text;

use std::io::{self, Write};

use crate::{
    cli::LogFormat,
    clock::WallClock,
    events::Transition,
    summary::Summary,
    tracker::{Sink, StuckReport, UnstuckReport},
};

pub struct Output<W: Write> {
    format: LogFormat,
    clock: WallClock,
    out: io::BufWriter<W>,
    log_transitions: bool,
    header_written: bool,
    error: Option<io::Error>,
}

impl<W: Write> Output<W> {
    pub fn new(format: LogFormat, clock: WallClock, out: W, log_transitions: bool) -> Self {
        Self {
            format,
            clock,
            out: io::BufWriter::with_capacity(64 << 10, out),
            log_transitions,
            header_written: false,
            error: None,
        }
    }

    pub fn summary(&mut self, summary: &Summary) {
        let result = match self.format {
            LogFormat::Json => json::summary(&mut self.out, &self.clock, summary),
            LogFormat::Text => text::summary(&mut self.out, &self.clock, summary),
        };
        self.keep(result);
    }

    /// Flushes buffered lines; returns the first write error since the last call.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = self.out.flush();
        self.keep(result);
        self.error.take().map_or(Ok(()), Err)
    }

    fn keep(&mut self, result: io::Result<()>) {
        if let Err(err) = result {
            self.error.get_or_insert(err);
        }
    }
}

impl<W: Write> Sink for Output<W> {
    fn transition(&mut self, t: &Transition) {
        if !self.log_transitions {
            return;
        }
        let result = match self.format {
            LogFormat::Json => json::transition(&mut self.out, &self.clock, t),
            LogFormat::Text => {
                let header = if self.header_written {
                    Ok(())
                } else {
                    self.header_written = true;
                    text::transition_header(&mut self.out)
                };
                header.and_then(|()| text::transition(&mut self.out, &self.clock, t))
            }
        };
        self.keep(result);
    }

    fn stuck(&mut self, report: &StuckReport) {
        let result = match self.format {
            LogFormat::Json => json::stuck(&mut self.out, &self.clock, report),
            LogFormat::Text => text::stuck(&mut self.out, &self.clock, report),
        };
        self.keep(result);
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        let result = match self.format {
            LogFormat::Json => json::unstuck(&mut self.out, &self.clock, report),
            LogFormat::Text => text::unstuck(&mut self.out, &self.clock, report),
        };
        self.keep(result);
    }
}

/// Nanoseconds as fractional milliseconds.
fn millis(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        net::IpAddr,
        time::{Duration, UNIX_EPOCH},
    };

    use tracer_common::TcpState;

    use super::*;
    use crate::{
        events::{Comm, Endpoints, Family, Process},
        stats::Percentiles,
        tracker::Reconciliation,
    };

    pub fn clock() -> WallClock {
        WallClock::fixed(0, UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    pub fn endpoints(family: Family) -> Endpoints {
        let (local, remote): (IpAddr, IpAddr) = match family {
            Family::Ipv4 => ("127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()),
            Family::Ipv6 => ("::1".parse().unwrap(), "2001:db8::2".parse().unwrap()),
        };
        Endpoints {
            netns: 4026531840,
            family,
            local,
            local_port: 43210,
            remote,
            remote_port: 8080,
        }
    }

    pub fn owner() -> Option<Process> {
        Some(Process {
            pid: 4242,
            comm: Comm::new("curl"),
        })
    }

    pub fn sample(family: Family) -> Transition {
        Transition {
            ts_ns: 1_500_000_000,
            sock: 0xffff_8881_0a3c_1200,
            endpoints: endpoints(family),
            old: TcpState::SynSent,
            new: TcpState::Established,
            prev_state_ns: Some(52_125),
            owner: owner(),
        }
    }

    pub fn stuck() -> StuckReport {
        StuckReport {
            ts_ns: 2_000_000_000,
            sock: 0xffff_8881_0a3c_1200,
            endpoints: endpoints(Family::Ipv4),
            state: TcpState::CloseWait,
            age_ns: 62_500_000_000,
            age_known: true,
            threshold_ns: 60_000_000_000,
            owner: owner(),
        }
    }

    pub fn unstuck() -> UnstuckReport {
        UnstuckReport {
            ts_ns: 3_000_000_000,
            sock: 0xffff_8881_0a3c_1200,
            endpoints: endpoints(Family::Ipv4),
            state: TcpState::CloseWait,
            new: Some(TcpState::LastAck),
            duration_ns: 75_250_000_000,
            age_known: true,
            owner: owner(),
        }
    }

    pub fn summary() -> Summary {
        let p = Percentiles {
            count: 3,
            min_ms: 0.05,
            p50_ms: 0.06,
            p90_ms: 0.1,
            p99_ms: 0.12,
            max_ms: 0.12,
        };
        Summary {
            ts_ns: 61_000_000_000,
            last: false,
            uptime_ns: 60_000_000_000,
            interval_ns: 60_000_000_000,
            sockets: vec![(TcpState::Established, 2), (TcpState::CloseWait, 1)],
            tracked: 3,
            transitions: vec![(TcpState::SynSent, TcpState::Established, 3)],
            interval_transitions: vec![(TcpState::SynSent, TcpState::Established, 1)],
            durations: vec![(TcpState::SynSent, p)],
            interval_durations: vec![(TcpState::SynSent, Percentiles { count: 1, ..p })],
            stuck: 1,
            stuck_by_state: vec![(TcpState::CloseWait, 1)],
            reminders: vec![stuck()],
            reminders_omitted: 0,
            time_wait_by_remote_port: vec![(8080, 4)],
            lost_events: 0,
            evictions: 0,
            reconciliation: Reconciliation {
                runs: 1,
                added: 0,
                removed: 1,
                corrected: 0,
            },
        }
    }

    /// Renders through the real writer: one event kind at a time.
    pub fn render(format: LogFormat, write: impl FnOnce(&mut Output<&mut Vec<u8>>)) -> String {
        let mut buf = Vec::new();
        {
            let mut out = Output::new(format, clock(), &mut buf, true);
            write(&mut out);
            out.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn quiet_mode_writes_no_transitions() {
        let mut buf = Vec::new();
        {
            let mut out = Output::new(LogFormat::Json, clock(), &mut buf, false);
            out.transition(&sample(Family::Ipv4));
            out.stuck(&stuck());
            out.flush().unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"event\":\"stuck\""));
    }

    #[test]
    fn write_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::new(LogFormat::Json, clock(), Broken, true);
        out.stuck(&stuck());
        assert_eq!(out.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
