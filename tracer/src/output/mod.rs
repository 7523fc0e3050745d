//! Writes the daemon's events as log lines: aligned text for people, one JSON object per line for
//! pipelines. Lines are buffered and flushed once per batch; the first write error is kept for
//! the daemon to act on.
mod json;
mod text;

use std::{
    cell::RefCell,
    io::{self, Write},
    rc::Rc,
};

use crate::{
    cli::LogFormat,
    clock::WallClock,
    events::{Process, Transition},
    owners::{OwnerFilter, OwnerInfo, Owners},
    summary::Summary,
    tracker::{Sink, StuckReport, UnstuckReport},
};

/// How lines are written, and which are.
pub struct Settings {
    pub format: LogFormat,
    pub clock: WallClock,
    pub shown: Shown,
    /// `--pid`, `--comm`, `--cgroup`: only sockets of these owners are reported.
    pub owner_filter: OwnerFilter,
    /// Colour the level of text lines (stdout is a terminal); plain otherwise.
    pub color: bool,
}

/// Which kinds of lines are written, from `--log-transitions`, `--log-level` and RUST_LOG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub transitions: bool,
    pub stuck: bool,
    pub unstuck: bool,
    pub summaries: bool,
}

impl Shown {
    pub const ALL: Shown = Shown {
        transitions: true,
        stuck: true,
        unstuck: true,
        summaries: true,
    };
}

pub struct Output<W: Write> {
    settings: Settings,
    owners: Rc<RefCell<Owners>>,
    out: io::BufWriter<W>,
    header_written: bool,
    error: Option<io::Error>,
}

impl<W: Write> Output<W> {
    pub fn new(settings: Settings, owners: Rc<RefCell<Owners>>, out: W) -> Self {
        Self {
            settings,
            owners,
            out: io::BufWriter::with_capacity(64 << 10, out),
            header_written: false,
            error: None,
        }
    }

    pub fn summary(&mut self, summary: &Summary) {
        if !self.settings.shown.summaries {
            return;
        }
        let owners = self.owners.borrow();
        let reminders: Vec<(&StuckReport, Option<OwnerInfo>)> = summary
            .reminders
            .iter()
            .map(|r| (r, r.owner.as_ref().map(|o| owners.describe(o))))
            .filter(|(_, info)| self.settings.owner_filter.matches(info.as_ref()))
            .collect();
        let clock = &self.settings.clock;
        let result = match self.settings.format {
            LogFormat::Json => json::summary(&mut self.out, clock, summary, &reminders),
            LogFormat::Text => text::summary(&mut self.out, clock, summary, &reminders),
        };
        drop(owners);
        self.keep(result);
    }

    /// The owner as reported, if it passes the owner filter.
    fn wanted(&self, owner: &Option<Process>) -> Option<Option<OwnerInfo>> {
        let info = owner.as_ref().map(|o| self.owners.borrow().describe(o));
        self.settings
            .owner_filter
            .matches(info.as_ref())
            .then_some(info)
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
        if !self.settings.shown.transitions {
            return;
        }
        let Some(owner) = self.wanted(&t.owner) else {
            return;
        };
        let clock = &self.settings.clock;
        let result = match self.settings.format {
            LogFormat::Json => json::transition(&mut self.out, clock, t, &owner),
            LogFormat::Text => {
                let header = if self.header_written {
                    Ok(())
                } else {
                    self.header_written = true;
                    text::transition_header(&mut self.out)
                };
                header.and_then(|()| text::transition(&mut self.out, clock, t, &owner))
            }
        };
        self.keep(result);
    }

    fn stuck(&mut self, report: &StuckReport) {
        if !self.settings.shown.stuck {
            return;
        }
        let Some(owner) = self.wanted(&report.owner) else {
            return;
        };
        let clock = &self.settings.clock;
        let result = match self.settings.format {
            LogFormat::Json => json::stuck(&mut self.out, clock, report, &owner),
            LogFormat::Text => {
                text::stuck(&mut self.out, clock, report, &owner, self.settings.color)
            }
        };
        self.keep(result);
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        if !self.settings.shown.unstuck {
            return;
        }
        let Some(owner) = self.wanted(&report.owner) else {
            return;
        };
        let clock = &self.settings.clock;
        let result = match self.settings.format {
            LogFormat::Json => json::unstuck(&mut self.out, clock, report, &owner),
            LogFormat::Text => text::unstuck(&mut self.out, clock, report, &owner),
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
            events: crate::tracker::EventCounts {
                transitions: 12,
                timewait: 1,
                accepted: 2,
            },
            lost: (0, 0),
            skipped: (1, 2),
            evictions: 0,
            reconciliation: Reconciliation {
                runs: 1,
                added: 0,
                removed: 1,
                corrected: 0,
            },
        }
    }

    pub fn settings(format: LogFormat) -> Settings {
        Settings {
            format,
            clock: clock(),
            shown: Shown::ALL,
            owner_filter: OwnerFilter::default(),
            color: false,
        }
    }

    /// Renders through the real writer: one event kind at a time. The owner (pid 4242) is
    /// described as process `curl` in cgroup `/system.slice/curl.service`.
    pub fn render_with(
        settings: Settings,
        write: impl FnOnce(&mut Output<&mut Vec<u8>>),
    ) -> String {
        let mut owners = Owners::default();
        owners.assume(4242, Comm::new("curl"), Some("/system.slice/curl.service"));
        let mut buf = Vec::new();
        {
            let mut out = Output::new(settings, Rc::new(RefCell::new(owners)), &mut buf);
            write(&mut out);
            out.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    pub fn render(format: LogFormat, write: impl FnOnce(&mut Output<&mut Vec<u8>>)) -> String {
        render_with(settings(format), write)
    }

    #[test]
    fn owner_filters_select_lines() {
        let mut only_nginx = settings(LogFormat::Json);
        only_nginx.owner_filter.comms = vec!["nginx".into()];
        let text = render_with(only_nginx, |o| {
            o.transition(&sample(Family::Ipv4));
            o.stuck(&stuck());
            o.unstuck(&unstuck());
            o.summary(&summary());
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"reminders\":[]"), "{text}");
        let mut only_curl = settings(LogFormat::Json);
        only_curl.owner_filter.cgroup_prefix = Some("/system.slice/".into());
        let text = render_with(only_curl, |o| o.stuck(&stuck()));
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn quiet_mode_writes_no_transitions() {
        let mut buf = Vec::new();
        {
            let quiet = Settings {
                shown: Shown {
                    transitions: false,
                    ..Shown::ALL
                },
                ..settings(LogFormat::Json)
            };
            let mut out = Output::new(quiet, Rc::new(RefCell::new(Owners::default())), &mut buf);
            out.transition(&sample(Family::Ipv4));
            out.stuck(&stuck());
            out.flush().unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"event\":\"stuck\""));
    }

    #[test]
    fn warn_level_keeps_only_stuck_reports() {
        let warn_only = Settings {
            shown: Shown {
                transitions: false,
                stuck: true,
                unstuck: false,
                summaries: false,
            },
            ..settings(LogFormat::Text)
        };
        let text = render_with(warn_only, |o| {
            o.transition(&sample(Family::Ipv4));
            o.stuck(&stuck());
            o.unstuck(&unstuck());
            o.summary(&summary());
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" WARN  stuck"));
        assert!(!text.contains('\x1b'), "plain when not a terminal");
        let colored = Settings {
            color: true,
            ..settings(LogFormat::Text)
        };
        assert!(render_with(colored, |o| o.stuck(&stuck())).contains("\x1b[33mWARN\x1b[0m"));
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
        let mut out = Output::new(settings(LogFormat::Json), Rc::default(), Broken);
        out.stuck(&stuck());
        assert_eq!(out.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
