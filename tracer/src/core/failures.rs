//! Connects and binds that failed for want of a port or an address (EADDRNOTAVAIL, EADDRINUSE),
//! per process: what a client that ran out of ephemeral ports toward a destination, or a server
//! whose port is taken, sees as "cannot assign requested address" or "address already in use".
//! Each group (the call, its error, the process, what it asked for) is reported as soon as it
//! fails, then at most every [`REPEAT_NS`] with the failures since its last line: a storm of
//! failed calls writes a line per group every few seconds, not one per call.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use tracer_common::{TcpState, ends::errno};

use super::report::{CallFailed, ErrorCounts, FailedCall, Sink};
use crate::{
    owner::Owner,
    source::events::{BindFailure, Endpoints, Transition},
};

/// A group that keeps failing is reported again at most this often.
pub(crate) const REPEAT_NS: u64 = 10_000_000_000;
/// Groups followed at once; past them, failures are counted by error only (summaries, metrics).
const MAX_GROUPS: usize = 1024;

/// What a group's failures have in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    call: FailedCall,
    error: u8,
    pid: u32,
    netns: u32,
    local: IpAddr,
    /// bind(): the port asked for (0: any); connect(): 0.
    local_port: u16,
    /// connect(): the destination; bind(): unspecified.
    remote: IpAddr,
    remote_port: u16,
}

/// A group's failures since its last line.
#[derive(Debug)]
struct Pending {
    endpoints: Endpoints,
    owner: Option<Owner>,
    count: u64,
    last_line_ns: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Failures {
    groups: HashMap<Group, Pending>,
    /// Failed binds by errno, since start-up and at the start of the summary interval.
    binds: BTreeMap<u8, u64>,
    binds_at_interval_start: BTreeMap<u8, u64>,
}

impl Failures {
    /// A transition, which is a connect that found no local port when it is SYN_SENT -> CLOSE
    /// ending in EADDRNOTAVAIL (`tracer_common::ends::socket_error`).
    pub(crate) fn transition(&mut self, t: &Transition) {
        let failed = t.old == TcpState::SynSent
            && t.new == TcpState::Close
            && t.end.and_then(|e| e.error) == Some(errno::EADDRNOTAVAIL);
        if failed {
            let mut endpoints = t.endpoints;
            endpoints.local_port = 0;
            self.add(
                FailedCall::Connect,
                errno::EADDRNOTAVAIL,
                endpoints,
                &t.owner,
            );
        }
    }

    /// A failed bind, counted; reported when `selected` (by the owner filter).
    pub(crate) fn bind(&mut self, f: &BindFailure, selected: bool) {
        *self.binds.entry(f.error).or_default() += 1;
        if selected {
            self.add(FailedCall::Bind, f.error, f.endpoints, &f.owner);
        }
    }

    fn add(&mut self, call: FailedCall, error: u8, endpoints: Endpoints, owner: &Option<Owner>) {
        let group = Group {
            call,
            error,
            pid: owner.as_ref().map_or(0, |o| o.pid),
            netns: endpoints.netns,
            local: endpoints.local,
            local_port: endpoints.local_port,
            remote: endpoints.remote,
            remote_port: endpoints.remote_port,
        };
        let room = self.groups.len() < MAX_GROUPS;
        match self.groups.get_mut(&group) {
            Some(pending) => pending.count += 1,
            None if room => {
                self.groups.insert(
                    group,
                    Pending {
                        endpoints,
                        owner: owner.clone(),
                        count: 1,
                        last_line_ns: None,
                    },
                );
            }
            None => {}
        }
    }

    /// Reports the groups due at `now_ns` (`all`: every group with failures, at exit), and
    /// forgets those quiet for a whole period.
    pub(crate) fn report(&mut self, now_ns: u64, all: bool, sink: &mut impl Sink) {
        let mut due: Vec<CallFailed> = Vec::new();
        self.groups.retain(|group, pending| {
            let quiet_for = pending
                .last_line_ns
                .map_or(u64::MAX, |at| now_ns.saturating_sub(at));
            if pending.count == 0 {
                return quiet_for < REPEAT_NS;
            }
            if all || quiet_for >= REPEAT_NS {
                due.push(CallFailed {
                    ts_ns: now_ns,
                    call: group.call,
                    error: group.error,
                    endpoints: pending.endpoints,
                    owner: pending.owner.clone(),
                    count: pending.count,
                });
                pending.count = 0;
                pending.last_line_ns = Some(now_ns);
            }
            true
        });
        // In a stable order: the most failures first.
        due.sort_by(|a, b| b.count.cmp(&a.count).then(a.ts_ns.cmp(&b.ts_ns)));
        for report in &due {
            sink.call_failed(report);
        }
    }

    /// Failed binds by errno: since start-up, and in the interval.
    pub(crate) fn binds(&self) -> ErrorCounts {
        let total: Vec<(u8, u64)> = self.binds.iter().map(|(e, n)| (*e, *n)).collect();
        let interval = total
            .iter()
            .map(|(e, n)| {
                let before = self.binds_at_interval_start.get(e).copied().unwrap_or(0);
                (*e, n - before)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        ErrorCounts { total, interval }
    }

    pub(crate) fn start_interval(&mut self) {
        self.binds_at_interval_start = self.binds.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        core::tests::Recorded,
        owner::Comm,
        source::events::{ConnectionEnd, Family},
    };
    use tracer_common::End;

    const S: u64 = 1_000_000_000;

    fn owner(pid: u32) -> Option<Owner> {
        Some(Owner {
            pid,
            comm: Comm::new("client"),
            cgroup: None,
        })
    }

    fn endpoints(remote_port: u16) -> Endpoints {
        Endpoints {
            netns: 7,
            family: Family::Ipv4,
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            local_port: 0,
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port,
        }
    }

    fn failed_connect(pid: u32, remote_port: u16, error: u8) -> Transition {
        Transition {
            ts_ns: 0,
            cookie: 1,
            object: 0,
            endpoints: endpoints(remote_port),
            old: TcpState::SynSent,
            new: TcpState::Close,
            prev_state_ns: None,
            owner: owner(pid),
            end: Some(ConnectionEnd {
                end: End::Error,
                error: Some(error),
                reset_reason: None,
            }),
            syn_retransmits: None,
        }
    }

    fn bind(pid: u32, port: u16, error: u8) -> BindFailure {
        let mut endpoints = endpoints(0);
        endpoints.local_port = port;
        endpoints.remote = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        BindFailure {
            ts_ns: 0,
            endpoints,
            owner: owner(pid),
            error,
        }
    }

    fn lines(failures: &mut Failures, now_ns: u64) -> Vec<(FailedCall, u32, u16, u64)> {
        report(failures, now_ns, false)
    }

    fn report(failures: &mut Failures, now_ns: u64, all: bool) -> Vec<(FailedCall, u32, u16, u64)> {
        let mut sink = Recorded::default();
        failures.report(now_ns, all, &mut sink);
        sink.failed
            .iter()
            .map(|r| {
                let port = match r.call {
                    FailedCall::Connect => r.endpoints.remote_port,
                    FailedCall::Bind => r.endpoints.local_port,
                };
                (r.call, r.owner.as_ref().map_or(0, |o| o.pid), port, r.count)
            })
            .collect()
    }

    #[test]
    fn a_storm_is_a_line_at_once_then_one_per_period_with_its_count() {
        let mut f = Failures::default();
        for _ in 0..3 {
            f.transition(&failed_connect(10, 5432, errno::EADDRNOTAVAIL));
        }
        assert_eq!(lines(&mut f, S), [(FailedCall::Connect, 10, 5432, 3)]);
        for _ in 0..500 {
            f.transition(&failed_connect(10, 5432, errno::EADDRNOTAVAIL));
        }
        // Within the period: held.
        assert!(lines(&mut f, 5 * S).is_empty());
        assert_eq!(
            lines(&mut f, 11 * S),
            [(FailedCall::Connect, 10, 5432, 500)]
        );
        // Quiet for a period: forgotten, so the next failure is a line at once.
        assert!(lines(&mut f, 22 * S).is_empty());
        assert!(f.groups.is_empty());
        f.transition(&failed_connect(10, 5432, errno::EADDRNOTAVAIL));
        assert_eq!(lines(&mut f, 23 * S), [(FailedCall::Connect, 10, 5432, 1)]);
    }

    #[test]
    fn groups_apart_by_process_destination_call_and_error() {
        let mut f = Failures::default();
        f.transition(&failed_connect(10, 5432, errno::EADDRNOTAVAIL));
        f.transition(&failed_connect(10, 5432, errno::EADDRNOTAVAIL));
        f.transition(&failed_connect(11, 5432, errno::EADDRNOTAVAIL));
        f.transition(&failed_connect(10, 6379, errno::EADDRNOTAVAIL));
        // Other failed connects are ends, not this report.
        f.transition(&failed_connect(10, 5432, 111));
        f.bind(&bind(10, 8080, errno::EADDRINUSE), true);
        f.bind(&bind(10, 0, errno::EADDRINUSE), true);
        f.bind(&bind(10, 0, errno::EADDRNOTAVAIL), true);
        let mut got = lines(&mut f, S);
        got.sort_by_key(|l| (l.0 as u8, l.1, l.2, l.3));
        assert_eq!(
            got,
            [
                (FailedCall::Connect, 10, 5432, 2),
                (FailedCall::Connect, 10, 6379, 1),
                (FailedCall::Connect, 11, 5432, 1),
                (FailedCall::Bind, 10, 0, 1),
                (FailedCall::Bind, 10, 0, 1),
                (FailedCall::Bind, 10, 8080, 1),
            ]
        );
        let ErrorCounts { total, interval } = f.binds();
        assert_eq!(total, [(errno::EADDRINUSE, 2), (errno::EADDRNOTAVAIL, 1)]);
        assert_eq!(interval, total);
        f.start_interval();
        f.bind(&bind(10, 0, errno::EADDRINUSE), true);
        let ErrorCounts { total, interval } = f.binds();
        assert_eq!(total, [(errno::EADDRINUSE, 3), (errno::EADDRNOTAVAIL, 1)]);
        assert_eq!(interval, [(errno::EADDRINUSE, 1)]);
        // A process the owner filter leaves out: counted, not reported.
        f.bind(&bind(12, 9090, errno::EADDRINUSE), false);
        assert_eq!(f.binds().total[0], (errno::EADDRINUSE, 4));
        assert!(lines(&mut f, 30 * S).iter().all(|l| l.1 != 12));
    }

    #[test]
    fn groups_past_the_room_are_counted_by_error_only() {
        let mut f = Failures::default();
        for port in 0..(MAX_GROUPS as u16 + 10) {
            f.bind(&bind(10, 1000 + port, errno::EADDRINUSE), true);
        }
        assert_eq!(f.groups.len(), MAX_GROUPS);
        assert_eq!(
            f.binds().total,
            [(errno::EADDRINUSE, MAX_GROUPS as u64 + 10)]
        );
        // At exit every pending group is written, even within its period.
        assert_eq!(lines(&mut f, S).len(), MAX_GROUPS);
        f.bind(&bind(10, 1000, errno::EADDRINUSE), true);
        assert!(lines(&mut f, 2 * S).is_empty());
        assert_eq!(
            report(&mut f, 2 * S, true),
            [(FailedCall::Bind, 10, 1000, 1)]
        );
    }
}
