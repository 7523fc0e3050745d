//! The ephemeral port range of a network namespace: `net.ipv4.ip_local_port_range` less
//! `net.ipv4.ip_local_reserved_ports`, read from /proc/sys by a thread inside the namespace (the
//! files under /proc/sys/net show the reader's namespace). IPv6 sockets take their ports from the
//! same two settings: Linux has no IPv6 ones.
use anyhow::{Context as _, Result, bail};

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The ports `connect()` (or `bind()` to port 0) picks from in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub(crate) low: u16,
    pub(crate) high: u16,
    /// Reserved ports inside `low..=high`, as inclusive spans, sorted and disjoint.
    reserved: Vec<(u16, u16)>,
}

impl PortRange {
    /// `reserved`: inclusive spans, anywhere; only what lies inside the range is kept.
    pub(crate) fn new(low: u16, high: u16, reserved: &[(u16, u16)]) -> Self {
        let mut inside: Vec<(u16, u16)> = reserved
            .iter()
            .filter(|(from, to)| from <= to && *to >= low && *from <= high)
            .map(|(from, to)| ((*from).max(low), (*to).min(high)))
            .collect();
        inside.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(inside.len());
        for (from, to) in inside {
            match merged.last_mut() {
                Some(last) if u32::from(from) <= u32::from(last.1) + 1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        Self {
            low,
            high,
            reserved: merged,
        }
    }

    /// Whether the kernel may pick `port` for a connection.
    pub(crate) fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
            && !self
                .reserved
                .iter()
                .any(|(from, to)| (*from..=*to).contains(&port))
    }

    /// How many ports the kernel may pick from.
    pub(crate) fn available(&self) -> u32 {
        let span = |from: u16, to: u16| u32::from(to) - u32::from(from) + 1;
        let reserved: u32 = self.reserved.iter().map(|(f, t)| span(*f, *t)).sum();
        span(self.low, self.high).saturating_sub(reserved)
    }
}

/// Reads the calling thread's namespace's range.
pub(crate) fn read() -> Result<PortRange> {
    let range = std::fs::read_to_string(RANGE).with_context(|| format!("reading {RANGE}"))?;
    // Kernels without reserved ports (before 2.6.35) have no file: nothing reserved.
    let reserved = std::fs::read_to_string(RESERVED).unwrap_or_default();
    parse(&range, &reserved)
}

/// The two files' text: `LOW\tHIGH`, and a list like `8080,9000-9100` (empty: none).
fn parse(range: &str, reserved: &str) -> Result<PortRange> {
    let mut bounds = range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (bounds.next(), bounds.next(), bounds.next())
    else {
        bail!("{RANGE} is not two ports: {range:?}");
    };
    if low > high {
        bail!("{RANGE} is empty: {range:?}");
    }
    let mut spans = Vec::new();
    for item in reserved.trim().split(',').filter(|i| !i.is_empty()) {
        let (from, to) = item.split_once('-').unwrap_or((item, item));
        match (from.trim().parse::<u16>(), to.trim().parse::<u16>()) {
            (Ok(from), Ok(to)) if from <= to => spans.push((from, to)),
            _ => bail!("{RESERVED} has {item:?}"),
        }
    }
    Ok(PortRange::new(low, high, &spans))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    #[test]
    fn reads_the_kernels_default() {
        let range = parse("32768\t60999\n", "\n").unwrap();
        assert_eq!(range.available(), 28_232);
        assert!(range.contains(32_768) && range.contains(60_999));
        assert!(!range.contains(32_767) && !range.contains(61_000));
    }

    #[test]
    fn reserved_ports_inside_the_range_are_not_available() {
        let range = parse("1000 1199", "80,1000-1009,1100,1105-1300,5000\n").unwrap();
        assert_eq!(range.available(), 200 - 10 - 1 - 95);
        assert!(!range.contains(1005) && !range.contains(1100) && !range.contains(1150));
        assert!(range.contains(1010) && range.contains(1104));
    }

    #[test]
    fn broken_files_are_errors() {
        for (range, reserved) in [
            ("", ""),
            ("1000", ""),
            ("2000 1000", ""),
            ("1000 2000 3000", ""),
            ("1000 70000", ""),
            ("1000 2000", "x"),
            ("1000 2000", "9-8"),
        ] {
            assert!(parse(range, reserved).is_err(), "{range:?} {reserved:?}");
        }
    }

    /// The ports of `range` by brute force.
    fn counted(range: &PortRange) -> u32 {
        (0..=u16::MAX).filter(|p| range.contains(*p)).count() as u32
    }

    fn valid() -> impl Strategy<Value = (String, String, u16, u16, Vec<(u16, u16)>)> {
        (
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec((any::<u16>(), 0u16..300), 0..6),
        )
            .prop_map(|(a, b, spans)| {
                let (low, high) = (a.min(b), a.max(b));
                let spans: Vec<(u16, u16)> = spans
                    .into_iter()
                    .map(|(from, len)| (from, from.saturating_add(len)))
                    .collect();
                let list: Vec<String> = spans
                    .iter()
                    .map(|(f, t)| {
                        if f == t {
                            f.to_string()
                        } else {
                            format!("{f}-{t}")
                        }
                    })
                    .collect();
                (
                    format!("{low}\t{high}\n"),
                    format!("{}\n", list.join(",")),
                    low,
                    high,
                    spans,
                )
            })
    }

    proptest! {
        #[test]
        fn fuzz_port_range_valid((range, reserved, low, high, spans) in valid()) {
            let parsed = parse(&range, &reserved).unwrap();
            prop_assert_eq!((parsed.low, parsed.high), (low, high));
            prop_assert_eq!(parsed.available(), counted(&parsed));
            for port in [low, high] {
                let reserved = spans.iter().any(|(f, t)| (*f..=*t).contains(&port));
                prop_assert_eq!(parsed.contains(port), !reserved);
            }
        }

        #[test]
        fn fuzz_port_range_mutated(
            (range, reserved) in valid().prop_flat_map(|(r, s, ..)| (mutated(r), mutated(s)))
        ) {
            if let Ok(parsed) = parse(&range, &reserved) {
                prop_assert!(parsed.low <= parsed.high);
                prop_assert_eq!(parsed.available(), counted(&parsed));
            }
        }

        #[test]
        fn fuzz_port_range_arbitrary(range in any_text(), reserved in any_text()) {
            if let Ok(parsed) = parse(&range, &reserved) {
                prop_assert!(range.contains(&parsed.low.to_string()));
                prop_assert!(range.contains(&parsed.high.to_string()));
            }
        }
    }
}
