//! Prometheus metrics (prometheus-client). Every figure follows a total the core or the kernel
//! keeps, refreshed each second and encoded as it stands at each scrape: counts and histograms
//! come from the kernel's aggregates (the daemon does no work per transition for them). Labels
//! are states and transition pairs, never sockets or processes (addresses: only the few pressed
//! destinations of `port_metrics`); a `port` label is opt-in and capped.
use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{MetricType, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracer_common::{
    End, TcpState,
    aggregate::{DURATION_BUCKETS, OCTAVES, octave_of_bucket},
    ends::errno,
};

use crate::{
    core::{
        ends,
        report::{PressureView, Reconciliation, Snapshot},
    },
    enrich::listen_drops::ListenDrops,
    source::{
        health::{KernelHealth, Seen},
        kernel_maps::{Aggregates, ListenerWaits, StateDurations},
    },
};

/// Distinct `port` label values at most; further ports are counted under `other`.
const MAX_PORT_LABELS: usize = 64;

/// Histogram buckets: every other power of two of microseconds (4 µs … 2^40 µs), so that each is
/// a whole number of the kernel's buckets and the counts are exact.
const BUCKET_OCTAVES: std::ops::RangeInclusive<usize> = 1..=(OCTAVES - 1);

const STATES: usize = TcpState::COUNT;

/// One histogram: its labels, counts by octave (`tracer_common::aggregate::octave`).
#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    labels: Vec<(&'static str, String)>,
    octaves: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

/// A transition counter: (old, new, port label, count).
type TransitionCount = (&'static str, &'static str, Option<String>, u64);

/// The figures as of the last refresh.
#[derive(Debug, Default)]
struct Latest {
    sockets: [u64; STATES],
    stuck: [u64; STATES],
    /// States that had sockets (or stuck sockets) once: their gauges stay, at 0.
    had_sockets: [bool; STATES],
    had_stuck: [bool; STATES],
    episodes: [u64; STATES],
    transitions: Vec<TransitionCount>,
    durations: Vec<Series>,
    /// Accept waits by listener port.
    accept_waits: Vec<Series>,
    fixes: Reconciliation,
    stalled_listeners: u64,
    listener_stalls: u64,
    half_open_listeners: u64,
    half_open_reports: u64,
    listen_drops: ListenDrops,
    health: KernelHealth,
    seen: Seen,
    ends: Vec<(End, u64)>,
    connect_failures: Vec<(Cow<'static, str>, u64)>,
    /// Failed binds by errno (both errors a bind reports for want of a port or an address, from
    /// zero).
    bind_failures: Vec<(Cow<'static, str>, u64)>,
    /// Connect times without and with a SYN retransmitted.
    connects: Vec<Series>,
    ports: PressureView,
}

pub(crate) struct Metrics {
    registry: Arc<Registry>,
    latest: Arc<Mutex<Latest>>,
    /// `Some` with `--metrics-port-label`: the ports labelled so far, in the order seen.
    port_labels: Option<Vec<u16>>,
}

impl Metrics {
    pub(crate) fn new(port_label: bool) -> Self {
        let mut registry = Registry::default();
        let latest = Arc::new(Mutex::new(Latest::default()));
        registry.register_collector(Box::new(Exposition(latest.clone())));
        // A gauge set to 1 rather than an OpenMetrics `info`, which the classic text format
        // (promtool, older scrapers) does not know.
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("tcpstate_build_info", "The tracer's version", build_info);
        Self {
            registry: Arc::new(registry),
            latest,
            port_labels: port_label.then(Vec::new),
        }
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Brings every figure up to date: the core's snapshot and totals, the kernel's aggregates
    /// and health.
    pub(crate) fn refresh(
        &mut self,
        snapshot: &Snapshot,
        transitions: &[u64],
        durations: &[StateDurations],
        kernel: &Aggregates,
        health: &KernelHealth,
        seen: &Seen,
    ) {
        let port_transitions = self.labelled_port_transitions(kernel);
        let port_durations = self.labelled_port_durations(kernel);
        let Ok(mut latest) = self.latest.lock() else {
            return;
        };
        latest.sockets = snapshot.sockets;
        latest.stuck = snapshot.stuck;
        for state in 0..STATES {
            latest.had_sockets[state] |= snapshot.sockets[state] > 0;
            latest.had_stuck[state] |= snapshot.stuck[state] > 0;
        }
        latest.episodes = snapshot.episodes;
        latest.fixes = snapshot.reconciliation;
        latest.stalled_listeners = snapshot.stalled_listeners;
        latest.listener_stalls = snapshot.listener_stalls;
        latest.half_open_listeners = snapshot.half_open_listeners;
        latest.half_open_reports = snapshot.half_open_reports;
        latest.listen_drops = snapshot.listen_drops;
        latest.health = *health;
        latest.seen = *seen;
        latest.ports = snapshot.port_pressure.clone();
        latest.ends = ends::by_end(&kernel.ends);
        latest.connect_failures = ends::connect_failures(&kernel.ends);
        latest.bind_failures = bind_failures(&snapshot.bind_failures.total);
        latest.connects = kernel
            .connects
            .iter()
            .zip(["false", "true"])
            .map(|(d, retransmitted)| {
                by_octave(vec![("syn_retransmitted", retransmitted.to_owned())], d)
            })
            .collect();
        latest.accept_waits = accept_waits_by_port(&kernel.accept_waits);
        latest.transitions = match port_transitions {
            Some(labelled) => labelled,
            None => TcpState::ALL
                .into_iter()
                .flat_map(|old| TcpState::ALL.into_iter().map(move |new| (old, new)))
                .filter_map(|(old, new)| {
                    let n = transitions[old as usize * STATES + new as usize];
                    (n > 0).then(|| (old.name(), new.name(), None, n))
                })
                .collect(),
        };
        latest.durations = match port_durations {
            Some(labelled) => labelled,
            None => TcpState::ALL
                .into_iter()
                .filter(|state| durations[*state as usize].count > 0)
                .map(|state| {
                    by_octave(
                        vec![("state", state.name().to_owned())],
                        &durations[state as usize],
                    )
                })
                .collect(),
        };
    }

    /// The `port` label of a service port: itself, for at most [`MAX_PORT_LABELS`] ports (port
    /// 0 and further ports are `other`).
    fn port_label(&mut self, port: u16) -> String {
        let Some(labelled) = self.port_labels.as_mut() else {
            return String::new();
        };
        if port != 0 && (labelled.contains(&port) || labelled.len() < MAX_PORT_LABELS) {
            if !labelled.contains(&port) {
                labelled.push(port);
            }
            port.to_string()
        } else {
            "other".to_owned()
        }
    }

    fn labelled_port_transitions(&mut self, kernel: &Aggregates) -> Option<Vec<TransitionCount>> {
        self.port_labels.as_ref()?;
        let mut folded: std::collections::BTreeMap<(u8, u8, String), u64> = Default::default();
        for &(port, old, new, n) in &kernel.port_transitions {
            let label = self.port_label(port);
            *folded.entry((old, new, label)).or_default() += n;
        }
        Some(
            folded
                .into_iter()
                .filter_map(|((old, new, label), n)| {
                    Some((
                        TcpState::from_u8(old)?.name(),
                        TcpState::from_u8(new)?.name(),
                        Some(label),
                        n,
                    ))
                })
                .collect(),
        )
    }

    fn labelled_port_durations(&mut self, kernel: &Aggregates) -> Option<Vec<Series>> {
        self.port_labels.as_ref()?;
        let mut folded: std::collections::BTreeMap<(u8, String), Series> = Default::default();
        for d in &kernel.port_durations {
            let label = self.port_label(d.port);
            let Some(state) = TcpState::from_u8(d.state) else {
                continue;
            };
            let series = folded.entry((d.state, label.clone())).or_insert(Series {
                labels: vec![("state", state.name().to_owned()), ("port", label)],
                octaves: vec![0; OCTAVES],
                ..Series::default()
            });
            for (total, n) in series.octaves.iter_mut().zip(d.buckets) {
                *total += n;
            }
            series.count += d.count;
            series.sum_seconds += d.sum_ns as f64 / 1e9;
        }
        Some(folded.into_values().collect())
    }
}

/// Accept waits by listener port, summed over network namespaces. The kernel keeps a bounded
/// number of listeners apart and counts the others under port 0, labelled `other`.
/// EADDRINUSE and EADDRNOTAVAIL from zero, then any other error seen.
fn bind_failures(counts: &[(u8, u64)]) -> Vec<(Cow<'static, str>, u64)> {
    let count = |errno: u8| counts.iter().find(|(e, _)| *e == errno).map_or(0, |c| c.1);
    let known = [errno::EADDRINUSE, errno::EADDRNOTAVAIL];
    known
        .iter()
        .map(|e| (*e, count(*e)))
        .chain(counts.iter().copied().filter(|(e, _)| !known.contains(e)))
        .map(|(e, n)| (ends::error_name(e), n))
        .collect()
}

fn accept_waits_by_port(listeners: &[ListenerWaits]) -> Vec<Series> {
    let mut by_port: std::collections::BTreeMap<u16, Series> = Default::default();
    for l in listeners {
        let label = match l.port {
            0 => "other".to_owned(),
            port => port.to_string(),
        };
        let series = by_port.entry(l.port).or_insert_with(|| Series {
            labels: vec![("port", label)],
            octaves: vec![0; OCTAVES],
            ..Series::default()
        });
        let add = by_octave(Vec::new(), &l.waits);
        for (total, n) in series.octaves.iter_mut().zip(&add.octaves) {
            *total += n;
        }
        series.count += add.count;
        series.sum_seconds += add.sum_seconds;
    }
    by_port.into_values().collect()
}

/// Durations folded into octaves, with their labels.
fn by_octave(labels: Vec<(&'static str, String)>, d: &StateDurations) -> Series {
    let mut octaves = vec![0; OCTAVES];
    for (bucket, n) in d.buckets.iter().enumerate().take(DURATION_BUCKETS) {
        octaves[octave_of_bucket(bucket).min(OCTAVES - 1)] += n;
    }
    Series {
        labels,
        octaves,
        count: d.count,
        sum_seconds: d.sum_ns as f64 / 1e9,
    }
}

/// Prometheus histogram buckets of a series: every other octave's upper bound in seconds, then
/// +Inf, each with the durations it adds.
fn histogram_buckets(series: &Series) -> Vec<(f64, u64)> {
    let mut buckets = Vec::new();
    let mut pending = 0;
    for octave in 0..OCTAVES {
        pending += series.octaves.get(octave).copied().unwrap_or(0);
        if BUCKET_OCTAVES.contains(&octave) && octave % 2 == 1 {
            // Octave `o` holds durations below 2^(o+1) µs.
            let bound = (1u64 << (octave + 1)) as f64 / 1e6;
            buckets.push((bound, std::mem::take(&mut pending)));
        }
    }
    buckets.push((f64::INFINITY, pending));
    buckets
}

/// A counter family with one label.
fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        metric
            .encode_family(&[(label, value)])?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

fn encode_histogram(
    metric: &mut prometheus_client::encoding::MetricEncoder,
    series: &Series,
) -> Result<(), std::fmt::Error> {
    metric
        .encode_family(&series.labels)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            series.sum_seconds,
            series.count,
            &histogram_buckets(series),
            None,
        )
}

/// Encodes [`Latest`] at each scrape.
#[derive(Debug)]
struct Exposition(Arc<Mutex<Latest>>);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(latest) = self.0.lock() else {
            return Ok(());
        };
        let mut by_state =
            |name: &str, help: &str, counts: &[u64; STATES], had: &[bool; STATES]| {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for state in TcpState::ALL.into_iter().filter(|s| had[*s as usize]) {
                    let count = i64::try_from(counts[state as usize]).unwrap_or(i64::MAX);
                    metric
                        .encode_family(&[("state", state.name())])?
                        .encode_gauge(&count)?;
                }
                Ok::<_, std::fmt::Error>(())
            };
        by_state(
            "tcpstate_sockets",
            "TCP sockets by current state",
            &latest.sockets,
            &latest.had_sockets,
        )?;
        by_state(
            "tcpstate_stuck_sockets",
            "Sockets in a state longer than its threshold",
            &latest.stuck,
            &latest.had_stuck,
        )?;
        let mut metric = encoder.encode_descriptor(
            "tcpstate_transitions",
            "TCP state transitions",
            None,
            MetricType::Counter,
        )?;
        for (old, new, port, n) in &latest.transitions {
            let mut labels = vec![("old", old.to_string()), ("new", new.to_string())];
            labels.extend(port.clone().map(|p| ("port", p)));
            metric
                .encode_family(&labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(n, None)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tcpstate_state_duration_seconds",
            "Time sockets spent in a state, observed when they leave it",
            None,
            MetricType::Histogram,
        )?;
        for series in &latest.durations {
            encode_histogram(&mut metric, series)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tcpstate_accept_wait_seconds",
            "Time connections waited in their listener's accept queue, from the end of the handshake to accept(), by listener port",
            None,
            MetricType::Histogram,
        )?;
        for series in &latest.accept_waits {
            encode_histogram(&mut metric, series)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tcpstate_connect_duration_seconds",
            "Time from connect() to an established connection, with a SYN retransmitted or not",
            None,
            MetricType::Histogram,
        )?;
        for series in &latest.connects {
            encode_histogram(&mut metric, series)?;
        }
        labelled_counters(
            &mut encoder,
            "tcpstate_connections_ended",
            "Connections ended, by how: fin, reset_received, reset_sent, refused, timeout, abandoned, error",
            "end",
            latest.ends.iter().map(|(end, n)| (end.name(), *n)),
        )?;
        labelled_counters(
            &mut encoder,
            "tcpstate_connect_failures",
            "Connects that failed, by reason: refused, timeout, reset_received, reset_sent, abandoned, or the error's name",
            "reason",
            latest
                .connect_failures
                .iter()
                .map(|(r, n)| (r.as_ref(), *n)),
        )?;
        labelled_counters(
            &mut encoder,
            "tcpstate_bind_failures",
            "TCP sockets' bind() calls that failed for want of the address or port, by error (with --bind-failures)",
            "reason",
            latest.bind_failures.iter().map(|(r, n)| (r.as_ref(), *n)),
        )?;
        for (name, help, n) in [
            (
                "tcpstate_stalled_listeners",
                "Listeners whose accept queue has not drained for their threshold (their process does not accept)",
                latest.stalled_listeners,
            ),
            (
                "tcpstate_half_open_listeners",
                "Listeners with a half-open connection older than their threshold (a SYN flood, ACKs lost on the way back)",
                latest.half_open_listeners,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&i64::try_from(n).unwrap_or(i64::MAX))?;
        }
        labelled_counters(
            &mut encoder,
            "tcpstate_stuck_episodes",
            "Times a socket crossed its state's stuck threshold",
            "state",
            TcpState::ALL
                .into_iter()
                .map(|state| (state.name(), latest.episodes[state as usize]))
                .filter(|(_, n)| *n > 0),
        )?;
        let fixes = latest.fixes;
        labelled_counters(
            &mut encoder,
            "tcpstate_reconciliation_fixes",
            "Differences between the kernel's records and its socket list, fixed",
            "kind",
            [
                ("added", fixes.added),
                ("removed", fixes.removed),
                ("corrected", fixes.corrected),
            ],
        )?;
        let h = latest.health;
        for (name, help, n) in [
            (
                "tcpstate_lost_events",
                "Events the kernel could not deliver (ring buffer full)",
                h.lost(),
            ),
            (
                "tcpstate_skipped_events",
                "Tracer program runs the kernel skipped (it was already running on the CPU)",
                h.skipped_all,
            ),
            (
                "tcpstate_failed_reads",
                "Kernel program runs that could not read a kernel structure and gave up",
                h.failed_reads,
            ),
            (
                "tcpstate_unrecorded_sockets",
                "Sockets whose kernel record could not be stored (the record maps are full)",
                h.unrecorded_sockets,
            ),
            (
                "tcpstate_unwatched_sockets",
                "Sockets in a watched state that could not be indexed (they cannot be reported stuck)",
                h.unwatched_sockets,
            ),
            (
                "tcpstate_unlabelled_counts",
                "Transitions and durations counted without a port label (the port-labelled maps were full, even for `other`)",
                h.unlabelled,
            ),
            (
                "tcpstate_listen_overflows",
                "Connections a full accept queue turned away (the kernel's ListenOverflows, summed over namespaces)",
                latest.listen_drops.overflows,
            ),
            (
                "tcpstate_listen_drops",
                "SYNs and ACKs listeners dropped, overflows included (the kernel's ListenDrops, summed over namespaces)",
                latest.listen_drops.drops,
            ),
            (
                "tcpstate_syn_retransmits",
                "SYNs connecting sockets sent again (each adds a second or more to a connect)",
                latest.seen.syn_retransmits,
            ),
            (
                "tcpstate_synack_retransmits",
                "SYN-ACKs listeners sent again: handshakes their clients did not complete in time",
                latest.seen.synack_retransmits,
            ),
            (
                "tcpstate_listener_stalls",
                "Times a listener's accept queue went undrained past its threshold",
                latest.listener_stalls,
            ),
            (
                "tcpstate_listener_half_open_reports",
                "Times a listener had a half-open connection older than its threshold",
                latest.half_open_reports,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        super::port_metrics::encode(&mut encoder, &latest.ports)
    }
}

/// The Prometheus text exposition of the registry.
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use tracer_common::aggregate::duration_bucket;

    use super::*;
    use crate::core::report::ErrorCounts;

    #[test]
    fn histogram_buckets_are_exact_and_cumulate_to_the_count() {
        let mut d = StateDurations::default();
        for ns in [3_000u64, 5_000, 900_000, 1_000_000_000] {
            d.buckets[duration_bucket(ns)] += 1;
            d.count += 1;
            d.sum_ns += ns;
        }
        let series = by_octave(vec![("state", "CLOSE_WAIT".to_owned())], &d);
        let buckets = histogram_buckets(&series);
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(buckets[0], (4e-6, 1), "3 µs below 4 µs");
        let below = |bound: f64| -> u64 {
            buckets
                .iter()
                .filter(|(b, _)| *b <= bound)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(below(16e-6), 2);
        assert_eq!(below(1.048576), 4, "a second is below 2^20 µs");
        assert_eq!(below(0.262144), 3);
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn exposition_follows_the_refresh() {
        let mut metrics = Metrics::new(false);
        let mut kernel = Aggregates::default();
        kernel.transitions
            [TcpState::Established as usize * STATES + TcpState::CloseWait as usize] = 3;
        let mut snapshot = Snapshot {
            sockets: [0; STATES],
            tracked: 3,
            stuck: [0; STATES],
            episodes: [0; STATES],
            stalled_listeners: 1,
            listener_stalls: 2,
            half_open_listeners: 1,
            half_open_reports: 3,
            synack_retransmits_by_listener: Vec::new(),
            listen_drops: Default::default(),
            reconciliation: Reconciliation::default(),
            port_pressure: Default::default(),
            bind_failures: ErrorCounts {
                total: vec![(98, 2)],
                interval: vec![(98, 1)],
            },
        };
        snapshot.sockets[TcpState::CloseWait as usize] = 3;
        let durations = vec![StateDurations::default(); STATES];
        let exposition = |metrics: &mut Metrics, snapshot: &Snapshot| {
            metrics.refresh(
                snapshot,
                &kernel.transitions,
                &durations,
                &kernel,
                &KernelHealth::default(),
                &Seen::default(),
            );
            render(&metrics.registry())
        };
        let text = exposition(&mut metrics, &snapshot);
        assert!(
            text.contains("tcpstate_sockets{state=\"CLOSE_WAIT\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_transitions_total{old=\"ESTABLISHED\",new=\"CLOSE_WAIT\"} 3"),
            "{text}"
        );
        assert!(text.contains("tcpstate_lost_events_total 0"), "{text}");
        assert!(
            text.contains("tcpstate_connections_ended_total{end=\"refused\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_connect_failures_total{reason=\"timeout\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_bind_failures_total{reason=\"EADDRINUSE\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_bind_failures_total{reason=\"EADDRNOTAVAIL\"} 0"),
            "{text}"
        );
        assert!(text.contains("tcpstate_syn_retransmits_total 0"), "{text}");
        assert!(text.contains("tcpstate_stalled_listeners 1"), "{text}");
        assert!(text.contains("tcpstate_listener_stalls_total 2"), "{text}");
        assert!(text.contains("tcpstate_half_open_listeners 1"), "{text}");
        assert!(
            text.contains("tcpstate_listener_half_open_reports_total 3"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_connect_duration_seconds_count{syn_retransmitted=\"true\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_ephemeral_ports_max_ratio 0.0"),
            "{text}"
        );
        snapshot.port_pressure = crate::core::ports::tests::pressed(12);
        let text = exposition(&mut metrics, &snapshot);
        assert!(
            text.contains("tcpstate_ephemeral_ports_max_ratio 0.99"),
            "{text}"
        );
        let per_destination = text
            .lines()
            .filter(|l| l.starts_with("tcpstate_ephemeral_ports_ratio{"))
            .count();
        assert_eq!(per_destination, 10, "at most 10: {text}");
        assert!(
            text.contains(
                "tcpstate_ephemeral_ports_ratio{netns=\"4026531840\",saddr=\"10.0.0.1\",daddr=\"10.1.0.0\",dport=\"80\"} 0.99"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_port_pressure_reports_total 12"),
            "{text}"
        );
        snapshot.sockets[TcpState::CloseWait as usize] = 0;
        let text = exposition(&mut metrics, &snapshot);
        assert!(
            text.contains("tcpstate_sockets{state=\"CLOSE_WAIT\"} 0"),
            "back to 0: {text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn port_labels_are_capped() {
        let mut metrics = Metrics::new(true);
        let labels: Vec<String> = (1..=70).map(|port| metrics.port_label(port)).collect();
        assert_eq!(labels[0], "1");
        assert_eq!(labels[63], "64");
        assert_eq!(labels[64], "other");
        assert_eq!(
            metrics.port_label(5),
            "5",
            "a labelled port keeps its label"
        );
        assert_eq!(metrics.port_label(0), "other");
    }
}
