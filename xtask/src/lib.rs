//! Shared by the xtask binary and the tracer's tests: the loopback workload generator, network
//! namespaces of one's own, the static check of the BPF programs' stack, and the runner of
//! commands in VMs booting other kernels.
pub mod bpf_stack;
pub mod netns;
pub mod vm;
pub mod workload;
