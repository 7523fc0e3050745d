//! The parts lines share: level, head, a socket's and a listener's identity, the owner, and how
//! durations and ids are written.
use std::{borrow::Cow, net::IpAddr, time::SystemTime};

use serde::{Serialize, Serializer};

use crate::{
    core::{
        losses::Losses,
        report::{Destination, Trouble},
    },
    export::wall_clock::WallClock,
    owner::{ContainerId, Owner, PodUid, Qos, Runtime},
    source::events::Endpoints,
    units::millis,
};

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(in super::super) enum Level {
    Info,
    Warn,
}

/// Fields every line carries.
#[derive(Serialize)]
pub(in super::super) struct Head {
    pub(in super::super) event: &'static str,
    pub(in super::super) level: Level,
    #[serde(serialize_with = "rfc3339_micros")]
    pub(in super::super) ts: SystemTime,
}

impl Head {
    pub(super) fn new(event: &'static str, level: Level, clock: &WallClock, ts_ns: u64) -> Self {
        Self {
            event,
            level,
            ts: clock.wall(ts_ns),
        }
    }
}

/// A socket's identity: id, family, addresses and ports.
#[derive(Serialize)]
pub(in super::super) struct Socket {
    /// The socket's cookie (the field's name predates it: it once held the kernel address).
    #[serde(serialize_with = "hex")]
    pub(in super::super) sock: u64,
    pub(in super::super) netns: u32,
    pub(in super::super) family: &'static str,
    pub(in super::super) saddr: IpAddr,
    pub(in super::super) sport: u16,
    pub(in super::super) daddr: IpAddr,
    pub(in super::super) dport: u16,
}

impl Socket {
    pub(super) fn new(cookie: u64, e: &Endpoints) -> Self {
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
pub(in super::super) struct ListenerAddr {
    pub(in super::super) netns: u32,
    pub(in super::super) family: &'static str,
    pub(in super::super) saddr: IpAddr,
    pub(in super::super) sport: u16,
}

impl ListenerAddr {
    pub(in super::super) fn new(e: &Endpoints) -> Self {
        Self {
            netns: e.netns,
            family: e.family.name(),
            saddr: e.local,
            sport: e.local_port,
        }
    }
}

/// A destination of connections: from one local address to one remote address and port.
#[derive(Serialize)]
pub(in super::super) struct DestinationAddr {
    pub(in super::super) netns: u32,
    pub(in super::super) family: &'static str,
    pub(in super::super) saddr: IpAddr,
    pub(in super::super) daddr: IpAddr,
    pub(in super::super) dport: u16,
}

impl DestinationAddr {
    pub(in super::super) fn new(d: &Destination) -> Self {
        Self {
            netns: d.netns,
            family: d.family().name(),
            saddr: d.local,
            daddr: d.remote,
            dport: d.remote_port,
        }
    }
}

/// `in_use` in percent of `available`, to a tenth.
pub(super) fn percent(in_use: u32, available: u32) -> f64 {
    (f64::from(in_use) * 1000.0 / f64::from(available.max(1))).round() / 10.0
}

/// The owning process, `null`s when unknown; the container, pod and unit its cgroup names, only
/// where it names them.
#[derive(Serialize)]
pub(in super::super) struct OwnerFields<'a> {
    pub(in super::super) pid: Option<u32>,
    pub(in super::super) comm: Option<Cow<'a, str>>,
    pub(in super::super) cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) container_runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) pod_qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in super::super) unit: Option<&'a str>,
}

impl<'a> OwnerFields<'a> {
    pub(super) fn new(owner: Option<&'a Owner>) -> Self {
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

pub(super) fn rfc3339_micros<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

pub(super) fn hex<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:x}"))
}

pub(super) fn ms<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*ns))
}

pub(super) fn maybe_ms<S: Serializer>(ns: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(ns) => ms(ns, s),
        None => s.serialize_none(),
    }
}

pub(super) fn by_name<S: Serializer>(losses: &Losses, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(losses.named())
}

pub(super) fn trouble<S: Serializer>(trouble: &Trouble, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(trouble.name())
}
