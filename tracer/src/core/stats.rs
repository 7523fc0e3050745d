//! Counts and time-in-state distributions: since start-up and since the last summary, the
//! kernel events read, and the table's fixes by reconciliation.
use hdrhistogram::Histogram;
use tracer_common::TcpState;

const STATES: usize = TcpState::COUNT;

/// Kernel events read, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventCounts {
    pub(crate) transitions: u64,
    pub(crate) timewait: u64,
    pub(crate) accepted: u64,
}

/// Differences found between the table and the kernel's socket list, and fixed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reconciliation {
    pub(crate) runs: u64,
    /// Sockets the kernel has that the table missed.
    pub(crate) added: u64,
    /// Sockets in the table that the kernel no longer has.
    pub(crate) removed: u64,
    /// Sockets whose state in the table was wrong.
    pub(crate) corrected: u64,
}

impl Reconciliation {
    pub(crate) fn fixes(&self) -> u64 {
        self.added + self.removed + self.corrected
    }
}

/// Everything the core counts.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) durations: Durations,
    pub(crate) interval_durations: Durations,
    pub(crate) transitions: TransitionCounts,
    pub(crate) interval_transitions: TransitionCounts,
    pub(crate) events: EventCounts,
    pub(crate) reconciliation: Reconciliation,
}

impl Stats {
    /// A socket spent `spent_ns` in `state`.
    pub(crate) fn record(&mut self, state: TcpState, spent_ns: u64) {
        self.durations.record(state, spent_ns);
        self.interval_durations.record(state, spent_ns);
    }

    pub(crate) fn count(&mut self, old: TcpState, new: TcpState) {
        self.transitions.add(old, new);
        self.interval_transitions.add(old, new);
    }

    /// Starts new intervals (after a summary).
    pub(crate) fn reset_interval(&mut self) {
        self.interval_durations.reset();
        self.interval_transitions.reset();
    }
}

/// Durations are kept in microseconds, from 1 µs to 7 days, with two significant digits.
const MAX_MICROS: u64 = 7 * 24 * 3600 * 1_000_000;

/// Time spent in each state, one histogram per state, created on first use.
pub(crate) struct Durations {
    per_state: [Option<Histogram<u64>>; STATES],
}

/// A distribution's figures, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) min_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            per_state: std::array::from_fn(|_| None),
        }
    }
}

impl Durations {
    pub(crate) fn record(&mut self, state: TcpState, duration_ns: u64) {
        let slot = &mut self.per_state[state as usize];
        let histogram = slot.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("constant bounds are valid")
        });
        histogram.saturating_record((duration_ns / 1_000).clamp(1, MAX_MICROS));
    }

    /// Figures of every state with at least one duration, in state order.
    pub(crate) fn percentiles(&self) -> Vec<(TcpState, Percentiles)> {
        TcpState::ALL
            .into_iter()
            .filter_map(|state| {
                let h = self.per_state[state as usize].as_ref()?;
                let ms = |micros: u64| micros as f64 / 1_000.0;
                (!h.is_empty()).then(|| {
                    (
                        state,
                        Percentiles {
                            count: h.len(),
                            min_ms: ms(h.min()),
                            p50_ms: ms(h.value_at_quantile(0.50)),
                            p90_ms: ms(h.value_at_quantile(0.90)),
                            p99_ms: ms(h.value_at_quantile(0.99)),
                            max_ms: ms(h.max()),
                        },
                    )
                })
            })
            .collect()
    }

    pub(crate) fn reset(&mut self) {
        for histogram in self.per_state.iter_mut().flatten() {
            histogram.reset();
        }
    }
}

/// Transitions counted by (old, new).
#[derive(Clone)]
pub(crate) struct TransitionCounts {
    counts: [[u64; STATES]; STATES],
}

impl Default for TransitionCounts {
    fn default() -> Self {
        Self {
            counts: [[0; STATES]; STATES],
        }
    }
}

impl TransitionCounts {
    pub(crate) fn add(&mut self, old: TcpState, new: TcpState) {
        self.counts[old as usize][new as usize] += 1;
    }

    pub(crate) fn get(&self, old: TcpState, new: TcpState) -> u64 {
        self.counts[old as usize][new as usize]
    }

    /// Non-zero pairs, in state order.
    pub(crate) fn pairs(&self) -> Vec<(TcpState, TcpState, u64)> {
        let mut pairs = Vec::new();
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                let count = self.get(old, new);
                if count > 0 {
                    pairs.push((old, new, count));
                }
            }
        }
        pairs
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_per_state() {
        let mut d = Durations::default();
        for ms in 1..=100u64 {
            d.record(TcpState::SynSent, ms * 1_000_000);
        }
        d.record(TcpState::CloseWait, 5_000_000_000);
        let all = d.percentiles();
        assert_eq!(all.len(), 2);
        let (state, p) = all[0];
        assert_eq!(state, TcpState::SynSent);
        assert_eq!(p.count, 100);
        // Two significant digits: within 1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.01;
        assert!(close(p.min_ms, 1.0), "{p:?}");
        assert!(close(p.p50_ms, 50.0), "{p:?}");
        assert!(close(p.p90_ms, 90.0), "{p:?}");
        assert!(close(p.p99_ms, 99.0), "{p:?}");
        assert!(close(p.max_ms, 100.0), "{p:?}");
        assert_eq!(all[1].0, TcpState::CloseWait);
        assert!(close(all[1].1.max_ms, 5_000.0));
    }

    #[test]
    fn tiny_and_huge_durations_are_kept() {
        let mut d = Durations::default();
        d.record(TcpState::SynRecv, 10);
        d.record(TcpState::SynRecv, u64::MAX);
        let p = d.percentiles()[0].1;
        assert_eq!(p.count, 2);
        assert_eq!(p.min_ms, 0.001);
        assert!(p.max_ms >= MAX_MICROS as f64 / 1_000.0 * 0.99);
        d.reset();
        assert!(d.percentiles().is_empty());
    }

    #[test]
    fn transition_pairs() {
        let mut t = TransitionCounts::default();
        t.add(TcpState::SynSent, TcpState::Established);
        t.add(TcpState::SynSent, TcpState::Established);
        t.add(TcpState::Established, TcpState::CloseWait);
        assert_eq!(
            t.pairs(),
            vec![
                (TcpState::Established, TcpState::CloseWait, 1),
                (TcpState::SynSent, TcpState::Established, 2)
            ]
        );
        t.reset();
        assert!(t.pairs().is_empty());
    }
}
