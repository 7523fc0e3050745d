//! The blocking scans the daemon runs beside its event loop, on tokio's blocking threads: full
//! listings of the kernel's sockets (start-up snapshot, reconciliations), listings of its
//! FIN_WAIT2 sockets (lingering checks), and owner lookups by inode. At most one of each kind
//! runs at a time; owner lookups asked for meanwhile wait for the next.
use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use tokio::{task::JoinHandle, time::Instant};
use tracer_common::TcpState;
use tracing::warn;

use crate::{
    core::{Tracker, table::SockKey},
    enrich::{
        owners,
        socket_list::{self, Listing},
    },
    source::{clock::monotonic_ns, events::Owner, filter::SocketFilter},
};

pub(super) struct Jobs {
    filter: SocketFilter,
    /// The host's network namespaces, as the last full listing found them.
    namespaces: Option<HashMap<u32, u32>>,
    /// A full listing, and whether it is the start-up snapshot.
    pub(super) listing: Option<JoinHandle<(bool, Result<Listing>)>>,
    /// A listing of FIN_WAIT2 sockets, with when it started (daemon and kernel clocks).
    pub(super) lingering: Option<JoinHandle<(Instant, u64, Result<Listing>)>>,
    /// A lookup of owners by inode for the sockets `looking_up`; `queued` wait for the next.
    pub(super) owner_lookup: Option<JoinHandle<HashMap<u32, Owner>>>,
    looking_up: Vec<(SockKey, u32)>,
    queued: Vec<(SockKey, u32)>,
}

impl Jobs {
    pub(super) fn new(filter: SocketFilter) -> Self {
        Self {
            filter,
            namespaces: None,
            listing: None,
            lingering: None,
            owner_lookup: None,
            looking_up: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// Lists every socket, unless a listing is under way. The start-up snapshot (`seed`) and
    /// each reconciliation look for the host's namespaces anew.
    pub(super) fn start_listing(&mut self, tracker: &mut Tracker, seed: bool) {
        if self.listing.is_some() {
            return;
        }
        tracker.begin_reconcile(monotonic_ns());
        let filter = self.filter.clone();
        self.listing = Some(tokio::task::spawn_blocking(move || {
            (seed, socket_list::take_listing(None, None, &filter))
        }));
    }

    pub(super) fn remember_namespaces(&mut self, listing: Listing) {
        self.namespaces = Some(listing.namespaces);
    }

    pub(super) fn namespace_count(&self) -> usize {
        self.namespaces.as_ref().map_or(1, |n| n.len().max(1))
    }

    /// Lists the FIN_WAIT2 sockets of the namespaces the last full listing found.
    pub(super) fn start_lingering_check(&mut self) {
        let (started, listed_at) = (Instant::now(), monotonic_ns());
        let (known, filter) = (self.namespaces.clone(), self.filter.clone());
        self.lingering = Some(tokio::task::spawn_blocking(move || {
            let listing = socket_list::take_listing(known, Some(TcpState::FinWait2), &filter)
                .context("listing the kernel's FIN_WAIT2 sockets");
            (started, listed_at, listing)
        }));
    }

    pub(super) fn checking_lingering(&self) -> bool {
        self.lingering.is_some()
    }

    /// Looks up the owners of these sockets, and of those waiting, unless a lookup is under way.
    pub(super) fn look_up_owners(&mut self, mut unowned: Vec<(SockKey, u32)>) {
        self.queued.append(&mut unowned);
        if self.queued.is_empty() || self.owner_lookup.is_some() {
            return;
        }
        self.looking_up = std::mem::take(&mut self.queued);
        let inodes: HashSet<u32> = self.looking_up.iter().map(|(_, inode)| *inode).collect();
        self.owner_lookup = Some(tokio::task::spawn_blocking(move || {
            owners::holders_of(&inodes)
        }));
    }

    /// The sockets of the lookup that finished with `found`, and the owners found. A failed
    /// lookup found nobody: the sockets waiting for it are answered all the same.
    pub(super) fn owners_found(
        &mut self,
        found: Result<HashMap<u32, Owner>>,
    ) -> (Vec<(SockKey, u32)>, HashMap<u32, Owner>) {
        let found = found.unwrap_or_else(|err| {
            warn!("looking up socket owners: {err:#}");
            HashMap::new()
        });
        (std::mem::take(&mut self.looking_up), found)
    }
}

/// Waits for a job to finish and takes its result; pends forever when none runs.
pub(super) async fn finished<T>(job: &mut Option<JoinHandle<T>>) -> Result<T> {
    let result = match job.as_mut() {
        Some(handle) => handle.await.context("a background scan failed"),
        None => std::future::pending().await,
    };
    *job = None;
    result
}
