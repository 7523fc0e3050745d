//! The blocking work the daemon runs beside its event loop, on tokio's blocking threads: full
//! reconciliations (the start-up snapshot among them: read the kernel's records, list its
//! sockets, plan and write the fixes), lingering checks (timewait sockets the kernel moved to
//! TIME-WAIT without a trace), listener checks (accept queues that do not drain), and owner
//! lookups by inode for stuck reports and stalled listeners. The jobs do the I/O; what to make of
//! it is the core's. At most one of each kind runs at a time; lookups asked for meanwhile wait for
//! the next.
use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;
use tracer_common::{TcpState, Tuple, TwRecord};

use crate::{
    core::{
        apply::apply,
        listeners::{self, HalfOpenListing, ListenerSeen},
        ports,
        reconcile::{self, Lingering, Outcome, Plan, Records},
        report::Usage,
        stuck::{OwnerLookup, Thresholds},
    },
    enrich::{
        listen_drops::{self, ListenDrops},
        owners::{self, Holders},
        socket_list,
    },
    source::{
        clock::{monotonic_ns, thread_cpu_time},
        filter::SocketFilter,
        kernel_maps::RecordMaps,
        socket_owners::SocketOwners,
    },
};

/// The sockets an owner lookup looked for, and who holds them.
pub(super) type OwnersFound = (Vec<u64>, Holders);

/// A reconciliation, done: what was planned and written.
pub(super) struct Reconciled {
    pub(super) plan: Plan,
    pub(super) outcome: Outcome,
    /// Network namespaces listed.
    pub(super) namespaces: usize,
    /// The ephemeral ports each destination uses, as the listing found them, and when.
    pub(super) ports: Vec<Usage>,
    pub(super) at_ns: u64,
    /// CPU time it took, on every thread: the next one is spaced by it.
    pub(super) cpu: Duration,
}

/// The listeners one check found, with their accept queues.
pub(super) struct ListenersChecked {
    pub(super) listeners: Vec<ListenerSeen>,
    pub(super) drops: ListenDrops,
    pub(super) at_ns: u64,
    /// CPU time the check took (its listing): the next one is spaced by it.
    pub(super) cpu: Duration,
}

/// Moves to TIME-WAIT found, and which were written to the records.
pub(super) struct Moved {
    pub(super) moves: Vec<(Tuple, TwRecord, TwRecord)>,
    pub(super) written: Vec<bool>,
    pub(super) at_ns: u64,
    /// CPU time the check took (its listing): the next one is spaced by it.
    pub(super) cpu: Duration,
}

pub(super) struct Jobs {
    maps: Arc<RecordMaps>,
    /// The kernel's owner iterator, when it loaded.
    owners: Option<Arc<SocketOwners>>,
    filter: SocketFilter,
    thresholds: Thresholds,
    /// The records of full sockets are named by cookie and can be reconciled.
    socket_cookies: bool,
    /// `--port-pressure`: the ports each destination uses are counted at each reconciliation.
    port_pressure: u8,
    pub(super) reconciliation: Option<JoinHandle<Result<Reconciled>>>,
    pub(super) lingering: Option<JoinHandle<Result<Moved>>>,
    pub(super) listeners: Option<JoinHandle<Result<ListenersChecked>>>,
    /// A lookup of owners by cookie: the cookies looked up, and what was found. `queued` wait
    /// for the next.
    pub(super) owner_lookup: Option<JoinHandle<Result<OwnersFound>>>,
    looking_up: Vec<u64>,
    queued: Vec<OwnerLookup>,
}

impl Jobs {
    pub(super) fn new(
        maps: Arc<RecordMaps>,
        owners: Option<SocketOwners>,
        filter: SocketFilter,
        thresholds: Thresholds,
        socket_cookies: bool,
        port_pressure: u8,
    ) -> Self {
        Self {
            maps,
            owners: owners.map(Arc::new),
            filter,
            thresholds,
            socket_cookies,
            port_pressure,
            reconciliation: None,
            lingering: None,
            listeners: None,
            owner_lookup: None,
            looking_up: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// Reconciles the kernel's records with its socket list, unless a reconciliation is under
    /// way. `seed`: the start-up snapshot.
    pub(super) fn start_reconciliation(&mut self, seed: bool) {
        if self.reconciliation.is_some() {
            return;
        }
        let (maps, filter, thresholds, full_sockets, port_pressure) = (
            self.maps.clone(),
            self.filter.clone(),
            self.thresholds.clone(),
            self.socket_cookies,
            self.port_pressure,
        );
        self.reconciliation = Some(tokio::task::spawn_blocking(move || {
            let settings = (seed, full_sockets, port_pressure);
            reconcile_now(&maps, &filter, &thresholds, settings)
        }));
    }

    /// Looks for lingering timewait sockets that moved to TIME-WAIT, unless a check is under way.
    pub(super) fn start_lingering_check(&mut self) {
        if self.lingering.is_some() {
            return;
        }
        let (maps, filter) = (self.maps.clone(), self.filter.clone());
        self.lingering = Some(tokio::task::spawn_blocking(move || {
            check_lingering(&maps, &filter)
        }));
    }

    /// Lists the listeners with their accept queues (and their half-open connections, as
    /// `half_open` says), unless a check is under way.
    pub(super) fn start_listener_check(&mut self, half_open: HalfOpenListing) {
        if self.listeners.is_some() {
            return;
        }
        let (maps, filter) = (self.maps.clone(), self.filter.clone());
        self.listeners = Some(tokio::task::spawn_blocking(move || {
            check_listeners(&maps, &filter, &half_open)
        }));
    }

    /// The sockets the last lookup looked for (to answer them when it failed).
    pub(super) fn looked_up(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.looking_up)
    }

    /// Looks up the owners of these sockets, and of those waiting, unless a lookup is under way.
    pub(super) fn look_up_owners(&mut self, mut lookups: Vec<OwnerLookup>) {
        self.queued.append(&mut lookups);
        if self.queued.is_empty() || self.owner_lookup.is_some() {
            return;
        }
        let wanted: Vec<owners::Wanted> = self
            .queued
            .drain(..)
            .map(|l| (l.cookie, l.state, l.endpoints))
            .collect();
        self.looking_up = wanted.iter().map(|(cookie, ..)| *cookie).collect();
        let (filter, iterator) = (self.filter.clone(), self.owners.clone());
        self.owner_lookup = Some(tokio::task::spawn_blocking(move || {
            let found = owners::holders_by_cookie(&wanted, &filter, iterator.as_deref())?;
            Ok((wanted.iter().map(|(cookie, ..)| *cookie).collect(), found))
        }));
    }
}

/// `settings`: the start-up snapshot or not, records named by cookie or not, `--port-pressure`.
fn reconcile_now(
    maps: &RecordMaps,
    filter: &SocketFilter,
    thresholds: &Thresholds,
    (seed, full_sockets, port_pressure): (bool, bool, u8),
) -> Result<Reconciled> {
    let started = thread_cpu_time();
    let records =
        Records::read(maps, full_sockets).context("reading the kernel's records to reconcile")?;
    let before_listing = thread_cpu_time();
    let listing = socket_list::take_listing(None, None, filter)
        .context("listing the kernel's TCP sockets")?;
    // The listing's CPU on threads of its own (one per other network namespace).
    let listing_elsewhere = listing
        .cpu
        .saturating_sub(thread_cpu_time().saturating_sub(before_listing));
    let at_ns = monotonic_ns();
    let plan = reconcile::plan(&records, &listing, thresholds, at_ns, seed);
    let outcome = apply(maps, &plan).context("writing the reconciliation's fixes")?;
    Ok(Reconciled {
        plan,
        outcome,
        namespaces: listing.namespaces.len().max(1),
        ports: ports::tally(&listing, &records, port_pressure),
        at_ns,
        cpu: thread_cpu_time().saturating_sub(started) + listing_elsewhere,
    })
}

fn check_listeners(
    maps: &RecordMaps,
    filter: &SocketFilter,
    half_open: &HalfOpenListing,
) -> Result<ListenersChecked> {
    let synacks = maps.listener_synacks()?;
    let listing = socket_list::take_listing(None, Some(TcpState::Listen), filter)
        .context("listing the kernel's listeners")?;
    let mut cpu = listing.cpu;
    let mut listeners = ListenerSeen::all_of(&listing.sockets, &synacks);
    if half_open.wanted(&listeners) {
        let requests = socket_list::take_listing(
            Some(listing.namespaces.clone()),
            Some(TcpState::SynRecv),
            filter,
        )
        .context("listing the kernel's half-open connections")?;
        cpu += requests.cpu;
        listeners::assign_half_open(&mut listeners, &listing.sockets, &requests.sockets);
    }
    Ok(ListenersChecked {
        drops: listen_drops::read(&listing.namespaces, filter.netns),
        listeners,
        at_ns: monotonic_ns(),
        cpu,
    })
}

fn check_lingering(maps: &RecordMaps, filter: &SocketFilter) -> Result<Moved> {
    let lingering = Lingering::read(maps).context("reading the lingering index")?;
    tracing::debug!(
        "lingering check: {} lingering entries, {} with a record",
        lingering.records.len() + lingering.ended.len(),
        lingering.records.len()
    );
    if lingering.records.is_empty() {
        return Ok(Moved {
            moves: Vec::new(),
            written: Vec::new(),
            at_ns: monotonic_ns(),
            cpu: Duration::ZERO,
        });
    }
    // Only the namespaces of the lingering sockets: usually the daemon's own alone.
    let namespaces = socket_list::namespaces_among(&lingering.namespaces());
    let listing = socket_list::take_listing(Some(namespaces), Some(TcpState::FinWait2), filter)
        .context("listing the kernel's FIN_WAIT2 sockets")?;
    let at_ns = monotonic_ns();
    let moves = reconcile::silent_moves(&lingering.records, &listing, at_ns);
    let written = lingering
        .write_moves(maps, &moves)
        .context("writing the moves to TIME-WAIT")?;
    Ok(Moved {
        moves,
        written,
        at_ns,
        cpu: listing.cpu,
    })
}

/// Waits for a job to finish and takes its result; pends forever when none runs.
pub(super) async fn finished<T>(job: &mut Option<JoinHandle<Result<T>>>) -> Result<T> {
    let result = match job.as_mut() {
        Some(handle) => handle.await.context("a background scan failed"),
        None => std::future::pending().await,
    };
    *job = None;
    result?
}
