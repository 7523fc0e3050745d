//! The kernel's own account of what did not reach the daemon: events lost to a full ring buffer,
//! program runs the kernel skipped, runs that gave up on a kernel read, sockets it could not keep a
//! record of. Every one is reported (summaries, metrics, a line at exit), never dropped silently.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelHealth {
    /// Transitions that did not fit in the ring buffer.
    pub(crate) lost_transitions: u64,
    /// Other events (TIME-WAIT timers, accepts) that did not fit.
    pub(crate) lost_other: u64,
    /// Runs of the transition program the kernel skipped (it was interrupted by itself).
    pub(crate) skipped_transitions: u64,
    /// Runs of all the tracer's programs the kernel skipped.
    pub(crate) skipped_all: u64,
    /// Program runs that could not read a kernel structure and wrote nothing.
    pub(crate) failed_reads: u64,
    /// Sockets whose per-socket record could not be stored: their ages are unknown.
    pub(crate) unrecorded_sockets: u64,
}

impl KernelHealth {
    /// Events of every kind the kernel could not deliver.
    pub(crate) fn lost(&self) -> u64 {
        self.lost_transitions + self.lost_other
    }
}
