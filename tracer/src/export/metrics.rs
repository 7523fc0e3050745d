//! Prometheus metrics (prometheus-client): transitions and times in state from the core's reports,
//! gauges and totals from the core's snapshot and the kernel's health figures, refreshed each
//! second. Labels are states and transition pairs, never sockets, addresses or processes; a
//! `port` label is opt-in and capped.
use std::{collections::HashSet, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracer_common::TcpState;

use crate::{
    core::{
        report::{Sink, Snapshot, StuckReport, TransitionInfo, UnstuckReport},
        stats::Reconciliation,
    },
    source::{events::Transition, health::KernelHealth},
};

/// Distinct `port` label values at most; further ports are counted under `other`.
const MAX_PORT_LABELS: usize = 64;

/// Time-in-state buckets, in seconds: from a loopback handshake to an hour-old leak.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TransitionLabels {
    old: &'static str,
    new: &'static str,
    port: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct DurationLabels {
    state: &'static str,
    port: Option<String>,
}

/// Labels encoded by hand so that `port` is left out, not empty, when port labels are off.
fn encode_labels(
    encoder: &mut LabelSetEncoder,
    labels: &[(&str, &str)],
    port: &Option<String>,
) -> Result<(), std::fmt::Error> {
    for label in labels {
        label.encode(encoder.encode_label())?;
    }
    if let Some(port) = port {
        ("port", port.as_str()).encode(encoder.encode_label())?;
    }
    Ok(())
}

impl EncodeLabelSet for TransitionLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_labels(encoder, &[("old", self.old), ("new", self.new)], &self.port)
    }
}

impl EncodeLabelSet for DurationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_labels(encoder, &[("state", self.state)], &self.port)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FixLabels {
    kind: &'static str,
}

/// A counter that follows a running total kept elsewhere.
#[derive(Default)]
struct Total {
    counter: Counter,
    seen: u64,
}

impl Total {
    fn set(&mut self, total: u64) {
        self.counter.inc_by(total.saturating_sub(self.seen));
        self.seen = self.seen.max(total);
    }
}

pub(crate) struct Metrics {
    registry: Arc<Registry>,
    sockets: Family<StateLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
    stuck: Family<StateLabels, Gauge>,
    stuck_episodes: Family<StateLabels, Counter>,
    fixes: Family<FixLabels, Counter>,
    fixes_seen: Reconciliation,
    lost: Total,
    skipped: Total,
    failed_reads: Total,
    unrecorded: Total,
    evictions: Total,
    /// `Some` with `--metrics-port-label`: the service ports labelled so far.
    port_labels: Option<HashSet<u16>>,
    /// Handles of the unlabelled-by-port series, by state numbers.
    transition_handles: Vec<Option<Counter>>,
    duration_handles: Vec<Option<Histogram>>,
}

const STATES: usize = TcpState::COUNT;

impl Metrics {
    pub(crate) fn new(port_label: bool) -> Self {
        let mut registry = Registry::default();
        let sockets = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tcpstate_sockets",
            "TCP sockets by current state",
            sockets.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "tcpstate_transitions",
            "TCP state transitions",
            transitions.clone(),
        );
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register(
            "tcpstate_state_duration_seconds",
            "Time sockets spent in a state, observed when they leave it",
            durations.clone(),
        );
        let stuck = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tcpstate_stuck_sockets",
            "Sockets in a state longer than its threshold",
            stuck.clone(),
        );
        let stuck_episodes = Family::<StateLabels, Counter>::default();
        registry.register(
            "tcpstate_stuck_episodes",
            "Times a socket crossed its state's stuck threshold",
            stuck_episodes.clone(),
        );
        let fixes = Family::<FixLabels, Counter>::default();
        registry.register(
            "tcpstate_reconciliation_fixes",
            "Differences between the socket table and the kernel's socket list, fixed",
            fixes.clone(),
        );
        let lost = Total::default();
        registry.register(
            "tcpstate_lost_events",
            "Events the kernel could not deliver (ring buffer full)",
            lost.counter.clone(),
        );
        let skipped = Total::default();
        registry.register(
            "tcpstate_skipped_events",
            "Tracer program runs the kernel skipped (another BPF program was running on the CPU)",
            skipped.counter.clone(),
        );
        let failed_reads = Total::default();
        registry.register(
            "tcpstate_failed_reads",
            "Kernel program runs that could not read a kernel structure and wrote nothing",
            failed_reads.counter.clone(),
        );
        let unrecorded = Total::default();
        registry.register(
            "tcpstate_unrecorded_sockets",
            "Sockets whose per-socket kernel record could not be stored (their ages are unknown)",
            unrecorded.counter.clone(),
        );
        let evictions = Total::default();
        registry.register(
            "tcpstate_evictions",
            "Sockets dropped from the table to keep it within --max-sockets",
            evictions.counter.clone(),
        );
        // A gauge set to 1 rather than an OpenMetrics `info`, which the classic text format
        // (promtool, older scrapers) does not know.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("tcpstate_build_info", "The tracer's version", build_info);
        Self {
            registry: Arc::new(registry),
            sockets,
            transitions,
            durations,
            stuck,
            stuck_episodes,
            fixes,
            fixes_seen: Reconciliation::default(),
            lost,
            skipped,
            failed_reads,
            unrecorded,
            evictions,
            port_labels: port_label.then(HashSet::new),
            transition_handles: vec![None; STATES * STATES],
            duration_handles: vec![None; STATES],
        }
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Brings the gauges and totals up to date with the core's snapshot and the kernel.
    pub(crate) fn refresh(&mut self, snapshot: &Snapshot, health: &KernelHealth) {
        set_by_state(&self.sockets, &snapshot.sockets);
        set_by_state(&self.stuck, &snapshot.stuck);
        let fixes = snapshot.reconciliation;
        for (kind, now, before) in [
            ("added", fixes.added, self.fixes_seen.added),
            ("removed", fixes.removed, self.fixes_seen.removed),
            ("corrected", fixes.corrected, self.fixes_seen.corrected),
        ] {
            self.fixes
                .get_or_create(&FixLabels { kind })
                .inc_by(now.saturating_sub(before));
        }
        self.fixes_seen = fixes;
        self.lost.set(health.lost());
        self.skipped.set(health.skipped_all);
        self.failed_reads.set(health.failed_reads);
        self.unrecorded.set(health.unrecorded_sockets);
        self.evictions.set(snapshot.evictions);
    }

    fn transition_counter(&mut self, old: TcpState, new: TcpState) -> &Counter {
        let slot = &mut self.transition_handles[old as usize * STATES + new as usize];
        slot.get_or_insert_with(|| {
            self.transitions
                .get_or_create(&TransitionLabels {
                    old: old.name(),
                    new: new.name(),
                    port: None,
                })
                .clone()
        })
    }

    fn duration_histogram(&mut self, state: TcpState) -> &Histogram {
        let slot = &mut self.duration_handles[state as usize];
        slot.get_or_insert_with(|| {
            self.durations
                .get_or_create(&DurationLabels {
                    state: state.name(),
                    port: None,
                })
                .clone()
        })
    }

    /// The `port` label of a socket, when port labels are on: its service port (the one it
    /// listens on or connects to), up to [`MAX_PORT_LABELS`] distinct ports.
    fn port_label(&mut self, port: u16) -> Option<String> {
        let labelled = self.port_labels.as_mut()?;
        if labelled.contains(&port) || labelled.len() < MAX_PORT_LABELS {
            labelled.insert(port);
            Some(port.to_string())
        } else {
            Some("other".to_owned())
        }
    }
}

/// Sets a gauge per state: states with sockets, and those that had some before (back to 0).
fn set_by_state(family: &Family<StateLabels, Gauge>, counts: &[u64; TcpState::COUNT]) {
    for state in TcpState::ALL {
        let labels = StateLabels {
            state: state.name(),
        };
        let count = i64::try_from(counts[state as usize]).unwrap_or(i64::MAX);
        if count > 0 || family.get(&labels).is_some() {
            family.get_or_create(&labels).set(count);
        }
    }
}

/// Transitions of every traced socket are counted (the owner filter selects log lines only).
impl Sink for Metrics {
    fn transition(&mut self, t: &Transition, info: TransitionInfo) {
        let spent = t
            .prev_state_ns
            .filter(|_| t.old != t.new)
            .map(|ns| ns as f64 / 1e9);
        if self.port_labels.is_none() {
            // Without port labels a series is fixed by the states: its handle is kept, so the
            // hot path is an index and an atomic add, not a labelled lookup.
            self.transition_counter(t.old, t.new).inc();
            if let Some(seconds) = spent {
                self.duration_histogram(t.old).observe(seconds);
            }
            return;
        }
        let port = self.port_label(info.service_port);
        self.transitions
            .get_or_create(&TransitionLabels {
                old: t.old.name(),
                new: t.new.name(),
                port: port.clone(),
            })
            .inc();
        if let Some(seconds) = spent {
            self.durations
                .get_or_create(&DurationLabels {
                    state: t.old.name(),
                    port,
                })
                .observe(seconds);
        }
    }

    fn stuck(&mut self, report: &StuckReport) {
        self.stuck_episodes
            .get_or_create(&StateLabels {
                state: report.state.name(),
            })
            .inc();
    }

    fn unstuck(&mut self, _report: &UnstuckReport) {}
}

/// The Prometheus text exposition of the registry.
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
