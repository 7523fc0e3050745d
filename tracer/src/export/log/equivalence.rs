//! The hand-built transition lines against the model's serde form and the `format!` code they
//! replaced, through the real writer, on random transitions in batches (so the timestamp cache is exercised).
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::{
    LogFormat, Settings, json,
    model::TransitionLine,
    strategies::batch,
    tests::{render_with, reset_reasons, settings},
    text,
};
use crate::{core::report::Sink as _, export::wall_clock::WallClock, source::events::Transition};

/// A zero offset: a transition's `ts_ns` is its wall-clock time since the epoch.
fn clock() -> WallClock {
    WallClock::fixed(0, UNIX_EPOCH + Duration::ZERO)
}

fn fast(format: LogFormat, batch: &[Transition]) -> String {
    let settings = Settings {
        clock: clock(),
        ..settings(format)
    };
    render_with(settings, |o| {
        for t in batch {
            o.transition(t, super::tests::SELECTED);
        }
    })
}

fn reference(format: LogFormat, batch: &[Transition]) -> String {
    let mut out = Vec::new();
    if format == LogFormat::Text {
        text::transition_header(&mut out).unwrap();
    }
    let reasons = reset_reasons();
    for t in batch {
        let line = TransitionLine::new(&clock(), t, &reasons);
        match format {
            LogFormat::Json => json::line(&mut out, &line),
            LogFormat::Text => text::reference::transition(&mut out, &line),
        }
        .unwrap();
    }
    String::from_utf8(out).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn text_lines_are_byte_identical(batch in batch()) {
        prop_assert_eq!(fast(LogFormat::Text, &batch), reference(LogFormat::Text, &batch));
    }

    #[test]
    fn json_lines_are_byte_identical(batch in batch()) {
        prop_assert_eq!(fast(LogFormat::Json, &batch), reference(LogFormat::Json, &batch));
    }
}

#[test]
fn fixtures_are_byte_identical() {
    use super::tests::sample;
    use crate::source::events::Family;
    for family in [Family::Ipv4, Family::Ipv6] {
        let mut unknown = sample(family);
        unknown.owner = None;
        unknown.prev_state_ns = None;
        let batch = [sample(family), unknown];
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(fast(format, &batch), reference(format, &batch));
        }
    }
}
