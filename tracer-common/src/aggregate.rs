//! What the kernel counts itself, in per-CPU arrays the daemon reads once per interval instead of
//! receiving every transition: transitions by (old, new), time spent in each state as a
//! histogram, and live sockets by state. The bucket arithmetic is here so both sides agree on it.
use crate::TcpState;

const STATES: usize = TcpState::COUNT;

/// Transitions by (old, new): `counts[old * COUNT + new]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionCounts {
    pub counts: [u64; STATES * STATES],
}

/// Sockets by state: records entering minus records leaving. Per CPU a slot can be negative
/// (a socket may enter a state on one CPU and leave it on another); the sum over CPUs is the count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauges {
    pub by_state: [i64; STATES],
}

/// Exact buckets below 8 µs, then 8 buckets per power of two up to 2^40 µs (12.7 days): a
/// duration's bucket is within 12.5 % of it.
pub const DURATION_BUCKETS: usize = 8 + (MAX_EXPONENT as usize - 2) * 8;
/// Durations of 2^40 µs and more share the last bucket.
pub const MAX_EXPONENT: u32 = 40;

/// Time spent in one state, before the socket left it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durations {
    pub buckets: [u64; DURATION_BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
    /// Smallest and largest duration; `min_ns` is 0 until the first (durations are never 0 ns).
    pub min_ns: u64,
    pub max_ns: u64,
}

/// Octave buckets (one per power of two of microseconds) for the port-labelled histograms, which
/// exist per (port, state) and so are kept smaller.
pub const OCTAVES: usize = MAX_EXPONENT as usize + 1;

/// Key of the port-labelled aggregates: transitions by (port, old, new), durations by
/// (port, state) with `new` 0.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub port: u16,
    pub old: u8,
    pub new: u8,
    pub _pad: [u8; 4],
}

/// Time spent in a state, per service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortDurations {
    pub buckets: [u64; OCTAVES],
    pub count: u64,
    pub sum_ns: u64,
}

/// Key of the accept-wait histograms: a listener by its network namespace and port (the local port
/// of the connections it accepts). Netns and port 0: the listeners past the map's room.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// How long a listener's connections waited to be accepted: from the end of their handshake (their
/// entry into ESTABLISHED) to the `accept()` that took them, and the process that accepted the
/// last one (its owner).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptWaits {
    pub waits: Durations,
    pub pid: u32,
    pub _pad: u32,
}

/// Position of the highest set bit (`value` > 0): a binary search the eBPF verifier accepts (no
/// count-leading-zeros instruction).
#[inline(always)]
const fn log2(mut value: u64) -> u32 {
    let mut bits = 0;
    let mut shift = 32;
    while shift > 0 {
        if value >> shift != 0 {
            value >>= shift;
            bits += shift;
        }
        shift /= 2;
    }
    bits
}

/// The histogram bucket of a duration.
#[inline(always)]
pub const fn duration_bucket(ns: u64) -> usize {
    let us = ns / 1000;
    if us < 8 {
        return us as usize;
    }
    let exponent = log2(us);
    if exponent > MAX_EXPONENT {
        return DURATION_BUCKETS - 1;
    }
    let sub = (us >> (exponent - 3)) & 7;
    8 + (exponent as usize - 3) * 8 + sub as usize
}

/// Lower bound of a duration bucket, in microseconds.
pub const fn bucket_floor_us(bucket: usize) -> u64 {
    if bucket < 8 {
        return bucket as u64;
    }
    let exponent = 3 + (bucket - 8) / 8;
    let sub = ((bucket - 8) % 8) as u64;
    (8 + sub) << (exponent - 3)
}

/// The octave of a duration: durations under 2 µs share octave 0.
#[inline(always)]
pub const fn octave(ns: u64) -> usize {
    let us = ns / 1000;
    if us < 2 {
        return 0;
    }
    let exponent = log2(us);
    if exponent > MAX_EXPONENT {
        MAX_EXPONENT as usize
    } else {
        exponent as usize
    }
}

/// The octave a duration bucket lies in: octaves are unions of whole buckets.
pub const fn octave_of_bucket(bucket: usize) -> usize {
    octave(bucket_floor_us(bucket) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_durations() {
        let mut previous = 0;
        for us in (0..2_000_000u64)
            .step_by(7)
            .chain([1u64 << 39, (1 << 40) - 1])
        {
            let bucket = duration_bucket(us * 1000);
            assert!(bucket >= previous, "buckets grow with durations");
            previous = bucket;
            assert!(bucket_floor_us(bucket) <= us, "{us} µs in {bucket}");
            if bucket + 1 < DURATION_BUCKETS {
                assert!(us < bucket_floor_us(bucket + 1), "{us} µs in {bucket}");
            }
            // Within 12.5 % of the bucket's floor.
            assert!(us - bucket_floor_us(bucket) <= bucket_floor_us(bucket) / 8 + 1);
        }
        assert_eq!(duration_bucket(u64::MAX), DURATION_BUCKETS - 1);
        assert_eq!(duration_bucket(999), 0);
        assert_eq!(duration_bucket(8_000), 8);
        assert_eq!(bucket_floor_us(DURATION_BUCKETS - 1), 15 << 37);
    }

    #[test]
    fn octaves_are_unions_of_buckets() {
        for bucket in 0..DURATION_BUCKETS {
            let floor = bucket_floor_us(bucket) * 1000;
            let last = if bucket + 1 < DURATION_BUCKETS {
                bucket_floor_us(bucket + 1) * 1000 - 1
            } else {
                u64::MAX
            };
            assert_eq!(octave(floor), octave(last), "bucket {bucket} spans octaves");
            assert_eq!(octave_of_bucket(bucket), octave(floor));
        }
        assert_eq!(octave(1_999), 0);
        assert_eq!(octave(2_000), 1);
        assert_eq!(octave(u64::MAX), MAX_EXPONENT as usize);
    }

    #[test]
    fn log2_is_exact() {
        for bit in 0..64 {
            assert_eq!(log2(1 << bit), bit);
            assert_eq!(log2((1u64 << bit) | 1), bit);
        }
        assert_eq!(log2(u64::MAX), 63);
    }
}
