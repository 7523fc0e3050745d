//! Runs cargo and the built tracer.
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its name when it fails.
pub fn checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its trimmed standard output.
pub fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn build_release() -> Result<()> {
    checked(cargo().args(["build", "--release", "--package", "tracer", "--bins"]))
}

/// Replaces xtask with the tracer, so signals (Ctrl-C, SIGTERM) reach the tracer directly.
pub fn exec_tracer(args: &[String]) -> Result<()> {
    let binary = workspace_root().join("target/release/tracer");
    let err = Command::new(&binary).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}

/// Formatting, lints of the host crates and of the eBPF crate (for its own target), then every
/// test. The real-kernel tests load eBPF programs: the caller checked it runs as root.
pub fn test_all() -> Result<()> {
    checked(cargo().args(["fmt", "--all", "--check"]))?;
    checked(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    checked(
        cargo()
            .args(["clippy", "--release", "--package", "tracer-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;
    checked(cargo().args(["test", "--release", "--no-fail-fast"]))
}
