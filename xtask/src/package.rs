//! The Debian package (`cargo xtask package`), built by cargo-deb from `[package.metadata.deb]`
//! in tracer/Cargo.toml, and its test: installed with dpkg, run, checked, and removed without a
//! trace.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cargo::{build_release, cargo, cargo_step, checked, output_of, workspace_root};

/// The Debian package's name (tracer/Cargo.toml).
const PACKAGE: &str = "tcpstate";

/// Builds the daemon, its man page and completions, and the package; returns the package's path.
pub fn build() -> Result<PathBuf> {
    build_release()?;
    let docs = workspace_root().join("target/release/docs");
    let docs_arg = docs.to_str().context("non-UTF-8 workspace path")?;
    cargo_step(
        "writing the man page and shell completions (examples/docs.rs)",
        &[
            "run",
            "--release",
            "--package",
            "tracer",
            "--example",
            "docs",
            "--",
            docs_arg,
        ],
    )?;
    // Debian wants man pages gzipped; cargo-deb only compresses files that are not in target/.
    checked(
        Command::new("gzip")
            .args(["--best", "--no-name", "--force"])
            .arg(docs.join("tcpstate-tracer.8")),
    )?;
    ensure_cargo_deb()?;
    eprintln!("xtask: building the Debian package");
    // cargo-deb prints the package's path on stdout; its warnings go to stderr, as they come.
    let out = cargo()
        .args(["deb", "--package", "tracer", "--no-build", "--quiet"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        path.is_file(),
        "cargo deb did not say where it wrote the package (it printed {path:?})"
    );
    eprintln!("xtask: {}", path.display());
    Ok(path)
}

fn ensure_cargo_deb() -> Result<()> {
    if cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb (once, about a minute)");
    checked(cargo().args(["install", "cargo-deb", "--locked", "--quiet"]))
}

/// Builds the package, installs it, checks what an operator gets (the binary runs, the unit starts
/// that binary, the man page and completions are found), then removes and purges it and checks
/// nothing is left. Root; refuses to touch a tcpstate package installed before.
pub fn test() -> Result<()> {
    if is_installed()? {
        bail!(
            "the {PACKAGE} package is installed on this machine; the package test installs and \
             purges it: remove it first (dpkg --purge {PACKAGE})"
        );
    }
    let deb = build()?;
    lint(&deb)?;
    eprintln!("xtask: testing the package: install, run, remove");
    let installed = Installed::new(&deb)?;
    let files = installed.files()?;
    check_installed(&files)?;
    installed.remove_and_check(&files)
}

/// The package reads like a Debian package: lintian finds no error and no warning (overrides,
/// each with its reason, are in tracer/deploy/debian/lintian-overrides).
fn lint(deb: &Path) -> Result<()> {
    eprintln!("xtask: lintian {}", deb.display());
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("cannot run lintian (Debian's lintian package)")?;
    let said: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|line| line.starts_with("E:") || line.starts_with("W:"))
        .map(str::to_owned)
        .collect();
    ensure!(
        out.status.success() && said.is_empty(),
        "lintian ({}):\n{}",
        out.status,
        said.join("\n")
    );
    Ok(())
}

fn check_installed(files: &BTreeSet<PathBuf>) -> Result<()> {
    // The unit starts the packaged binary.
    let unit = files
        .iter()
        .find(|f| f.ends_with("systemd/system/tcpstate.service"))
        .context("the package installs no systemd unit tcpstate.service")?;
    let text =
        std::fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
    let exec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .context("the installed unit has no ExecStart")?;
    let binary = PathBuf::from(exec.split_whitespace().next().unwrap_or_default());
    ensure!(
        files.contains(&binary),
        "the unit's ExecStart runs {}, which the package does not install",
        binary.display()
    );

    let version = output_of(Command::new(&binary).arg("--version"))?;
    ensure!(
        version.ends_with(env!("CARGO_PKG_VERSION")),
        "{} --version says {version:?}",
        binary.display()
    );
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .context("binary name")?;
    let help = output_of(Command::new(&binary).arg("--help"))?;
    ensure!(
        help.contains(&format!("Usage: {name} [OPTIONS]")) && help.contains("--stuck"),
        "{} --help:\n{help}",
        binary.display()
    );

    // `man` finds the page, and it comes from the package.
    let page = PathBuf::from(output_of(Command::new("man").args(["-w", name]))?);
    ensure!(
        files.contains(&page),
        "man -w {name} finds {}, not the package's page",
        page.display()
    );
    for wanted in [
        format!("/usr/share/bash-completion/completions/{name}"),
        format!("/usr/share/zsh/vendor-completions/_{name}"),
        format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
        "/usr/share/tcpstate/prometheus/alerts.yml".to_owned(),
        "/usr/share/tcpstate/grafana/tcpstate.json".to_owned(),
    ] {
        ensure!(
            files.contains(Path::new(&wanted)),
            "the package does not install {wanted}"
        );
    }
    Ok(())
}

/// The package while installed: purged on drop, so a failed check never leaves it behind.
struct Installed {
    removed: bool,
}

impl Installed {
    fn new(deb: &Path) -> Result<Installed> {
        // Purged on drop even if dpkg -i fails half-way.
        let installed = Installed { removed: false };
        dpkg(&["-i", deb.to_str().context("non-UTF-8 package path")?])?;
        Ok(installed)
    }

    /// The package's regular files (not the directories it shares with others).
    fn files(&self) -> Result<BTreeSet<PathBuf>> {
        let listing = output_of(Command::new("dpkg").args(["-L", PACKAGE]))?;
        Ok(listing
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect())
    }

    fn remove_and_check(mut self, files: &BTreeSet<PathBuf>) -> Result<()> {
        dpkg(&["-r", PACKAGE])?;
        let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
        ensure!(left.is_empty(), "dpkg -r {PACKAGE} left {left:?}");
        dpkg(&["--purge", PACKAGE])?;
        self.removed = true;
        ensure!(!is_known()?, "dpkg still knows {PACKAGE} after --purge");
        // Nothing of the unit is left for systemd either.
        for path in [
            "/etc/systemd/system/tcpstate.service",
            "/etc/systemd/system/multi-user.target.wants/tcpstate.service",
            "/var/lib/systemd/deb-systemd-helper-enabled/tcpstate.service.dsh-also",
            "/var/lib/systemd/deb-systemd-helper-masked/tcpstate.service",
        ] {
            ensure!(!Path::new(path).exists(), "{path} is left after --purge");
        }
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            let _ = dpkg(&["--purge", PACKAGE]);
        }
    }
}

/// Runs dpkg, waiting up to a minute for its lock if another install (apt, a bench setting up its
/// peers) holds it.
fn dpkg(args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot start dpkg")?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("lock") && Instant::now() < deadline {
            thread::sleep(Duration::from_secs(1));
            continue;
        }
        bail!(
            "dpkg {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            stderr.trim()
        );
    }
}

/// Installed (files on disk), as opposed to absent or only remembered by dpkg.
fn is_installed() -> Result<bool> {
    Ok(status()?.is_some_and(|s| s.ends_with(" installed")))
}

/// Known to dpkg at all (installed, or removed with its configuration kept).
fn is_known() -> Result<bool> {
    Ok(status()?.is_some_and(|s| !s.ends_with(" not-installed")))
}

/// dpkg's status of the package (`install ok installed`, ...), `None` when it never heard of it.
fn status() -> Result<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", PACKAGE])
        .output()
        .context("cannot start dpkg-query")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}
