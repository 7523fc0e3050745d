//! Kernel timestamps are CLOCK_MONOTONIC nanoseconds; people read UTC. The offset between the two
//! clocks is taken once at start-up.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::clock::{monotonic_ns, realtime_ns};

/// Converts monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    /// Realtime minus monotonic, in nanoseconds, at start-up.
    offset_ns: u64,
}

impl WallClock {
    pub(crate) fn now() -> Self {
        let mono = monotonic_ns();
        let real = realtime_ns();
        Self {
            offset_ns: real.saturating_sub(mono),
        }
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
