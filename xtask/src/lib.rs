//! Shared by the xtask binary and the tracer's integration tests: the loopback workload generator,
//! and network namespaces of one's own.
pub mod netns;
pub mod workload;
