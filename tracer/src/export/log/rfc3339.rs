//! RFC 3339 UTC timestamps with microseconds (`2026-11-25T09:02:03.645174Z`), as humantime's
//! `format_rfc3339_micros` writes them, without its per-line calendar arithmetic and `core::fmt`:
//! the text up to the seconds is kept and redone only when the second changes, the date only
//! when the day does.
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a timestamp: four-digit years always, as u64 nanoseconds end in 2554.
pub(super) const LEN: usize = 27;

pub(super) struct Rfc3339 {
    /// Whole seconds since the epoch that `text` holds, `u64::MAX` before the first use.
    secs: u64,
    /// Days since the epoch of the date in `text`.
    day: u64,
    text: [u8; LEN],
}

impl Rfc3339 {
    pub(super) fn new() -> Self {
        Self {
            secs: u64::MAX,
            day: u64::MAX,
            text: *b"0000-00-00T00:00:00.000000Z",
        }
    }

    pub(super) fn push(&mut self, buf: &mut Vec<u8>, time: SystemTime) {
        // Times before the epoch cannot come from the wall clock (the epoch plus a u64).
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if secs != self.secs {
            self.set_second(secs);
        }
        // Truncated, not rounded, as humantime does.
        let micros = since.subsec_micros();
        two_digits(&mut self.text[20..22], micros / 10_000);
        two_digits(&mut self.text[22..24], micros / 100 % 100);
        two_digits(&mut self.text[24..26], micros % 100);
        buf.extend_from_slice(&self.text);
    }

    fn set_second(&mut self, secs: u64) {
        self.secs = secs;
        let day = secs / 86_400;
        if day != self.day {
            self.day = day;
            let (year, month, mday) = civil(day);
            two_digits(&mut self.text[0..2], year / 100 % 100);
            two_digits(&mut self.text[2..4], year % 100);
            two_digits(&mut self.text[5..7], month);
            two_digits(&mut self.text[8..10], mday);
        }
        let of_day = (secs % 86_400) as u32;
        two_digits(&mut self.text[11..13], of_day / 3600);
        two_digits(&mut self.text[14..16], of_day / 60 % 60);
        two_digits(&mut self.text[17..19], of_day % 60);
    }
}

/// Year, month (1-12) and day (1-31) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil(days: u64) -> (u32, u32, u32) {
    // Counted from 0000-03-01, so that a leap day ends its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let mday = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = (year_of_era + era * 400 + u64::from(month <= 2)) as u32;
    (year, month, mday)
}

/// Writes `value` (below 100) as two digits into `out`.
pub(super) fn two_digits(out: &mut [u8], value: u32) {
    out[0] = b'0' + (value / 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{
        super::strategies::{instant, year_start},
        *,
    };

    fn fast(cache: &mut Rfc3339, ns: u64) -> String {
        let mut buf = Vec::new();
        cache.push(&mut buf, UNIX_EPOCH + Duration::from_nanos(ns));
        String::from_utf8(buf).unwrap()
    }

    fn reference(ns: u64) -> String {
        humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
    }

    #[test]
    fn known_dates() {
        let mut cache = Rfc3339::new();
        assert_eq!(fast(&mut cache, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            fast(&mut cache, 1_800_000_001_500_000_999),
            "2027-01-15T08:00:01.500000Z"
        );
        assert_eq!(fast(&mut cache, u64::MAX), reference(u64::MAX));
        let day_60 = |year| (year_start(year) + 59 * 86_400) * 1_000_000_000;
        assert_eq!(
            fast(&mut cache, day_60(2000)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            fast(&mut cache, day_60(2100)),
            "2100-03-01T00:00:00.000000Z"
        );
        assert_eq!(
            fast(&mut cache, year_start(2025) * 1_000_000_000 - 1),
            "2024-12-31T23:59:59.999999Z"
        );
        // 2000 and 2400 are leap years, 2100 and 2500 are not.
        for year in [1972, 2000, 2024, 2100, 2400, 2500] {
            let leap_day = year_start(year) + 59 * 86_400;
            let ns = leap_day * 1_000_000_000;
            assert_eq!(fast(&mut cache, ns), reference(ns), "{year}");
        }
    }

    /// Instants in the order lines come: mostly increasing, so the cache is hit and refreshed.
    fn instants() -> impl Strategy<Value = Vec<u64>> {
        (
            instant(),
            proptest::collection::vec(0u64..3_000_000_000, 0..20),
        )
            .prop_map(|(start, steps)| {
                steps
                    .iter()
                    .scan(start, |ns, step| {
                        *ns = ns.saturating_add(*step);
                        Some(*ns)
                    })
                    .chain([start])
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn matches_humantime(runs in proptest::collection::vec(instants(), 1..4)) {
            let mut cache = Rfc3339::new();
            for ns in runs.into_iter().flatten() {
                prop_assert_eq!(fast(&mut cache, ns), reference(ns));
            }
        }
    }
}
