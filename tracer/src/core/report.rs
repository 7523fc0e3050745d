//! What the core reports, and to whom: the [`Sink`] every exporter implements, the per-socket
//! reports, and the [`Snapshot`] of counts that summaries and metrics both read, so that their
//! counts cannot disagree.
use std::net::IpAddr;

use crate::owner::Owner;
use tracer_common::TcpState;

use crate::{
    enrich::listen_drops::ListenDrops,
    source::events::{Endpoints, Family, Transition},
};

/// Where the core's reports go. Stuck and unstuck reports are made only for the sockets the owner
/// filter selects; every transition is reported, with [`TransitionInfo::selected`] saying whether
/// it is one to show line by line (totals count them all).
pub(crate) trait Sink {
    /// A transition, with the socket's owner and time in `old` as the table knows them.
    fn transition(&mut self, transition: &Transition, info: TransitionInfo);
    fn stuck(&mut self, report: &StuckReport);
    fn unstuck(&mut self, report: &UnstuckReport);
    fn listener_stalled(&mut self, report: &ListenerStalled);
    fn listener_half_open(&mut self, report: &ListenerHalfOpen);
    fn listener_recovered(&mut self, report: &ListenerRecovered);
    fn port_pressure(&mut self, report: &PortPressureReport);
    fn port_pressure_relieved(&mut self, report: &PortPressureRelieved);
    fn call_failed(&mut self, report: &CallFailed);
}

/// What the core knows of a transition beyond the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransitionInfo {
    /// The port the socket serves or uses (see `SocketTable::service_port`).
    pub(crate) service_port: u16,
    /// The owner filter selects the socket.
    pub(crate) selected: bool,
}

/// A socket crossed its state's threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StuckReport {
    pub(crate) ts_ns: u64,
    /// The socket's id, as transition lines show it.
    pub(crate) cookie: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) state: TcpState,
    /// Time in `state` so far; a lower bound when `age_known` is false.
    pub(crate) age_ns: u64,
    pub(crate) age_known: bool,
    pub(crate) threshold_ns: u64,
    /// `Some(false)`: no process ever accepted the socket (it is still in its listener's
    /// accept queue), and `owner` is its listener's. `None` otherwise.
    pub(crate) accepted: Option<bool>,
    pub(crate) owner: Option<Owner>,
}

/// A stuck socket left its state (`new`), or disappeared (`new` is `None`: evicted, or found gone
/// by reconciliation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnstuckReport {
    pub(crate) ts_ns: u64,
    pub(crate) cookie: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) state: TcpState,
    pub(crate) new: Option<TcpState>,
    /// Total time in `state`; a lower bound when `age_known` is false.
    pub(crate) duration_ns: u64,
    pub(crate) age_known: bool,
    pub(crate) owner: Option<Owner>,
}

/// The core's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// Live sockets by state, indexed by `TcpState as usize`.
    pub(crate) sockets: [u64; TcpState::COUNT],
    pub(crate) tracked: u64,
    /// Stuck sockets the owner filter selects, by state.
    pub(crate) stuck: [u64; TcpState::COUNT],
    /// Stuck reports made since start-up, by state.
    pub(crate) episodes: [u64; TcpState::COUNT],
    /// Listeners stalled now, and stall reports made since start-up.
    pub(crate) stalled_listeners: u64,
    pub(crate) listener_stalls: u64,
    /// Listeners reported with half-open connections now, and such reports since start-up.
    pub(crate) half_open_listeners: u64,
    pub(crate) half_open_reports: u64,
    /// The listeners that retransmitted the most SYN-ACKs, most first.
    pub(crate) synack_retransmits_by_listener: Vec<(Endpoints, u64)>,
    /// Connections listeners turned away, as the kernel counts them (since each namespace was
    /// made).
    pub(crate) listen_drops: ListenDrops,
    pub(crate) reconciliation: Reconciliation,
    /// The destinations using the most of their ephemeral ports, as of the last listing.
    pub(crate) port_pressure: PressureView,
    pub(crate) bind_failures: ErrorCounts,
}

/// Failures by errno: since start-up, and in the summary interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorCounts {
    pub(crate) total: Vec<(u8, u64)>,
    pub(crate) interval: Vec<(u8, u64)>,
}

impl Snapshot {
    /// Non-zero entries of a by-state array, in state order.
    pub(crate) fn non_zero(counts: &[u64; TcpState::COUNT]) -> Vec<(TcpState, u64)> {
        TcpState::ALL
            .into_iter()
            .map(|state| (state, counts[state as usize]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub(crate) fn stuck_total(&self) -> u64 {
        self.stuck.iter().sum()
    }
}

/// What a listener's report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Its accept queue did not drain.
    Stalled,
    /// Its half-open connections persisted.
    HalfOpen,
}

impl Trouble {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Trouble::Stalled => "stalled",
            Trouble::HalfOpen => "half_open",
        }
    }
}

/// A listener whose accept queue has not drained for its threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerStalled {
    pub(crate) ts_ns: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) queue: u32,
    pub(crate) backlog: u32,
    /// Since when the queue was seen non-empty at every check (a lower bound of the stall).
    pub(crate) stalled_ns: u64,
    pub(crate) threshold_ns: u64,
    pub(crate) owner: Option<Owner>,
}

/// A listener with a half-open connection older than its threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerHalfOpen {
    pub(crate) ts_ns: u64,
    pub(crate) endpoints: Endpoints,
    /// Its half-open connections now.
    pub(crate) half_open: u32,
    /// How long the oldest has been listed (a lower bound of its age: listing starts after a
    /// SYN-ACK retransmit).
    pub(crate) oldest_ns: u64,
    pub(crate) threshold_ns: u64,
    /// SYN-ACKs it retransmitted since the kernel programs were loaded.
    pub(crate) synack_retransmits: u64,
    pub(crate) owner: Option<Owner>,
}

/// A listener reported in trouble is out of it (`closed` false), or was closed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerRecovered {
    pub(crate) ts_ns: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) trouble: Trouble,
    pub(crate) closed: bool,
    /// How long the trouble lasted, as the checks saw it.
    pub(crate) duration_ns: u64,
    pub(crate) owner: Option<Owner>,
}

/// Where connections go: from one local address of a namespace to one remote address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Destination {
    pub(crate) netns: u32,
    pub(crate) local: IpAddr,
    pub(crate) remote: IpAddr,
    pub(crate) remote_port: u16,
}

impl Destination {
    /// Where a connection goes.
    pub(crate) fn of(e: &Endpoints) -> Self {
        Self {
            netns: e.netns,
            local: e.local,
            remote: e.remote,
            remote_port: e.remote_port,
        }
    }

    pub(crate) fn family(&self) -> Family {
        if self.local.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// One destination's ephemeral ports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Usage {
    pub(crate) destination: Destination,
    /// Ports of the range held by its sockets, in every state.
    pub(crate) in_use: u32,
    /// Of them, held by connections in TIME-WAIT.
    pub(crate) time_wait: u32,
    /// Ports of the namespace's range (less the reserved ones).
    pub(crate) available: u32,
    /// The processes holding the most, with how many each, most first: known for destinations
    /// past the threshold, from the kernel's records (the process that connected, kept through
    /// TIME-WAIT); sockets of unknown owner are left out.
    pub(crate) holders: Vec<(Owner, u32)>,
}

impl Usage {
    /// The share of the range in use, in percent.
    pub(crate) fn percent(&self) -> f64 {
        f64::from(self.in_use) * 100.0 / f64::from(self.available.max(1))
    }

    /// At or past `percent` of the range.
    pub(crate) fn reaches(&self, percent: u8) -> bool {
        u64::from(self.in_use) * 100 >= u64::from(percent) * u64::from(self.available)
    }
}

/// What summaries and metrics show of the port pressure, as of the last listing.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct PressureView {
    /// The destinations most used, most used first (at most `ports::MOST_PRESSED`, and every
    /// pressed one up to `ports::MAX_GAUGES`).
    pub(crate) most_used: Vec<Usage>,
    /// Of them, how many are pressed now (the first ones).
    pub(crate) pressed_now: usize,
    /// Reports since start-up.
    pub(crate) reports: u64,
}

/// A destination uses `--port-pressure` percent of its ephemeral ports or more.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PortPressureReport {
    pub(crate) ts_ns: u64,
    pub(crate) destination: Destination,
    pub(crate) in_use: u32,
    pub(crate) available: u32,
    /// Of `in_use`, ports held by connections in TIME-WAIT.
    pub(crate) time_wait: u32,
    pub(crate) threshold_percent: u8,
    /// The processes holding the most ports, with how many each, most first.
    pub(crate) holders: Vec<(Owner, u32)>,
}

/// A destination reported pressed uses fewer ports again (or none: its sockets are gone).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PortPressureRelieved {
    pub(crate) ts_ns: u64,
    pub(crate) destination: Destination,
    pub(crate) in_use: u32,
    pub(crate) available: u32,
    /// The most ports in use during the episode, as the listings saw it.
    pub(crate) peak: u32,
    pub(crate) duration_ns: u64,
}

/// A system call that failed for want of a port or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FailedCall {
    Connect,
    Bind,
}

/// A process's connects to one destination, or binds to one address and port, that failed with
/// one error: `count` of them since its last report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallFailed {
    pub(crate) ts_ns: u64,
    pub(crate) call: FailedCall,
    pub(crate) error: u8,
    /// connect(): the local address and the destination; bind(): the address and port asked
    /// for (port 0: any ephemeral port), the remote end unspecified.
    pub(crate) endpoints: Endpoints,
    pub(crate) owner: Option<Owner>,
    pub(crate) count: u64,
}

/// Differences found between the records and the kernel's socket list, and fixed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reconciliation {
    pub(crate) runs: u64,
    /// Sockets the kernel has that the records missed.
    pub(crate) added: u64,
    /// Records of sockets that the kernel no longer has.
    pub(crate) removed: u64,
    /// Records in the wrong state.
    pub(crate) corrected: u64,
}

impl Reconciliation {
    pub(crate) fn fixes(&self) -> u64 {
        self.added + self.removed + self.corrected
    }
}
