//! The daemon's CPU over time, sampled from the outside, and the bursts of work in it: the tracer
//! logs nothing when it reconciles or checks its FIN_WAIT2 list, so that work is found as CPU
//! spent at the times it is scheduled.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::bench::measure;

/// How often the daemon's CPU time is read: fine enough to see a reconciliation of a few
/// thousand sockets, coarse enough that reading /proc costs the machine little.
const PERIOD: Duration = Duration::from_millis(10);

/// One reading: when, and the CPU time the process had used by then.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu: Duration,
}

/// Reads a process's CPU time every [`PERIOD`] on a thread of its own, until dropped or the
/// process is gone.
pub struct CpuSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CpuSampler {
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // The main thread's CPU: the tracer runs on one thread (tokio's current-thread
                    // runtime), which lists its own network namespace, where the sockets are.
                    let Ok(cpu) = measure::cpu_time(pid) else {
                        return;
                    };
                    if let Ok(mut s) = samples.lock() {
                        s.push(Sample {
                            at: Instant::now(),
                            cpu,
                        });
                    }
                    thread::sleep(PERIOD);
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The samples taken between two instants.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|s| s.at >= from && s.at <= to)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A stretch of time in which the daemon worked: consecutive sample intervals in which it used at
/// least [`BUSY_SHARE`] of a CPU, merged across pauses shorter than [`MERGE_GAP`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub start: Instant,
    pub end: Instant,
    pub cpu: Duration,
}

/// Share of a CPU above which an interval counts as work. Low, because on a shared machine a
/// busy daemon may get only part of a CPU; well above the 100 ms poll's few microseconds.
const BUSY_SHARE: f64 = 0.2;
/// Pauses shorter than this (the scheduler giving the CPU to another process) do not end a burst.
const MERGE_GAP: Duration = Duration::from_millis(50);

pub fn bursts(samples: &[Sample]) -> Vec<Burst> {
    let mut found: Vec<Burst> = Vec::new();
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let wall = b.at.saturating_duration_since(a.at);
        let cpu = b.cpu.saturating_sub(a.cpu);
        if wall.is_zero() || cpu.as_secs_f64() < BUSY_SHARE * wall.as_secs_f64() {
            continue;
        }
        match found.last_mut() {
            Some(last) if a.at.saturating_duration_since(last.end) < MERGE_GAP => {
                last.end = b.at;
                last.cpu += cpu;
            }
            _ => found.push(Burst {
                start: a.at,
                end: b.at,
                cpu,
            }),
        }
    }
    found
}

/// What a quiet window of the daemon's life cost: all its CPU, and the part spent in the
/// reconciliations scheduled in it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowCost {
    pub seconds: f64,
    pub cpu_ms: f64,
    pub cpu_ms_per_minute: f64,
    /// One entry per reconciliation seen in the window.
    pub reconciliations: Vec<BurstCost>,
    /// CPU outside the reconciliations (summaries, FIN_WAIT2 checks, polls), per minute.
    pub other_cpu_ms_per_minute: f64,
    /// The longest burst of work outside reconciliations.
    pub other_longest: Option<BurstCost>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BurstCost {
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

impl From<&Burst> for BurstCost {
    fn from(b: &Burst) -> Self {
        Self {
            wall_ms: b.end.saturating_duration_since(b.start).as_secs_f64() * 1e3,
            cpu_ms: b.cpu.as_secs_f64() * 1e3,
        }
    }
}

/// A reconciliation starts at its tick, or a little later when the daemon was busy then.
const TICK_SLACK_BEFORE: Duration = Duration::from_millis(100);
const TICK_SLACK_AFTER: Duration = Duration::from_secs(1);

/// The cost of a window given its samples and the times reconciliations were due in it.
pub fn window_cost(samples: &[Sample], reconcile_ticks: &[Instant]) -> WindowCost {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return WindowCost::default();
    };
    let seconds = last.at.saturating_duration_since(first.at).as_secs_f64();
    let cpu_ms = last.cpu.saturating_sub(first.cpu).as_secs_f64() * 1e3;
    let per_minute = |ms: f64| {
        if seconds > 0.0 {
            ms * 60.0 / seconds
        } else {
            0.0
        }
    };
    // Each tick's reconciliation is the first burst starting near it.
    let found = bursts(samples);
    let mut is_reconciliation = vec![false; found.len()];
    for &tick in reconcile_ticks {
        if let Some(i) = found
            .iter()
            .position(|b| b.start + TICK_SLACK_BEFORE >= tick && b.start <= tick + TICK_SLACK_AFTER)
        {
            is_reconciliation[i] = true;
        }
    }
    let of_kind = |reconciliation: bool| -> Vec<&Burst> {
        found
            .iter()
            .zip(&is_reconciliation)
            .filter(|(_, r)| **r == reconciliation)
            .map(|(b, _)| b)
            .collect()
    };
    let (reconciliations, others) = (of_kind(true), of_kind(false));
    let reconcile_ms: f64 = reconciliations
        .iter()
        .map(|b| b.cpu.as_secs_f64() * 1e3)
        .sum();
    WindowCost {
        seconds,
        cpu_ms,
        cpu_ms_per_minute: per_minute(cpu_ms),
        reconciliations: reconciliations
            .iter()
            .map(|b| BurstCost::from(*b))
            .collect(),
        other_cpu_ms_per_minute: per_minute(cpu_ms - reconcile_ms),
        other_longest: others
            .iter()
            .map(|b| BurstCost::from(*b))
            .max_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms)),
    }
}

/// The times reconciliations fall due between two instants: every `interval` after the start-up
/// snapshot (the daemon's timer starts when its snapshot is done).
pub fn ticks(snapshot: Instant, interval: Duration, from: Instant, to: Instant) -> Vec<Instant> {
    let mut ticks = Vec::new();
    if interval.is_zero() {
        return ticks;
    }
    let mut tick = snapshot + interval;
    while tick <= to {
        if tick + TICK_SLACK_AFTER >= from {
            ticks.push(tick);
        }
        tick += interval;
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples every 10 ms from `t0`, with the CPU used in each interval given in ms.
    fn samples(t0: Instant, per_interval_ms: &[u64]) -> Vec<Sample> {
        let mut cpu = Duration::ZERO;
        let mut out = vec![Sample { at: t0, cpu }];
        for (i, ms) in per_interval_ms.iter().enumerate() {
            cpu += Duration::from_millis(*ms);
            out.push(Sample {
                at: t0 + Duration::from_millis(10 * (i as u64 + 1)),
                cpu,
            });
        }
        out
    }

    #[test]
    fn finds_bursts_and_merges_short_pauses() {
        let t0 = Instant::now();
        // idle, 30 ms of work, a 20 ms pause, 20 ms of work, a long pause, 10 ms of work
        let s = samples(t0, &[0, 0, 10, 10, 10, 0, 0, 10, 10, 0, 0, 0, 0, 0, 0, 10]);
        let found = bursts(&s);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].start, t0 + Duration::from_millis(20));
        assert_eq!(found[0].end, t0 + Duration::from_millis(90));
        assert_eq!(found[0].cpu, Duration::from_millis(50));
        assert_eq!(found[1].cpu, Duration::from_millis(10));
    }

    #[test]
    fn polls_are_not_work() {
        let t0 = Instant::now();
        let mut s = samples(t0, &[0; 20]);
        // 0.1 ms every 100 ms: the daemon's poll.
        for (i, sample) in s.iter_mut().enumerate() {
            sample.cpu = Duration::from_micros(100 * (i as u64 / 10));
        }
        assert!(bursts(&s).is_empty());
    }

    #[test]
    fn reconciliations_are_the_bursts_at_their_ticks() {
        let t0 = Instant::now();
        let mut work = vec![0u64; 100];
        work[10..15].fill(10); // at 100 ms: the reconciliation due at 100 ms
        work[60] = 8; // at 600 ms: something else
        let s = samples(t0, &work);
        let cost = window_cost(&s, &[t0 + Duration::from_millis(100)]);
        assert_eq!(cost.reconciliations.len(), 1);
        assert!((cost.reconciliations[0].cpu_ms - 50.0).abs() < 1e-9);
        assert!((cost.reconciliations[0].wall_ms - 50.0).abs() < 1e-6);
        assert!((cost.cpu_ms - 58.0).abs() < 1e-9);
        // 8 ms outside over a 1 s window.
        assert!((cost.other_cpu_ms_per_minute - 480.0).abs() < 1e-6);
        assert!(
            cost.other_longest
                .is_some_and(|b| (b.cpu_ms - 8.0).abs() < 1e-9)
        );
    }

    #[test]
    fn ticks_follow_the_snapshot() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let found = ticks(t0, 10 * s, t0 + 15 * s, t0 + 45 * s);
        assert_eq!(found, vec![t0 + 20 * s, t0 + 30 * s, t0 + 40 * s]);
        assert!(ticks(t0, Duration::ZERO, t0, t0 + s).is_empty());
    }
}
