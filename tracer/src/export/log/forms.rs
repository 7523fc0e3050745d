//! Which setting shows each line, and its two forms: JSON (serde's, or the same bytes written
//! by hand for transitions) and text.
use std::io;

use serde::Serialize;

use super::{
    json,
    line::Line,
    model::{
        BindFailedLine, ConnectFailedLine, HalfOpenLine, HealthLine, PortPressureLine,
        PortRelievedLine, RecoveredLine, StalledLine, StuckLine, SummaryLine, TransitionLine,
        UnstuckLine,
    },
    text::{self, TextStyle},
    text_ports, text_summary,
};

/// Which kinds of lines are written, from `--log-transitions`, `--log-level` and RUST_LOG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) transitions: bool,
    pub(crate) stuck: bool,
    pub(crate) unstuck: bool,
    pub(crate) summaries: bool,
}

/// A line of the log: which setting shows it, and its two forms.
pub(super) trait LogLine: Serialize + Sized {
    fn shown(&self, shown: &Shown) -> bool;
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()>;
    /// Its JSON form: serde's, unless a faster writer makes the same bytes.
    fn json(&self, out: &mut Line) -> io::Result<()> {
        json::line(out, self)
    }
}

impl LogLine for TransitionLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.transitions
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::transition(out, style, self)
    }
    fn json(&self, out: &mut Line) -> io::Result<()> {
        json::transition(out, self);
        Ok(())
    }
}

impl LogLine for StuckLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::stuck(out, style, self)
    }
}

impl LogLine for UnstuckLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.unstuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::unstuck(out, style, self)
    }
}

// Listener reports follow the stuck and unstuck switches: a stall is a warning like a stuck
// socket, its end a notice like an unstuck one; losses are warnings.
impl LogLine for StalledLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_stalled(out, style, self)
    }
}

impl LogLine for HalfOpenLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_half_open(out, style, self)
    }
}

impl LogLine for RecoveredLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.unstuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_recovered(out, style, self)
    }
}

// Port pressure follows them too: a warning, and its end a notice.
impl LogLine for PortPressureLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text_ports::pressure(out, style, self)
    }
}

impl LogLine for PortRelievedLine {
    fn shown(&self, shown: &Shown) -> bool {
        shown.unstuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text_ports::relieved(out, style, self)
    }
}

// Failed connects and binds are warnings too.
impl LogLine for ConnectFailedLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text_ports::connect_failed(out, style, self)
    }
}

impl LogLine for BindFailedLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text_ports::bind_failed(out, style, self)
    }
}

impl LogLine for HealthLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::health(out, style, self)
    }
}

impl LogLine for SummaryLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.summaries
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text_summary::summary(out, style, self)
    }
}
