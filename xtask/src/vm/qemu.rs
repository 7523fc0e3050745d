//! Boots one VM: a virtiofsd per shared folder, QEMU with the kernel, the initramfs and those
//! shares, its serial console relayed to our standard output, a deadline on the whole run, and
//! everything it started stopped again however it ends.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// QEMU's own C virtiofsd (Debian 12's qemu-system-x86 ships it).
pub(crate) const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
pub(crate) const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A host folder the guest mounts with virtiofs under `tag`.
pub(crate) struct Share<'a> {
    pub tag: &'a str,
    pub source: &'a Path,
    /// virtiofsd's cache mode: `always` for the read-only root (its files are not expected to
    /// change under a run; with `auto`, a dozen `mount`s started from the share took 7.7 s of
    /// emulated time against 2.2 s), `none` for the results, so they are written through.
    pub cache: &'a str,
}

pub(crate) struct Boot<'a> {
    /// For messages: `vm 6.1`.
    pub name: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub cmdline: &'a str,
    pub shares: &'a [Share<'a>],
    /// Where the daemons' logs go.
    pub logs: &'a Path,
    pub timeout: Duration,
    /// Printed by the guest on its console right before the command starts and right after it
    /// ends (with its status): boot noise before is shown, the power-off noise after is not.
    pub marker: &'a str,
}

/// What the console showed.
pub(crate) struct Console {
    /// Time from QEMU's start to the command's.
    pub boot: Option<Duration>,
    /// The status the guest printed after the command.
    pub status: Option<i32>,
}

/// How QEMU executes guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Tcg,
}

/// `TCPSTATE_VM_ACCEL=kvm|tcg` decides; otherwise KVM only on bare metal. Inside a VM (the CPU
/// flags say `hypervisor`) a nested /dev/kvm may exist yet fail to boot stock kernels, as on this
/// project's machines (MSR and "KVM internal error" failures): software emulation is the safe
/// default there, and a CI with working nested KVM can ask for it.
pub(crate) fn accel() -> Result<Accel> {
    match std::env::var("TCPSTATE_VM_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok(other) => bail!("TCPSTATE_VM_ACCEL={other}: expected kvm or tcg"),
        Err(_) => {}
    }
    let kvm_usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let nested = fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    });
    Ok(if kvm_usable && !nested {
        Accel::Kvm
    } else {
        Accel::Tcg
    })
}

/// Boots the VM and waits for it to power off, relaying its console.
pub(crate) fn boot(spec: &Boot, accel: Accel) -> Result<Console> {
    let mut daemons = Daemons::default();
    for share in spec.shares {
        daemons.start(share, spec)?;
    }
    let mut qemu = Command::new(QEMU);
    match accel {
        // One host thread runs both vCPUs: with a thread each (MTTCG), a vCPU can run kernel text
        // another vCPU just patched (every tracepoint a tracer attaches flips a static key) from
        // a stale translation, and 6.12 died of it ("Oops: int3" in patched code).
        Accel::Tcg => qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
    };
    qemu.args(["-smp", "2", "-m", "2G"])
        // virtiofs needs guest memory the daemons can map: a shared memfd.
        .args(["-object", "memory-backend-memfd,id=mem,size=2G,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .args(["-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(spec.vmlinuz)
        .arg("-initrd")
        .arg(spec.initramfs)
        .args(["-append", spec.cmdline]);
    for (share, daemon) in spec.shares.iter().zip(&daemons.running) {
        let id = format!("fs-{}", share.tag);
        qemu.arg("-chardev")
            .arg(format!("socket,id={id},path={}", daemon.socket.display()));
        qemu.args([
            "-device",
            &format!("vhost-user-fs-pci,chardev={id},tag={}", share.tag),
        ]);
    }
    let started = Instant::now();
    let mut child = die_with_parent(&mut qemu)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let stdout = child.stdout.take().context("QEMU's console pipe")?;
    let stderr = child.stderr.take().context("QEMU's error pipe")?;
    let marker = spec.marker.to_owned();
    let console = thread::spawn(move || relay(stdout, &mut std::io::stdout(), &marker, started));
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });

    let deadline = started + spec.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{}: the VM did not finish within {}: killed it",
                spec.name,
                humantime::format_duration(spec.timeout)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let console = console.join().unwrap_or(Console {
        boot: None,
        status: None,
    });
    let errors = errors.join().unwrap_or_default();
    drop(daemons);
    if !status.success() {
        let why = errors
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!("{}: QEMU failed ({status}): {}", spec.name, why.trim());
    }
    // QEMU's warnings, if any, are worth seeing once the console is done.
    if !errors.trim().is_empty() {
        eprint!("{errors}");
    }
    Ok(console)
}

/// Makes the child get SIGKILL when we die, so a killed xtask (a CI job's timeout) leaves no VM
/// or daemon behind.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Copies the console to our standard output line by line: the guest's tty turns each `\n` into
/// `\r\n`, which is undone; the markers are hidden, as is everything after the last one.
fn relay(stdout: impl Read, out: &mut impl Write, marker: &str, started: Instant) -> Console {
    let mut console = Console {
        boot: None,
        status: None,
    };
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if console.status.is_some() {
            continue; // the power-off messages
        }
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            line.push(b'\n');
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(at) = text.find(marker) {
            // Output the command left without a final newline comes first on the marker's line.
            if at > 0 {
                let _ = writeln!(out, "{}", &text[..at]);
            }
            let rest = text[at + marker.len()..].trim();
            if rest == "start" {
                console.boot = Some(started.elapsed());
            } else if let Some(status) = rest.strip_prefix("exit ") {
                console.status = status.parse().ok();
            }
            let _ = out.flush();
            continue;
        }
        let _ = out.write_all(&line);
        let _ = out.flush();
    }
    console
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

/// The virtiofsd processes of one VM, stopped when dropped.
#[derive(Default)]
struct Daemons {
    running: Vec<Daemon>,
}

impl Daemons {
    fn start(&mut self, share: &Share, spec: &Boot) -> Result<()> {
        // A socket path must fit in 108 bytes: the temporary folder rather than the workspace.
        // Unique per VM too: library callers may boot several at once.
        static VMS: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "tcpstate-vm-{}-{}-{}.sock",
            std::process::id(),
            VMS.fetch_add(1, Ordering::Relaxed),
            share.tag
        ));
        let _ = fs::remove_file(&socket);
        let log_path = spec.logs.join(format!("virtiofsd-{}.log", share.tag));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = die_with_parent(&mut Command::new(VIRTIOFSD))
            .arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", share.source.display()))
            .args(["-o", &format!("cache={}", share.cache)])
            // The default sandbox pivot_root()s into the source, which fails for `/` (EBUSY).
            .args(["-o", "sandbox=chroot", "-o", "log_level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("virtiofsd's log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {VIRTIOFSD}"))?;
        self.running.push(Daemon {
            child,
            socket: socket.clone(),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            let daemon = self.running.last_mut().context("no daemon")?;
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "{}: virtiofsd for {} exited ({status}): {}",
                    spec.name,
                    share.source.display(),
                    log.lines().last().unwrap_or("no message").trim()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: virtiofsd made no socket in 10 s (see {})",
                    spec.name,
                    log_path.display()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for daemon in &mut self.running {
            // They normally exit with QEMU's connection; SIGTERM first so they clean up their
            // sandbox, then make sure.
            if let Ok(pid) = i32::try_from(daemon.child.id())
                && matches!(daemon.child.try_wait(), Ok(None))
            {
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(2);
                while matches!(daemon.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            let _ = fs::remove_file(&daemon.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_relay_reads_markers_and_status() {
        let text = b"boot noise\r\nTCPVM-1 start\r\nhello\r\npartialTCPVM-1 exit 3\r\n[ 9.1] reboot: Power down\r\n";
        let mut out = Vec::new();
        let console = relay(&text[..], &mut out, "TCPVM-1", Instant::now());
        assert_eq!(console.status, Some(3));
        assert!(console.boot.is_some());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "boot noise\nhello\npartial\n"
        );
    }
}
