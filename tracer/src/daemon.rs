//! The daemon's loop: load, then read events until the duration ends or a signal arrives, then
//! detach and report.
use std::io::Write;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    cli::Config,
    clock::WallClock,
    events::{KernelEvent, decode},
    loader::{self, LoadSettings},
    output::Output,
};

pub async fn run(config: Config, stdout: impl Write, stdout_is_terminal: bool) -> Result<()> {
    let mut probe = loader::load(&LoadSettings {
        ring_buffer_size: config.ring_buffer_size,
        family: config.family_filter(),
        local_ports: config.local_ports.clone(),
        remote_ports: config.remote_ports.clone(),
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

    let log_transitions = config.logs_transitions(stdout_is_terminal);
    let mut output = Output::new(config.log_format, WallClock::now(), stdout);
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut poll = tokio::time::interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = config.duration.map(|d| Instant::now() + d);
    info!("attached; tracing TCP state transitions");

    let mut decode_errors = 0u64;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                guard.clear_ready();
            }
            _ = poll.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
        }
        drain(
            ring.get_mut(),
            &mut output,
            log_transitions,
            &mut decode_errors,
        )?;
        kernel_log.flush();
    }
    drain(
        ring.get_mut(),
        &mut output,
        log_transitions,
        &mut decode_errors,
    )?;
    output.flush().context("writing events")?;
    drop(ring);

    let lost = probe.lost_events()?;
    if lost > 0 {
        warn!("lost events: {lost} (the ring buffer was full; raise --ring-buffer-size)");
    }
    if decode_errors > 0 {
        warn!("malformed events: {decode_errors}");
    }
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    output: &mut Output<impl Write>,
    log_transitions: bool,
    decode_errors: &mut u64,
) -> Result<()> {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(KernelEvent::Transition(t)) if log_transitions => {
                output.transition(&t).context("writing events")?
            }
            Ok(_) => {}
            Err(err) => {
                *decode_errors += 1;
                if *decode_errors == 1 {
                    warn!("malformed event from the kernel: {err}");
                }
            }
        }
    }
    output.flush().context("writing events")
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
