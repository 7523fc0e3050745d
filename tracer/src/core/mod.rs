//! Stage 3, the core: the daemon's view of the host's TCP sockets, with no I/O at all. The kernel
//! keeps the per-socket records and counts in aggregates; the core is fed what the source reads of
//! them (transitions it was sent, the index of watched sockets, the aggregates, the records) and
//! the kernel's socket list, with the time, and reports through a [`report::Sink`]; it reads and
//! fixes the records through a [`port`] the daemon implements. [`Tracker`] is the façade; each
//! job lives beside it:
//!
//! - [`stuck`]: thresholds, stuck and unstuck reports, reminders;
//! - [`listeners`]: listeners whose accept queue does not drain;
//! - [`totals`]: sockets by state, transitions, time in state, since start-up and per interval;
//! - [`interval`]: the report that closes each summary interval;
//! - [`reconcile`]: plans that keep the kernel's records equal to its socket list, and the moves
//!   to TIME-WAIT the kernel makes without a trace; [`apply`] writes a plan back;
//! - [`port`]: the kernel's record maps as the core reads and writes them, which the daemon
//!   implements;
//! - [`closes`]: lines of closed sockets held until a reset sent right after amends them;
//! - [`ends`]: connection ends and failed connects by name;
//! - [`failures`]: connects and binds that failed for want of a port or an address, per process;
//! - [`losses`]: what the tracer could not see, said when it grows;
//! - [`ports`]: ephemeral ports in use per destination, from each full listing;
//! - [`select`]: the owner filters; [`report`]: the vocabulary of what the core reports.
pub(crate) mod apply;
pub(crate) mod closes;
pub(crate) mod ends;
pub(crate) mod failures;
pub(crate) mod interval;
pub(crate) mod listeners;
pub(crate) mod losses;
pub(crate) mod port;
pub(crate) mod ports;
pub(crate) mod reconcile;
pub(crate) mod report;
pub(crate) mod select;
pub(crate) mod stuck;
pub(crate) mod totals;

use crate::owner::Owner;

use tracer_common::{End, TcpState, Tuple, TwRecord, record_flags};

use self::{
    closes::PendingCloses,
    failures::Failures,
    interval::{Context, Summary},
    listeners::{HalfOpenListing, ListenerSeen, Listeners},
    ports::PortPressure,
    reconcile::{Outcome, Plan},
    report::{Reconciliation, Sink, Snapshot, TransitionInfo, Usage},
    select::OwnerFilter,
    stuck::{OwnerLookup, StuckSockets, Thresholds},
    totals::Totals,
};
use crate::{
    enrich::{listen_drops::ListenDrops, owners::Holders},
    source::{
        decode::endpoints,
        events::{BindFailure, ConnectionEnd, KernelTransition, Transition, Watched},
        kernel_maps::Aggregates,
    },
};

/// How the core is set up.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) thresholds: Thresholds,
    /// `--stuck-repeat`: reminders of a stuck socket at most this often.
    pub(crate) repeat_ns: u64,
    /// `--pid`, `--comm`, `--cgroup`.
    pub(crate) owners: OwnerFilter,
    /// `--port-pressure`, in percent of a destination's ephemeral ports; 0: off.
    pub(crate) port_pressure: u8,
}

pub(crate) struct Tracker {
    thresholds: Thresholds,
    stuck: StuckSockets,
    totals: Totals,
    reconciliation: Reconciliation,
    selection: OwnerFilter,
    closes: PendingCloses,
    listeners: Listeners,
    listen_drops: ListenDrops,
    ports: PortPressure,
    failures: Failures,
}

impl Tracker {
    /// `pinned`: records an earlier daemon left in the kernel's pinned maps, by state.
    pub(crate) fn new(settings: Settings, pinned: [i64; TcpState::COUNT]) -> Self {
        let listener_threshold =
            |state: TcpState| settings.thresholds.get(state).map(crate::units::nanos);
        let listeners = Listeners::new(
            listener_threshold(TcpState::Listen),
            listener_threshold(TcpState::SynRecv),
        );
        Self {
            stuck: StuckSockets::new(settings.thresholds.clone(), settings.repeat_ns),
            thresholds: settings.thresholds,
            totals: Totals::new(pinned),
            reconciliation: Reconciliation::default(),
            listeners,
            selection: settings.owners,
            closes: PendingCloses::default(),
            listen_drops: ListenDrops::default(),
            ports: PortPressure::new(settings.port_pressure),
            failures: Failures::default(),
        }
    }

    /// A transition the kernel sent: a line to log (a close's held until a reset could amend
    /// it), and the end of a stuck episode when the socket left a watched state after its
    /// threshold.
    pub(crate) fn on_transition(&mut self, event: KernelTransition, sink: &mut impl Sink) {
        let info = TransitionInfo {
            service_port: event.service_port,
            selected: self.selection.matches(event.transition.owner.as_ref()),
        };
        if event.long_stay {
            self.stuck.left(&event, &self.selection, sink);
        }
        if info.selected {
            self.failures.transition(&event.transition);
        }
        if let Some((first, first_info)) = self.closes.complete_peer(&event.transition) {
            sink.transition(&first, first_info);
        }
        if PendingCloses::must_wait(&event.transition) {
            self.closes.hold(event.transition, info);
        } else {
            sink.transition(&event.transition, info);
        }
    }

    /// A TCP socket's bind() failed for want of its address or port: counted, and reported when
    /// the owner filter selects its process.
    pub(crate) fn on_bind_failure(&mut self, failure: &BindFailure) {
        let selected = self.selection.matches(failure.owner.as_ref());
        self.failures.bind(failure, selected);
    }

    /// Failed connects and binds due for a line at `now_ns` (`all`: every one pending, at exit).
    pub(crate) fn report_failures(&mut self, now_ns: u64, all: bool, sink: &mut impl Sink) {
        self.failures.report(now_ns, all, sink);
    }

    /// The socket of `cookie` sent a reset as it closed: the line of its close says so.
    pub(crate) fn reset_after_close(&mut self, cookie: u64, reset_reason: Option<u8>) {
        self.closes.reset_sent(cookie, reset_reason);
    }

    /// Lines of closes whose wait is over, the ring buffer having been read at `read_ns`
    /// (`u64::MAX`: all of them, at exit).
    pub(crate) fn release_closes(&mut self, read_ns: u64, sink: &mut impl Sink) {
        for (transition, info) in self.closes.release(read_ns) {
            sink.transition(&transition, info);
        }
    }

    /// Looks through the kernel's index of watched sockets (read before the ring buffer was
    /// drained); returns the sockets whose owners are to be looked up before they are reported.
    pub(crate) fn poll_watched(
        &mut self,
        watched: &[Watched],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        self.stuck.poll(watched, now_ns, &self.selection, sink)
    }

    /// Owners found by socket cookie for the sockets `looked_up`, which waited for them.
    pub(crate) fn owners_found(
        &mut self,
        looked_up: &[u64],
        found: &Holders,
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        self.stuck
            .owners_found(looked_up, found, now_ns, &self.selection, sink);
        self.listeners
            .owners_found(looked_up, &found.owners, now_ns, &self.selection, sink);
    }

    /// Whether listeners are checked (`--stuck listen=…` or `syn-recv=…` is not off).
    pub(crate) fn watches_listeners(&self) -> bool {
        self.listeners.watched()
    }

    /// Whether the next listener check lists half-open connections.
    pub(crate) fn half_open_listing(&self) -> HalfOpenListing {
        self.listeners.half_open_listing()
    }

    /// The kernel's count of connections listeners turned away, as last read.
    pub(crate) fn listen_drops(&mut self, drops: ListenDrops) {
        self.listen_drops = drops;
    }

    /// One check of every listener's accept queue and half-open connections; returns the
    /// listeners whose owners are to be looked up before they are reported.
    pub(crate) fn check_listeners(
        &mut self,
        listeners: &[ListenerSeen],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> Vec<OwnerLookup> {
        self.listeners.check(listeners, now_ns, sink)
    }

    /// When the index of watched sockets should be looked through next.
    pub(crate) fn next_poll(&self) -> Option<u64> {
        self.stuck.next_poll()
    }

    /// What a plan wrote: counted as fixes, and in the sockets by state.
    pub(crate) fn applied(&mut self, plan: &Plan, outcome: &Outcome) {
        self.reconciliation.count(plan, outcome);
        for (state, change) in reconcile::record_changes(plan, outcome) {
            if let Some(state) = TcpState::from_u8(state) {
                self.totals.adjust(state, change);
            }
        }
    }

    /// The ports each destination uses, counted from a listing taken at `now_ns`: pressure
    /// reported, and relief.
    pub(crate) fn port_usage(&mut self, usage: Vec<Usage>, now_ns: u64, sink: &mut impl Sink) {
        self.ports.check(usage, now_ns, sink);
    }

    /// Lingering timewait sockets the kernel moved to TIME_WAIT without a trace (written to its
    /// records as such, where `written`): counted as the transitions they are, and reported.
    pub(crate) fn silently_moved(
        &mut self,
        moves: &[(Tuple, TwRecord, TwRecord)],
        written: &[bool],
        now_ns: u64,
        sink: &mut impl Sink,
    ) {
        for ((key, _, was), done) in moves.iter().zip(written) {
            if !done {
                continue;
            }
            let spent = (was.flags & record_flags::AGE_KNOWN != 0)
                .then(|| now_ns.saturating_sub(was.since_ns));
            self.totals
                .record(TcpState::FinWait2, TcpState::TimeWait, spent);
            self.totals.adjust(TcpState::FinWait2, -1);
            self.totals.adjust(TcpState::TimeWait, 1);
            let Ok(endpoints) = endpoints(key) else {
                continue;
            };
            let owner = (was.pid != 0).then(|| Owner {
                pid: was.pid,
                comm: crate::owner::Comm::new(""),
                cgroup: None,
            });
            let transition = Transition {
                ts_ns: now_ns,
                cookie: was.cookie,
                object: 0,
                endpoints,
                old: TcpState::FinWait2,
                new: TcpState::TimeWait,
                prev_state_ns: spent,
                owner,
                end: Some(ConnectionEnd {
                    end: End::Fin,
                    error: None,
                    reset_reason: None,
                }),
                syn_retransmits: None,
            };
            let info = TransitionInfo {
                service_port: was.service_port,
                selected: self.selection.matches(transition.owner.as_ref()),
            };
            sink.transition(&transition, info);
        }
    }

    /// The counts of this moment, for summaries and metrics alike.
    pub(crate) fn snapshot(&self, kernel: &Aggregates) -> Snapshot {
        let sockets = self.totals.sockets(kernel);
        let (stalled_listeners, listener_stalls) = self.listeners.stalled();
        let (half_open_listeners, half_open_reports) = self.listeners.half_open();
        Snapshot {
            tracked: sockets.iter().sum(),
            sockets,
            stuck: self.stuck.by_state(),
            episodes: self.stuck.episodes(),
            stalled_listeners,
            listener_stalls,
            half_open_listeners,
            half_open_reports,
            synack_retransmits_by_listener: self.listeners.synack_retransmits(),
            listen_drops: self.listen_drops,
            reconciliation: self.reconciliation,
            port_pressure: self.ports.view(),
            bind_failures: self.failures.binds(),
        }
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Ends the summary interval at `context.now_ns` and starts the next: returns the interval's
    /// report, with the stuck sockets due for a reminder (marked as reminded) and the kernel's
    /// timewait records counted by remote port.
    pub(crate) fn close_interval(
        &mut self,
        kernel: &Aggregates,
        timewaits: &[(Tuple, TwRecord)],
        context: Context,
    ) -> Summary {
        let reminders = self.stuck.reminders(context.now_ns);
        let summary = Summary::new(
            self.snapshot(kernel),
            reminders,
            &self.totals,
            kernel,
            timewaits,
            context,
        );
        self.totals.start_interval(kernel);
        self.failures.start_interval();
        summary
    }

    pub(crate) fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }
}

#[cfg(test)]
mod tests;
