//! Stage 4, export: every output of the core's reports. The log writer ([`log`]: text for people,
//! JSON lines for pipelines), the periodic [`summary`], and the Prometheus [`metrics`] with their
//! HTTP [`endpoint`]. [`Fanout`] sends each report to all of them; summaries and metrics read the
//! same snapshot of the core.
pub(crate) mod endpoint;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod summary;
pub(crate) mod wall_clock;

use std::io::Write;

use self::{log::LogWriter, metrics::Metrics};
use crate::{
    core::report::{Sink, StuckReport, TransitionInfo, UnstuckReport},
    source::events::Transition,
};

/// Sends every report to the log and, when they are served, to the metrics.
pub(crate) struct Fanout<'a, W: Write> {
    pub(crate) log: &'a mut LogWriter<W>,
    pub(crate) metrics: Option<&'a mut Metrics>,
}

impl<W: Write> Sink for Fanout<'_, W> {
    fn transition(&mut self, t: &Transition, info: TransitionInfo) {
        self.log.transition(t, info);
        if let Some(metrics) = self.metrics.as_deref_mut() {
            metrics.transition(t, info);
        }
    }

    fn stuck(&mut self, report: &StuckReport) {
        self.log.stuck(report);
        if let Some(metrics) = self.metrics.as_deref_mut() {
            metrics.stuck(report);
        }
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        self.log.unstuck(report);
        if let Some(metrics) = self.metrics.as_deref_mut() {
            metrics.unstuck(report);
        }
    }
}
