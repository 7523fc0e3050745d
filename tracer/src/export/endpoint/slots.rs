//! The endpoint's open connections, at most a fixed number: opening one more closes the least
//! recently active (an idle connection, or one that never sent a request), so a crowd of idle
//! clients cannot exhaust the daemon's descriptors, and a real scrape, which sends its request at
//! once, is never the one closed.
use std::{collections::HashMap, sync::Mutex, time::Instant};

use tokio::sync::oneshot;

pub(crate) struct Slots {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// Id → last activity, and the sender whose drop closes the connection.
    by_id: HashMap<u64, (Instant, oneshot::Sender<()>)>,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            open: Mutex::new(Open::default()),
        }
    }

    /// A new connection's id, and what resolves when it must close to make room.
    pub(crate) fn open(&self) -> (u64, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let Ok(mut open) = self.open.lock() else {
            return (u64::MAX, receiver);
        };
        while open.by_id.len() >= self.max {
            let oldest = open
                .by_id
                .iter()
                .min_by_key(|(_, (active, _))| *active)
                .map(|(id, _)| *id);
            match oldest {
                // Dropping its sender closes it.
                Some(id) => open.by_id.remove(&id),
                None => break,
            };
        }
        open.next_id += 1;
        let id = open.next_id;
        open.by_id.insert(id, (Instant::now(), sender));
        (id, receiver)
    }

    /// A request arrived on the connection.
    pub(crate) fn touch(&self, id: u64) {
        if let Ok(mut open) = self.open.lock()
            && let Some((active, _)) = open.by_id.get_mut(&id)
        {
            *active = Instant::now();
        }
    }

    pub(crate) fn close(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.by_id.remove(&id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().map(|open| open.by_id.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_active_makes_room() {
        let slots = Slots::new(3);
        let pause = || std::thread::sleep(std::time::Duration::from_millis(2));
        let (scrape, mut scrape_closed) = slots.open();
        pause();
        let (_, mut idle_closed) = slots.open();
        pause();
        let (_, mut other_closed) = slots.open();
        pause();
        slots.touch(scrape);
        let (_, mut newest_closed) = slots.open();
        assert_eq!(slots.len(), 3);
        assert!(
            idle_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
        );
        assert!(
            other_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        assert!(
            scrape_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        slots.close(scrape);
        assert_eq!(slots.len(), 2);
        assert!(
            newest_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
    }
}
