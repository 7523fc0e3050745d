//! Which sockets the user asked about. The address and port parts are applied in the kernel before
//! an event is written, and here to the kernel's socket list, so both sources agree.
use crate::events::{Endpoints, Family};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketFilter {
    pub family: Option<Family>,
    /// Network namespace inode number.
    pub netns: Option<u32>,
    pub local_ports: Vec<u16>,
    pub remote_ports: Vec<u16>,
}

impl SocketFilter {
    pub fn matches(&self, e: &Endpoints) -> bool {
        self.family.is_none_or(|f| f == e.family)
            && self.netns.is_none_or(|n| n == e.netns)
            && (self.local_ports.is_empty() || self.local_ports.contains(&e.local_port))
            && (self.remote_ports.is_empty() || self.remote_ports.contains(&e.remote_port))
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
}
