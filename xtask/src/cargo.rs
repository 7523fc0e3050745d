//! Runs cargo and the built tracer.
use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn build_release() -> Result<()> {
    cargo_step(
        "building the daemon and its eBPF programs (release; a few minutes the first time)",
        &["build", "--release", "--package", "tracer", "--bins"],
    )
}

/// Runs cargo as one step of a task: one line saying what it does, then only what needs reading
/// (warnings, errors). `--quiet` would be simpler but also drops the warnings build scripts relay
/// (the eBPF build's, through aya-build), so cargo's progress lines are filtered out instead.
pub fn cargo_step(what: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {what}");
    let mut cmd = cargo();
    // Piped, cargo would drop the colours of its diagnostics.
    if std::io::stderr().is_terminal() {
        cmd.args(["--color", "always"]);
    }
    let mut child = cmd
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cargo")?;
    if let Some(pipe) = child.stderr.take() {
        let mut stderr = std::io::stderr().lock();
        for line in BufReader::new(pipe).lines() {
            let line = line.context("reading cargo's output")?;
            if !is_progress(&line) {
                let _ = writeln!(stderr, "{line}");
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Cargo's status lines right-align one capitalised verb in 12 columns ("   Compiling foo v1");
/// diagnostics never look like that.
fn is_progress(line: &str) -> bool {
    let plain = without_ansi(line);
    let Some((head, rest)) = plain.split_at_checked(12) else {
        return false;
    };
    let verb = head.trim_start();
    rest.starts_with(' ')
        && verb.starts_with(|c: char| c.is_ascii_uppercase())
        && verb.chars().all(|c| c.is_ascii_alphabetic())
}

/// The text of a line without its colour escapes (`ESC [ ... letter`).
fn without_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
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
        "--features",
        KERNEL_TESTS,
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
    print_stack_chains()?;
    checked(cargo().args([
        "test",
        "--release",
        "--no-fail-fast",
        "--features",
        KERNEL_TESTS,
    ]))
}

/// The feature that builds the tests needing root and the running kernel (tracer/Cargo.toml):
/// plain `cargo test` leaves them out, the suite always runs them.
pub const KERNEL_TESTS: &str = "tracer/kernel-tests";

/// Each program's deepest chain of stack frames in the built object, as the verifier sums them
/// (a unit test fails past the budget; this shows the figures in every run's log).
fn print_stack_chains() -> Result<()> {
    let build = workspace_root().join("target/release/build");
    let object = std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .flatten()
        .map(|entry| entry.path().join("out/tracer"))
        .filter(|path| path.is_file())
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .context("no built eBPF object under target/release/build")?;
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let chains = xtask::bpf_stack::analyze(&bytes)?;
    eprintln!("xtask: the programs' deepest stack chains (rounded to 32 bytes, budget 384):");
    eprint!("{}", xtask::bpf_stack::report(&chains));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_progress;

    #[test]
    fn progress_lines_are_told_from_diagnostics() {
        for line in [
            "   Compiling tracer v0.1.0 (/work/tracer)",
            "    Finished `release` profile [optimized] target(s) in 5m 51s",
            "\x1b[1m\x1b[92m   Compiling\x1b[0m libc v0.2.191",
            "  Downloaded clap v4.6.9",
            "    Blocking waiting for file lock on build directory",
        ] {
            assert!(is_progress(line), "{line}");
        }
        for line in [
            "warning: tracer@0.1.0: unused variable: `x`",
            "warning: unused variable: `x`",
            " --> src/main.rs:1:16",
            "  |",
            "1 | fn main(){ let x = 1; }",
            "  = note: `#[warn(unused_variables)]` on by default",
            "error: could not compile `tracer` (bin \"tracer\") due to 1 previous error",
            "\x1b[1m\x1b[33mwarning\x1b[0m: unused import",
            "",
        ] {
            assert!(!is_progress(line), "{line}");
        }
    }
}
