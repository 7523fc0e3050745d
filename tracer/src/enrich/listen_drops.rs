//! Connections listeners turned away: the kernel's `ListenOverflows` (a full accept queue) and
//! `ListenDrops` (every SYN or ACK a listener dropped, overflows included) of each network
//! namespace, from its `/proc/<pid>/net/netstat`. Counted by the kernel since each namespace was
//! made, summed over the namespaces the filter lets through; read beside each check of the
//! listeners' accept queues.
use std::collections::HashMap;

/// Listen overflows and drops, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenDrops {
    pub(crate) overflows: u64,
    pub(crate) drops: u64,
}

/// Sums the counters of these namespaces (inode to a process in it), those `netns` lets through.
pub(crate) fn read(namespaces: &HashMap<u32, u32>, netns: Option<u32>) -> ListenDrops {
    let mut total = ListenDrops::default();
    for (_, pid) in namespaces
        .iter()
        .filter(|(inode, _)| netns.is_none_or(|n| n == **inode))
    {
        // A namespace whose process just exited is skipped: its counters are gone with it.
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/netstat")) {
            let found = parse(&text);
            total.overflows += found.overflows;
            total.drops += found.drops;
        }
    }
    total
}

/// The `TcpExt:` counters of a netstat file: a line of names, then a line of values.
fn parse(netstat: &str) -> ListenDrops {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return ListenDrops::default();
    };
    let counters: HashMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
        .collect();
    ListenDrops {
        overflows: counters.get("ListenOverflows").copied().unwrap_or(0),
        drops: counters.get("ListenDrops").copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    /// A netstat file whose `TcpExt:` counters include these two among others, in any order.
    fn netstat(overflows: u64, drops: u64, others: Vec<(String, u64)>, at: usize) -> String {
        let mut counters = others;
        let at = at % (counters.len() + 1);
        counters.insert(at, ("ListenOverflows".to_owned(), overflows));
        counters.insert(at / 2, ("ListenDrops".to_owned(), drops));
        let names: Vec<&str> = counters.iter().map(|(name, _)| name.as_str()).collect();
        let values: Vec<String> = counters.iter().map(|(_, v)| v.to_string()).collect();
        format!(
            "TcpExt: {}\nTcpExt: {}\nIpExt: InNoRoutes InOctets\nIpExt: 0 {}\n",
            names.join(" "),
            values.join(" "),
            u64::MAX
        )
    }

    fn valid() -> impl Strategy<Value = (String, u64, u64)> {
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(("[A-Z][a-z]{2,12}", any::<u64>()), 0..8),
            any::<usize>(),
        )
            .prop_map(|(o, d, others, at)| (netstat(o, d, others, at), o, d))
    }

    /// What any answer must be: each counter 0 or a number the text holds (leading zeros and
    /// all).
    fn written_in(text: &str, found: ListenDrops) -> bool {
        let numbers: Vec<u64> = text
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        [found.overflows, found.drops]
            .iter()
            .all(|v| *v == 0 || numbers.contains(v))
    }

    proptest! {
        #[test]
        fn fuzz_netstat_valid((text, overflows, drops) in valid()) {
            prop_assert_eq!(parse(&text), ListenDrops { overflows, drops });
        }

        #[test]
        fn fuzz_netstat_mutated(text in valid().prop_flat_map(|(text, ..)| mutated(text))) {
            let found = parse(&text);
            prop_assert!(written_in(&text, found), "{found:?}");
        }

        #[test]
        fn fuzz_netstat_arbitrary(text in any_text()) {
            let found = parse(&text);
            prop_assert!(written_in(&text, found), "{found:?}");
        }
    }

    #[test]
    fn reads_the_tcpext_counters() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts\n\
                       TcpExt: 0 12 15 3\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse(netstat),
            ListenDrops {
                overflows: 12,
                drops: 15
            }
        );
        assert_eq!(parse("garbage"), ListenDrops::default());
    }

    #[test]
    fn reads_this_namespace() {
        let own = crate::enrich::socket_list::own_netns().unwrap();
        let namespaces = HashMap::from([(own, std::process::id())]);
        let drops = read(&namespaces, None);
        // The kernel's own counters, at least as many drops as overflows.
        assert!(drops.drops >= drops.overflows, "{drops:?}");
        assert_eq!(
            read(&namespaces, Some(own.wrapping_add(1))),
            ListenDrops::default()
        );
    }
}
