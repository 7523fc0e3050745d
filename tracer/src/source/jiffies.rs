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

/// The known rate nearest a measured one, if within 3 %. The nearest, not the first within: 250
/// and 256 are 2.4 % apart.
fn snap(raw: f64) -> Option<u32> {
    let off = |hz: u32| (raw / f64::from(hz) - 1.0).abs();
    KNOWN_HZ
        .into_iter()
        .filter(|hz| off(*hz) < 0.03)
        .min_by(|a, b| off(*a).total_cmp(&off(*b)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    /// The start of /proc/timer_list, with its clocks read at one moment.
    fn timer_list(now_ns: u64, jiffies: u64) -> String {
        format!(
            "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at {now_ns} nsecs\n\n\
             cpu: 0\n clock 0:\n  .base:       00000000b2c0f5d4\n  .index:      0\n\
             .expires_next   : 2733620000000 nsecs\n jiffies: {jiffies}\n\ncpu: 1\n jiffies: 1\n"
        )
    }

    /// Both numbers found are written in the text.
    fn written_in(text: &str, found: Option<(u64, u64)>) -> bool {
        found.is_none_or(|(j, n)| text.contains(&j.to_string()) && text.contains(&n.to_string()))
    }

    proptest! {
        #[test]
        fn fuzz_timer_list_valid(now_ns in any::<u64>(), jiffies in any::<u64>()) {
            prop_assert_eq!(sample(&timer_list(now_ns, jiffies)), Some((jiffies, now_ns)));
        }

        #[test]
        fn fuzz_timer_list_mutated(text in any::<(u64, u64)>().prop_flat_map(|(n, j)| mutated(timer_list(n, j)))) {
            let found = sample(&text);
            prop_assert!(written_in(&text, found), "{found:?}");
        }

        #[test]
        fn fuzz_timer_list_arbitrary(text in any_text()) {
            let found = sample(&text);
            prop_assert!(written_in(&text, found), "{found:?}");
        }

        /// Any readings, near boot or not: a tick rate Linux is built with, kept once found.
        #[test]
        fn fuzz_hz_estimator(readings in prop::collection::vec(
            prop_oneof![any::<(u64, u64)>(), (0u64..1 << 33, 0u64..1 << 43)],
            1..6,
        )) {
            let mut estimator = HzEstimator::default();
            let mut found = None;
            for (jiffies, mono_ns) in readings {
                let hz = estimator.observe(jiffies, mono_ns);
                prop_assert!(hz.is_none_or(|hz| KNOWN_HZ.contains(&hz)), "{hz:?}");
                prop_assert!(found.is_none() || hz == found, "{found:?} then {hz:?}");
                found = hz;
            }
        }

        /// A tick rate is found from one reading away from 300 s of uptime.
        #[test]
        fn fuzz_hz_estimator_finds_the_rate(
            hz in prop::sample::select(KNOWN_HZ.to_vec()),
            uptime_ms in prop_oneof![1_000u64..240_000, 360_000u64..100_000_000_000],
        ) {
            let jiffies = ((1u64 << 32) - 300 * u64::from(hz)).wrapping_add(uptime_ms * u64::from(hz) / 1000);
            prop_assert_eq!(HzEstimator::default().observe(jiffies, uptime_ms * 1_000_000), Some(hz));
        }
    }

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

    /// Found by fuzz_hz_estimator_finds_the_rate: 256 was taken for 250, the first rate within
    /// 3 % of it.
    #[test]
    fn hz_256_is_not_250() {
        let uptime_ms = 1_000;
        let jiffies = ((1u64 << 32) - 300 * 256) + uptime_ms * 256 / 1000;
        let mut hz = HzEstimator::default();
        assert_eq!(hz.observe(jiffies, uptime_ms * 1_000_000), Some(256));
        assert_eq!(snap(250.0), Some(250));
        assert_eq!(snap(253.5), Some(256));
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
