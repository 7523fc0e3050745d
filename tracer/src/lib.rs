//! tcpstate: traces TCP state transitions with eBPF. The data moves one way, through four stages,
//! each a folder:
//!
//! ```text
//! kernel programs ─► source/ ─────────► enrich/ ──────────► core/ ─────────────► export/
//! (tracer-ebpf)      load, attach,      owners, the        socket table,        log lines, summaries,
//!                    ring buffer,       kernel's socket    stuck, TIME-WAIT,    Prometheus
//!                    decode, health     list               reconcile, stats
//! ```
//!
//! [`daemon`] builds the stages from the settings [`cli`] makes of the flags, and runs the
//! schedule. Each stage imports only from the stages before it.
pub mod cli;
mod core;
pub mod daemon;
pub mod enrich;
mod export;
#[cfg(test)]
mod fuzz;
mod owner;
mod source;
mod units;

pub use source::events::{Endpoints, Family};
