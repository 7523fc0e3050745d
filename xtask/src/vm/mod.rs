//! `cargo xtask vm`: runs a command as root inside VMs that boot Debian's stock cloud kernels
//! (5.10, 6.1, 6.12) under QEMU, with this machine's root filesystem shared in read-only
//! (virtiofs, under a tmpfs overlay), so the guest runs the host's binaries (the tracer, the test
//! binaries, bpftool, ip, nft…) at the same paths. The command's console output streams to our
//! standard output; its exit status comes back through a read-write share of
//! `target/vm/<kernel>/out`, mounted at `/vmout` in the guest, where the command can leave files.
//! The kernels fetched are kept in `$CARGO_HOME/tcpstate-kernels/<kernel>/`, shared by every
//! checkout (a clean clone boots them without the network); what is built per run (initramfs,
//! logs, results) lives under `target/vm/<kernel>/`.
//!
//! From other xtask code: `for kernel in kernels() { run_in_vm(kernel, &command, timeout)? }`.
mod initramfs;
mod kernels;
mod qemu;

use std::{
    fs,
    io::IsTerminal as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A kernel the runner can boot.
#[derive(Debug)]
pub struct Kernel {
    /// What `--kernel` takes: `5.10`, `6.1`, `6.12`.
    pub name: &'static str,
    /// The upstream series in the package names: `linux-image-<series>.*-cloud-amd64`.
    series: &'static str,
    /// The Debian suites searched for the newest such package.
    suites: &'static [(Archive, &'static str)],
}

#[derive(Debug, Clone, Copy)]
enum Archive {
    /// deb.debian.org/debian (or the host's mirror)
    Main,
    /// deb.debian.org/debian-security
    Security,
}

const KERNEL_NAMES: [&str; 3] = ["5.10", "6.1", "6.12"];

static KERNELS: [Kernel; 3] = [
    Kernel {
        name: KERNEL_NAMES[0],
        series: "5.10",
        // Bullseye's LTS kernel is only updated in its security suite.
        suites: &[(Archive::Security, "bullseye-security")],
    },
    Kernel {
        name: KERNEL_NAMES[1],
        series: "6.1",
        suites: &[
            (Archive::Main, "bookworm"),
            (Archive::Security, "bookworm-security"),
        ],
    },
    Kernel {
        name: KERNEL_NAMES[2],
        series: "6.12",
        suites: &[
            (Archive::Main, "trixie"),
            (Archive::Security, "trixie-security"),
        ],
    },
];

/// The kernels the runner boots, oldest first.
pub fn kernels() -> &'static [Kernel] {
    &KERNELS
}

/// The kernel called `name` (`5.10`, `6.1`, `6.12`).
pub fn kernel(name: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "no kernel {name}: the VM runner knows {}",
            KERNEL_NAMES.join(", ")
        )
    })
}

/// How a command ended in a VM.
#[derive(Debug)]
pub struct VmOutcome {
    /// The command's exit status (128 + the signal when a signal ended it, as bash reports).
    pub status: i32,
    /// `uname -r` in the guest.
    pub release: String,
    /// From QEMU's start to the command's, when the console showed it.
    pub boot: Option<Duration>,
    /// From QEMU's start to its end.
    pub elapsed: Duration,
    /// The host folder the guest saw as `/vmout` (emptied before each run).
    pub out_dir: PathBuf,
}

/// `cargo xtask vm [--kernel NAME]... [-- COMMAND...]`
#[derive(clap::Args, Debug)]
pub struct Options {
    /// A kernel to boot: 5.10, 6.1 or 6.12; repeat it for several. All three, in turn, when absent.
    #[arg(long = "kernel", value_name = "NAME", value_parser = KERNEL_NAMES)]
    pub kernels: Vec<String>,
    /// Kill a VM that has not powered off after this long (e.g. 40m, 90s).
    #[arg(long, value_name = "DURATION", default_value = "40m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Look up the newest kernel in Debian's index again (downloading it if it changed) instead
    /// of reusing the one fetched before.
    #[arg(long)]
    pub refresh: bool,
    /// The command, run by bash as root in the guest, in the current folder; its words are
    /// joined with spaces (as ssh does). Default: `uname -r`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The CLI: runs the command in each kernel asked for, in turn, and returns the exit status to
/// leave with: the first non-zero one, else 0. A VM that cannot be started stops everything.
pub fn run(options: &Options) -> Result<i32> {
    let chosen: Vec<&Kernel> = if options.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        options
            .kernels
            .iter()
            .map(|n| kernel(n))
            .collect::<Result<_>>()?
    };
    let mut results = Vec::new();
    for kernel in &chosen {
        let outcome = run_with(kernel, &options.command, options.timeout, options.refresh)?;
        eprintln!(
            "xtask: vm {} ({}): exit status {}, {:.1} s (command started after {})",
            kernel.name,
            outcome.release,
            outcome.status,
            outcome.elapsed.as_secs_f64(),
            outcome
                .boot
                .map_or("?".to_owned(), |b| format!("{:.1} s", b.as_secs_f64()))
        );
        results.push(outcome.status);
    }
    Ok(results.into_iter().find(|s| *s != 0).unwrap_or(0))
}

/// Runs `command` (words joined with spaces, run by bash as root in the current folder; `uname -r`
/// when empty) in a VM booting `kernel`, its console output streamed to our standard output.
/// Fails when the VM cannot be started, stops before the command ends, or runs past `timeout`.
pub fn run_in_vm(kernel: &Kernel, command: &[String], timeout: Duration) -> Result<VmOutcome> {
    run_with(kernel, command, timeout, false)
}

/// Where the guest finds things (tags of the virtiofs shares, mount points).
const LAYOUT: initramfs::Layout = initramfs::Layout {
    root_tag: "root",
    out_tag: "out",
    work_tag: "work",
    out_mount: "/vmout",
    stage2: "/vmout/.vm/stage2.sh",
};

fn run_with(
    kernel: &Kernel,
    command: &[String],
    timeout: Duration,
    refresh: bool,
) -> Result<VmOutcome> {
    ensure_host_packages(&HOST_TOOLS)?;
    let dir = vm_dir().join(kernel.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock(&dir, kernel.name)?;
    let cache = crate::cargo_home()?
        .join("tcpstate-kernels")
        .join(kernel.name);
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let _cache_lock = lock(&cache, kernel.name)?;
    let unpacked = kernels::prepare(kernel, &cache, refresh)
        .with_context(|| format!("vm {}: cannot get the kernel", kernel.name))?;
    let initramfs = dir.join("initramfs.cpio");
    initramfs::build(&unpacked, &LAYOUT, &initramfs)
        .with_context(|| format!("vm {}: cannot build the initramfs", kernel.name))?;

    // The results share starts empty; the runner's own files go in its .vm folder.
    let out = dir.join("out");
    match fs::remove_dir_all(&out) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("emptying {}", out.display()));
        }
        _ => {}
    }
    let own = out.join(".vm");
    fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
    let marker = format!(
        "TCPSTATE-VM-{:x}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let cwd = std::env::current_dir().context("the current folder")?;
    let workspace = workspace_dir();
    write(
        &own.join("stage2.sh"),
        &stage2_script(&marker, &guest_term(), &workspace),
    )?;
    write(
        &own.join("command.sh"),
        &command_script(command, &cwd, &passed_env()),
    )?;

    let accel = qemu::accel()?;
    eprintln!(
        "xtask: vm {}: booting {} ({} {}) under QEMU ({})",
        kernel.name,
        unpacked.release,
        unpacked.package,
        unpacked.version,
        match accel {
            qemu::Accel::Kvm => "KVM",
            qemu::Accel::Tcg => "software emulation",
        }
    );
    let name = format!("vm {}", kernel.name);
    // nokaslr: bookworm-backports' 6.12 crashed early in 2 of 3 boots without it under
    // emulation; panic=-1 turns a panic into a reboot, which -no-reboot turns into QEMU's exit.
    // TCPSTATE_VM_DEBUG=1 shows the kernel's whole log, for a guest that does not come up.
    let quiet = if std::env::var_os("TCPSTATE_VM_DEBUG").is_some() {
        "ignore_loglevel"
    } else {
        "quiet loglevel=3"
    };
    let cmdline = format!("console=ttyS0,115200 {quiet} nokaslr panic=-1 random.trust_cpu=on");
    let started = Instant::now();
    let console = qemu::boot(
        &qemu::Boot {
            name: &name,
            vmlinuz: &unpacked.vmlinuz,
            initramfs: &initramfs,
            cmdline: &cmdline,
            shares: &[
                qemu::Share {
                    tag: LAYOUT.root_tag,
                    source: Path::new("/"),
                    cache: "always",
                },
                // The workspace again at its own path: it may sit on a mount of its own (a CI
                // checkout) or under a folder the guest covers (/tmp), which the root share
                // does not show.
                qemu::Share {
                    tag: LAYOUT.work_tag,
                    source: &workspace,
                    cache: "always",
                },
                qemu::Share {
                    tag: LAYOUT.out_tag,
                    source: &out,
                    cache: "none",
                },
            ],
            logs: &dir,
            timeout,
            marker: &marker,
        },
        accel,
    )?;
    let elapsed = started.elapsed();
    let status = fs::read_to_string(own.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or(console.status);
    let Some(status) = status else {
        bail!(
            "{name}: the guest stopped before the command finished (no exit status): see its \
             console above"
        );
    };
    Ok(VmOutcome {
        status,
        release: unpacked.release,
        boot: console.boot,
        elapsed,
        out_dir: out,
    })
}

/// The workspace's root (xtask lives one level below it).
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `target/vm` of the workspace.
fn vm_dir() -> PathBuf {
    workspace_dir().join("target/vm")
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One run per kernel at a time: they share the cache and the results folder.
fn lock(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("xtask: vm {name}: waiting for another run on this kernel to finish");
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// The guest's pid 1 after `switch_root` (the initramfs made the mounts): the command, then its
/// status where the host finds it, then power off.
fn stage2_script(marker: &str, term: &str, workspace: &Path) -> String {
    let out = LAYOUT.out_mount;
    let work_tag = LAYOUT.work_tag;
    let workspace = quote(&workspace.to_string_lossy());
    format!(
        r#"#!/bin/bash
# Stage 2 (xtask vm): pid 1 in the host's root (read-only, tmpfs overlay on top).
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM={term}
mkdir -p {workspace} && mount -t virtiofs {work_tag} {workspace} \
    || echo "tcpstate-vm: cannot mount the workspace at "{workspace} >&2
echo "{marker} start"
bash {out}/.vm/command.sh </dev/null
status=$?
echo "$status" >{out}/.vm/status
sync
echo "{marker} exit $status"
# Let the serial port drain before the power goes.
sleep 0.3
echo o >/proc/sysrq-trigger
sleep 30
"#
    )
}

/// The command as a script: the environment passed in, the host's current folder, the words.
fn command_script(command: &[String], cwd: &Path, env: &[(String, String)]) -> String {
    let mut script = String::new();
    for (name, value) in env {
        script.push_str(&format!("export {name}={}\n", quote(value)));
    }
    let cwd = quote(&cwd.to_string_lossy());
    script.push_str(&format!(
        "cd {cwd} 2>/dev/null || echo 'tcpstate-vm: the guest has no folder' {cwd}'; running in /' >&2\n"
    ));
    if command.is_empty() {
        script.push_str("uname -r\n");
    } else {
        script.push_str(&command.join(" "));
        script.push('\n');
    }
    script
}

/// The host's variables the guest's command sees too: `CI` (the tests behave differently under
/// it), and Rust's logging and backtrace switches.
fn passed_env() -> Vec<(String, String)> {
    ["CI", "RUST_LOG", "RUST_BACKTRACE"]
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// Colours and the like only when a person reads the console.
fn guest_term() -> String {
    let term = std::env::var("TERM").unwrap_or_default();
    if std::io::stdout().is_terminal()
        && !term.is_empty()
        && term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        term
    } else {
        "dumb".to_owned()
    }
}

/// `s` as one bash word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What the runner needs on the host: a file each, and the Debian package providing it.
const HOST_TOOLS: [(&str, &str); 7] = [
    (qemu::QEMU, "qemu-system-x86"),
    (qemu::VIRTIOFSD, "qemu-system-x86"),
    (BUSYBOX, "busybox-static"),
    ("/sbin/depmod", "kmod"),
    ("/usr/bin/xz", "xz-utils"),
    ("/usr/bin/dpkg-deb", "dpkg"),
    ("/usr/bin/apt-get", "apt"),
];

const BUSYBOX: &str = "/bin/busybox";

/// Installs from Debian's packages those of `wanted` (a file, the package providing it) whose
/// file is missing, with one line saying so; quick when all are there.
pub(crate) fn ensure_host_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing = || {
        let mut packages: Vec<&str> = wanted
            .iter()
            .filter(|(path, _)| !present(path))
            .map(|(_, package)| *package)
            .collect();
        packages.dedup();
        packages
    };
    let packages = missing();
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: vm: installing {} from Debian's packages",
        packages.join(", ")
    );
    let _ = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null())
        .status();
    let _ = Command::new("apt-get")
        // Another apt on the machine may hold the lock for a while: wait for it rather than fail.
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    let still = missing();
    if !still.is_empty() {
        bail!(
            "the VM runner needs Debian's {} and could not install it \
             (apt-get install --no-install-recommends {0})",
            still.join(" ")
        );
    }
    Ok(())
}

/// Whether a needed file is there; busybox must be the static one (the initramfs has no libc).
fn present(path: &str) -> bool {
    if path == BUSYBOX {
        fs::read(path).is_ok_and(|elf| is_static_elf(&elf))
    } else {
        Path::new(path).exists()
    }
}

/// A 64-bit little-endian ELF file without a program interpreter (`PT_INTERP`).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(count)).all(|i| {
        let at = phoff + i * usize::from(entsize);
        u32_at(at).is_some_and(|kind| kind != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_match_the_kernels() {
        let names: Vec<&str> = kernels().iter().map(|k| k.name).collect();
        assert_eq!(names, KERNEL_NAMES);
        assert!(kernel("6.1").is_ok());
        assert!(kernel("4.19").is_err());
    }

    #[test]
    fn command_scripts_quote_what_they_pass() {
        let script = command_script(
            &[
                "echo".to_owned(),
                "$HOME;".to_owned(),
                "uname -r".to_owned(),
            ],
            Path::new("/work/it's here"),
            &[("CI".to_owned(), "true".to_owned())],
        );
        assert_eq!(
            script,
            "export CI='true'\n\
             cd '/work/it'\\''s here' 2>/dev/null || echo 'tcpstate-vm: the guest has no folder' '/work/it'\\''s here''; running in /' >&2\n\
             echo $HOME; uname -r\n"
        );
        assert!(command_script(&[], Path::new("/"), &[]).ends_with("uname -r\n"));
    }

    #[test]
    fn static_binaries_are_told_from_dynamic_ones() {
        // An ELF header with one program header at 64, of type `kind`.
        let elf = |kind: u32| {
            let mut elf = vec![0u8; 64 + 56];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            elf[64..68].copy_from_slice(&kind.to_le_bytes());
            elf
        };
        assert!(is_static_elf(&elf(1)));
        assert!(!is_static_elf(&elf(3)));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
