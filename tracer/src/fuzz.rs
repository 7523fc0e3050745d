//! Inputs for the `fuzz_*` property tests of the parsers of outside data (/proc and tracefs files,
//! kernel records, netlink replies, flags): valid inputs broken the ways outside data breaks, cut
//! short, with a field gone, a number too large, bytes that are not UTF-8. Each parser's test
//! lives beside it; `cargo xtask fuzz` runs them all with fresh seeds for longer.
use proptest::{prelude::*, sample::Index};

/// The cases of a test whose cases cost `factor` times a cheap one's: its share of the cases asked
/// for (`PROPTEST_CASES`, 256 when unset), at least one.
pub(crate) fn costly(factor: u32) -> ProptestConfig {
    let cases = ProptestConfig::default().cases;
    ProptestConfig::with_cases((cases / factor).max(1))
}

/// One way to break an input.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut short here (a file read while it changes, a record truncated).
    Truncate(Index),
    /// These bytes put in here.
    Insert(Index, Vec<u8>),
    /// Up to this many bytes taken out from here.
    Delete(Index, usize),
    /// The whitespace-separated token around here replaced (a field's value).
    Replace(Index, Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |index: &Index, len: usize| if len == 0 { 0 } else { index.index(len + 1) };
        match self {
            Self::Truncate(index) => bytes.truncate(at(index, bytes.len())),
            Self::Insert(index, more) => {
                let at = at(index, bytes.len());
                bytes.splice(at..at, more.iter().copied());
            }
            Self::Delete(index, count) => {
                let from = at(index, bytes.len());
                let to = from.saturating_add(*count).min(bytes.len());
                bytes.drain(from..to);
            }
            Self::Replace(index, with) => {
                let around = at(index, bytes.len()).min(bytes.len().saturating_sub(1));
                let space = |b: &u8| b.is_ascii_whitespace();
                let start = bytes[..around].iter().rposition(space).map_or(0, |i| i + 1);
                let end = bytes[around..]
                    .iter()
                    .position(space)
                    .map_or(bytes.len(), |i| around + i);
                if start <= end {
                    bytes.splice(start..end, with.iter().copied());
                }
            }
        }
    }
}

/// Bytes that parsers of text and records get wrong: numbers past every integer type, signs,
/// separators, not UTF-8, control characters, anything.
pub(crate) fn odd_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "18446744073709551616",
            "18446744073709551615",
            "4294967296",
            "4294967295",
            "65536",
            "340282366920938463463374607431768211456",
            "99999999999999999999999999999999",
            "-1",
            "+1",
            "0",
            "00",
            "0x10",
            "1e9",
            "NaN",
            "",
            " ",
            "\t",
            "\n",
            "\r\n",
            ":",
            ";",
            "=",
            ",",
            "/",
            "[",
            "]",
            "(",
            ")",
            "\0",
            "é",
            "\u{fffd}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        Just(vec![0xff, 0xfe]),
        Just(vec![0xc3]),
        prop::collection::vec(any::<u8>(), 0..12),
        "[0-9]{15,25}".prop_map(String::into_bytes),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), odd_bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), odd_bytes()).prop_map(|(i, b)| Mutation::Replace(i, b)),
    ]
}

/// A valid input broken by a few mutations (or none: the valid input itself comes too).
pub(crate) fn mutated_bytes(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 0..4).prop_map(move |mutations| {
        let mut bytes = valid.clone();
        for mutation in &mutations {
            mutation.apply(&mut bytes);
        }
        bytes
    })
}

/// [`mutated_bytes`] of a text, read back as a reader of /proc would get it (`read_to_string`
/// refuses what is not UTF-8; the lossy form keeps the rest to parse).
pub(crate) fn mutated(valid: String) -> impl Strategy<Value = String> {
    mutated_bytes(valid.into_bytes()).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Anything, as text: arbitrary bytes read lossily, heavy in the odd ones.
pub(crate) fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(odd_bytes(), 0..16)
            .prop_map(|parts| String::from_utf8_lossy(&parts.concat()).into_owned()),
    ]
}

mod tests {
    use super::*;

    proptest! {
        /// The mutations stay within the input and the mutated text is what a reader gets.
        #[test]
        fn fuzz_mutations_are_applied(valid in "[a-z0-9 \n]{0,40}", mutations in prop::collection::vec(mutation(), 1..4)) {
            let mut bytes = valid.clone().into_bytes();
            for mutation in &mutations {
                mutation.apply(&mut bytes);
            }
            if let [Mutation::Truncate(index)] = mutations.as_slice() {
                let cut = if valid.is_empty() { 0 } else { index.index(valid.len() + 1) };
                prop_assert_eq!(bytes, valid.as_bytes()[..cut].to_vec());
            }
        }
    }
}
