//! The lines about one socket or listener, and the health line: each built from the core's report.
use std::borrow::Cow;

use serde::Serialize;

use super::common::{
    DestinationAddr, Head, Level, ListenerAddr, OwnerFields, Socket, by_name, maybe_ms, ms, trouble,
};
use crate::{
    core::{
        ends::error_name,
        losses::{HealthReport, Losses},
        report::{
            CallFailed, Destination, ListenerHalfOpen, ListenerRecovered, ListenerStalled,
            PortPressureRelieved, PortPressureReport, StuckReport, Trouble, UnstuckReport,
        },
    },
    export::wall_clock::WallClock,
    source::events::Transition,
};

#[derive(Serialize)]
pub(in super::super) struct TransitionLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) socket: Socket,
    pub(in super::super) old: &'static str,
    pub(in super::super) new: &'static str,
    #[serde(rename = "prev_state_ms", serialize_with = "maybe_ms")]
    pub(in super::super) prev_state_ns: Option<u64>,
    /// How the connection ended, on the transition that ends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) end: Option<&'static str>,
    /// The socket's error, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) error: Option<Cow<'static, str>>,
    /// The kernel's reason for a reset it sent, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) reset_reason: Option<Cow<'a, str>>,
    /// The SYNs a connect retransmitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) syn_retransmits: Option<u8>,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> TransitionLine<'a> {
    /// `reasons`: the kernel's names of its reset reasons, by number.
    pub(in super::super) fn new(
        clock: &WallClock,
        t: &'a Transition,
        reasons: &'a [String],
    ) -> Self {
        let end = t.end.as_ref();
        Self {
            head: Head::new("transition", Level::Info, clock, t.ts_ns),
            socket: Socket::new(t.cookie, &t.endpoints),
            old: t.old.name(),
            new: t.new.name(),
            prev_state_ns: t.prev_state_ns,
            end: end.map(|e| e.end.name()),
            error: end.and_then(|e| e.error).map(error_name),
            reset_reason: end.and_then(|e| e.reset_reason).map(|reason| {
                match reasons.get(usize::from(reason)).filter(|n| !n.is_empty()) {
                    Some(name) => Cow::Borrowed(name.as_str()),
                    None => Cow::Owned(reason.to_string()),
                }
            }),
            syn_retransmits: t.syn_retransmits,
            owner: OwnerFields::new(t.owner.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct StuckLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) body: StuckBody<'a>,
}

/// What a stuck line says of its socket; a summary's reminders say it too.
#[derive(Serialize)]
pub(in super::super) struct StuckBody<'a> {
    #[serde(flatten)]
    pub(in super::super) socket: Socket,
    pub(in super::super) state: &'static str,
    #[serde(rename = "age_ms", serialize_with = "ms")]
    pub(in super::super) age_ns: u64,
    /// `false` when the socket is older than the tracer: the age counts from start-up.
    pub(in super::super) age_known: bool,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(in super::super) threshold_ns: u64,
    /// `false` for a socket no process ever accepted (its owner is its listener's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) accepted: Option<bool>,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> StuckBody<'a> {
    pub(in super::super) fn new(r: &'a StuckReport) -> Self {
        Self {
            socket: Socket::new(r.cookie, &r.endpoints),
            state: r.state.name(),
            age_ns: r.age_ns,
            age_known: r.age_known,
            threshold_ns: r.threshold_ns,
            accepted: r.accepted,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

impl<'a> StuckLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a StuckReport) -> Self {
        Self {
            head: Head::new("stuck", Level::Warn, clock, r.ts_ns),
            body: StuckBody::new(r),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct UnstuckLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) socket: Socket,
    pub(in super::super) state: &'static str,
    /// The state it moved to; `None` when it vanished.
    pub(in super::super) new: Option<&'static str>,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub(in super::super) duration_ns: u64,
    pub(in super::super) age_known: bool,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> UnstuckLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a UnstuckReport) -> Self {
        Self {
            head: Head::new("unstuck", Level::Info, clock, r.ts_ns),
            socket: Socket::new(r.cookie, &r.endpoints),
            state: r.state.name(),
            new: r.new.map(|s| s.name()),
            duration_ns: r.duration_ns,
            age_known: r.age_known,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct StalledLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) listener: ListenerAddr,
    /// Connections waiting to be accepted, and the most the queue holds.
    pub(in super::super) queue: u32,
    pub(in super::super) backlog: u32,
    #[serde(rename = "stalled_ms", serialize_with = "ms")]
    pub(in super::super) stalled_ns: u64,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(in super::super) threshold_ns: u64,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> StalledLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a ListenerStalled) -> Self {
        Self {
            head: Head::new("listener_stalled", Level::Warn, clock, r.ts_ns),
            listener: ListenerAddr::new(&r.endpoints),
            queue: r.queue,
            backlog: r.backlog,
            stalled_ns: r.stalled_ns,
            threshold_ns: r.threshold_ns,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct HalfOpenLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) listener: ListenerAddr,
    /// Its connections whose handshake has not completed.
    pub(in super::super) half_open: u32,
    /// How long the oldest has been seen (a lower bound).
    #[serde(rename = "oldest_ms", serialize_with = "ms")]
    pub(in super::super) oldest_ns: u64,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(in super::super) threshold_ns: u64,
    pub(in super::super) synack_retransmits: u64,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> HalfOpenLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a ListenerHalfOpen) -> Self {
        Self {
            head: Head::new("listener_half_open", Level::Warn, clock, r.ts_ns),
            listener: ListenerAddr::new(&r.endpoints),
            half_open: r.half_open,
            oldest_ns: r.oldest_ns,
            threshold_ns: r.threshold_ns,
            synack_retransmits: r.synack_retransmits,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct RecoveredLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) listener: ListenerAddr,
    /// What it recovered from: `stalled` or `half_open`.
    #[serde(serialize_with = "trouble")]
    pub(in super::super) from: Trouble,
    /// It was closed rather than recovered.
    pub(in super::super) closed: bool,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub(in super::super) duration_ns: u64,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

impl<'a> RecoveredLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a ListenerRecovered) -> Self {
        Self {
            head: Head::new("listener_recovered", Level::Info, clock, r.ts_ns),
            listener: ListenerAddr::new(&r.endpoints),
            from: r.trouble,
            closed: r.closed,
            duration_ns: r.duration_ns,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub(in super::super) struct PortPressureLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    /// Where the connections go.
    #[serde(flatten)]
    pub(in super::super) destination: DestinationAddr,
    /// Ephemeral ports its connections hold, TIME-WAIT included, and the range's size.
    pub(in super::super) in_use: u32,
    pub(in super::super) available: u32,
    pub(in super::super) time_wait: u32,
    pub(in super::super) percent: f64,
    pub(in super::super) threshold_percent: u8,
    pub(in super::super) holders: Vec<Holder<'a>>,
}

impl<'a> PortPressureLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a PortPressureReport) -> Self {
        Self {
            head: Head::new("port_pressure", Level::Warn, clock, r.ts_ns),
            destination: DestinationAddr::new(&r.destination),
            in_use: r.in_use,
            available: r.available,
            time_wait: r.time_wait,
            percent: super::common::percent(r.in_use, r.available),
            threshold_percent: r.threshold_percent,
            holders: r
                .holders
                .iter()
                .map(|(owner, ports)| Holder {
                    ports: *ports,
                    owner: OwnerFields::new(Some(owner)),
                })
                .collect(),
        }
    }
}

/// A process holding ports toward a pressed destination.
#[derive(Serialize)]
pub(in super::super) struct Holder<'a> {
    /// Ports it holds.
    pub(in super::super) ports: u32,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

#[derive(Serialize)]
pub(in super::super) struct PortRelievedLine {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    /// Where the connections go.
    #[serde(flatten)]
    pub(in super::super) destination: DestinationAddr,
    pub(in super::super) in_use: u32,
    pub(in super::super) available: u32,
    /// The most ports in use during the episode.
    pub(in super::super) peak: u32,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub(in super::super) duration_ns: u64,
}

impl PortRelievedLine {
    pub(in super::super) fn new(clock: &WallClock, r: &PortPressureRelieved) -> Self {
        Self {
            head: Head::new("port_pressure_relieved", Level::Info, clock, r.ts_ns),
            destination: DestinationAddr::new(&r.destination),
            in_use: r.in_use,
            available: r.available,
            peak: r.peak,
            duration_ns: r.duration_ns,
        }
    }
}

/// A process's failed calls of one kind, toward one address (`A`), with one error: `count` of
/// them since the last such line. `connect_failed`: connects toward a destination that found no
/// local port; `bind_failed`: binds of TCP sockets to an address and port (0: any ephemeral port).
#[derive(Serialize)]
pub(in super::super) struct CallFailedLine<'a, A> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    #[serde(flatten)]
    pub(in super::super) at: A,
    pub(in super::super) error: Cow<'static, str>,
    pub(in super::super) count: u64,
    #[serde(flatten)]
    pub(in super::super) owner: OwnerFields<'a>,
}

pub(in super::super) type ConnectFailedLine<'a> = CallFailedLine<'a, DestinationAddr>;
pub(in super::super) type BindFailedLine<'a> = CallFailedLine<'a, ListenerAddr>;

impl<'a> ConnectFailedLine<'a> {
    pub(in super::super) fn connect(clock: &WallClock, r: &'a CallFailed) -> Self {
        let at = DestinationAddr::new(&Destination::of(&r.endpoints));
        CallFailedLine::new("connect_failed", at, clock, r)
    }
}

impl<'a> BindFailedLine<'a> {
    pub(in super::super) fn bind(clock: &WallClock, r: &'a CallFailed) -> Self {
        CallFailedLine::new("bind_failed", ListenerAddr::new(&r.endpoints), clock, r)
    }
}

impl<'a, A> CallFailedLine<'a, A> {
    fn new(event: &'static str, at: A, clock: &WallClock, r: &'a CallFailed) -> Self {
        Self {
            head: Head::new(event, Level::Warn, clock, r.ts_ns),
            at,
            error: error_name(r.error),
            count: r.count,
            owner: OwnerFields::new(r.owner.as_ref()),
        }
    }
}

/// Losses that grew since the last health line; every count since start-up.
#[derive(Serialize)]
pub(in super::super) struct HealthLine<'a> {
    #[serde(flatten)]
    pub(in super::super) head: Head,
    /// Checked at exit.
    #[serde(rename = "final")]
    pub(in super::super) last: bool,
    /// The counts that grew.
    pub(in super::super) grew: &'a [&'static str],
    #[serde(flatten, serialize_with = "by_name")]
    pub(in super::super) losses: Losses,
}

impl<'a> HealthLine<'a> {
    pub(in super::super) fn new(clock: &WallClock, r: &'a HealthReport) -> Self {
        Self {
            head: Head::new("health", Level::Warn, clock, r.ts_ns),
            last: r.last,
            grew: &r.grew,
            losses: r.losses,
        }
    }
}
