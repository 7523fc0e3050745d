//! Stuck sockets: a socket that stays in a state longer than that state's threshold. A stuck
//! socket sends no events, so detection runs on a timer: every socket in a watched state has a
//! deadline in an ordered index, and the daemon wakes at the earliest one.
use std::{collections::BTreeSet, time::Duration};

use tracer_common::TcpState;

use crate::table::SockKey;

/// Per-state thresholds; `None` means the state is not watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds([Option<Duration>; 14]);

impl Default for Thresholds {
    /// The states where a socket normally passes quickly, or where a leak shows.
    fn default() -> Self {
        let mut thresholds = Self([None; 14]);
        for (state, secs) in [
            (TcpState::SynSent, 10),
            (TcpState::SynRecv, 10),
            (TcpState::CloseWait, 60),
            (TcpState::LastAck, 60),
            (TcpState::FinWait1, 60),
            (TcpState::Closing, 60),
            // Longer than the kernel's orphan timeout (tcp_fin_timeout, 60 s): only a socket
            // whose application half-closed and never closed stays this long.
            (TcpState::FinWait2, 120),
        ] {
            thresholds.set(state, Some(Duration::from_secs(secs)));
        }
        thresholds
    }
}

impl Thresholds {
    pub fn set(&mut self, state: TcpState, threshold: Option<Duration>) {
        self.0[state as usize] = threshold;
    }

    pub fn get(&self, state: TcpState) -> Option<Duration> {
        self.0[state as usize]
    }

    /// Watched states with their thresholds, in state order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, Duration)> + '_ {
        TcpState::ALL
            .into_iter()
            .filter_map(|state| Some((state, self.get(state)?)))
    }
}

/// Parses `STATE=DURATION` (or `STATE=off`), the form of `--stuck`.
pub fn parse_threshold(text: &str) -> Result<(TcpState, Option<Duration>), String> {
    let (state, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not STATE=DURATION (e.g. close-wait=60s)"))?;
    let state = TcpState::parse(state).ok_or_else(|| {
        format!("`{state}` is not a TCP state (e.g. close-wait, syn-sent, fin-wait-1, last-ack)")
    })?;
    if matches!(
        state,
        TcpState::Close | TcpState::NewSynRecv | TcpState::BoundInactive
    ) {
        return Err(format!("{} is not a state sockets stay in", state.name()));
    }
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok((state, None));
    }
    let threshold = crate::cli::parse_duration(value)?;
    Ok((state, Some(threshold)))
}

/// The deadline index: (deadline, socket) for every socket in a watched state.
#[derive(Debug, Default)]
pub struct Deadlines {
    index: BTreeSet<(u64, SockKey)>,
}

impl Deadlines {
    pub fn insert(&mut self, deadline_ns: u64, key: SockKey) {
        self.index.insert((deadline_ns, key));
    }

    pub fn remove(&mut self, deadline_ns: u64, key: SockKey) {
        self.index.remove(&(deadline_ns, key));
    }

    pub fn next(&self) -> Option<u64> {
        self.index.first().map(|(deadline, _)| *deadline)
    }

    /// Removes and returns every socket whose deadline is at or before `now_ns`.
    pub fn pop_due(&mut self, now_ns: u64) -> Vec<SockKey> {
        let mut due = Vec::new();
        while let Some(&(deadline, key)) = self.index.first() {
            if deadline > now_ns {
                break;
            }
            self.index.pop_first();
            due.push(key);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Nanoseconds of a threshold.
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_leak_states() {
        let t = Thresholds::default();
        assert_eq!(t.get(TcpState::CloseWait), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::SynSent), Some(Duration::from_secs(10)));
        assert_eq!(t.get(TcpState::SynRecv), Some(Duration::from_secs(10)));
        assert_eq!(t.get(TcpState::LastAck), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::FinWait1), Some(Duration::from_secs(60)));
        assert_eq!(t.get(TcpState::Established), None);
        assert_eq!(t.get(TcpState::Listen), None);
    }

    #[test]
    fn parses_thresholds() {
        assert_eq!(
            parse_threshold("close-wait=2s"),
            Ok((TcpState::CloseWait, Some(Duration::from_secs(2))))
        );
        assert_eq!(
            parse_threshold("SYN_SENT=1500ms"),
            Ok((TcpState::SynSent, Some(Duration::from_millis(1500))))
        );
        assert_eq!(
            parse_threshold("last-ack=off"),
            Ok((TcpState::LastAck, None))
        );
        assert!(
            parse_threshold("close-wait=abc")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_threshold("close-wait")
                .unwrap_err()
                .contains("STATE=DURATION")
        );
        assert!(
            parse_threshold("sleepy=5s")
                .unwrap_err()
                .contains("not a TCP state")
        );
        assert!(
            parse_threshold("close=5s")
                .unwrap_err()
                .contains("not a state sockets stay in")
        );
        assert!(parse_threshold("close-wait=0s").is_err());
    }

    #[test]
    fn deadlines_pop_in_order() {
        let mut d = Deadlines::default();
        d.insert(30, SockKey::Kernel(3));
        d.insert(10, SockKey::Kernel(1));
        d.insert(20, SockKey::Kernel(2));
        assert_eq!(d.next(), Some(10));
        d.remove(20, SockKey::Kernel(2));
        assert_eq!(d.pop_due(25), vec![SockKey::Kernel(1)]);
        assert_eq!(d.pop_due(25), vec![]);
        assert_eq!(d.next(), Some(30));
        assert_eq!(d.len(), 1);
    }
}
