//! Prometheus metrics (prometheus-client), kept current from the tracker's reports and refreshed
//! from its table each second. Labels are states and transition pairs, never sockets, addresses
//! or processes; a `port` label is opt-in and capped.
use std::{collections::HashSet, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracer_common::TcpState;

use crate::{
    events::{Endpoints, Transition},
    tracker::{Reconciliation, Sink, StuckReport, Tracker, UnstuckReport},
};

/// Distinct `port` label values at most; further ports are counted under `other`.
pub const MAX_PORT_LABELS: usize = 64;

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

/// Totals the daemon reads from the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelTotals {
    pub lost_events: u64,
    pub skipped_events: u64,
}

pub struct Metrics {
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
    evictions: Total,
    /// `Some` with `--metrics-port-label`: the service ports labelled so far.
    port_labels: Option<HashSet<u16>>,
    /// Ports something listens on: a socket's service port is its local port when listened on,
    /// else its remote port.
    listening: HashSet<(u32, u16)>,
    /// Handles of the unlabelled-by-port series, by state numbers.
    transition_handles: Vec<Option<Counter>>,
    duration_handles: Vec<Option<Histogram>>,
}

/// Kernel state numbers (1..=13), indexable by `TcpState as usize`.
const STATES: usize = 14;

impl Metrics {
    pub fn new(port_label: bool) -> Self {
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
            evictions,
            port_labels: port_label.then(HashSet::new),
            listening: HashSet::new(),
            transition_handles: vec![None; STATES * STATES],
            duration_handles: vec![None; STATES],
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Brings the gauges and totals up to date with the tracker and the kernel.
    pub fn refresh(&mut self, tracker: &Tracker, kernel: KernelTotals) {
        let table = tracker.table();
        for state in TcpState::ALL {
            let labels = StateLabels {
                state: state.name(),
            };
            let count = i64::try_from(table.count(state)).unwrap_or(i64::MAX);
            if count > 0 || self.sockets.get(&labels).is_some() {
                self.sockets.get_or_create(&labels).set(count);
            }
        }
        let mut stuck = [0i64; 14];
        for key in tracker.stuck_keys() {
            if let Some(entry) = table.get(key) {
                stuck[entry.state as usize] += 1;
            }
        }
        for state in TcpState::ALL {
            let labels = StateLabels {
                state: state.name(),
            };
            let count = stuck[state as usize];
            if count > 0 || self.stuck.get(&labels).is_some() {
                self.stuck.get_or_create(&labels).set(count);
            }
        }
        let fixes = tracker.reconciliation();
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
        self.lost.set(kernel.lost_events);
        self.skipped.set(kernel.skipped_events);
        self.evictions.set(table.evictions());
        if self.port_labels.is_some() {
            self.listening = table.listening_ports().collect();
        }
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
    fn port_label(&mut self, e: &Endpoints) -> Option<String> {
        let labelled = self.port_labels.as_mut()?;
        let port = if self.listening.contains(&(e.netns, e.local_port)) {
            e.local_port
        } else {
            e.remote_port
        };
        if labelled.contains(&port) || labelled.len() < MAX_PORT_LABELS {
            labelled.insert(port);
            Some(port.to_string())
        } else {
            Some("other".to_owned())
        }
    }
}

impl Sink for Metrics {
    fn transition(&mut self, t: &Transition) {
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
        match (t.old, t.new) {
            (_, TcpState::Listen) => {
                self.listening
                    .insert((t.endpoints.netns, t.endpoints.local_port));
            }
            (TcpState::Listen, TcpState::Close) => {
                self.listening
                    .remove(&(t.endpoints.netns, t.endpoints.local_port));
            }
            _ => {}
        }
        let port = self.port_label(&t.endpoints);
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

/// Metrics only when asked for (`--metrics-addr`): nothing to keep otherwise.
impl<S: Sink> Sink for Option<S> {
    fn transition(&mut self, t: &Transition) {
        if let Some(sink) = self {
            sink.transition(t);
        }
    }

    fn stuck(&mut self, report: &StuckReport) {
        if let Some(sink) = self {
            sink.stuck(report);
        }
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        if let Some(sink) = self {
            sink.unstuck(report);
        }
    }
}

/// Sends every report to two sinks: the log and the metrics.
pub struct Both<'a, A, B>(pub &'a mut A, pub &'a mut B);

impl<A: Sink, B: Sink> Sink for Both<'_, A, B> {
    fn transition(&mut self, t: &Transition) {
        self.0.transition(t);
        self.1.transition(t);
    }

    fn stuck(&mut self, report: &StuckReport) {
        self.0.stuck(report);
        self.1.stuck(report);
    }

    fn unstuck(&mut self, report: &UnstuckReport) {
        self.0.unstuck(report);
        self.1.unstuck(report);
    }
}

/// The Prometheus text exposition of the registry.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
