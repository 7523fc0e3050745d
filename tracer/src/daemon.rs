//! The daemon's loop: load, seed the socket table from the kernel's lists, then read events until
//! the duration ends or a signal arrives, waking also for stuck deadlines, summaries and
//! reconciliations; at the end, a last summary, and everything is detached.
use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    io::Write,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at},
};
use tracer_common::TcpState;
use tracing::{Level, info, warn};

use crate::{
    cli::Config,
    clock::{WallClock, monotonic_ns},
    detect::nanos,
    events::{KernelEvent, decode},
    filter::SocketFilter,
    kernel_view,
    loader::{self, LoadSettings, Probe},
    metrics::{Both, KernelTotals, Metrics},
    metrics_server,
    output::{Output, Settings, Shown},
    owners::Owners,
    summary::{Context, Summary},
    tracker::{Sink, Tracker},
};

/// The program that reports transitions.
const TRANSITIONS_PROGRAM: &str = "inet_sock_set_state";

/// How often, at most, lingering FIN-WAIT-2 timewait sockets are checked for a silent move to
/// TIME_WAIT. A check lists the kernel's FIN_WAIT2 sockets, which walks its whole connection
/// table: on a host with many sockets the checks are spaced so they take at most 2 % of a CPU.
const LINGERING_CHECK: Duration = Duration::from_secs(1);
const LINGERING_CHECK_CPU_SHARE: u32 = 50;

pub async fn run(config: Config, stdout: impl Write, stdout_is_terminal: bool) -> Result<()> {
    // From the start, so a stop requested during start-up is a clean stop too.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Bind first: a taken address is a configuration error, reported before anything loads.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(metrics_server::bind(addr).await?),
        None => None,
    };
    let mut probe = loader::load(&LoadSettings {
        ring_buffer_size: config.ring_buffer_size,
        filter: config.socket_filter(),
        pin_dir: config.pin_dir(),
    })?;
    for (what, problem) in [
        ("TIME-WAIT tracking", &probe.timewait),
        ("owners of accepted sockets", &probe.accept_owners),
    ] {
        if let Some(problem) = problem {
            warn!("{what} is off: {problem}");
        }
    }
    // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd owns it.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(probe.events()?, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("watching the ring buffer")?;
    let mut kernel_log = probe.logger()?;

    let owners = Rc::new(RefCell::new(Owners::default()));
    let settings = Settings {
        format: config.log_format,
        clock: WallClock::now(),
        shown: Shown {
            transitions: config.logs_transitions(stdout_is_terminal)
                && tracing::enabled!(target: "tcpstate::transition", Level::INFO),
            stuck: tracing::enabled!(target: "tcpstate::stuck", Level::WARN),
            unstuck: tracing::enabled!(target: "tcpstate::unstuck", Level::INFO),
            summaries: tracing::enabled!(target: "tcpstate::summary", Level::INFO),
        },
        owner_filter: config.owner_filter(),
        color: stdout_is_terminal,
    };
    let mut output = Output::new(settings, owners.clone(), stdout);
    let tracker = Tracker::new(
        config.max_sockets as usize,
        config.thresholds(),
        nanos(config.stuck_repeat),
    );
    let mut metrics = metrics_listener.map(|listener| {
        let metrics = Metrics::new(config.metrics_port_label);
        tokio::spawn(metrics_server::serve(listener, metrics.registry()));
        metrics
    });
    let mut pipeline = Pipeline {
        tracker,
        owners,
        filter: config.socket_filter(),
        namespaces: HashMap::new(),
        malformed: 0,
    };
    let started_ns = monotonic_ns();
    info!("attached; tracing TCP state transitions");
    // Seed the table with the sockets that exist now: the programs are attached already, so a
    // socket changing meanwhile is seen by both and the events win.
    pipeline.reconcile(ring.get_mut(), &mut Both(&mut output, &mut metrics), true)?;
    if probe.pins.as_ref().is_some_and(|p| p.reused) {
        // A restart: the kernel kept recording while no daemon ran; its records give the sockets
        // found at start-up their true ages and owners.
        let adopted = pipeline.tracker.adopt_records(&probe.socket_records()?);
        info!("restart: {adopted} sockets keep the ages recorded in the kernel");
    }
    info!(
        "start-up snapshot: {} sockets in {} network namespaces",
        pipeline.tracker.table().len(),
        pipeline.namespaces.len().max(1)
    );
    release_free_memory();
    refresh(&mut metrics, &pipeline.tracker, &probe)?;
    // Under systemd (Type=notify): ready once tracing with the table seeded.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut poll = tokio::time::interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut summaries = interval_at(
        Instant::now() + config.summary_interval,
        config.summary_interval,
    );
    summaries.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_lingering_check = Instant::now() + LINGERING_CHECK;
    let mut reconciles = interval_at(
        Instant::now() + config.reconcile_interval,
        config.reconcile_interval,
    );
    reconciles.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = config.duration.map(|d| Instant::now() + d);
    let mut summaries_clock = SummaryClock {
        started_ns,
        interval_started_ns: started_ns,
    };

    loop {
        let mut summary_due = false;
        let mut reconcile_due = false;
        let mut lingering_due = false;
        let deadline = pipeline.tracker.next_deadline().map(instant_of);
        tokio::select! {
            guard = ring.readable_mut() => {
                guard.context("waiting for the ring buffer")?.clear_ready();
            }
            _ = poll.tick() => {}
            _ = sleep_until(deadline) => {}
            _ = summaries.tick() => summary_due = true,
            _ = reconciles.tick() => reconcile_due = true,
            _ = tokio::time::sleep_until(next_lingering_check) => lingering_due = true,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(end) => break,
        }
        let mut sink = Both(&mut output, &mut metrics);
        pipeline.drain(ring.get_mut(), &mut sink);
        pipeline.tracker.tick(monotonic_ns(), &mut sink);
        kernel_log.flush();
        if lingering_due {
            let started = Instant::now();
            if !pipeline.tracker.table().lingering().is_empty() {
                pipeline.check_lingering(ring.get_mut(), &mut sink)?;
            }
            next_lingering_check =
                started + LINGERING_CHECK.max(started.elapsed() * LINGERING_CHECK_CPU_SHARE);
        }
        if reconcile_due {
            pipeline.reconcile(ring.get_mut(), &mut sink, false)?;
            release_free_memory();
        }
        if lingering_due || reconcile_due {
            refresh(&mut metrics, &pipeline.tracker, &probe)?;
        }
        if summary_due {
            summaries_clock.summarize(&mut pipeline.tracker, &probe, &mut output, false)?;
        }
        output.flush().context("writing events")?;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let mut sink = Both(&mut output, &mut metrics);
    pipeline.drain(ring.get_mut(), &mut sink);
    pipeline.tracker.tick(monotonic_ns(), &mut sink);
    summaries_clock.summarize(&mut pipeline.tracker, &probe, &mut output, true)?;
    output.flush().context("writing events")?;
    drop(ring);
    let (_, lost) = probe.lost_events()?;
    if lost > 0 {
        warn!("lost events: {lost} (the ring buffer was full; raise --ring-buffer-size)");
    }
    let skipped = probe.program_stats(|_| true)?.recursion_misses;
    if skipped > 0 {
        warn!(
            "skipped events: {skipped} (the kernel did not run the tracer while another BPF program ran on the same CPU)"
        );
    }
    if pipeline.malformed > 0 {
        warn!("malformed events: {}", pipeline.malformed);
    }
    Ok(())
}

/// Everything between the ring buffer and the output: decoding, owners, the tracker, and the
/// kernel's socket lists that keep it right.
struct Pipeline {
    tracker: Tracker,
    owners: Rc<RefCell<Owners>>,
    filter: SocketFilter,
    /// Network namespaces seen at the last reconciliation, each with a process inside.
    namespaces: HashMap<u32, u32>,
    malformed: u64,
}

impl Pipeline {
    /// Reads and decodes the ring buffer into the tracker.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, sink: &mut impl Sink) {
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => {
                    if let Some(owner) = owner_of(&event) {
                        self.owners.borrow_mut().observe(owner, monotonic_ns());
                    }
                    self.tracker.on_event(event, sink);
                }
                Err(err) => {
                    self.malformed += 1;
                    if self.malformed == 1 {
                        warn!("malformed event from the kernel: {err}");
                    }
                }
            }
        }
    }

    /// Lists the kernel's sockets in every network namespace and fixes the table where it differs.
    /// Events written while the lists are taken are applied first, so only older differences
    /// count. Owners of listed sockets are then found by inode.
    fn reconcile(
        &mut self,
        ring: &mut RingBuf<MapData>,
        sink: &mut impl Sink,
        seed: bool,
    ) -> Result<()> {
        self.tracker.begin_reconcile(monotonic_ns());
        self.namespaces = kernel_view::namespaces();
        let (mut listing, listed) = kernel_view::list_namespaces(&self.namespaces, None)
            .context("listing the kernel's TCP sockets")?;
        listing.retain(|s| self.filter.matches(&s.endpoints));
        self.drain(ring, sink);
        let now = monotonic_ns();
        let unowned = self.tracker.reconcile(&listing, &listed, now, seed, sink);
        let inodes: HashSet<u32> = unowned.iter().map(|(_, inode)| *inode).collect();
        let found = self.owners.borrow_mut().by_inode(&inodes, now);
        for (key, inode) in unowned {
            if let Some(owner) = found.get(&inode) {
                self.tracker.assign_owner(key, *owner);
            }
        }
        Ok(())
    }

    /// Lists the kernel's FIN_WAIT2 sockets: lingering timewait sockets missing from it moved to
    /// TIME_WAIT.
    fn check_lingering(&mut self, ring: &mut RingBuf<MapData>, sink: &mut impl Sink) -> Result<()> {
        let listed_at = monotonic_ns();
        let (listing, listed) =
            kernel_view::list_namespaces(&self.namespaces, Some(TcpState::FinWait2))
                .context("listing the kernel's FIN_WAIT2 sockets")?;
        self.drain(ring, sink);
        let now = monotonic_ns();
        self.tracker.tick(now, sink);
        self.tracker
            .check_lingering(&listing, &listed, listed_at, now, sink);
        Ok(())
    }
}

fn owner_of(event: &KernelEvent) -> Option<&crate::events::Process> {
    match event {
        KernelEvent::Transition(t) => t.owner.as_ref(),
        KernelEvent::Accepted(a) => Some(&a.owner),
        KernelEvent::TimewaitArmed(_) | KernelEvent::TimewaitDisarmed(_) => None,
    }
}

/// Brings the metrics, when served, up to date with the tracker and the kernel's counters.
fn refresh(metrics: &mut Option<Metrics>, tracker: &Tracker, probe: &Probe) -> Result<()> {
    if let Some(metrics) = metrics {
        let kernel = KernelTotals {
            lost_events: probe.lost_events()?.1,
            skipped_events: probe.program_stats(|_| true)?.recursion_misses,
        };
        metrics.refresh(tracker, kernel);
    }
    Ok(())
}

/// When the daemon started and the current summary interval began.
struct SummaryClock {
    started_ns: u64,
    interval_started_ns: u64,
}

impl SummaryClock {
    /// Writes a summary and starts the next interval.
    fn summarize(
        &mut self,
        tracker: &mut Tracker,
        probe: &Probe,
        output: &mut Output<impl Write>,
        last: bool,
    ) -> Result<()> {
        let now_ns = monotonic_ns();
        let context = Context {
            now_ns,
            started_ns: self.started_ns,
            interval_started_ns: self.interval_started_ns,
            lost: probe.lost_events()?,
            skipped: (
                probe
                    .program_stats(|name| name == TRANSITIONS_PROGRAM)?
                    .recursion_misses,
                probe.program_stats(|_| true)?.recursion_misses,
            ),
            last,
        };
        output.summary(&Summary::take(tracker, context));
        self.interval_started_ns = now_ns;
        Ok(())
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
