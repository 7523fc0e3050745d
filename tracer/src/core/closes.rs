//! Lines of sockets that just closed, held for a moment: when an application closes a socket with
//! unread data or a zero linger, the kernel closes it first and sends the reset right after, so
//! the line of the close is written before its end is known. Each such line waits until the
//! ring buffer has been read past it by a margin (the reset follows within microseconds, in the
//! same system call), and a reset that arrives meanwhile amends it.
use std::collections::VecDeque;

use tracer_common::{End, TcpState};

use super::report::TransitionInfo;
use crate::source::events::{ConnectionEnd, Transition};

/// How long after a close its line waits for a reset: far more than the few microseconds between
/// the two in the kernel, far less than the poll interval.
pub(crate) const MARGIN_NS: u64 = 1_000_000;

/// A held line: the socket's cookie, the transition, what the core knows of it.
type Held = (u64, Transition, TransitionInfo);

#[derive(Default)]
pub(crate) struct PendingCloses {
    held: VecDeque<Held>,
}

impl PendingCloses {
    /// Whether a transition's line must wait: a full socket reaching CLOSE with an end a reset of
    /// its own could still change.
    pub(crate) fn must_wait(cookie: u64, transition: &Transition) -> bool {
        cookie != 0
            && transition.new == TcpState::Close
            && transition
                .end
                .is_some_and(|e| matches!(e.end, End::Fin | End::Abandoned))
    }

    pub(crate) fn hold(&mut self, cookie: u64, transition: Transition, info: TransitionInfo) {
        self.held.push_back((cookie, transition, info));
    }

    /// The socket of `cookie` sent a reset as it closed: its held line says so. False when no
    /// line of it is held (not logged, or released already).
    pub(crate) fn reset_sent(&mut self, cookie: u64, reset_reason: u8) -> bool {
        let Some((_, transition, _)) = self.held.iter_mut().find(|(c, ..)| *c == cookie) else {
            return false;
        };
        transition.end = Some(ConnectionEnd {
            end: End::ResetSent,
            error: transition.end.and_then(|e| e.error),
            reset_reason: Some(reset_reason),
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
            .take_while(|(_, t, _)| t.ts_ns.saturating_add(MARGIN_NS) <= read_ns)
            .count();
        self.held.drain(..due).map(|(_, t, info)| (t, info))
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
        assert!(PendingCloses::must_wait(1, &close(0, End::Fin)));
        assert!(PendingCloses::must_wait(1, &close(0, End::Abandoned)));
        assert!(!PendingCloses::must_wait(1, &close(0, End::ResetReceived)));
        assert!(
            !PendingCloses::must_wait(0, &close(0, End::Fin)),
            "timewait phase"
        );
        assert!(
            !PendingCloses::must_wait(1, &sample(Family::Ipv4)),
            "not a close"
        );
    }

    #[test]
    fn a_reset_amends_the_held_line_and_lines_leave_in_order() {
        let mut pending = PendingCloses::default();
        pending.hold(1, close(10_000_000, End::Fin), INFO);
        pending.hold(2, close(10_500_000, End::Fin), INFO);
        assert!(pending.reset_sent(2, 11));
        assert!(!pending.reset_sent(3, 11), "not held");
        assert_eq!(pending.release(10_900_000).count(), 0, "too recent");
        let first: Vec<_> = pending.release(11_000_000).collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0.end.unwrap().end, End::Fin);
        let rest: Vec<_> = pending.release(u64::MAX).collect();
        let end = rest[0].0.end.unwrap();
        assert_eq!((end.end, end.reset_reason), (End::ResetSent, Some(11)));
        assert_eq!(pending.release(u64::MAX).count(), 0);
    }
}
