//! The metrics of ephemeral-port pressure, kept bounded: the share of its range the most used
//! destination uses, one gauge per destination only for those past `--port-pressure` (at most
//! `core::ports::MAX_GAUGES`: addresses are labels there, and nowhere else), and the reports.
use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use crate::core::report::PressureView;

/// Encodes the figures of the last listing.
pub(super) fn encode(
    encoder: &mut DescriptorEncoder,
    view: &PressureView,
) -> Result<(), std::fmt::Error> {
    let ratio = |in_use: u32, available: u32| f64::from(in_use) / f64::from(available.max(1));
    let worst = view
        .most_used
        .first()
        .map_or(0.0, |u| ratio(u.in_use, u.available));
    encoder
        .encode_descriptor(
            "tcpstate_ephemeral_ports_max_ratio",
            "The largest share of its ephemeral port range one destination (netns, local address, remote address and port) uses, TIME-WAIT included, at the last reconciliation",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&worst)?;
    let mut metric = encoder.encode_descriptor(
        "tcpstate_ephemeral_ports_ratio",
        "The share of its ephemeral port range a destination past --port-pressure uses (at most 10 destinations, the most used)",
        None,
        MetricType::Gauge,
    )?;
    for u in view.most_used.iter().take(view.pressed_now) {
        let d = &u.destination;
        let labels = [
            ("netns", d.netns.to_string()),
            ("saddr", d.local.to_string()),
            ("daddr", d.remote.to_string()),
            ("dport", d.remote_port.to_string()),
        ];
        metric
            .encode_family(&labels)?
            .encode_gauge(&ratio(u.in_use, u.available))?;
    }
    encoder
        .encode_descriptor(
            "tcpstate_port_pressure_reports",
            "Times a destination came to use --port-pressure percent of its ephemeral ports",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&view.reports, None)
}
