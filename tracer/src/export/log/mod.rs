//! Writes the core's reports as log lines: aligned text for people, one JSON object per line for
//! pipelines. Each report becomes one typed line (`model`), which `emit` writes in the chosen
//! form. Lines are built in a reused buffer and copied into a 64 KiB one flushed once per batch;
//! the first write error is kept for the daemon to act on. Transition lines, which can come by
//! the hundred thousand a second, are built by hand (`line`); the rare ones through `format!`
//! and serde.
#[cfg(test)]
mod bench;
#[cfg(test)]
mod equivalence;
mod forms;
mod hex;
mod ip;
mod json;
mod line;
mod model;
mod rfc3339;
#[cfg(test)]
mod schema;
#[cfg(test)]
mod strategies;
mod text;
mod text_ports;
mod text_summary;

use std::{
    io::{self, Write},
    sync::Arc,
    time::Duration,
};

pub(crate) use self::forms::Shown;
use self::{
    forms::LogLine,
    line::Line,
    model::{
        BindFailedLine, ConnectFailedLine, HalfOpenLine, HealthLine, PortPressureLine,
        PortRelievedLine, RecoveredLine, StalledLine, StuckLine, SummaryLine, TransitionLine,
        UnstuckLine,
    },
    text::TextStyle,
};
use super::wall_clock::WallClock;
use crate::{
    core::{
        interval::Summary,
        losses::HealthReport,
        report::{
            CallFailed, FailedCall, ListenerHalfOpen, ListenerRecovered, ListenerStalled,
            PortPressureRelieved, PortPressureReport, Sink, StuckReport, TransitionInfo,
            UnstuckReport,
        },
    },
    source::events::Transition,
};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// How lines are written, and which are.
pub(crate) struct Settings {
    pub(crate) format: LogFormat,
    pub(crate) clock: WallClock,
    pub(crate) shown: Shown,
    /// Colour the level of text lines (stdout is a terminal); plain otherwise.
    pub(crate) color: bool,
    /// The kernel's names of its reset reasons, by number.
    pub(crate) reset_reasons: Arc<[String]>,
}

pub(crate) struct LogWriter<W: Write> {
    clock: WallClock,
    /// The kernel's names of its reset reasons, by number.
    reset_reasons: Arc<[String]>,
    output: Output<W>,
}

/// Where lines go, in which form, and which.
struct Output<W: Write> {
    format: LogFormat,
    shown: Shown,
    style: TextStyle,
    out: io::BufWriter<W>,
    error: Option<io::Error>,
    /// The line being built, reused so that a line allocates nothing.
    line: Line,
}

/// A step of the wall clock said at level info: one second.
const NOTICEABLE_STEP_NS: u64 = 1_000_000_000;

impl<W: Write> LogWriter<W> {
    pub(crate) fn new(settings: Settings, out: W) -> Self {
        Self {
            clock: settings.clock,
            reset_reasons: settings.reset_reasons,
            output: Output {
                format: settings.format,
                shown: settings.shown,
                style: TextStyle {
                    color: settings.color,
                    header_written: false,
                },
                out: io::BufWriter::with_capacity(64 << 10, out),
                error: None,
                line: Line::new(),
            },
        }
    }

    /// Timestamps follow a step of the wall clock from the next line on; the step is said once.
    pub(crate) fn follow_wall_clock(&mut self) {
        if let Some(step_ns) = self.clock.follow() {
            let by = humantime::format_duration(Duration::from_millis(
                step_ns.unsigned_abs() / 1_000_000,
            ));
            let way = if step_ns < 0 { "back" } else { "forward" };
            // Some hypervisors' guest agents keep the clock right by steps of milliseconds, many
            // a second: only a step a reader of the lines would notice is said.
            if step_ns.unsigned_abs() >= NOTICEABLE_STEP_NS {
                tracing::info!("the wall clock was set {way} by {by}: timestamps follow it");
            } else {
                tracing::debug!("the wall clock was set {way} by {by}: timestamps follow it");
            }
        }
    }

    pub(crate) fn summary(&mut self, summary: &Summary) {
        self.output.emit(&SummaryLine::new(&self.clock, summary));
    }

    pub(crate) fn health(&mut self, report: &HealthReport) {
        self.output.emit(&HealthLine::new(&self.clock, report));
    }

    /// Flushes buffered lines; returns the first write error since the last call.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

impl<W: Write> Output<W> {
    /// Writes a line in the chosen form, if its kind is shown.
    fn emit(&mut self, l: &impl LogLine) {
        if !l.shown(&self.shown) {
            return;
        }
        self.line.clear();
        let built = match self.format {
            LogFormat::Json => l.json(&mut self.line),
            LogFormat::Text => l.text(&mut self.line, &mut self.style),
        };
        // One copy into the 64 KiB buffer; the system call comes once per batch.
        let result = built.and_then(|()| self.out.write_all(self.line.as_bytes()));
        self.keep(result);
    }

    fn flush(&mut self) -> io::Result<()> {
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

impl<W: Write> Sink for LogWriter<W> {
    fn transition(&mut self, t: &Transition, info: TransitionInfo) {
        // Checked before the line is built: most transitions are not written.
        if !self.output.shown.transitions || !info.selected {
            return;
        }
        let line = TransitionLine::new(&self.clock, t, &self.reset_reasons);
        self.output.emit(&line);
    }

    fn stuck(&mut self, report: &StuckReport) {
        self.output.emit(&StuckLine::new(&self.clock, report));
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        self.output.emit(&UnstuckLine::new(&self.clock, report));
    }

    fn listener_stalled(&mut self, report: &ListenerStalled) {
        self.output.emit(&StalledLine::new(&self.clock, report));
    }

    fn listener_half_open(&mut self, report: &ListenerHalfOpen) {
        self.output.emit(&HalfOpenLine::new(&self.clock, report));
    }

    fn listener_recovered(&mut self, report: &ListenerRecovered) {
        self.output.emit(&RecoveredLine::new(&self.clock, report));
    }

    fn port_pressure(&mut self, report: &PortPressureReport) {
        self.output
            .emit(&PortPressureLine::new(&self.clock, report));
    }

    fn port_pressure_relieved(&mut self, report: &PortPressureRelieved) {
        self.output
            .emit(&PortRelievedLine::new(&self.clock, report));
    }

    fn call_failed(&mut self, report: &CallFailed) {
        match report.call {
            FailedCall::Connect => self
                .output
                .emit(&ConnectFailedLine::connect(&self.clock, report)),
            FailedCall::Bind => self.output.emit(&BindFailedLine::bind(&self.clock, report)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        net::IpAddr,
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use tracer_common::{End, TcpState};

    use super::*;
    use crate::{
        core::interval::{AcceptWait, Connects},
        core::{report::Reconciliation, totals::Percentiles},
        owner::{Comm, Owner},
        source::{
            events::{Endpoints, Family},
            health::{KernelHealth, Seen},
        },
    };

    pub(crate) const ALL: Shown = Shown {
        transitions: true,
        stuck: true,
        unstuck: true,
        summaries: true,
    };

    pub(crate) const SELECTED: TransitionInfo = TransitionInfo {
        service_port: 8080,
        selected: true,
    };

    pub(crate) fn clock() -> WallClock {
        WallClock::fixed(0, UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    pub(crate) fn endpoints(family: Family) -> Endpoints {
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

    /// Process `curl` (pid 4242) in cgroup `/system.slice/curl.service`.
    pub(crate) fn owner() -> Option<Owner> {
        owner_in("/system.slice/curl.service")
    }

    /// Process `curl` (pid 4242) in this cgroup, named as the enrich stage names it.
    pub(crate) fn owner_in(path: &str) -> Option<Owner> {
        Some(Owner {
            pid: 4242,
            comm: Comm::new("curl"),
            cgroup: Some(Arc::new(crate::enrich::containers::describe(
                path.to_owned(),
            ))),
        })
    }

    /// The sample socket closing with a reset of its own, for unread data.
    pub(crate) fn reset_close() -> Transition {
        Transition {
            old: TcpState::Established,
            new: TcpState::Close,
            syn_retransmits: None,
            end: Some(crate::source::events::ConnectionEnd {
                end: End::ResetSent,
                error: None,
                reset_reason: Some(11),
            }),
            ..sample(Family::Ipv4)
        }
    }

    pub(crate) fn sample(family: Family) -> Transition {
        Transition {
            ts_ns: 1_500_000_000,
            cookie: 0x1a3f7,
            object: 0x3a5c_0e11_7f20_4c80,
            endpoints: endpoints(family),
            old: TcpState::SynSent,
            new: TcpState::Established,
            prev_state_ns: Some(52_125),
            owner: owner(),
            end: None,
            syn_retransmits: Some(0),
        }
    }

    pub(crate) fn stuck() -> StuckReport {
        StuckReport {
            ts_ns: 2_000_000_000,
            cookie: 0x1a3f7,
            endpoints: endpoints(Family::Ipv4),
            state: TcpState::CloseWait,
            age_ns: 62_500_000_000,
            age_known: true,
            threshold_ns: 60_000_000_000,
            accepted: None,
            owner: owner(),
        }
    }

    pub(crate) fn unstuck() -> UnstuckReport {
        UnstuckReport {
            ts_ns: 3_000_000_000,
            cookie: 0x1a3f7,
            endpoints: endpoints(Family::Ipv4),
            state: TcpState::CloseWait,
            new: Some(TcpState::LastAck),
            duration_ns: 75_250_000_000,
            age_known: true,
            owner: owner(),
        }
    }

    pub(crate) fn summary() -> Summary {
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
            ends: vec![(End::Fin, 2), (End::Refused, 1)],
            interval_ends: vec![(End::Fin, 1), (End::Refused, 0)],
            connect_failures: vec![("refused".into(), 1), ("EHOSTUNREACH".into(), 1)],
            interval_connect_failures: vec![("EHOSTUNREACH".into(), 1)],
            bind_failures: vec![("EADDRINUSE".into(), 2)],
            interval_bind_failures: vec![],
            connects: Connects {
                first_try: Some(p),
                retransmitted: None,
            },
            interval_connects: Connects {
                first_try: Some(Percentiles { count: 1, ..p }),
                retransmitted: None,
            },
            stuck: 1,
            stuck_by_state: vec![(TcpState::CloseWait, 1)],
            stalled_listeners: 0,
            listener_stalls: 0,
            half_open_listeners: 0,
            half_open_reports: 0,
            synack_retransmits_by_listener: Vec::new(),
            listen_drops: Default::default(),
            reminders: vec![stuck()],
            reminders_omitted: 0,
            time_wait_by_remote_port: vec![(8080, 4)],
            port_pressure: Default::default(),
            accept_waits: vec![AcceptWait {
                netns: 4026531840,
                port: 8080,
                owner: owner(),
                waits: Percentiles { count: 2, ..p },
            }],
            seen: Seen {
                transitions: 12,
                timewait_ends: 1,
                accepts: 2,
                accepts_untimed: 0,
                syn_retransmits: 2,
                synack_retransmits: 0,
            },
            health: KernelHealth {
                skipped_transitions: 1,
                skipped_all: 2,
                ..KernelHealth::default()
            },
            reconciliation: Reconciliation {
                runs: 1,
                added: 0,
                removed: 1,
                corrected: 0,
            },
        }
    }

    pub(crate) fn settings(format: LogFormat) -> Settings {
        Settings {
            format,
            clock: clock(),
            shown: ALL,
            color: false,
            reset_reasons: reset_reasons(),
        }
    }

    /// The first of the kernel's reset reasons, as 6.18 numbers them.
    pub(crate) fn reset_reasons() -> Arc<[String]> {
        [
            "not_specified",
            "no_socket",
            "tcp_invalid_ack_sequence",
            "tcp_rfc7323_paws",
            "tcp_too_old_ack",
            "tcp_ack_unsent_data",
            "tcp_flags",
            "tcp_old_ack",
            "tcp_abort_on_data",
            "tcp_timewait_socket",
            "invalid_syn",
            "tcp_abort_on_close",
        ]
        .map(str::to_owned)
        .into()
    }

    /// Renders through the real writer.
    pub(crate) fn render_with(
        settings: Settings,
        write: impl FnOnce(&mut LogWriter<&mut Vec<u8>>),
    ) -> String {
        let mut buf = Vec::new();
        {
            let mut out = LogWriter::new(settings, &mut buf);
            write(&mut out);
            out.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    pub(crate) fn render(
        format: LogFormat,
        write: impl FnOnce(&mut LogWriter<&mut Vec<u8>>),
    ) -> String {
        render_with(settings(format), write)
    }

    #[test]
    fn unselected_transitions_are_not_written() {
        let text = render(LogFormat::Json, |o| {
            o.transition(&sample(Family::Ipv4), SELECTED);
            o.transition(
                &sample(Family::Ipv6),
                TransitionInfo {
                    selected: false,
                    ..SELECTED
                },
            );
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"family\":\"ipv4\""));
    }

    #[test]
    fn quiet_mode_writes_no_transitions() {
        let quiet = Settings {
            shown: Shown {
                transitions: false,
                ..ALL
            },
            ..settings(LogFormat::Json)
        };
        let text = render_with(quiet, |o| {
            o.transition(&sample(Family::Ipv4), SELECTED);
            o.stuck(&stuck());
        });
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
            o.transition(&sample(Family::Ipv4), SELECTED);
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
        let mut out = LogWriter::new(settings(LogFormat::Json), Broken);
        out.stuck(&stuck());
        assert_eq!(out.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
