//! tcpstate: traces TCP state transitions with eBPF. Data flows one way:
//! kernel programs ([`loader`]) → ring buffer → [`events`] (decode) → [`tracker`] (the socket
//! [`table`], [`stats`], stuck detection ([`detect`]), reconciliation against [`kernel_view`])
//! → [`output`] (text, JSON; owners described by [`owners`]), [`summary`] and [`metrics`]
//! (Prometheus, served by [`metrics_server`]).
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod detect;
pub mod events;
pub mod filter;
pub mod kernel_view;
pub mod loader;
pub mod metrics;
pub mod metrics_server;
pub mod output;
pub mod owners;
pub mod stats;
pub mod summary;
pub mod table;
pub mod tracker;
