//! Random inputs for the property tests that hold the hand-built lines to the `format!` and
//! serde code they replace: the cases that formatting code gets wrong.
use crate::owner::{Cgroup, Comm, ContainerId, Owner, PodUid, Qos, Runtime, Workload};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use proptest::prelude::*;
use tracer_common::{End, TcpState};

use crate::source::events::{ConnectionEnd, Endpoints, Family, Transition};

/// Nanoseconds of every size: none, tiny, round, ties of `{:.3}`, huge, anything.
pub(super) fn nanos() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..10_000,
        (0u64..1_000_000_000).prop_map(|n| n * 500),
        (0u64..1 << 40).prop_map(|n| n * 1_000_000),
        (u64::MAX - 1_000_000..=u64::MAX),
        any::<u64>(),
    ]
}

/// Strings heavy in what JSON escapes and padding miscounts: quotes, backslashes, control
/// characters, non-ASCII of every UTF-8 length.
pub(super) fn odd_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        Just('"'),
        Just('\\'),
        Just('/'),
        proptest::char::range('\u{0}', '\u{1f}'),
        Just('\u{7f}'),
        Just('é'),
        Just('\u{2028}'),
        Just('\u{fffd}'),
        Just('😀'),
        any::<char>(),
        proptest::char::range('a', 'z'),
    ];
    proptest::collection::vec(c, 0..24).prop_map(|c| c.into_iter().collect())
}

/// IPv6 addresses: groups drawn mostly from 0 and a few values, so that runs of zeros of every
/// length and position come up, IPv4-mapped ones, and arbitrary ones.
pub(super) fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    let group = prop_oneof![3 => Just(0u16), 1 => Just(0xffff), 1 => Just(1), 2 => any::<u16>()];
    prop_oneof![
        proptest::array::uniform8(group).prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_ipv6_mapped()),
        Just(Ipv6Addr::UNSPECIFIED),
        Just(Ipv6Addr::LOCALHOST),
        any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(o.into())),
        ipv6().prop_map(IpAddr::V6),
    ]
}

fn state() -> impl Strategy<Value = TcpState> {
    proptest::sample::select(TcpState::ALL.to_vec())
}

fn owner() -> impl Strategy<Value = Option<Owner>> {
    let comm = prop_oneof![
        "[a-z0-9_./-]{0,15}".prop_map(|s| Comm::new(&s)),
        // Truncated to 15 bytes: may split a character, shown as U+FFFD.
        odd_text().prop_map(|s| Comm::new(&s)),
        // What the kernel may hold: any bytes, NUL-terminated or not.
        any::<[u8; 16]>().prop_map(Comm::from_kernel),
    ];
    let name = || proptest::option::of(prop_oneof!["[a-z0-9.@_-]{1,70}", odd_text()]);
    let runtime = proptest::option::of(proptest::sample::select(vec![
        Runtime::Docker,
        Runtime::Containerd,
        Runtime::CriO,
        Runtime::Podman,
    ]));
    let qos = proptest::option::of(proptest::sample::select(vec![
        Qos::Guaranteed,
        Qos::Burstable,
        Qos::BestEffort,
    ]));
    let workload = (
        runtime,
        proptest::option::of("[0-9a-f]{64}"),
        proptest::option::of("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        qos,
        name(),
    )
        .prop_map(|(runtime, id, uid, qos, unit)| Workload {
            runtime,
            container_id: id.and_then(|id| ContainerId::parse(&id)),
            pod_uid: uid.and_then(|uid| PodUid::parse(&uid, b'-')),
            qos,
            unit: unit.map(Into::into),
        });
    // Paths and unit names as odd as the kernel allows: the lines escape them.
    let cgroup = proptest::option::weighted(
        0.8,
        (
            prop_oneof!["(/[a-z0-9.@-]{1,12}){0,4}", odd_text()],
            workload,
        )
            .prop_map(|(path, workload)| {
                Arc::new(Cgroup {
                    path: path.into(),
                    workload,
                })
            }),
    );
    proptest::option::weighted(
        0.8,
        (any::<u32>(), comm, cgroup).prop_map(|(pid, comm, cgroup)| Owner { pid, comm, cgroup }),
    )
}

/// Seconds since the epoch of midnight UTC starting a year.
pub(super) fn year_start(year: u64) -> u64 {
    let days: u64 = (1970..year)
        .map(|y| {
            if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
                366
            } else {
                365
            }
        })
        .sum();
    days * 86_400
}

/// Nanoseconds since the epoch (with a zero wall-clock offset, a transition's `ts_ns`): the years
/// the daemon runs in; within two seconds of a midnight, month end, leap day or year end of any
/// year u64 nanoseconds reach; anything.
pub(super) fn instant() -> impl Strategy<Value = u64> {
    let near_midnight = (1970u64..2554, 0u64..400, -2_000_000_000i64..2_000_000_000).prop_map(
        |(year, day, offset)| {
            let midnight = i128::from(year_start(year) + day * 86_400) * 1_000_000_000;
            (midnight + i128::from(offset)).clamp(0, i128::from(u64::MAX)) as u64
        },
    );
    prop_oneof![
        3 => 1_700_000_000_000_000_000u64..1_900_000_000_000_000_000,
        2 => near_midnight,
        1 => any::<u64>(),
    ]
}

pub(super) fn transition() -> impl Strategy<Value = Transition> {
    let endpoints = (
        any::<u32>(),
        any::<bool>(),
        ip(),
        any::<u16>(),
        ip(),
        any::<u16>(),
    )
        .prop_map(
            |(netns, v4, local, local_port, remote, remote_port)| Endpoints {
                netns,
                family: if v4 { Family::Ipv4 } else { Family::Ipv6 },
                local,
                local_port,
                remote,
                remote_port,
            },
        );
    let cookie = prop_oneof![any::<u64>(), 0u64..0x1_0000, 1u64 << 62..];
    (
        instant(),
        cookie,
        endpoints,
        state(),
        state(),
        proptest::option::weighted(0.8, nanos()),
        owner(),
        proptest::option::weighted(0.3, connection_end()),
        proptest::option::weighted(0.2, any::<u8>()),
    )
        .prop_map(
            |(ts_ns, cookie, endpoints, old, new, prev_state_ns, owner, end, syn_retransmits)| {
                Transition {
                    ts_ns,
                    cookie,
                    // Never shown.
                    object: cookie,
                    endpoints,
                    old,
                    new,
                    prev_state_ns,
                    owner,
                    end,
                    syn_retransmits,
                }
            },
        )
}

/// Any end, with errors known by name or not, reset reasons the kernel names or not.
fn connection_end() -> impl Strategy<Value = ConnectionEnd> {
    (
        proptest::sample::select(End::ALL.to_vec()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(end, error, reset_reason)| ConnectionEnd {
            end,
            error,
            reset_reason,
        })
}

/// A batch of transitions in the order the daemon sees them: from one instant on, a few
/// microseconds to a few seconds apart, so that the timestamp cache is hit and refreshed, with
/// now and then a jump to a transition's own instant.
pub(super) fn batch() -> impl Strategy<Value = Vec<Transition>> {
    (
        instant(),
        proptest::collection::vec(
            (
                transition(),
                proptest::option::weighted(0.9, prop_oneof![0u64..10_000, 0u64..3_000_000_000]),
            ),
            1..16,
        ),
    )
        .prop_map(|(start, items)| {
            let mut ts_ns = start;
            items
                .into_iter()
                .map(|(mut t, step)| {
                    ts_ns = match step {
                        Some(step) => ts_ns.saturating_add(step),
                        None => t.ts_ns,
                    };
                    t.ts_ns = ts_ns;
                    t
                })
                .collect()
        })
}
