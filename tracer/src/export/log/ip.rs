//! IP addresses as std's `Display` writes them, without `core::fmt`: dotted quads, and IPv6 in
//! RFC 5952's form as std implements it (lowercase hex, the first longest run of two or more zero
//! groups as `::`, IPv4-mapped addresses as `::ffff:a.b.c.d`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) fn push(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_v4(buf, v4),
        IpAddr::V6(v6) => push_v6(buf, v6),
    }
}

fn push_v4(buf: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        buf.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
    }
}

fn push_v6(buf: &mut Vec<u8>, ip: Ipv6Addr) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        buf.extend_from_slice(b"::ffff:");
        return push_v4(buf, v4);
    }
    let groups = ip.segments();
    // The first longest run of zero groups; a single zero group stays as `0`.
    let (mut best_start, mut best_len) = (0, 0);
    let (mut start, mut len) = (0, 0);
    for (i, group) in groups.iter().enumerate() {
        if *group == 0 {
            if len == 0 {
                start = i;
            }
            len += 1;
            if len > best_len {
                (best_start, best_len) = (start, len);
            }
        } else {
            len = 0;
        }
    }
    if best_len > 1 {
        push_groups(buf, &groups[..best_start]);
        buf.extend_from_slice(b"::");
        push_groups(buf, &groups[best_start + best_len..]);
    } else {
        push_groups(buf, &groups);
    }
}

fn push_groups(buf: &mut Vec<u8>, groups: &[u16]) {
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            buf.push(b':');
        }
        super::hex::push_hex(buf, u64::from(*group), 1);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{super::strategies::ipv6, *};

    fn text(ip: IpAddr) -> String {
        let mut buf = Vec::new();
        push(&mut buf, ip);
        // Eight groups of four hex digits and seven colons at most.
        assert!(buf.len() <= 39);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn known_addresses() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "1::",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::1.2.3.4",
            "64:ff9b::1.2.3.4",
            "fe80::1:0:0:1",
            "1:0:0:1:0:0:0:1",
            "1:0:1:0:1:0:1:0",
            "2001:db8::2",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(text(ip), ip.to_string());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn matches_display(v6 in ipv6(), v4 in any::<[u8; 4]>()) {
            prop_assert_eq!(text(IpAddr::V6(v6)), v6.to_string());
            let v4 = Ipv4Addr::from(v4);
            prop_assert_eq!(text(IpAddr::V4(v4)), v4.to_string());
        }
    }
}
