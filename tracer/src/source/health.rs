//! The kernel's own account of what the programs saw, and of what did not reach the daemon:
//! log lines lost to a full ring buffer, program runs the kernel skipped, runs that gave up on a
//! kernel read, sockets it could not keep a record of or index. Every one is reported (summaries,
//! metrics, a `health` line when they grow), never dropped silently.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelHealth {
    /// Transition lines that did not fit in the ring buffer (the transitions are counted all the
    /// same: only their lines are lost).
    pub(crate) lost_transitions: u64,
    /// Other events that did not fit.
    pub(crate) lost_other: u64,
    /// Runs of the transition program the kernel skipped (it was interrupted by itself).
    pub(crate) skipped_transitions: u64,
    /// Runs of all the tracer's programs the kernel skipped.
    pub(crate) skipped_all: u64,
    /// Program runs that could not read a kernel structure and gave up.
    pub(crate) failed_reads: u64,
    /// Sockets whose record could not be stored (the record maps are full): their states and
    /// ages are unknown until a reconciliation finds them.
    pub(crate) unrecorded_sockets: u64,
    /// Sockets in a watched state that could not be indexed: they cannot be reported stuck.
    pub(crate) unwatched_sockets: u64,
    /// Resets sent as a socket closed that could not be matched to its close: that connection
    /// counts as ended in order.
    pub(crate) unmatched_resets: u64,
    /// Transitions or durations the port-labelled maps had no room for, not even under `other`
    /// (counted in the totals all the same).
    pub(crate) unlabelled: u64,
}

impl KernelHealth {
    /// Events of every kind the kernel could not deliver.
    pub(crate) fn lost(&self) -> u64 {
        self.lost_transitions + self.lost_other
    }
}

/// What the programs saw since they were loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Transitions of full sockets the address filters let through.
    pub(crate) transitions: u64,
    /// Timewait phases that ended.
    pub(crate) timewait_ends: u64,
    /// Connections accepted (of the sockets the filters let through), and those whose wait in
    /// the accept queue is unknown (their handshake completed before the tracer started, or they
    /// left ESTABLISHED before accept() took them).
    pub(crate) accepts: u64,
    pub(crate) accepts_untimed: u64,
    /// SYNs connecting sockets sent again; SYN-ACKs listeners sent again.
    pub(crate) syn_retransmits: u64,
    pub(crate) synack_retransmits: u64,
}
