//! Shared by the xtask binary and the tracer's tests: the loopback workload generator, network
//! namespaces of one's own, the static check of the BPF programs' stack, and the runner of
//! commands in VMs booting other kernels.
pub mod bpf_stack;
pub mod netns;
pub mod readiness;
pub mod vm;
pub mod workload;

use std::{env, path::PathBuf};

use anyhow::{Context as _, Result};

/// Where cargo keeps what it fetched; xtask keeps its own downloads beside (LLVM, kernels), so a
/// fresh checkout of the project finds them without the network.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}
