//! Kernel timers count jiffies; the programs count nanoseconds. The tick rate (HZ) that converts
//! one into the other is not exposed to userspace: it is found from one reading of both clocks
//! in /proc/timer_list, and handed to the programs (a timewait socket's expiry, in jiffies, dates
//! its move to TIME-WAIT).

/// Nanoseconds per jiffy of the running kernel, from /proc/timer_list; `None` when unreadable.
pub(crate) fn ns_per_jiffy() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    let (jiffies, now_ns) = sample(&text)?;
    let hz = HzEstimator::default().observe(jiffies, now_ns)?;
    Some(1_000_000_000 / u64::from(hz))
}

/// The first `now at N nsecs` and `jiffies: N` of /proc/timer_list: the same moment to a tick.
fn sample(text: &str) -> Option<(u64, u64)> {
    let now_ns = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .trim()
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies:")?.trim().parse().ok())?;
    Some((jiffies, now_ns))
}

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

    #[cfg_attr(
        not(feature = "kernel-tests"),
        ignore = "needs root: cargo xtask test runs it"
    )]
    #[test]
    fn reads_timer_list() {
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 2733618900601 nsecs\n\ncpu: 0\n jiffies: 4295575635\n";
        assert_eq!(sample(text), Some((4_295_575_635, 2_733_618_900_601)));
        assert_eq!(sample("nothing"), None);
        // This machine's own: HZ between 100 and 1000.
        let ns = ns_per_jiffy().expect("/proc/timer_list is readable as root");
        assert!((1_000_000..=10_000_000).contains(&ns), "{ns}");
    }

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
        assert_eq!(
            hz.observe(start + 750, 308_000_000_001),
            Some(250),
            "found once, kept"
        );
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
