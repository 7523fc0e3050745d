//! A log line built by hand in a reused buffer: the per-transition lines are the daemon's hottest
//! output, and `core::fmt`, serde and per-line calendar arithmetic were 40 % of its CPU when
//! every transition was logged. Each piece writes exactly what the `format!`/serde_json code it
//! replaces wrote; the tests compare them.
use std::{io, net::IpAddr, time::SystemTime};

use super::{
    hex::{HEX_DIGITS, push_hex},
    ip,
    rfc3339::{Rfc3339, two_digits},
};
use crate::units::millis;

pub(super) struct Line {
    buf: Vec<u8>,
    time: Rfc3339,
}

impl Line {
    pub(super) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(512),
            time: Rfc3339::new(),
        }
    }

    /// Empties the line, keeping its buffer and the timestamp cache.
    pub(super) fn clear(&mut self) {
        self.buf.clear();
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// RFC 3339 with microseconds, as humantime's `format_rfc3339_micros`.
    pub(super) fn time(&mut self, time: SystemTime) {
        self.time.push(&mut self.buf, time);
    }

    /// An integer in decimal, as `{}`.
    pub(super) fn int(&mut self, value: impl itoa::Integer) {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Lowercase hex, at least `min_digits` with leading zeros: `{:x}` or `{:016x}`.
    pub(super) fn hex(&mut self, value: u64, min_digits: usize) {
        push_hex(&mut self.buf, value, min_digits);
    }

    pub(super) fn ip(&mut self, ip: IpAddr) {
        ip::push(&mut self.buf, ip);
    }

    /// What `write` writes, ASCII, then spaces up to `width` characters: `{:<width}`.
    #[inline]
    pub(super) fn left(&mut self, width: usize, write: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        write(self);
        debug_assert!(self.buf[start..].is_ascii());
        self.pad(width.saturating_sub(self.buf.len() - start), width);
    }

    /// `text`, then spaces up to `width` characters: `{:<width}`, which counts characters.
    #[inline]
    pub(super) fn left_str(&mut self, width: usize, text: &str) {
        self.raw(text.as_bytes());
        let chars = if text.is_ascii() {
            text.len()
        } else {
            text.chars().count()
        };
        self.pad(width.saturating_sub(chars), width);
    }

    /// Spaces, then what `write` writes, ASCII, `width` characters in all: `{:>width}`.
    #[inline]
    pub(super) fn right(&mut self, width: usize, write: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        write(self);
        debug_assert!(self.buf[start..].is_ascii());
        let pad = width.saturating_sub(self.buf.len() - start);
        self.pad(pad, width);
        self.buf[start..].rotate_right(pad);
    }

    /// `pad` spaces, `pad` being at most `width`.
    #[inline]
    fn pad(&mut self, pad: usize, width: usize) {
        const SPACES: [u8; 32] = [b' '; 32];
        let end = self.buf.len() + pad;
        if width <= SPACES.len() {
            // `width` is the caller's constant: copying that many takes a few stores, where
            // `pad` would take a call to memset; the surplus is cut.
            self.buf.extend_from_slice(&SPACES[..width]);
            self.buf.truncate(end);
        } else {
            self.buf.resize(end, b' ');
        }
    }

    /// Milliseconds of `ns` with three decimals, as `{:.3}` of `millis(ns)` prints them.
    pub(super) fn millis_fixed3(&mut self, ns: u64) {
        let thousandths = thousandths(millis(ns));
        self.int(thousandths / 1000);
        let mut frac = *b".000";
        let rest = (thousandths % 1000) as u32;
        frac[1] = b'0' + (rest / 100) as u8;
        two_digits(&mut frac[2..], rest % 100);
        self.raw(&frac);
    }

    /// Milliseconds of `ns` as serde_json prints the f64 `millis(ns)`: the shortest text that
    /// reads back as the same number (`0.052125`, `2000.0`), by zmij as serde_json does.
    pub(super) fn millis_shortest(&mut self, ns: u64) {
        // Finite: a u64 divided by 1e6.
        let mut buffer = zmij::Buffer::new();
        self.raw(buffer.format_finite(millis(ns)).as_bytes());
    }

    /// A JSON string, escaped as serde_json escapes it: `"` and `\`, control characters as
    /// `\n`-style escapes or `\u00XX`; everything else, non-ASCII included, as it is.
    pub(super) fn json_str(&mut self, text: &str) {
        let escaped = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
        self.buf.push(b'"');
        let bytes = text.as_bytes();
        // Names and paths seldom need escapes: one check over the whole string, then one copy.
        if !bytes.iter().any(|b| escaped(*b)) {
            self.buf.extend_from_slice(bytes);
            self.buf.push(b'"');
            return;
        }
        let mut plain_from = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            if !escaped(byte) {
                continue;
            }
            let escape = match byte {
                0x08 => b'b',
                b'\t' => b't',
                b'\n' => b'n',
                0x0c => b'f',
                b'\r' => b'r',
                0x00..=0x1f => b'u',
                quote_or_backslash => quote_or_backslash,
            };
            self.buf.extend_from_slice(&bytes[plain_from..i]);
            self.buf.extend_from_slice(&[b'\\', escape]);
            if escape == b'u' {
                let hex = [
                    b'0',
                    b'0',
                    HEX_DIGITS[usize::from(byte >> 4)],
                    HEX_DIGITS[usize::from(byte & 15)],
                ];
                self.buf.extend_from_slice(&hex);
            }
            plain_from = i + 1;
        }
        self.buf.extend_from_slice(&bytes[plain_from..]);
        self.buf.push(b'"');
    }
}

/// The rarer lines are written into the same buffer with `write!` and serde.
impl io::Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `value × 1000` rounded to an integer, ties to even, exactly as `{:.3}` rounds: from the binary
/// value itself (0.0625 is a tie, 0.0005 is not: its double lies above it). `value` is
/// non-negative and below 2^64 / 1000, as milliseconds of u64 nanoseconds are.
fn thousandths(value: f64) -> u64 {
    let bits = value.to_bits();
    let biased_exp = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // value = mantissa × 2^exp exactly.
    let (mantissa, exp) = if biased_exp == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased_exp - 1075)
    };
    let scaled = u128::from(mantissa) * 1000;
    let rounded = if exp >= 0 {
        scaled << exp
    } else if exp <= -127 {
        // `value` below 2^-74: a thousand times it is far under one half.
        0
    } else {
        let shift = exp.unsigned_abs();
        let (whole, rest, half) = (
            scaled >> shift,
            scaled & ((1 << shift) - 1),
            1 << (shift - 1),
        );
        whole + u128::from(rest > half || (rest == half && whole & 1 == 1))
    };
    rounded as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{
        super::strategies::{nanos, odd_text},
        *,
    };

    fn written(write: impl FnOnce(&mut Line)) -> String {
        let mut line = Line::new();
        write(&mut line);
        String::from_utf8(line.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn fixed3_rounds_the_binary_value_ties_to_even() {
        for (ns, text) in [
            (0, "0.000"),
            (500, "0.001"),
            (62_500, "0.062"),
            (1_062_500, "1.062"),
            (52_125, "0.052"),
            (120_201_234, "120.201"),
            (u64::MAX, "18446744073709.551"),
        ] {
            assert_eq!(written(|l| l.millis_fixed3(ns)), text, "{ns}");
            assert_eq!(format!("{:.3}", millis(ns)), text, "{ns}");
        }
    }

    #[test]
    fn shortest_as_serde_json() {
        for ns in [0, 1, 52_125, 2_000_000_000, 120_201_234, u64::MAX, 1 << 53] {
            let reference = serde_json::to_string(&millis(ns)).unwrap();
            assert_eq!(written(|l| l.millis_shortest(ns)), reference);
        }
        assert_eq!(written(|l| l.millis_shortest(2_000_000_000)), "2000.0");
    }

    #[test]
    fn padding_counts_characters() {
        let text = written(|l| {
            l.left_str(5, "é€");
            l.raw(b"|");
            l.right(4, |l| l.raw(b"ab"));
            l.left(2, |l| l.raw(b"long"));
            l.left(40, |l| l.raw(b"wide"));
        });
        assert_eq!(
            text,
            format!("{:<5}|{:>4}{:<2}{:<40}", "é€", "ab", "long", "wide")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn numbers_match_fmt_and_serde(ns in nanos(), value in any::<u64>(), digits in 0usize..17) {
            prop_assert_eq!(written(|l| l.millis_fixed3(ns)), format!("{:.3}", millis(ns)));
            prop_assert_eq!(
                written(|l| l.millis_shortest(ns)),
                serde_json::to_string(&millis(ns)).unwrap()
            );
            prop_assert_eq!(written(|l| l.int(value)), value.to_string());
            prop_assert_eq!(written(|l| l.hex(value, 1)), format!("{value:x}"));
            prop_assert_eq!(written(|l| l.hex(value, 16)), format!("{value:016x}"));
            prop_assert_eq!(written(|l| l.hex(value, digits)), format!("{value:0digits$x}"));
        }

        #[test]
        fn strings_match_serde_json_and_padding(text in odd_text(), width in 0usize..40) {
            prop_assert_eq!(written(|l| l.json_str(&text)), serde_json::to_string(&text).unwrap());
            prop_assert_eq!(written(|l| l.left_str(width, &text)), format!("{text:<width$}"));
            let ascii: String = text.chars().filter(char::is_ascii).collect();
            prop_assert_eq!(written(|l| l.left(width, |l| l.raw(ascii.as_bytes()))), format!("{ascii:<width$}"));
            prop_assert_eq!(written(|l| l.right(width, |l| l.raw(ascii.as_bytes()))), format!("{ascii:>width$}"));
        }
    }
}
