//! What the tracer could not see or deliver, watched so that a loss is said when it happens (a
//! `health` report, a warning), not only counted in the summaries and metrics.
use crate::source::health::KernelHealth;

/// Counts of what was lost since start-up: the kernel's, and the records the daemon could not
/// decode.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Losses {
    pub(crate) kernel: KernelHealth,
    pub(crate) malformed_events: u64,
}

impl Losses {
    /// Each count under its name in the lines, with what to do about it.
    pub(crate) fn named(&self) -> [(&'static str, u64); 8] {
        let k = &self.kernel;
        [
            ("lost_events", k.lost()),
            ("skipped_events", k.skipped_all),
            ("failed_reads", k.failed_reads),
            ("unrecorded_sockets", k.unrecorded_sockets),
            ("unwatched_sockets", k.unwatched_sockets),
            ("unmatched_resets", k.unmatched_resets),
            ("unlabelled_counts", k.unlabelled),
            ("malformed_events", self.malformed_events),
        ]
    }
}

/// Losses that grew since the last report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HealthReport {
    pub(crate) ts_ns: u64,
    /// Since start-up.
    pub(crate) losses: Losses,
    /// The names of the counts that grew.
    pub(crate) grew: Vec<&'static str>,
    /// Checked at exit.
    pub(crate) last: bool,
}

/// The losses last reported.
#[derive(Debug, Default)]
pub(crate) struct LossWatch {
    reported: Losses,
}

impl LossWatch {
    /// A report when any count grew since the last one.
    pub(crate) fn check(&mut self, now: Losses, ts_ns: u64, last: bool) -> Option<HealthReport> {
        let grew: Vec<&'static str> = now
            .named()
            .into_iter()
            .zip(self.reported.named())
            .filter(|((_, now), (_, before))| now > before)
            .map(|((name, _), _)| name)
            .collect();
        if grew.is_empty() {
            return None;
        }
        self.reported = now;
        Some(HealthReport {
            ts_ns,
            losses: now,
            grew,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(lost_transitions: u64, malformed_events: u64) -> Losses {
        Losses {
            kernel: KernelHealth {
                lost_transitions,
                ..KernelHealth::default()
            },
            malformed_events,
        }
    }

    #[test]
    fn a_loss_is_reported_once_and_again_when_it_grows() {
        let mut watch = LossWatch::default();
        assert_eq!(
            watch.check(Losses::default(), 1, false),
            None,
            "nothing lost"
        );
        let first = watch.check(lost(3, 0), 2, false).expect("a report");
        assert_eq!(first.grew, ["lost_events"]);
        assert_eq!(first.losses.kernel.lost(), 3);
        assert_eq!(watch.check(lost(3, 0), 3, false), None, "said already");
        let next = watch.check(lost(4, 1), 4, true).expect("grew again");
        assert_eq!(next.grew, ["lost_events", "malformed_events"]);
        assert!(next.last);
    }
}
