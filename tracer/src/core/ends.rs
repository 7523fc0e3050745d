//! How connections ended and how connects went, named as summaries and metrics show them: ends
//! by kind, failed connects by reason (their kind, or the error by name), connect times with and
//! without a SYN retransmitted.
use std::borrow::Cow;

use tracer_common::{End, ends::errno_name};

use crate::source::kernel_maps::Ends;

/// An error by its symbolic name (`EHOSTUNREACH`), or `errno_N` for one without a name here.
pub(crate) fn error_name(errno: u8) -> Cow<'static, str> {
    match errno_name(errno) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("errno_{errno}")),
    }
}

/// Every kind of end with its count (zeros included, in a fixed order).
pub(crate) fn by_end(ends: &Ends) -> Vec<(End, u64)> {
    End::ALL
        .into_iter()
        .map(|end| (end, ends.ends[end as usize]))
        .collect()
}

/// Failed connects by reason: every kind but `error` (zeros included), then the errors by name.
pub(crate) fn connect_failures(ends: &Ends) -> Vec<(Cow<'static, str>, u64)> {
    let kinds = End::ALL
        .into_iter()
        .filter(|end| *end != End::Error && *end != End::Fin)
        .map(|end| {
            (
                Cow::Borrowed(end.name()),
                ends.connect_failures[end as usize],
            )
        });
    let errors = ends
        .connect_errors
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(errno, n)| (error_name(errno as u8), *n));
    kinds.chain(errors).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_connects_by_reason() {
        let mut ends = Ends::default();
        ends.ends[End::Refused as usize] = 2;
        ends.connect_failures[End::Refused as usize] = 2;
        ends.connect_failures[End::Error as usize] = 3;
        ends.connect_errors[113] = 3;
        ends.connect_errors[130] = 0;
        let reasons = connect_failures(&ends);
        assert!(reasons.contains(&(Cow::Borrowed("refused"), 2)));
        assert!(reasons.contains(&(Cow::Borrowed("timeout"), 0)));
        assert!(reasons.contains(&(Cow::Borrowed("EHOSTUNREACH"), 3)));
        assert!(!reasons.iter().any(|(r, _)| r == "error" || r == "fin"));
        assert_eq!(by_end(&ends)[End::Refused as usize - 1], (End::Refused, 2));
        assert_eq!(error_name(200), "errno_200");
    }
}
