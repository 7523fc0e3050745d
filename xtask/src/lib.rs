//! Shared by the xtask binary and the tracer's integration tests: the loopback workload generator.
pub mod workload;
