//! The orchestrator: builds the stages from the settings ([`pipeline`]), runs the schedule (stuck
//! deadlines, summaries, reconciliations, lingering checks, metric refreshes) and the blocking
//! scans beside it ([`jobs`]), and stops cleanly.
mod jobs;
mod pipeline;

use std::{io::Write, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval, interval_at},
};
use tracing::info;

use self::{
    jobs::{Jobs, finished},
    pipeline::Pipeline,
};
use crate::{
    cli::{Config, Schedule},
    export::endpoint,
    source::clock::monotonic_ns,
};

/// How often, at most, lingering FIN-WAIT-2 timewait sockets are checked for a silent move to
/// TIME_WAIT. A check lists the kernel's FIN_WAIT2 sockets, which walks its whole connection
/// table: on a host with many sockets the checks are spaced so they take at most 2 % of a CPU.
const LINGERING_CHECK: Duration = Duration::from_secs(1);
const LINGERING_CHECK_CPU_SHARE: u32 = 50;
/// Gauges are brought up to date this often when metrics are served.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

pub async fn run(config: Config, stdout: impl Write, stdout_is_terminal: bool) -> Result<()> {
    let settings = config.settings(stdout_is_terminal);
    // From the start, so a stop requested during start-up is a clean stop too.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Bind first: a taken address is a configuration error, reported before anything loads.
    let endpoint = match &settings.metrics {
        Some(metrics) => Some(endpoint::bind(metrics.addr).await?),
        None => None,
    };
    let mut pipeline = Pipeline::build(&settings, stdout)?;
    if let (Some(listener), Some(registry)) = (endpoint, pipeline.metrics_registry()) {
        tokio::spawn(endpoint::serve(listener, registry));
    }
    info!("attached; tracing TCP state transitions");

    let mut timers = Timers::start(&settings.schedule);
    let mut jobs = Jobs::new(settings.load.filter.clone());
    // The start-up snapshot: the programs are attached already, so a socket changing meanwhile
    // is seen by both and the events win.
    jobs.start_listing(&mut pipeline.tracker, true);
    loop {
        let deadline = pipeline.tracker.next_deadline().map(instant_of);
        tokio::select! {
            ready = pipeline.reader.readable() => ready?,
            _ = timers.poll.tick() => {}
            _ = sleep_until(deadline) => {}
            _ = timers.summaries.tick() => {
                pipeline.advance();
                pipeline.summarize(&mut timers.summary_clock, false)?;
            }
            _ = timers.reconciles.tick() => jobs.start_listing(&mut pipeline.tracker, false),
            _ = tokio::time::sleep_until(timers.next_lingering_check), if !jobs.checking_lingering() => {
                if pipeline.tracker.has_lingering() {
                    jobs.start_lingering_check();
                } else {
                    timers.next_lingering_check = Instant::now() + LINGERING_CHECK;
                }
            }
            _ = timers.refreshes.tick(), if pipeline.serves_metrics() => pipeline.refresh_metrics()?,
            done = finished(&mut jobs.listing) => {
                let (seed, listing) = done?;
                let listing = listing.context("listing the kernel's TCP sockets")?;
                jobs.look_up_owners(pipeline.apply_listing(&listing, seed));
                jobs.remember_namespaces(listing);
                if seed {
                    pipeline.seeded(jobs.namespace_count())?;
                }
            }
            done = finished(&mut jobs.lingering) => {
                let (started, listed_at_ns, listing) = done?;
                let listing = listing?;
                pipeline.apply_lingering_check(&listing, listed_at_ns);
                timers.next_lingering_check =
                    started + LINGERING_CHECK.max(listing.cpu * LINGERING_CHECK_CPU_SHARE);
            }
            done = finished(&mut jobs.owner_lookup) => {
                let (lookups, found) = jobs.owners_found(done);
                pipeline.owners_looked_up(&lookups, found);
                jobs.look_up_owners(Vec::new());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(timers.end) => break,
        }
        pipeline.advance();
        pipeline.flush()?;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    pipeline.advance();
    pipeline.summarize(&mut timers.summary_clock, true)?;
    pipeline.flush()?;
    pipeline.report_losses()
}

/// The schedule's clocks.
struct Timers {
    /// Reads the ring buffer at least this often (the kernel wakes the daemon only per batch).
    poll: Interval,
    summaries: Interval,
    reconciles: Interval,
    refreshes: Interval,
    next_lingering_check: Instant,
    end: Option<Instant>,
    summary_clock: SummaryClock,
}

impl Timers {
    fn start(schedule: &Schedule) -> Self {
        let now = Instant::now();
        let every = |period: Duration, first: Instant| {
            let mut timer = interval_at(first, period);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        };
        let mut poll = interval(schedule.poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started_ns = monotonic_ns();
        Self {
            poll,
            summaries: every(schedule.summaries, now + schedule.summaries),
            reconciles: every(schedule.reconciliations, now + schedule.reconciliations),
            refreshes: every(METRICS_REFRESH, now),
            next_lingering_check: now + LINGERING_CHECK,
            end: schedule.duration.map(|d| now + d),
            summary_clock: SummaryClock {
                started_ns,
                interval_started_ns: started_ns,
            },
        }
    }
}

/// When the daemon started and the current summary interval began.
pub(super) struct SummaryClock {
    pub(super) started_ns: u64,
    pub(super) interval_started_ns: u64,
}

/// The tokio instant of a CLOCK_MONOTONIC time (tokio's clock is CLOCK_MONOTONIC too).
fn instant_of(mono_ns: u64) -> Instant {
    Instant::now() + Duration::from_nanos(mono_ns.saturating_sub(monotonic_ns()))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
