//! Stage 4, export: every output of the core's reports. The log writer ([`log`]: text for people,
//! JSON lines for pipelines) writes the reports about single sockets and the core's periodic
//! summary; the Prometheus [`metrics`] (served by [`endpoint`]) read the same snapshot of the core
//! and of the kernel's aggregates (the port-pressure metrics: [`port_metrics`]).
pub(crate) mod endpoint;
pub(crate) mod log;
pub(crate) mod metrics;
mod port_metrics;
pub(crate) mod wall_clock;
