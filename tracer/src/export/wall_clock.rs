//! Kernel timestamps are CLOCK_MONOTONIC nanoseconds; people read UTC. The offset between the two
//! clocks changes only when the wall clock is stepped (NTP setting it at boot, a VM resumed, an
//! operator's `date -s`; slewing moves both clocks alike), so it is taken at start-up and again at
//! every poll.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::clock::{monotonic_ns, realtime_ns};

/// Converts monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    /// Realtime minus monotonic, in nanoseconds, as last taken.
    offset_ns: u64,
}

/// A change of the offset below this is the two clocks read a moment apart, not a step: ignored,
/// so that lines written in order keep their order.
const STEP_NS: i128 = 1_000_000;

impl WallClock {
    pub(crate) fn now() -> Self {
        Self {
            offset_ns: realtime_ns().saturating_sub(monotonic_ns()),
        }
    }

    /// Takes the offset again from the clocks read now; returns the step in nanoseconds (negative:
    /// set back) when the wall clock was stepped since.
    pub(crate) fn follow(&mut self) -> Option<i64> {
        self.follow_to(monotonic_ns(), realtime_ns())
    }

    fn follow_to(&mut self, mono_ns: u64, real_ns: u64) -> Option<i64> {
        let offset_ns = real_ns.saturating_sub(mono_ns);
        let step = i128::from(offset_ns) - i128::from(self.offset_ns);
        if step.abs() < STEP_NS {
            return None;
        }
        self.offset_ns = offset_ns;
        i64::try_from(step).ok()
    }

    /// A clock where monotonic time `mono_ns` reads as `wall`: for tests.
    #[cfg(test)]
    pub(crate) fn fixed(mono_ns: u64, wall: SystemTime) -> Self {
        let wall_ns = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self {
            offset_ns: wall_ns.saturating_sub(mono_ns),
        }
    }

    pub(crate) fn wall(&self, mono_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(mono_ns.saturating_add(self.offset_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_to_wall_time() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = WallClock::fixed(5_000_000_000, wall);
        assert_eq!(clock.wall(5_000_000_000), wall);
        assert_eq!(
            clock.wall(6_500_000_000),
            wall + Duration::from_millis(1500)
        );
    }

    /// The clocks as an injected pair: a step of the wall clock moves every later line with it,
    /// read-out jitter does not.
    #[test]
    fn follows_steps_of_the_wall_clock() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let wall_ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let mut clock = WallClock::fixed(5_000_000_000, start);
        // 10 s later by both clocks, read 300 µs apart: no step.
        let (mono, real) = (15_000_000_000, wall_ns(start) + 10_000_300_000);
        assert_eq!(clock.follow_to(mono, real), None);
        assert_eq!(clock.wall(mono), start + Duration::from_secs(10));
        // NTP steps the wall clock forward by an hour.
        let (mono, real) = (16_000_000_000, wall_ns(start) + 3_611_000_000_000);
        assert_eq!(clock.follow_to(mono, real), Some(3_600_000_000_000));
        assert_eq!(clock.wall(mono), start + Duration::from_secs(3611));
        // Then back by 2.5 s.
        let (mono, real) = (17_000_000_000, wall_ns(start) + 3_609_500_000_000);
        assert_eq!(clock.follow_to(mono, real), Some(-2_500_000_000));
        assert_eq!(clock.wall(mono), start + Duration::from_millis(3_609_500));
        assert_eq!(clock.follow_to(mono, real), None, "a step is reported once");
    }

    #[test]
    fn live_clock_is_close_to_system_time() {
        let clock = WallClock::now();
        let now = clock.wall(monotonic_ns());
        let drift = SystemTime::now()
            .duration_since(now)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }
}
