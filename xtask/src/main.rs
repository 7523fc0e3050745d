//! Project tasks: `cargo xtask <task>`. Each task first makes sure the eBPF toolchain is present,
//! so every command works on a fresh machine.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod cargo;
mod fuzz;
mod matrix;
mod package;
mod scale;
mod setup;
mod soak;

#[derive(Parser)]
#[command(about = "tcpstate project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (rust-src, bpf-linker); quick when present.
    Setup,
    /// Build the daemon (release), with its eBPF programs embedded.
    Build,
    /// Build, then run the tracer as root with the given flags: `cargo xtask run -- --help`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (target/debian/tcpstate_*.deb): the daemon, its systemd unit, man
    /// page, shell completions, alert rules and dashboard.
    Package {
        /// Then install it on this machine, check what it installed and purge it (as root; part
        /// of `cargo xtask test`).
        #[arg(long)]
        test: bool,
    },
    /// Run the whole test suite: formatting, lints, the programs' stack budget, unit, property
    /// and real-kernel tests (with a real Prometheus), 30 s of fuzzing with fresh seeds, the
    /// package installed and removed, smoke
    /// runs of the benchmark and of the scale measurement, then the real-kernel tests again in
    /// VMs booting the kernel matrix (Debian's 5.10, 6.1, 6.12).
    Test {
        /// Only these kernels of the matrix (repeatable); all of them when absent.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Leave the kernel matrix out (a quicker local run; CI always runs it).
        #[arg(long, conflicts_with = "kernels")]
        no_vm: bool,
    },
    /// Run the real-kernel tests in VMs booting the kernel matrix (Debian's 5.10, 6.1, 6.12), as
    /// `test` does last; as root.
    Matrix {
        /// Only these kernels (repeatable); all of them when absent.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
    },
    /// Run the property tests of the parsers of outside data (`fuzz_*`) with fresh seeds and many
    /// cases, round after round, for a bounded time; prints each round's seed.
    Fuzz(fuzz::Options),
    /// Measure the tracer against no tracer and its peers (libbpf-tools, bpftrace), as root.
    Bench(bench::Options),
    /// Run the tracer under steady churn for minutes, sampling its memory and table (as root).
    Soak(soak::Options),
    /// Hold up to a million sockets and measure what the tracer spends on them, as root.
    Scale(scale::Options),
    /// Run a command as root inside VMs booting other kernels (Debian 5.10, 6.1, 6.12) under
    /// QEMU, with this machine's root filesystem shared in.
    Vm(xtask::vm::Options),
    /// A worker process of `scale`, holding connections (started by the harness).
    #[command(hide = true)]
    ScaleWorker(scale::worker::Args),
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::ensure_toolchain(),
        Task::Build => {
            setup::ensure_toolchain()?;
            cargo::build_release()
        }
        Task::Run { args } => {
            setup::ensure_toolchain()?;
            cargo::build_release()?;
            cargo::exec_tracer(&args)
        }
        Task::Package { test } => {
            if test {
                require_root(
                    "the package test installs and removes a package",
                    "package --test",
                )?;
            }
            setup::ensure_toolchain()?;
            if test {
                package::test()
            } else {
                package::build().map(drop)
            }
        }
        Task::Test { kernels, no_vm } => {
            require_root("the test suite loads eBPF programs into the kernel", "test")?;
            install_test_tools()?;
            setup::ensure_toolchain()?;
            cargo::test_all()?;
            fuzz::run(&fuzz::Options::smoke())?;
            package::test()?;
            bench::run(&bench::Options::smoke())?;
            scale::run(&scale::Options::smoke())?;
            if no_vm {
                eprintln!("xtask: the kernel matrix is left out (--no-vm)");
                return Ok(());
            }
            matrix::run(&kernels)
        }
        Task::Matrix { kernels } => {
            require_root("the VMs run the real-kernel tests", "matrix")?;
            install_test_tools()?;
            setup::ensure_toolchain()?;
            cargo::build_release()?;
            matrix::run(&kernels)
        }
        Task::Fuzz(options) => {
            setup::ensure_toolchain()?;
            fuzz::run(&options)
        }
        Task::Bench(options) => {
            require_root("the benchmark loads eBPF programs into the kernel", "bench")?;
            setup::ensure_toolchain()?;
            cargo::build_release()?;
            bench::run(&if options.smoke {
                bench::Options::smoke()
            } else {
                options
            })
        }
        Task::Soak(options) => {
            require_root("the soak loads eBPF programs into the kernel", "soak")?;
            setup::ensure_toolchain()?;
            cargo::build_release()?;
            soak::run(&options)
        }
        Task::Scale(options) => {
            require_root("the scale measurement", "scale")?;
            setup::ensure_toolchain()?;
            cargo::build_release()?;
            scale::run(&if options.smoke {
                scale::Options::smoke()
            } else {
                options
            })
        }
        Task::Vm(options) => {
            require_root(
                "the VM runner installs packages and shares this machine's root filesystem",
                "vm",
            )?;
            let status = xtask::vm::run(&options)?;
            if status != 0 {
                std::process::exit(status);
            }
            Ok(())
        }
        Task::ScaleWorker(args) => scale::worker::run(&args),
    }
}

/// What the tests run beside the tracer, from Debian's packages, installed when missing: the
/// alert rules, the dashboard and the metrics are tested with prometheus (promtool and the server
/// itself; its service is stopped again so nothing else listens on the machine), and a client
/// namespace drops SYN-ACKs with nftables; curl scrapes the endpoint over TLS with client
/// certificates and basic auth; systemd-analyze checks the unit's hardening; lintian the package. These tests never skip: without the tools, say so
/// before building anything rather than fail after minutes.
fn install_test_tools() -> Result<()> {
    let wanted = [
        ("/usr/bin/promtool", "prometheus"),
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/sbin/nft", "nftables"),
        ("/usr/bin/curl", "curl"),
        ("/usr/bin/systemd-analyze", "systemd"),
        ("/usr/bin/lintian", "lintian"),
    ];
    let prometheus_was_there = std::path::Path::new(wanted[1].0).exists();
    let missing = bench::tools::apt_install(&wanted);
    if !prometheus_was_there && std::path::Path::new("/run/systemd/system").exists() {
        let _ = std::process::Command::new("systemctl")
            .args(["disable", "--now", "prometheus"])
            .output();
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the test suite needs Debian's {} (apt-get install --no-install-recommends {0})",
            missing.join(" ")
        );
    }
    Ok(())
}

/// The tasks that load eBPF programs (and enter network namespaces) or install packages need
/// root; say so before building anything.
fn require_root(why: &str, task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{why}: run it as root (sudo -E cargo xtask {task})");
    }
    Ok(())
}
