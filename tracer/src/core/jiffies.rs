//! Kernel timers count jiffies; the events count nanoseconds. The tick rate (HZ) that converts
//! one into the other is not exposed to userspace: it is found from the events themselves.

/// Finds the kernel's tick rate (HZ), to turn timer expiries in jiffies into time.
///
/// The kernel starts `jiffies` at `2^32 - 300 * HZ` at boot, as CLOCK_MONOTONIC starts at zero, so
/// one (jiffies, monotonic) sample gives HZ, except near 300 s of uptime; there, two samples a few
/// seconds apart do.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HzEstimator {
    hz: Option<u32>,
    first: Option<(u64, u64)>,
}

/// Tick rates Linux is built with.
const KNOWN_HZ: [u32; 7] = [100, 128, 200, 250, 256, 300, 1000];

impl HzEstimator {
    pub(crate) fn hz(&self) -> Option<u32> {
        self.hz
    }

    pub(crate) fn observe(&mut self, jiffies: u64, mono_ns: u64) -> Option<u32> {
        if self.hz.is_some() {
            return self.hz;
        }
        let uptime = mono_ns as f64 / 1e9;
        if (uptime - 300.0).abs() >= 60.0 {
            let ticks = jiffies.wrapping_sub(1 << 32) as i64 as f64;
            self.hz = snap(ticks / (uptime - 300.0));
        } else if let Some((j0, t0)) = self.first {
            let elapsed = mono_ns.saturating_sub(t0) as f64 / 1e9;
            if elapsed >= 2.0 {
                self.hz = snap(jiffies.wrapping_sub(j0) as f64 / elapsed);
            }
        } else {
            self.first = Some((jiffies, mono_ns));
        }
        self.hz
    }
}

fn snap(raw: f64) -> Option<u32> {
    KNOWN_HZ
        .into_iter()
        .find(|hz| (raw / f64::from(*hz) - 1.0).abs() < 0.03)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_from_one_sample() {
        // Read off this project's VM: uptime 1671.96 s, jiffies 4295310252, HZ 250.
        let mut hz = HzEstimator::default();
        assert_eq!(hz.observe(4_295_310_252, 1_671_964_180_519), Some(250));
        // HZ 1000 at 10 s of uptime (jiffies still below 2^32).
        let mut early = HzEstimator::default();
        let jiffies = (1u64 << 32) - 290_000;
        assert_eq!(early.observe(jiffies, 10_000_000_000), Some(1000));
    }

    #[test]
    fn hz_from_two_samples_near_300_seconds() {
        let mut hz = HzEstimator::default();
        let start = (1u64 << 32) + 250 * 5;
        assert_eq!(hz.observe(start, 305_000_000_000), None);
        assert_eq!(hz.observe(start + 250, 306_000_000_000), None, "too close");
        assert_eq!(hz.observe(start + 750, 308_000_000_000), Some(250));
        assert_eq!(hz.hz(), Some(250));
    }

    #[test]
    fn odd_rates_are_not_guessed() {
        let mut hz = HzEstimator::default();
        assert_eq!(
            hz.observe((1u64 << 32) + 777 * 1000, 1_300_000_000_000),
            None
        );
    }
}
