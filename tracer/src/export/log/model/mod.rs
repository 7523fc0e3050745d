//! Every line the daemon writes, as one typed value: its serde form is the JSON contract with
//! users' log pipelines (docs/output.md, which a test holds to these types: fields may be added,
//! never renamed or retyped), and the text lines show the same values (`text`). Built from the
//! core's reports; durations are kept in nanoseconds and written as milliseconds.
mod common;
mod reports;
mod summary;

pub(super) use self::{
    common::{DestinationAddr, Head, Level, OwnerFields, Socket},
    reports::{
        BindFailedLine, ConnectFailedLine, HalfOpenLine, HealthLine, PortPressureLine,
        PortRelievedLine, RecoveredLine, StalledLine, StuckBody, StuckLine, TransitionLine,
        UnstuckLine,
    },
    summary::{Counted, Counts, Figures, Span, SummaryLine},
};
