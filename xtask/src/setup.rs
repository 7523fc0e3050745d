//! Provides the eBPF toolchain on a fresh machine: the `rust-src` component (the BPF target's
//! `core` is built from source) and `bpf-linker`, linked against the LLVM library that ships with
//! the Rust toolchain itself. Idempotent: when both are present this takes well under a second.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cargo::{checked, output_of};

pub fn ensure_toolchain() -> Result<()> {
    let sysroot = PathBuf::from(output_of(
        Command::new("rustc").args(["--print", "sysroot"]),
    )?);
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the rust-src component (the BPF target builds `core` from source)"
    );
    checked(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return Ok(());
    }
    let (library, major) = rust_llvm_library(sysroot)?;
    // bpf-linker records this folder as its rpath, so it has to outlive the install.
    let prefix = xtask::cargo_home()?.join("tcpstate-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = library
        .file_name()
        .context("LLVM library has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    eprintln!(
        "xtask: installing bpf-linker against the toolchain's LLVM {major} ({}), about a minute",
        library.display()
    );
    checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--quiet",
                "--version",
                "^0.13",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    match Command::new("bpf-linker").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "bpf-linker was installed but does not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => {
            bail!("bpf-linker was installed but is not on PATH ({err}); add ~/.cargo/bin to PATH")
        }
    }
}

/// The toolchain's own LLVM shared library, e.g. `lib/libLLVM.so.22.1-rust-1.95.0-stable`, and its
/// major version.
fn rust_llvm_library(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let dir = sysroot.join("lib");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix("libLLVM.so.")) else {
            continue;
        };
        if let Some(major) = version.split('.').next().and_then(|m| m.parse().ok()) {
            return Ok((entry.path(), major));
        }
    }
    bail!(
        "no libLLVM.so.<version> in {}: cannot build bpf-linker",
        dir.display()
    )
}
