//! Counts and distributions. The kernel counts transitions, times in state and records by state
//! in per-CPU aggregates; this adds what the daemon did itself (records it wrote or removed, and
//! moves the kernel made without a trace that the daemon found), and derives what summaries and
//! metrics show: sockets by state, transitions and percentiles, since start-up and for the
//! current interval.
use std::collections::HashMap;

use tracer_common::{
    TcpState,
    aggregate::{DURATION_BUCKETS, bucket_floor_us},
};

use crate::source::kernel_maps::{Aggregates, Ends, ListenerWaits, StateDurations};

const STATES: usize = TcpState::COUNT;

/// A distribution's figures, in milliseconds. Quantiles are the middle of their histogram
/// bucket: within 6.25 % of the true value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) min_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) struct Totals {
    /// Records the daemon wrote or removed itself, by state: the kernel's gauges count only what
    /// its programs did.
    offsets: [i64; STATES],
    /// Transitions and durations the daemon found itself.
    own_transitions: Vec<u64>,
    own_durations: Vec<StateDurations>,
    /// The totals when the current summary interval began.
    interval_start: IntervalStart,
}

#[derive(Default)]
struct IntervalStart {
    transitions: Vec<u64>,
    durations: Vec<StateDurations>,
    ends: Ends,
    connects: Vec<StateDurations>,
    /// Accept waits by listener (netns, port).
    accept_waits: HashMap<(u32, u16), StateDurations>,
}

impl Totals {
    /// `pinned`: records an earlier daemon left in the pinned maps, by state.
    pub(crate) fn new(pinned: [i64; STATES]) -> Self {
        Self {
            offsets: pinned,
            own_transitions: vec![0; STATES * STATES],
            own_durations: vec![StateDurations::default(); STATES],
            interval_start: IntervalStart {
                transitions: vec![0; STATES * STATES],
                durations: vec![StateDurations::default(); STATES],
                ends: Ends::default(),
                connects: vec![StateDurations::default(); 2],
                accept_waits: HashMap::new(),
            },
        }
    }

    /// The daemon wrote (`+1`) or removed (`-1`) a record in `state`.
    pub(crate) fn adjust(&mut self, state: TcpState, change: i64) {
        self.offsets[state as usize] += change;
    }

    /// The daemon found a transition the kernel made without a trace, after `spent` in `old`.
    pub(crate) fn record(&mut self, old: TcpState, new: TcpState, spent_ns: Option<u64>) {
        self.own_transitions[old as usize * STATES + new as usize] += 1;
        if let Some(ns) = spent_ns {
            self.own_durations[old as usize].add(ns);
        }
    }

    /// Live sockets by state.
    pub(crate) fn sockets(&self, kernel: &Aggregates) -> [u64; STATES] {
        let mut sockets = [0; STATES];
        for (state, count) in sockets.iter_mut().enumerate() {
            *count = u64::try_from(kernel.gauges[state] + self.offsets[state]).unwrap_or(0);
        }
        sockets
    }

    /// Transitions since start-up, by `old * COUNT + new`.
    pub(crate) fn transitions(&self, kernel: &Aggregates) -> Vec<u64> {
        kernel
            .transitions
            .iter()
            .zip(&self.own_transitions)
            .map(|(k, o)| k + o)
            .collect()
    }

    /// Time in each state since start-up, by state number.
    pub(crate) fn durations(&self, kernel: &Aggregates) -> Vec<StateDurations> {
        kernel
            .durations
            .iter()
            .zip(&self.own_durations)
            .map(|(k, o)| merged(k, o))
            .collect()
    }

    /// Transitions since the interval began.
    pub(crate) fn interval_transitions(&self, kernel: &Aggregates) -> Vec<u64> {
        self.transitions(kernel)
            .iter()
            .zip(&self.interval_start.transitions)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect()
    }

    /// Time in each state since the interval began (its minimum and maximum within the buckets
    /// that changed).
    pub(crate) fn interval_durations(&self, kernel: &Aggregates) -> Vec<StateDurations> {
        self.durations(kernel)
            .iter()
            .zip(&self.interval_start.durations)
            .map(|(now, then)| since(now, then))
            .collect()
    }

    /// How connections ended since the interval began.
    pub(crate) fn interval_ends(&self, kernel: &Aggregates) -> Ends {
        kernel.ends.since(&self.interval_start.ends)
    }

    /// Connect times since the interval began, without and with a SYN retransmitted.
    pub(crate) fn interval_connects(&self, kernel: &Aggregates) -> Vec<StateDurations> {
        kernel
            .connects
            .iter()
            .zip(&self.interval_start.connects)
            .map(|(now, then)| since(now, then))
            .collect()
    }

    /// How long each listener's connections waited to be accepted since the interval began; the
    /// listeners that accepted none are left out.
    pub(crate) fn interval_accept_waits(&self, kernel: &Aggregates) -> Vec<ListenerWaits> {
        kernel
            .accept_waits
            .iter()
            .filter_map(|now| {
                let waits = match self.interval_start.accept_waits.get(&(now.netns, now.port)) {
                    Some(then) => since(&now.waits, then),
                    None => now.waits.clone(),
                };
                (waits.count > 0).then(|| ListenerWaits {
                    waits,
                    ..now.clone()
                })
            })
            .collect()
    }

    /// Starts a new interval (after a summary).
    pub(crate) fn start_interval(&mut self, kernel: &Aggregates) {
        self.interval_start = IntervalStart {
            transitions: self.transitions(kernel),
            durations: self.durations(kernel),
            ends: kernel.ends.clone(),
            connects: kernel.connects.clone(),
            accept_waits: kernel
                .accept_waits
                .iter()
                .map(|l| ((l.netns, l.port), l.waits.clone()))
                .collect(),
        };
    }
}

fn merged(a: &StateDurations, b: &StateDurations) -> StateDurations {
    let min = match (a.min_ns, b.min_ns) {
        (0, m) | (m, 0) => m,
        (x, y) => x.min(y),
    };
    StateDurations {
        buckets: a
            .buckets
            .iter()
            .zip(&b.buckets)
            .map(|(x, y)| x + y)
            .collect(),
        count: a.count + b.count,
        sum_ns: a.sum_ns + b.sum_ns,
        min_ns: min,
        max_ns: a.max_ns.max(b.max_ns),
    }
}

/// The durations recorded between `then` and `now`.
fn since(now: &StateDurations, then: &StateDurations) -> StateDurations {
    let buckets: Vec<u64> = now
        .buckets
        .iter()
        .zip(&then.buckets)
        .map(|(n, t)| n.saturating_sub(*t))
        .collect();
    let first = buckets.iter().position(|n| *n > 0);
    let last = buckets.iter().rposition(|n| *n > 0);
    StateDurations {
        min_ns: first.map_or(0, |b| (bucket_floor_us(b) * 1000).max(now.min_ns)),
        max_ns: last.map_or(0, |b| bucket_ceiling_ns(b).min(now.max_ns)),
        count: now.count.saturating_sub(then.count),
        sum_ns: now.sum_ns.saturating_sub(then.sum_ns),
        buckets,
    }
}

fn bucket_ceiling_ns(bucket: usize) -> u64 {
    if bucket + 1 < DURATION_BUCKETS {
        bucket_floor_us(bucket + 1) * 1000
    } else {
        u64::MAX
    }
}

/// Non-zero (old, new, count) of transitions, in state order.
pub(crate) fn pairs(transitions: &[u64]) -> Vec<(TcpState, TcpState, u64)> {
    let mut out = Vec::new();
    for old in TcpState::ALL {
        for new in TcpState::ALL {
            let n = transitions[old as usize * STATES + new as usize];
            if n > 0 {
                out.push((old, new, n));
            }
        }
    }
    out
}

/// Figures of every state with at least one duration, in state order.
pub(crate) fn percentiles(durations: &[StateDurations]) -> Vec<(TcpState, Percentiles)> {
    TcpState::ALL
        .into_iter()
        .filter_map(|state| figures_of(&durations[state as usize]).map(|p| (state, p)))
        .collect()
}

/// Figures of a distribution, `None` when it is empty.
pub(crate) fn figures_of(d: &StateDurations) -> Option<Percentiles> {
    (d.count > 0).then(|| figures(d))
}

fn figures(d: &StateDurations) -> Percentiles {
    let ms = |ns: u64| ns as f64 / 1e6;
    let quantile = |q: f64| {
        let rank = ((q * d.count as f64).ceil() as u64).clamp(1, d.count);
        let mut seen = 0;
        for (bucket, n) in d.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let floor = bucket_floor_us(bucket) * 1000;
                let middle = floor + (bucket_ceiling_ns(bucket).saturating_sub(floor)) / 2;
                return middle.clamp(d.min_ns, d.max_ns.max(d.min_ns));
            }
        }
        d.max_ns
    };
    Percentiles {
        count: d.count,
        min_ms: ms(d.min_ns),
        p50_ms: ms(quantile(0.50)),
        p90_ms: ms(quantile(0.90)),
        p99_ms: ms(quantile(0.99)),
        max_ms: ms(d.max_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durations(values_ns: &[u64]) -> StateDurations {
        let mut d = StateDurations::default();
        for ns in values_ns {
            d.add(*ns);
        }
        d
    }

    #[test]
    fn percentiles_are_within_their_bucket() {
        let values: Vec<u64> = (1..=100u64).map(|ms| ms * 1_000_000).collect();
        let p = figures(&durations(&values));
        assert_eq!(p.count, 100);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.0625;
        assert_eq!(p.min_ms, 1.0);
        assert!(close(p.p50_ms, 50.0), "{p:?}");
        assert!(close(p.p90_ms, 90.0), "{p:?}");
        assert!(close(p.p99_ms, 99.0), "{p:?}");
        assert_eq!(p.max_ms, 100.0);
        // One value: every figure is it.
        let one = figures(&durations(&[3_500_000_000]));
        assert_eq!(
            (one.min_ms, one.p50_ms, one.max_ms),
            (3500.0, 3500.0, 3500.0)
        );
    }

    #[test]
    fn sockets_count_what_the_kernel_and_the_daemon_wrote() {
        let mut kernel = Aggregates::default();
        kernel.gauges[TcpState::CloseWait as usize] = -1;
        kernel.gauges[TcpState::LastAck as usize] = 1;
        let mut pinned = [0; STATES];
        pinned[TcpState::CloseWait as usize] = 3;
        let mut totals = Totals::new(pinned);
        totals.adjust(TcpState::Listen, 1);
        let sockets = totals.sockets(&kernel);
        assert_eq!(sockets[TcpState::CloseWait as usize], 2);
        assert_eq!(sockets[TcpState::LastAck as usize], 1);
        assert_eq!(sockets[TcpState::Listen as usize], 1);
    }

    #[test]
    fn intervals_count_since_they_began() {
        let mut kernel = Aggregates::default();
        let index = TcpState::SynSent as usize * STATES + TcpState::Established as usize;
        kernel.transitions[index] = 5;
        kernel.durations[TcpState::SynSent as usize] = durations(&[1_000_000, 2_000_000]);
        let mut totals = Totals::new([0; STATES]);
        totals.start_interval(&kernel);
        kernel.transitions[index] = 7;
        kernel.durations[TcpState::SynSent as usize] =
            durations(&[1_000_000, 2_000_000, 40_000_000]);
        totals.record(TcpState::FinWait2, TcpState::TimeWait, Some(5_000_000));
        assert_eq!(
            pairs(&totals.interval_transitions(&kernel)),
            vec![
                (TcpState::SynSent, TcpState::Established, 2),
                (TcpState::FinWait2, TcpState::TimeWait, 1)
            ]
        );
        assert_eq!(pairs(&totals.transitions(&kernel))[0].2, 7);
        let interval = percentiles(&totals.interval_durations(&kernel));
        let syn_sent = interval
            .iter()
            .find(|(s, _)| *s == TcpState::SynSent)
            .unwrap()
            .1;
        assert_eq!(syn_sent.count, 1);
        assert!(
            (syn_sent.p50_ms - 40.0).abs() <= 40.0 * 0.0625,
            "{syn_sent:?}"
        );
        let fin_wait2 = interval
            .iter()
            .find(|(s, _)| *s == TcpState::FinWait2)
            .unwrap()
            .1;
        assert_eq!((fin_wait2.count, fin_wait2.max_ms), (1, 5.0));
    }
}
