//! Every line the daemon writes, as one typed value: its serde form is the JSON contract with
//! users' log pipelines (docs/output.md, which a test holds to these types: fields may be added,
//! never renamed or retyped), and the text lines show the same values (`text`). Built from the
//! core's reports; durations are kept in nanoseconds and written as milliseconds.
mod summary;

use crate::owner::{ContainerId, Owner, PodUid, Qos, Runtime};
use std::{borrow::Cow, io, net::IpAddr, time::SystemTime};

use serde::{Serialize, Serializer};

pub(super) use self::summary::{Counted, Counts, Figures, Span, SummaryLine};
use super::{
    Shown, json,
    line::Line,
    text::{self, TextStyle},
};
use crate::{
    core::{
        ends::error_name,
        losses::{HealthReport, Losses},
        report::{
            ListenerHalfOpen, ListenerRecovered, ListenerStalled, StuckReport, Trouble,
            UnstuckReport,
        },
    },
    export::wall_clock::WallClock,
    source::events::{Endpoints, Transition},
    units::millis,
};

/// A line of the log: which setting shows it, and its two forms.
pub(super) trait LogLine: Serialize + Sized {
    fn shown(&self, shown: &Shown) -> bool;
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()>;
    /// Its JSON form: serde's, unless a faster writer makes the same bytes.
    fn json(&self, out: &mut Line) -> io::Result<()> {
        json::line(out, self)
    }
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Level {
    Info,
    Warn,
}

/// Fields every line carries.
#[derive(Serialize)]
pub(super) struct Head {
    pub(super) event: &'static str,
    pub(super) level: Level,
    #[serde(serialize_with = "rfc3339_micros")]
    pub(super) ts: SystemTime,
}

impl Head {
    fn new(event: &'static str, level: Level, clock: &WallClock, ts_ns: u64) -> Self {
        Self {
            event,
            level,
            ts: clock.wall(ts_ns),
        }
    }
}

/// A socket's identity: id, family, addresses and ports.
#[derive(Serialize)]
pub(super) struct Socket {
    /// The socket's cookie (the field's name predates it: it once held the kernel address).
    #[serde(serialize_with = "hex")]
    pub(super) sock: u64,
    pub(super) netns: u32,
    pub(super) family: &'static str,
    pub(super) saddr: IpAddr,
    pub(super) sport: u16,
    pub(super) daddr: IpAddr,
    pub(super) dport: u16,
}

impl Socket {
    fn new(cookie: u64, e: &Endpoints) -> Self {
        Self {
            sock: cookie,
            netns: e.netns,
            family: e.family.name(),
            saddr: e.local,
            sport: e.local_port,
            daddr: e.remote,
            dport: e.remote_port,
        }
    }
}

/// A listener's address: where it listens.
#[derive(Serialize)]
pub(super) struct ListenerAddr {
    pub(super) netns: u32,
    pub(super) family: &'static str,
    pub(super) saddr: IpAddr,
    pub(super) sport: u16,
}

impl ListenerAddr {
    pub(super) fn new(e: &Endpoints) -> Self {
        Self {
            netns: e.netns,
            family: e.family.name(),
            saddr: e.local,
            sport: e.local_port,
        }
    }
}

/// The owning process, `null`s when unknown; the container, pod and unit its cgroup names, only
/// where it names them.
#[derive(Serialize)]
pub(super) struct OwnerFields<'a> {
    pub(super) pid: Option<u32>,
    pub(super) comm: Option<Cow<'a, str>>,
    pub(super) cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) container_runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pod_qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) unit: Option<&'a str>,
}

impl<'a> OwnerFields<'a> {
    fn new(owner: Option<&'a Owner>) -> Self {
        let cgroup = owner.and_then(|o| o.cgroup.as_deref());
        let workload = cgroup.map(|c| &c.workload);
        Self {
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.as_str()),
            cgroup: cgroup.map(|c| &*c.path),
            container_runtime: workload.and_then(|w| w.runtime).map(Runtime::as_str),
            container_id: workload
                .and_then(|w| w.container_id.as_ref())
                .map(ContainerId::as_str),
            pod_uid: workload
                .and_then(|w| w.pod_uid.as_ref())
                .map(PodUid::as_str),
            pod_qos: workload.and_then(|w| w.qos).map(Qos::as_str),
            unit: workload.and_then(|w| w.unit.as_deref()),
        }
    }
}

#[derive(Serialize)]
pub(super) struct TransitionLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) socket: Socket,
    pub(super) old: &'static str,
    pub(super) new: &'static str,
    #[serde(rename = "prev_state_ms", serialize_with = "maybe_ms")]
    pub(super) prev_state_ns: Option<u64>,
    /// How the connection ended, on the transition that ends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) end: Option<&'static str>,
    /// The socket's error, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<Cow<'static, str>>,
    /// The kernel's reason for a reset it sent, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reset_reason: Option<Cow<'a, str>>,
    /// The SYNs a connect retransmitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) syn_retransmits: Option<u8>,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> TransitionLine<'a> {
    /// `reasons`: the kernel's names of its reset reasons, by number.
    pub(super) fn new(clock: &WallClock, t: &'a Transition, reasons: &'a [String]) -> Self {
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

#[derive(Serialize)]
pub(super) struct StuckLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) body: StuckBody<'a>,
}

/// What a stuck line says of its socket; a summary's reminders say it too.
#[derive(Serialize)]
pub(super) struct StuckBody<'a> {
    #[serde(flatten)]
    pub(super) socket: Socket,
    pub(super) state: &'static str,
    #[serde(rename = "age_ms", serialize_with = "ms")]
    pub(super) age_ns: u64,
    /// `false` when the socket is older than the tracer: the age counts from start-up.
    pub(super) age_known: bool,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(super) threshold_ns: u64,
    /// `false` for a socket no process ever accepted (its owner is its listener's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) accepted: Option<bool>,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> StuckBody<'a> {
    pub(super) fn new(r: &'a StuckReport) -> Self {
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
    pub(super) fn new(clock: &WallClock, r: &'a StuckReport) -> Self {
        Self {
            head: Head::new("stuck", Level::Warn, clock, r.ts_ns),
            body: StuckBody::new(r),
        }
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

#[derive(Serialize)]
pub(super) struct UnstuckLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) socket: Socket,
    pub(super) state: &'static str,
    /// The state it moved to; `None` when it vanished.
    pub(super) new: Option<&'static str>,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub(super) duration_ns: u64,
    pub(super) age_known: bool,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> UnstuckLine<'a> {
    pub(super) fn new(clock: &WallClock, r: &'a UnstuckReport) -> Self {
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

impl LogLine for UnstuckLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.unstuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::unstuck(out, style, self)
    }
}

// Listener reports follow the stuck and unstuck switches: a stall is a warning like a stuck
// socket, its end a notice like an unstuck one.

#[derive(Serialize)]
pub(super) struct StalledLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) listener: ListenerAddr,
    /// Connections waiting to be accepted, and the most the queue holds.
    pub(super) queue: u32,
    pub(super) backlog: u32,
    #[serde(rename = "stalled_ms", serialize_with = "ms")]
    pub(super) stalled_ns: u64,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(super) threshold_ns: u64,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> StalledLine<'a> {
    pub(super) fn new(clock: &WallClock, r: &'a ListenerStalled) -> Self {
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

impl LogLine for StalledLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_stalled(out, style, self)
    }
}

#[derive(Serialize)]
pub(super) struct HalfOpenLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) listener: ListenerAddr,
    /// Its connections whose handshake has not completed.
    pub(super) half_open: u32,
    /// How long the oldest has been seen (a lower bound).
    #[serde(rename = "oldest_ms", serialize_with = "ms")]
    pub(super) oldest_ns: u64,
    #[serde(rename = "threshold_ms", serialize_with = "ms")]
    pub(super) threshold_ns: u64,
    pub(super) synack_retransmits: u64,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> HalfOpenLine<'a> {
    pub(super) fn new(clock: &WallClock, r: &'a ListenerHalfOpen) -> Self {
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

impl LogLine for HalfOpenLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.stuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_half_open(out, style, self)
    }
}

#[derive(Serialize)]
pub(super) struct RecoveredLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    #[serde(flatten)]
    pub(super) listener: ListenerAddr,
    /// What it recovered from: `stalled` or `half_open`.
    #[serde(serialize_with = "trouble")]
    pub(super) from: Trouble,
    /// It was closed rather than recovered.
    pub(super) closed: bool,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub(super) duration_ns: u64,
    #[serde(flatten)]
    pub(super) owner: OwnerFields<'a>,
}

impl<'a> RecoveredLine<'a> {
    pub(super) fn new(clock: &WallClock, r: &'a ListenerRecovered) -> Self {
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

impl LogLine for RecoveredLine<'_> {
    fn shown(&self, shown: &Shown) -> bool {
        shown.unstuck
    }
    fn text(&self, out: &mut Line, style: &mut TextStyle) -> io::Result<()> {
        text::listener_recovered(out, style, self)
    }
}

/// Losses that grew since the last health line; every count since start-up.
#[derive(Serialize)]
pub(super) struct HealthLine<'a> {
    #[serde(flatten)]
    pub(super) head: Head,
    /// Checked at exit.
    #[serde(rename = "final")]
    pub(super) last: bool,
    /// The counts that grew.
    pub(super) grew: &'a [&'static str],
    #[serde(flatten, serialize_with = "by_name")]
    pub(super) losses: Losses,
}

impl<'a> HealthLine<'a> {
    pub(super) fn new(clock: &WallClock, r: &'a HealthReport) -> Self {
        Self {
            head: Head::new("health", Level::Warn, clock, r.ts_ns),
            last: r.last,
            grew: &r.grew,
            losses: r.losses,
        }
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
        text::summary(out, style, self)
    }
}

fn rfc3339_micros<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

fn hex<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:x}"))
}

fn ms<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*ns))
}

fn maybe_ms<S: Serializer>(ns: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(ns) => ms(ns, s),
        None => s.serialize_none(),
    }
}

fn by_name<S: Serializer>(losses: &Losses, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(losses.named())
}

fn trouble<S: Serializer>(trouble: &Trouble, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(trouble.name())
}
