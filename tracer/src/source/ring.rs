//! Reads the kernel's ring buffer and decodes its records into typed events. The reader is woken
//! by the kernel once a batch is waiting, and by the daemon's poll timer otherwise.
use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::{decode::decode, events::KernelEvent};

pub(crate) struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records that did not decode (a kernel/daemon layout mismatch): counted, reported at exit.
    malformed: u64,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd owns it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("watching the ring buffer")?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Waits until the kernel signals data.
    pub(crate) async fn readable(&mut self) -> Result<()> {
        self.ring
            .readable_mut()
            .await
            .context("waiting for the ring buffer")?
            .clear_ready();
        Ok(())
    }

    /// Hands every record written so far to `handle`, decoded.
    pub(crate) fn drain(&mut self, mut handle: impl FnMut(KernelEvent)) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => handle(event),
                Err(err) => {
                    self.malformed += 1;
                    if self.malformed == 1 {
                        warn!("malformed event from the kernel: {err}");
                    }
                }
            }
        }
    }

    pub(crate) fn malformed(&self) -> u64 {
        self.malformed
    }
}
