//! The orchestrator: builds the stages from the settings ([`pipeline`]), runs the schedule (looks
//! through the kernel's index of watched sockets when one may turn stuck, summaries,
//! reconciliations, lingering checks, metric refreshes) and the blocking jobs beside it
//! ([`jobs`], over the kernel's maps as the core's port: [`records`]), and stops cleanly.
mod check;
mod jobs;
mod pipeline;
mod records;

use std::{io::Write, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval, interval_at},
};
use tracing::info;

use self::{
    jobs::{Jobs, finished},
    pipeline::{Pipeline, SummaryClock},
};
use crate::{
    cli::{Config, Schedule},
    export::endpoint,
    source::{
        clock::monotonic_ns,
        privileges::{self, Keep},
    },
};

/// How often, at most, lingering FIN-WAIT-2 timewait sockets are checked for a silent move to
/// TIME_WAIT. A check lists the kernel's FIN_WAIT2 sockets, which walks its whole connection
/// table.
const LINGERING_CHECK: Duration = Duration::from_secs(1);
/// How often, at most, listeners' accept queues are checked.
const LISTENER_CHECK: Duration = Duration::from_secs(2);
/// Background jobs (reconciliations, lingering and listener checks) are spaced by this many times
/// the CPU the last one took, so that on a host with very many sockets each takes at most 2 % of a
/// CPU on average.
const BACKGROUND_CPU_SHARE: u32 = 50;
/// Gauges are brought up to date this often when metrics are served.
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How often losses are looked for: soon enough to be told while they happen, seldom enough that
/// a storm of them is one line in ten seconds.
const HEALTH_CHECK: Duration = Duration::from_secs(10);

pub async fn run(config: Config, stdout: impl Write, stdout_is_terminal: bool) -> Result<()> {
    let settings = config.settings(stdout_is_terminal);
    if settings.check {
        return check::run(&settings, stdout);
    }
    // From the start, so a stop requested during start-up is a clean stop too.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Bind first: a taken address or an unusable web config is a configuration error, reported
    // before anything loads.
    let endpoint = match &settings.metrics {
        Some(metrics) => {
            let web = endpoint::WebConfig::open(metrics.web_config.as_deref())?;
            let listener = endpoint::bind(metrics.addr).await?;
            Some((listener, web, metrics.max_connections))
        }
        None => None,
    };
    let mut pipeline = Pipeline::build(&settings, stdout)?;
    let mut jobs = Jobs::new(
        pipeline.maps.clone(),
        pipeline.socket_owners()?,
        settings.load.filter.clone(),
        pipeline.tracker.thresholds().clone(),
        pipeline.socket_cookies(),
        settings.core.port_pressure,
    );
    // Everything is loaded and attached, and no other thread runs yet: from here on, only the
    // capabilities the periodic work uses.
    drop_capabilities(&settings.keep)?;
    if let (Some((listener, web, max)), Some(registry)) = (endpoint, pipeline.metrics_registry()) {
        tokio::spawn(endpoint::serve(listener, registry, web, max));
    }
    info!("attached; tracing TCP state transitions");
    // The structured form of that line, for whoever started the daemon (tests, benchmarks; systemd
    // shows the status).
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Status("attached; taking the start-up snapshot"),
            sd_notify::NotifyState::Custom("TCPSTATE_ATTACHED=1"),
        ],
    );

    let mut timers = Timers::start(&settings.schedule);
    // The start-up snapshot: the programs are attached already, so a socket changing meanwhile
    // is recorded by them, and their records win.
    jobs.start_reconciliation(true);
    let mut seeded = false;
    loop {
        // Stuck sockets are looked for once the snapshot is in, then when one may be due.
        let poll = pipeline
            .tracker
            .next_poll()
            .map(instant_of)
            .filter(|_| seeded);
        tokio::select! {
            ready = pipeline.reader.readable() => ready?,
            _ = timers.poll.tick() => {}
            _ = sleep_until(poll), if seeded => {
                let lookups = pipeline.poll_watched()?;
                jobs.look_up_owners(lookups);
            }
            _ = timers.summaries.tick() => {
                pipeline.advance();
                pipeline.summarize(&mut timers.summary_clock, false)?;
            }
            _ = tokio::time::sleep_until(timers.next_reconciliation), if jobs.reconciliation.is_none() => {
                jobs.start_reconciliation(false);
            }
            _ = tokio::time::sleep_until(timers.next_lingering_check), if jobs.lingering.is_none() => {
                jobs.start_lingering_check();
            }
            _ = timers.refreshes.tick(), if pipeline.serves_metrics() => pipeline.refresh_metrics()?,
            _ = timers.health.tick() => pipeline.check_health(false)?,
            done = finished(&mut jobs.reconciliation) => {
                let mut done = done?;
                // A safety net for what the kernel could not record: at most a small share of a
                // CPU on hosts with very many sockets.
                timers.next_reconciliation = Instant::now()
                    + settings.schedule.reconciliations.max(done.cpu * BACKGROUND_CPU_SHARE);
                pipeline.reconciled(&mut done)?;
                if done.plan.seed {
                    seeded = true;
                    let lookups = pipeline.poll_watched()?;
                    jobs.look_up_owners(lookups);
                }
            }
            _ = tokio::time::sleep_until(timers.next_listener_check),
                if jobs.listeners.is_none() && pipeline.tracker.watches_listeners() => {
                jobs.start_listener_check(pipeline.tracker.half_open_listing());
            }
            done = finished(&mut jobs.listeners) => {
                let checked = done?;
                let lookups = pipeline.check_listeners(&checked);
                jobs.look_up_owners(lookups);
                timers.next_listener_check = Instant::now()
                    + LISTENER_CHECK.max(checked.cpu * BACKGROUND_CPU_SHARE);
            }
            done = finished(&mut jobs.lingering) => {
                let moved = done?;
                tracing::debug!(
                    "lingering check: {} moved to TIME_WAIT, {:?} of CPU",
                    moved.moves.len(),
                    moved.cpu
                );
                pipeline.moved(&moved);
                timers.next_lingering_check = Instant::now()
                    + LINGERING_CHECK.max(moved.cpu * BACKGROUND_CPU_SHARE);
            }
            done = finished(&mut jobs.owner_lookup) => {
                let (looked_up, found) = done.unwrap_or_else(|err| {
                    tracing::warn!("looking up socket owners: {err:#}");
                    (jobs.looked_up(), Default::default())
                });
                pipeline.owners_found(&looked_up, found);
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
    pipeline.release_held();
    pipeline.summarize(&mut timers.summary_clock, true)?;
    pipeline.check_health(true)?;
    pipeline.flush()
}

/// Keeps only the capabilities `--capabilities-keep` names (and CAP_BPF), and says which.
fn drop_capabilities(keep: &Keep) -> Result<()> {
    let Keep::Only(keep) = keep else {
        return Ok(());
    };
    let (kept, others) = privileges::keep_only(keep)?;
    let names: Vec<String> = kept.iter().map(ToString::to_string).collect();
    info!(
        "capabilities after start-up: {}",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    );
    if others > 0 {
        tracing::warn!("{others} threads started before the capabilities were dropped keep theirs");
    }
    Ok(())
}

/// The schedule's clocks.
struct Timers {
    /// Reads the ring buffer at least this often (the kernel wakes the daemon only per batch).
    poll: Interval,
    summaries: Interval,
    next_reconciliation: Instant,
    refreshes: Interval,
    /// Says losses soon after they happen, at most once a check.
    health: Interval,
    next_lingering_check: Instant,
    next_listener_check: Instant,
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
            next_reconciliation: now + schedule.reconciliations,
            refreshes: every(METRICS_REFRESH, now),
            health: every(HEALTH_CHECK, now + HEALTH_CHECK),
            next_lingering_check: now + LINGERING_CHECK,
            next_listener_check: now + LISTENER_CHECK,
            end: schedule.duration.map(|d| now + d),
            summary_clock: SummaryClock {
                started_ns,
                interval_started_ns: started_ns,
            },
        }
    }
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
