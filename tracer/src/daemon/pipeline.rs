//! The stages, built from the settings and joined in the order data flows: the source's event
//! reader and maps, the enrich stage's owners, the core, and the exports.
use std::{io::Write, sync::Arc};

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tracer_common::{Tuple, TwRecord};
use tracing::{Level, info, warn};

use super::jobs::{ListenersChecked, Moved, Reconciled};
use crate::{
    cli::{LogSettings, Settings},
    core::{
        Tracker,
        interval::Context,
        losses::{LossWatch, Losses},
        stuck::OwnerLookup,
    },
    enrich::owners::{Holders, Owners},
    export::{
        log::{self, LogWriter, Shown},
        metrics::Metrics,
        wall_clock::WallClock,
    },
    source::{
        clock::monotonic_ns,
        events::KernelEvent,
        kernel_maps::{RecordMap, RecordMaps},
        probe::{self, Part, Probe},
        ring::EventReader,
        socket_owners::SocketOwners,
    },
};

/// When the daemon started and the current summary interval began.
pub(super) struct SummaryClock {
    pub(super) started_ns: u64,
    pub(super) interval_started_ns: u64,
}

pub(super) struct Pipeline<W: Write> {
    pub(super) reader: EventReader,
    kernel_log: aya_log::EbpfLogger<&'static dyn ::log::Log>,
    pub(super) maps: Arc<RecordMaps>,
    owners: Owners,
    pub(super) tracker: Tracker,
    log: LogWriter<W>,
    metrics: Option<Metrics>,
    /// The losses last said.
    losses: LossWatch,
    port_labels: bool,
    /// Kept for last: dropping it detaches the programs.
    probe: Probe,
}

impl<W: Write> Pipeline<W> {
    /// Loads and attaches the kernel programs, and sets up every stage after them.
    pub(super) fn build(settings: &Settings, stdout: W) -> Result<Self> {
        let mut probe = probe::load(&settings.load)?;
        for part in probe.parts() {
            if let Part::Off(reason) = part.state {
                warn!("{} is off: {reason}", part.what);
            }
        }
        if !probe.socket_cookies {
            warn!(
                "this kernel's tracing programs cannot ask for socket cookies (Linux 5.12): sockets are told apart by address, so sockets open before the tracer started are not tracked, the records are not checked against the kernel's socket list, and socket ages do not survive a restart"
            );
        }
        if probe.resets == Part::Attached && !probe.reset_reason_arg {
            info!(
                "reset reasons are not reported: the kernel's tcp_send_reset tracepoint passes them from Linux 6.10 on"
            );
        }
        if probe.restarted {
            info!(
                "restart: {} sockets keep the ages recorded in the kernel",
                probe.pinned_by_state.iter().sum::<i64>()
            );
        }
        Ok(Self {
            reader: EventReader::new(probe.events()?)?,
            kernel_log: probe.logger()?,
            maps: Arc::new(probe.record_maps()?),
            owners: Owners::default(),
            tracker: Tracker::new(settings.core.clone(), probe.pinned_by_state),
            log: LogWriter::new(log_settings(&settings.log, &probe.reset_reasons), stdout),
            metrics: settings
                .metrics
                .as_ref()
                .map(|m| Metrics::new(m.port_label)),
            losses: LossWatch::default(),
            port_labels: settings.load.port_labels,
            probe,
        })
    }

    pub(super) fn serves_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    pub(super) fn metrics_registry(&self) -> Option<Arc<Registry>> {
        self.metrics.as_ref().map(Metrics::registry)
    }

    /// Moves every event written so far through the stages.
    pub(super) fn advance(&mut self) {
        self.log.follow_wall_clock();
        let read_ns = monotonic_ns();
        let (owners, tracker, log) = (&mut self.owners, &mut self.tracker, &mut self.log);
        self.reader.drain(|event| match event {
            KernelEvent::Transition(mut event) => {
                if let Some(owner) = event.transition.owner.as_mut() {
                    owners.describe(owner, monotonic_ns());
                }
                tracker.on_transition(event, log);
            }
            KernelEvent::ResetAfterClose {
                cookie,
                reset_reason,
            } => tracker.reset_after_close(cookie, reset_reason),
            KernelEvent::BindFailed(mut failure) => {
                if let Some(owner) = failure.owner.as_mut() {
                    owners.describe(owner, monotonic_ns());
                }
                tracker.on_bind_failure(&failure);
            }
        });
        // Everything written before the read began has been read.
        tracker.release_closes(read_ns, log);
        tracker.report_failures(read_ns, false, log);
        self.kernel_log.flush();
    }

    /// A check of the listeners' accept queues: stalls that ended are reported; returns the
    /// listeners whose owners are to be looked up before they are reported stalled.
    pub(super) fn check_listeners(&mut self, checked: &ListenersChecked) -> Vec<OwnerLookup> {
        self.advance();
        self.tracker.listen_drops(checked.drops);
        self.tracker
            .check_listeners(&checked.listeners, checked.at_ns, &mut self.log)
    }

    /// The programs name full sockets by cookie, as the kernel's socket list does.
    pub(super) fn socket_cookies(&self) -> bool {
        self.probe.socket_cookies
    }

    /// The kernel's owner iterator for the blocking jobs, when it loaded.
    pub(super) fn socket_owners(&self) -> Result<Option<SocketOwners>> {
        self.probe.socket_owners()
    }

    /// At exit: the lines still held for a reset that could amend them.
    pub(super) fn release_held(&mut self) {
        self.tracker.release_closes(u64::MAX, &mut self.log);
        self.tracker
            .report_failures(monotonic_ns(), true, &mut self.log);
    }

    /// Looks through the kernel's index of watched sockets for stuck ones: the index first, then
    /// the events written meanwhile. Returns the sockets whose owners are to be looked up.
    pub(super) fn poll_watched(&mut self) -> Result<Vec<OwnerLookup>> {
        let mut watched = self.maps.watched()?;
        for owner in watched.iter_mut().filter_map(|w| w.owner.as_mut()) {
            self.owners.describe(owner, monotonic_ns());
        }
        self.advance();
        Ok(self
            .tracker
            .poll_watched(&watched, monotonic_ns(), &mut self.log))
    }

    /// Owners found by socket cookie for the sockets looked up, described as the enrich stage
    /// describes every owner.
    pub(super) fn owners_found(&mut self, looked_up: &[u64], mut found: Holders) {
        for owner in found.owners.values_mut() {
            self.owners.describe(owner, monotonic_ns());
        }
        self.advance();
        self.tracker
            .owners_found(looked_up, &found, monotonic_ns(), &mut self.log);
    }

    /// A reconciliation was written: counted, and the ports each destination uses judged. After
    /// the start-up snapshot, the daemon is ready.
    pub(super) fn reconciled(&mut self, done: &mut Reconciled) -> Result<()> {
        self.tracker.applied(&done.plan, &done.outcome);
        let mut ports = std::mem::take(&mut done.ports);
        for (owner, _) in ports.iter_mut().flat_map(|u| u.holders.iter_mut()) {
            self.owners.describe(owner, monotonic_ns());
        }
        self.advance();
        self.tracker.port_usage(ports, done.at_ns, &mut self.log);
        release_free_memory();
        if done.plan.seed {
            let tracked = self
                .tracker
                .snapshot(&self.probe.aggregates(false)?)
                .tracked;
            info!(
                "start-up snapshot: {tracked} sockets in {} network namespaces",
                done.namespaces
            );
            self.refresh_metrics()?;
            // Under systemd (Type=notify): ready once tracing with the records seeded.
            let status = format!(
                "tracing; start-up snapshot: {tracked} sockets in {} network namespaces",
                done.namespaces
            );
            let sockets = format!("TCPSTATE_SNAPSHOT_SOCKETS={tracked}");
            let _ = sd_notify::notify(
                false,
                &[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&status),
                    sd_notify::NotifyState::Custom(&sockets),
                ],
            );
        }
        Ok(())
    }

    /// Moves to TIME-WAIT the kernel made without a trace, found by a lingering check.
    pub(super) fn moved(&mut self, moved: &Moved) {
        self.advance();
        self.tracker
            .silently_moved(&moved.moves, &moved.written, moved.at_ns, &mut self.log);
    }

    /// Brings the metrics, when served, up to date with the core and the kernel's counters.
    pub(super) fn refresh_metrics(&mut self) -> Result<()> {
        if let Some(metrics) = &mut self.metrics {
            let kernel = self.probe.aggregates(self.port_labels)?;
            let totals = self.tracker.totals();
            metrics.refresh(
                &self.tracker.snapshot(&kernel),
                &totals.transitions(&kernel),
                &totals.durations(&kernel),
                &kernel,
                &self.probe.health()?,
                &self.probe.seen()?,
            );
        }
        Ok(())
    }

    /// Writes a summary and starts the next interval.
    pub(super) fn summarize(&mut self, clock: &mut SummaryClock, last: bool) -> Result<()> {
        let now_ns = monotonic_ns();
        let context = Context {
            now_ns,
            started_ns: clock.started_ns,
            interval_started_ns: clock.interval_started_ns,
            seen: self.probe.seen()?,
            health: self.probe.health()?,
            last,
        };
        let kernel = self.probe.aggregates(false)?;
        let timewaits: Vec<(Tuple, TwRecord)> = self.maps.all(RecordMap::Timewait)?;
        let mut summary = self.tracker.close_interval(&kernel, &timewaits, context);
        // The processes that accept: their names and cgroups.
        for wait in &mut summary.accept_waits {
            if let Some(owner) = &mut wait.owner {
                self.owners.describe(owner, now_ns);
            }
        }
        self.log.summary(&summary);
        clock.interval_started_ns = now_ns;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        self.log.flush().context("writing events")
    }

    /// Says what did not reach the daemon, when it grew since the last time it was said.
    pub(super) fn check_health(&mut self, last: bool) -> Result<()> {
        let losses = Losses {
            kernel: self.probe.health()?,
            malformed_events: self.reader.malformed(),
        };
        if let Some(report) = self.losses.check(losses, monotonic_ns(), last) {
            self.log.health(&report);
        }
        Ok(())
    }
}

fn log_settings(settings: &LogSettings, reset_reasons: &[String]) -> log::Settings {
    log::Settings {
        format: settings.format,
        clock: WallClock::now(),
        shown: Shown {
            transitions: settings.transitions
                && tracing::enabled!(target: "tcpstate::transition", Level::INFO),
            stuck: tracing::enabled!(target: "tcpstate::stuck", Level::WARN),
            unstuck: tracing::enabled!(target: "tcpstate::unstuck", Level::INFO),
            summaries: tracing::enabled!(target: "tcpstate::summary", Level::INFO),
        },
        color: settings.color,
        reset_reasons: reset_reasons.into(),
    }
}

/// Start-up parses the kernel's BTF (megabytes) once, and each reconciliation lists every socket:
/// hand the freed heap back to the system so the long-running daemon stays small.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; no allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
