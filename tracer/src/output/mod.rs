//! Writes events as log lines: aligned text for people, one JSON object per line for pipelines.
//! Lines are buffered and flushed once per batch of events.
mod json;
mod text;

use std::io::{self, Write};

use crate::{cli::LogFormat, clock::WallClock, events::Transition};

pub struct Output<W: Write> {
    format: LogFormat,
    clock: WallClock,
    out: io::BufWriter<W>,
    header_written: bool,
}

impl<W: Write> Output<W> {
    pub fn new(format: LogFormat, clock: WallClock, out: W) -> Self {
        Self {
            format,
            clock,
            out: io::BufWriter::with_capacity(64 << 10, out),
            header_written: false,
        }
    }

    pub fn transition(&mut self, t: &Transition) -> io::Result<()> {
        match self.format {
            LogFormat::Json => json::transition(&mut self.out, &self.clock, t),
            LogFormat::Text => {
                if !self.header_written {
                    self.header_written = true;
                    text::transition_header(&mut self.out)?;
                }
                text::transition(&mut self.out, &self.clock, t)
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Nanoseconds as fractional milliseconds, the unit of `prev_state_ms`.
fn millis(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        time::{Duration, UNIX_EPOCH},
    };

    use tracer_common::TcpState;

    use super::*;
    use crate::events::{Comm, Endpoints, Family, Process};

    pub(super) fn clock() -> WallClock {
        WallClock::fixed(0, UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    pub(super) fn sample(family: Family) -> Transition {
        let (local, remote): (IpAddr, IpAddr) = match family {
            Family::Ipv4 => ("127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()),
            Family::Ipv6 => ("::1".parse().unwrap(), "2001:db8::2".parse().unwrap()),
        };
        Transition {
            ts_ns: 1_500_000_000,
            sock: 0xffff_8881_0a3c_1200,
            endpoints: Endpoints {
                family,
                local,
                local_port: 43210,
                remote,
                remote_port: 8080,
            },
            old: TcpState::SynSent,
            new: TcpState::Established,
            prev_state_ns: Some(52_125),
            owner: Some(Process {
                pid: 4242,
                comm: Comm::new("curl"),
            }),
        }
    }

    pub(super) fn render(format: LogFormat, t: &Transition) -> String {
        let mut buf = Vec::new();
        {
            let mut out = Output::new(format, clock(), &mut buf);
            out.transition(t).unwrap();
            out.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }
}
