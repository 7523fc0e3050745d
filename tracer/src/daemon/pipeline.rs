//! The stages, built from the settings and joined in the order data flows: the source's event
//! reader, the enrich stage's owners, the core, and the exports.
use std::{collections::HashMap, io::Write, sync::Arc};

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tracing::{Level, info, warn};

use super::SummaryClock;
use crate::{
    cli::{LogSettings, Settings},
    core::{Tracker, table::SockKey},
    enrich::{owners::Owners, socket_list::Listing},
    export::{
        Fanout,
        log::{self, LogWriter, Shown},
        metrics::Metrics,
        summary::{Context, Summary},
        wall_clock::WallClock,
    },
    source::{
        clock::monotonic_ns,
        events::Owner,
        probe::{self, Part, Probe},
        ring::EventReader,
    },
};

pub(super) struct Pipeline<W: Write> {
    pub(super) reader: EventReader,
    kernel_log: aya_log::EbpfLogger<&'static dyn ::log::Log>,
    owners: Owners,
    pub(super) tracker: Tracker,
    log: LogWriter<W>,
    metrics: Option<Metrics>,
    /// Kept for last: dropping it detaches the programs.
    probe: Probe,
}

impl<W: Write> Pipeline<W> {
    /// Loads and attaches the kernel programs, and sets up every stage after them.
    pub(super) fn build(settings: &Settings, stdout: W) -> Result<Self> {
        let mut probe = probe::load(&settings.load)?;
        for (what, part) in [
            ("TIME-WAIT tracking", &probe.timewait),
            ("owners of accepted sockets", &probe.accept_owners),
        ] {
            if let Part::Off(reason) = part {
                warn!("{what} is off: {reason}");
            }
        }
        Ok(Self {
            reader: EventReader::new(probe.events()?)?,
            kernel_log: probe.logger()?,
            owners: Owners::default(),
            tracker: Tracker::new(settings.core.clone()),
            log: LogWriter::new(log_settings(&settings.log), stdout),
            metrics: settings
                .metrics
                .as_ref()
                .map(|m| Metrics::new(m.port_label)),
            probe,
        })
    }

    pub(super) fn serves_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    pub(super) fn metrics_registry(&self) -> Option<Arc<Registry>> {
        self.metrics.as_ref().map(Metrics::registry)
    }

    /// Moves every event written so far through the stages, then settles what is due by now.
    pub(super) fn advance(&mut self) {
        let (reader, owners) = (&mut self.reader, &mut self.owners);
        let (tracker, mut sink) =
            core_and_exports(&mut self.tracker, &mut self.log, &mut self.metrics);
        reader.drain(|mut event| {
            if let Some(owner) = event.owner_mut() {
                owners.describe(owner, monotonic_ns());
            }
            tracker.on_event(event, &mut sink);
        });
        tracker.tick(monotonic_ns(), &mut sink);
        self.kernel_log.flush();
    }

    /// Fixes the table where a listing of the kernel's sockets differs, after the events written
    /// while it was taken. Returns the sockets whose owners are to be looked up, by inode.
    pub(super) fn apply_listing(&mut self, listing: &Listing, seed: bool) -> Vec<(SockKey, u32)> {
        self.advance();
        let (tracker, mut sink) =
            core_and_exports(&mut self.tracker, &mut self.log, &mut self.metrics);
        let unowned = tracker.reconcile(
            &listing.sockets,
            &listing.listed,
            monotonic_ns(),
            seed,
            &mut sink,
        );
        release_free_memory();
        unowned
    }

    /// The start-up snapshot is in: a restarted daemon adopts the ages the kernel kept.
    pub(super) fn seeded(&mut self, namespaces: usize) -> Result<()> {
        if self.probe.restarted() {
            // The kernel kept recording while no daemon ran; its records give the sockets found at
            // start-up their true ages and owners.
            let adopted = self.tracker.adopt_records(&self.probe.socket_records()?);
            info!("restart: {adopted} sockets keep the ages recorded in the kernel");
        }
        info!(
            "start-up snapshot: {} sockets in {namespaces} network namespaces",
            self.tracker.tracked(),
        );
        self.refresh_metrics()?;
        // Under systemd (Type=notify): ready once tracing with the table seeded.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        Ok(())
    }

    /// Lingering timewait sockets missing from the kernel's FIN_WAIT2 list moved to TIME_WAIT.
    pub(super) fn apply_lingering_check(&mut self, listing: &Listing, listed_at_ns: u64) {
        self.advance();
        let (tracker, mut sink) =
            core_and_exports(&mut self.tracker, &mut self.log, &mut self.metrics);
        tracker.check_lingering(
            &listing.sockets,
            &listing.listed,
            listed_at_ns,
            monotonic_ns(),
            &mut sink,
        );
    }

    /// Owners found by inode, described as the enrich stage describes every owner.
    pub(super) fn owners_looked_up(
        &mut self,
        lookups: &[(SockKey, u32)],
        mut found: HashMap<u32, Owner>,
    ) {
        for owner in found.values_mut() {
            self.owners.describe(owner, monotonic_ns());
        }
        self.tracker.owners_looked_up(lookups, &found);
    }

    /// Brings the metrics, when served, up to date with the core and the kernel's counters.
    pub(super) fn refresh_metrics(&mut self) -> Result<()> {
        if let Some(metrics) = &mut self.metrics {
            metrics.refresh(&self.tracker.snapshot(), &self.probe.health()?);
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
            health: self.probe.health()?,
            last,
        };
        let summary = Summary::take(&mut self.tracker, context);
        self.log.summary(&summary);
        clock.interval_started_ns = now_ns;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        self.log.flush().context("writing events")
    }

    /// Says at exit what did not reach the daemon, if anything.
    pub(super) fn report_losses(&self) -> Result<()> {
        let health = self.probe.health()?;
        if health.lost() > 0 {
            warn!(
                "lost events: {} (the ring buffer was full; raise --ring-buffer-size)",
                health.lost()
            );
        }
        if health.skipped_all > 0 {
            warn!(
                "skipped events: {} (the kernel did not run the tracer while it was already running on the same CPU)",
                health.skipped_all
            );
        }
        if health.failed_reads > 0 {
            warn!("failed kernel reads: {}", health.failed_reads);
        }
        if health.unrecorded_sockets > 0 {
            warn!(
                "sockets without a kernel record (ages unknown): {}",
                health.unrecorded_sockets
            );
        }
        if self.reader.malformed() > 0 {
            warn!("malformed events: {}", self.reader.malformed());
        }
        Ok(())
    }
}

/// The core, and the exports its reports go to.
fn core_and_exports<'a, W: Write>(
    tracker: &'a mut Tracker,
    log: &'a mut LogWriter<W>,
    metrics: &'a mut Option<Metrics>,
) -> (&'a mut Tracker, Fanout<'a, W>) {
    let metrics = metrics.as_mut();
    (tracker, Fanout { log, metrics })
}

fn log_settings(settings: &LogSettings) -> log::Settings {
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
