//! Writes the installed daemon's man page and shell completions (bash, zsh, fish) into a
//! directory: `cargo run --release --example docs -- DIR`. `cargo xtask package` runs it for the
//! Debian package.
//!
//! Both are made from the clap definition itself (`tracer::cli::Config`), so they never drift from
//! `--help`. As an example, its generators (clap_mangen, clap_complete) are dev-dependencies and
//! stay out of the daemon.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;

/// The name the package installs the daemon under (tracer/Cargo.toml, deploy/tcpstate.service).
const BIN: &str = "tcpstate-tracer";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        bail!("usage: docs OUTPUT_DIR");
    };
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = tracer::cli::Config::command().name(BIN).bin_name(BIN);

    // Section 8: a daemon for the administrator.
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("8")
        .render(&mut page)
        .context("rendering the man page")?;
    let path = dir.join(format!("{BIN}.8"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;

    // Named as each shell looks them up: tcpstate-tracer.bash, _tcpstate-tracer, .fish.
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, BIN, dir)
            .with_context(|| format!("writing the {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}
