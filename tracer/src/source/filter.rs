//! Which sockets the user asked about, by address: applied in the kernel before an event is
//! written, and by the enrich stage to the kernel's socket list, so both sources agree.
use tracer_common::{AF_INET, AF_INET6, KernelFilter};

use super::events::{Endpoints, Family};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SocketFilter {
    pub(crate) family: Option<Family>,
    /// Network namespace inode number.
    pub(crate) netns: Option<u32>,
    pub(crate) local_ports: Vec<u16>,
    pub(crate) remote_ports: Vec<u16>,
}

impl SocketFilter {
    pub(crate) fn matches(&self, e: &Endpoints) -> bool {
        self.family.is_none_or(|f| f == e.family)
            && self.netns.is_none_or(|n| n == e.netns)
            && (self.local_ports.is_empty() || self.local_ports.contains(&e.local_port))
            && (self.remote_ports.is_empty() || self.remote_ports.contains(&e.remote_port))
    }

    /// The filter as the kernel programs apply it (the ports themselves go into two maps).
    pub(crate) fn kernel_filter(&self) -> KernelFilter {
        KernelFilter {
            family: match self.family {
                None => 0,
                Some(Family::Ipv4) => AF_INET,
                Some(Family::Ipv6) => AF_INET6,
            },
            local_ports: u8::from(!self.local_ports.is_empty()),
            remote_ports: u8::from(!self.remote_ports.is_empty()),
            netns: self.netns.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn e(family: Family, local_port: u16, remote_port: u16) -> Endpoints {
        let ip = match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Endpoints {
            netns: 4026531840,
            family,
            local: ip,
            local_port,
            remote: ip,
            remote_port,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(SocketFilter::default().matches(&e(Family::Ipv6, 1, 2)));
    }

    #[test]
    fn all_parts_must_match() {
        let f = SocketFilter {
            family: Some(Family::Ipv4),
            netns: None,
            local_ports: vec![80, 443],
            remote_ports: vec![],
        };
        assert!(f.matches(&e(Family::Ipv4, 443, 5000)));
        assert!(!f.matches(&e(Family::Ipv4, 8080, 5000)));
        assert!(!f.matches(&e(Family::Ipv6, 443, 5000)));
        let f = SocketFilter {
            remote_ports: vec![5432],
            ..SocketFilter::default()
        };
        assert!(f.matches(&e(Family::Ipv6, 40000, 5432)));
        assert!(!f.matches(&e(Family::Ipv6, 5432, 40000)));
        let f = SocketFilter {
            netns: Some(7),
            ..SocketFilter::default()
        };
        assert!(!f.matches(&e(Family::Ipv6, 1, 2)));
        let mut inside = e(Family::Ipv6, 1, 2);
        inside.netns = 7;
        assert!(f.matches(&inside));
    }

    #[test]
    fn the_kernel_gets_the_same_choice() {
        assert_eq!(
            SocketFilter::default().kernel_filter(),
            KernelFilter::default()
        );
        let f = SocketFilter {
            family: Some(Family::Ipv6),
            netns: Some(9),
            local_ports: vec![80],
            remote_ports: vec![],
        };
        let k = f.kernel_filter();
        assert_eq!(
            (k.family, k.netns, k.local_ports, k.remote_ports),
            (AF_INET6, 9, 1, 0)
        );
    }
}
