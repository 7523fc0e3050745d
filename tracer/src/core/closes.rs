//! Lines held for a moment because the kernel tells the rest right after:
//!
//! - a close: when an application closes a socket with unread data or a zero linger, the kernel
//!   closes it first and sends the reset right after, so the line of the close is written before
//!   its end is known; a reset that arrives meanwhile amends it.
//! - a socket accepted from a listener, at its first transition (LISTEN -> SYN_RECV): kernels
//!   before 6.x make it before copying the peer's address and port into the new socket, and
//!   under the listener's cookie; the socket's next line (SYN_RECV -> ESTABLISHED, microseconds
//!   later) gives them.
//!
//! Each line waits until the ring buffer has been read past it by a margin, or until what it
//! waits for arrives.
use std::collections::VecDeque;

use tracer_common::{End, TcpState};

use super::report::TransitionInfo;
use crate::source::events::{ConnectionEnd, Transition};

/// How long after a close its line waits for a reset: a few microseconds apart in the kernel, but
/// the closing task may be preempted in between on a busy host (1 ms was too little in emulated
/// VMs running tests side by side: the close's line left as `fin`); less than the poll interval.
pub(crate) const MARGIN_NS: u64 = 20_000_000;

/// A held line: the transition, what the core knows of it.
type Held = (Transition, TransitionInfo);

/// A line that waits for its socket's next one, for the peer's address.
fn waits_for_peer(transition: &Transition) -> bool {
    transition.old == TcpState::Listen
        && transition.new == TcpState::SynRecv
        && transition.endpoints.remote_port == 0
}

#[derive(Default)]
pub(crate) struct PendingCloses {
    held: VecDeque<Held>,
}

impl PendingCloses {
    /// Whether a transition's line must wait: a full socket reaching CLOSE with an end a reset of
    /// its own could still change.
    pub(crate) fn must_wait(transition: &Transition) -> bool {
        let close = transition.object != 0
            && transition.new == TcpState::Close
            && transition
                .end
                .is_some_and(|e| matches!(e.end, End::Fin | End::Abandoned));
        close || waits_for_peer(transition)
    }

    /// The held line of a socket accepted from a listener that waits for its peer, completed by
    /// the same socket's next line (the same kernel socket; before 6.x the first line carries
    /// its listener's cookie, so its disguised address tells them apart); it takes the
    /// socket's own cookie.
    pub(crate) fn complete_peer(
        &mut self,
        next: &Transition,
    ) -> Option<(Transition, TransitionInfo)> {
        let at = self
            .held
            .iter()
            .position(|(t, _)| waits_for_peer(t) && t.object == next.object)?;
        let (mut transition, info) = self.held.remove(at)?;
        transition.cookie = next.cookie;
        transition.endpoints.remote = next.endpoints.remote;
        transition.endpoints.remote_port = next.endpoints.remote_port;
        Some((transition, info))
    }

    pub(crate) fn hold(&mut self, transition: Transition, info: TransitionInfo) {
        self.held.push_back((transition, info));
    }

    /// The socket of `cookie` sent a reset as it closed: its held line says so. False when no
    /// line of it is held (not logged, or released already).
    pub(crate) fn reset_sent(&mut self, cookie: u64, reset_reason: Option<u8>) -> bool {
        let Some((transition, _)) = self.held.iter_mut().find(|(t, _)| t.cookie == cookie) else {
            return false;
        };
        transition.end = Some(ConnectionEnd {
            end: End::ResetSent,
            error: transition.end.and_then(|e| e.error),
            reset_reason,
        });
        true
    }

    /// The lines whose wait is over once the ring buffer was read at `read_ns` (monotonic),
    /// oldest first; all of them when `read_ns` is `u64::MAX`.
    pub(crate) fn release(
        &mut self,
        read_ns: u64,
    ) -> impl Iterator<Item = (Transition, TransitionInfo)> {
        let due = self
            .held
            .iter()
            .take_while(|(t, _)| t.ts_ns.saturating_add(MARGIN_NS) <= read_ns)
            .count();
        self.held.drain(..due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::log::tests::sample;
    use crate::source::events::Family;

    fn close(ts_ns: u64, end: End) -> Transition {
        Transition {
            ts_ns,
            old: TcpState::Established,
            new: TcpState::Close,
            end: Some(ConnectionEnd {
                end,
                error: None,
                reset_reason: None,
            }),
            ..sample(Family::Ipv4)
        }
    }

    const INFO: TransitionInfo = TransitionInfo {
        service_port: 80,
        selected: true,
    };

    #[test]
    fn only_closes_a_reset_could_amend_wait() {
        assert!(PendingCloses::must_wait(&close(0, End::Fin)));
        assert!(PendingCloses::must_wait(&close(0, End::Abandoned)));
        assert!(!PendingCloses::must_wait(&close(0, End::ResetReceived)));
        let mut timewait = close(0, End::Fin);
        timewait.object = 0;
        assert!(!PendingCloses::must_wait(&timewait), "timewait phase");
        assert!(
            !PendingCloses::must_wait(&sample(Family::Ipv4)),
            "not a close"
        );
    }

    #[test]
    fn an_accepted_socket_waits_for_its_peer() {
        let mut first = sample(Family::Ipv4);
        (first.old, first.new, first.object) = (TcpState::Listen, TcpState::SynRecv, 7);
        first.endpoints.remote_port = 0;
        first.endpoints.remote = "0.0.0.0".parse().unwrap();
        assert!(PendingCloses::must_wait(&first));
        let mut pending = PendingCloses::default();
        pending.hold(first.clone(), INFO);
        let mut next = sample(Family::Ipv4);
        (next.old, next.new, next.object) = (TcpState::SynRecv, TcpState::Established, 8);
        assert!(pending.complete_peer(&next).is_none(), "another socket");
        next.object = 7;
        next.cookie = first.cookie + 1;
        let (done, _) = pending.complete_peer(&next).expect("completed");
        assert_eq!(done.cookie, next.cookie, "its own id, not its listener's");
        assert_eq!(done.endpoints.remote, next.endpoints.remote);
        assert_eq!(done.endpoints.remote_port, next.endpoints.remote_port);
        assert_eq!((done.old, done.new), (TcpState::Listen, TcpState::SynRecv));
        assert_eq!(pending.release(u64::MAX).count(), 0, "no longer held");
        // A socket whose peer the kernel set first is not held.
        let mut complete = first;
        complete.endpoints.remote_port = 5000;
        assert!(!PendingCloses::must_wait(&complete));
    }

    #[test]
    fn a_reset_amends_the_held_line_and_lines_leave_in_order() {
        let mut pending = PendingCloses::default();
        let with_cookie = |cookie, transition: Transition| Transition {
            cookie,
            ..transition
        };
        let at = 10_000_000;
        pending.hold(with_cookie(1, close(at, End::Fin)), INFO);
        pending.hold(with_cookie(2, close(at + MARGIN_NS / 2, End::Fin)), INFO);
        assert!(pending.reset_sent(2, Some(11)));
        assert!(!pending.reset_sent(3, Some(11)), "not held");
        let too_recent = pending.release(at + MARGIN_NS - 1).count();
        assert_eq!(too_recent, 0, "too recent");
        let first: Vec<_> = pending.release(at + MARGIN_NS).collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0.end.unwrap().end, End::Fin);
        let rest: Vec<_> = pending.release(u64::MAX).collect();
        let end = rest[0].0.end.unwrap();
        assert_eq!((end.end, end.reset_reason), (End::ResetSent, Some(11)));
        assert_eq!(pending.release(u64::MAX).count(), 0);
    }
}
