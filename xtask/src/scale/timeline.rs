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

/// How often the daemon's CPU time is read: the kernel counts it in 10 ms ticks; fine enough to
/// see a reconciliation of a few thousand sockets, and reading /proc costs the machine little.
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
                    // The whole process: the daemon lists other network namespaces from threads
                    // of their own while its main thread waits.
                    let Ok(cpu) = measure::process_cpu_time(pid) else {
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
/// Pauses shorter than this do not end a burst: on a shared machine, a busy daemon waits for a
/// CPU for tens of milliseconds at a time. Shorter than the daemon's quiet gaps (its 100 ms poll
/// does not count as work).
const MERGE_GAP: Duration = Duration::from_millis(250);

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

/// What the daemon was doing in a burst, told by the schedule the burst falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Starts at a reconciliation's tick.
    Reconciliation,
    /// Starts at a summary's tick.
    Summary,
    /// Started before a reconciliation's tick and ran through it: the reconciliation merged with
    /// other work, which cannot be told apart.
    Merged,
    /// Anything else: FIN_WAIT2 checks, stuck detection, polls.
    Other,
}

/// When the daemon's periodic work falls due: its timers start when its start-up snapshot is
/// complete.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub snapshot: Instant,
    pub reconcile: Duration,
    pub summary: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BurstCost {
    pub work: Work,
    /// When it began, in seconds after the start-up snapshot.
    pub at_s: f64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

/// What a quiet window of the daemon's life cost: all its CPU, and each burst of work in it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowCost {
    pub seconds: f64,
    pub cpu_ms: f64,
    pub cpu_ms_per_minute: f64,
    /// CPU outside the reconciliations (and the bursts merged with one), per minute.
    pub outside_reconciliations_cpu_ms_per_minute: f64,
    pub bursts: Vec<BurstCost>,
}

impl WindowCost {
    pub fn of(&self, work: Work) -> impl Iterator<Item = &BurstCost> {
        self.bursts.iter().filter(move |b| b.work == work)
    }
}

/// Work starts at its tick, or a little later when the daemon was busy then.
const TICK_SLACK_BEFORE: Duration = Duration::from_millis(100);
const TICK_SLACK_AFTER: Duration = Duration::from_secs(1);

/// The cost of a window given its samples and the daemon's schedule.
pub fn window_cost(samples: &[Sample], schedule: &Schedule) -> WindowCost {
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
    let found = bursts(samples);
    let mut work = vec![Work::Other; found.len()];
    for (kind, interval) in [
        (Work::Reconciliation, schedule.reconcile),
        (Work::Summary, schedule.summary),
    ] {
        for tick in ticks(schedule.snapshot, interval, first.at, last.at) {
            // Each tick's work is the first burst starting near it.
            let unclaimed = |i: &usize| work[*i] == Work::Other;
            let starting = (0..found.len()).filter(unclaimed).find(|&i| {
                found[i].start + TICK_SLACK_BEFORE >= tick
                    && found[i].start <= tick + TICK_SLACK_AFTER
            });
            let spanning = (0..found.len())
                .filter(unclaimed)
                .find(|&i| found[i].start < tick && found[i].end > tick);
            match (starting, spanning) {
                (Some(i), _) => work[i] = kind,
                (None, Some(i)) if kind == Work::Reconciliation => work[i] = Work::Merged,
                _ => {}
            }
        }
    }
    let bursts: Vec<BurstCost> = found
        .iter()
        .zip(work)
        .map(|(b, work)| BurstCost {
            work,
            at_s: b
                .start
                .saturating_duration_since(schedule.snapshot)
                .as_secs_f64(),
            wall_ms: b.end.saturating_duration_since(b.start).as_secs_f64() * 1e3,
            cpu_ms: b.cpu.as_secs_f64() * 1e3,
        })
        .collect();
    let reconciling_ms: f64 = bursts
        .iter()
        .filter(|b| matches!(b.work, Work::Reconciliation | Work::Merged))
        .map(|b| b.cpu_ms)
        .sum();
    WindowCost {
        seconds,
        cpu_ms,
        cpu_ms_per_minute: per_minute(cpu_ms),
        outside_reconciliations_cpu_ms_per_minute: per_minute(cpu_ms - reconciling_ms),
        bursts,
    }
}

/// The times work with this interval falls due between two instants (with the slack a burst may
/// start after its tick): every `interval` after the start-up snapshot.
fn ticks(snapshot: Instant, interval: Duration, from: Instant, to: Instant) -> Vec<Instant> {
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
        // idle, 30 ms of work, a 20 ms pause, 20 ms of work, a 300 ms pause, 10 ms of work
        let mut work = vec![0, 0, 10, 10, 10, 0, 0, 10, 10];
        work.extend([0; 30]);
        work.push(10);
        let s = samples(t0, &work);
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
    fn bursts_are_told_by_their_schedule() {
        let t0 = Instant::now();
        let mut work = vec![0u64; 200];
        work[10..15].fill(10); // 100 ms: the reconciliation due at 100 ms
        work[60] = 3; // 600 ms: the summary due at 600 ms
        work[100] = 8; // 1000 ms: something else
        work[145..170].fill(10); // 1450–1700 ms: through the reconciliation due at 1600 ms
        let s = samples(t0, &work);
        let schedule = Schedule {
            snapshot: t0 - Duration::from_millis(1400),
            reconcile: Duration::from_millis(1500),
            summary: Duration::from_millis(2000),
        };
        let cost = window_cost(&s, &schedule);
        let kinds: Vec<Work> = cost.bursts.iter().map(|b| b.work).collect();
        assert_eq!(
            kinds,
            [
                Work::Reconciliation,
                Work::Summary,
                Work::Other,
                Work::Merged
            ]
        );
        let first = cost.bursts[0];
        assert!((first.cpu_ms - 50.0).abs() < 1e-9);
        assert!((first.wall_ms - 50.0).abs() < 1e-6);
        assert!((first.at_s - 1.5).abs() < 1e-6);
        assert!((cost.cpu_ms - 311.0).abs() < 1e-9);
        // 11 ms outside reconciliations over a 2 s window.
        assert!((cost.outside_reconciliations_cpu_ms_per_minute - 330.0).abs() < 1e-6);
        assert_eq!(cost.of(Work::Other).count(), 1);
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
