//! Checks, before touching the kernel, that the daemon holds the capabilities it needs, so a user
//! reads "needs root" rather than an errno from deep inside a BPF syscall; and once its programs
//! are attached, drops those its periodic work no longer needs.
use anyhow::{Context as _, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};

/// Capability numbers from linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What works less well without the capabilities beyond the two it cannot run without.
pub(crate) fn degraded(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut limits = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        limits.push(
            "without CAP_SYS_ADMIN, sockets of other network namespaces (containers) are known \
             from their first event only, and tracefs cannot be mounted if it is not",
        );
    }
    if !(has(CAP_SYS_PTRACE) && has(CAP_DAC_READ_SEARCH)) {
        limits.push(
            "without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, where the kernel refuses the owner \
             iterator, socket owners are found for processes of its own user only",
        );
    }
    if !has(CAP_SYSLOG) {
        limits.push(
            "without CAP_SYSLOG, /proc/kallsyms may hide the timewait timer's address, which \
             TIME-WAIT tracking needs",
        );
    }
    limits
}

/// Lifts the locked-memory limit as far as this process may: kernels before 5.11 charge BPF maps
/// to it (a few MiB for the ring buffer and the record maps, more than many defaults), later ones
/// to the memory cgroup instead. As libbpf does: unlimited with CAP_SYS_RESOURCE, else up to the
/// hard limit.
pub(crate) fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
}

/// The locked-memory limit in bytes; `None` when unlimited or unreadable.
pub(crate) fn memlock_limit() -> Option<u64> {
    // SAFETY: a plain system call on a local struct.
    let limit = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        (libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0).then_some(limit)
    }?;
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Fails with the names of the missing capabilities, given the effective set as a mask
/// ([`effective_capabilities`]).
pub(crate) fn check(effective: u64) -> Result<()> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // Before CAP_BPF and CAP_PERFMON existed (and still today), CAP_SYS_ADMIN covers both.
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    bail!(
        "permission denied: the tracer needs root (or {}); run it with sudo",
        missing.join(" and ")
    )
}

/// The effective capabilities of this thread as a mask (`CapEff` of /proc/self/status), asked of
/// the kernel (capget) as `keep_only` asks for the permitted ones, rather than read from text.
pub(crate) fn effective_capabilities() -> Result<u64> {
    let effective =
        caps::read(None, CapSet::Effective).context("reading the effective capabilities")?;
    Ok(effective.iter().fold(0, |mask, cap| mask | cap.bitmask()))
}

/// What the daemon still needs once its programs are loaded and attached: CAP_BPF always (every
/// read of the kernel's maps is a bpf() call, which kernels that check at the call's entry refuse
/// without it where unprivileged BPF is off, Debian's default), then what `--capabilities-keep`
/// names.
pub(crate) const ALWAYS_KEPT: Capability = Capability::CAP_BPF;

/// The `--capabilities-keep` default: what the periodic work uses. CAP_SYS_ADMIN enters other
/// network namespaces to list their sockets (reconciliation, listeners, lingering sockets);
/// CAP_SYS_PTRACE reads other processes' /proc/PID/ns/net and /proc/PID/fd (a process cannot
/// inspect one that holds capabilities it lacks); CAP_DAC_READ_SEARCH reads /proc/PID/fd of
/// processes of other users.
pub(crate) const KEPT_BY_DEFAULT: &str = "sys_admin,sys_ptrace,dac_read_search";

/// Which capabilities to keep after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Drop nothing.
    All,
    /// These (CAP_BPF added).
    Only(Vec<Capability>),
}

/// Keeps only `keep` (those the process has) in every set of this thread, and takes the rest out
/// of the bounding set, so that no program it could run gets them back. Threads started later
/// inherit this thread's sets; the daemon calls it while it has no other thread (the count of
/// threads that kept more is returned so it can say so). Returns what is kept.
pub(crate) fn keep_only(keep: &[Capability]) -> Result<(Vec<Capability>, usize)> {
    let wanted: CapsHashSet = keep.iter().copied().chain([ALWAYS_KEPT]).collect();
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let kept: CapsHashSet = permitted.intersection(&wanted).copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, itself dropped below. Without
    // it (a service manager bounded the set already), this is left as it is.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all().difference(&wanted) {
            // Capabilities newer than the kernel are refused; they are not there to drop.
            let _ = caps::drop(None, CapSet::Bounding, *cap);
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &kept).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted capabilities")?;
    let others = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count().saturating_sub(1))
        .unwrap_or(0);
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|cap| cap.index());
    Ok((kept, others))
}

/// `--capabilities-keep`: `all`, `none`, or names with or without `CAP_`, any case.
pub(crate) fn parse_keep(text: &str) -> Result<Keep, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "all" => return Ok(Keep::All),
        "none" | "" => return Ok(Keep::Only(Vec::new())),
        _ => {}
    }
    text.split(',')
        .map(|name| {
            caps::to_canonical(name.trim())
                .parse::<Capability>()
                .map_err(|_| format!("{:?} is not a capability (e.g. sys_admin)", name.trim()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Keep::Only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_lists() {
        assert_eq!(parse_keep("all"), Ok(Keep::All));
        assert_eq!(parse_keep("none"), Ok(Keep::Only(Vec::new())));
        let default = vec![
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_DAC_READ_SEARCH,
        ];
        assert_eq!(parse_keep(KEPT_BY_DEFAULT), Ok(Keep::Only(default.clone())));
        assert_eq!(
            parse_keep("sys_admin, CAP_SYS_PTRACE,Dac_Read_Search"),
            Ok(Keep::Only(default))
        );
        assert!(
            parse_keep("sys_admin,superpower")
                .unwrap_err()
                .contains("superpower")
        );
    }

    #[test]
    fn root_passes() {
        assert!(check(0x000001ffffffffff).is_ok());
        assert!(check(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
    }

    #[test]
    fn names_what_is_missing() {
        let err = check(0).unwrap_err().to_string();
        assert!(err.contains("CAP_BPF and CAP_PERFMON"), "{err}");
        let err = check(1 << CAP_BPF).unwrap_err().to_string();
        assert!(
            err.contains("CAP_PERFMON") && !err.contains("CAP_BPF "),
            "{err}"
        );
    }

    #[test]
    fn names_what_is_degraded() {
        let minimal = (1u64 << CAP_BPF)
            | (1 << CAP_PERFMON)
            | (1 << CAP_SYSLOG)
            | (1 << CAP_SYS_ADMIN)
            | (1 << CAP_SYS_PTRACE)
            | (1 << CAP_DAC_READ_SEARCH);
        assert!(degraded(minimal).is_empty());
        assert_eq!(degraded(minimal & !(1 << CAP_SYSLOG)).len(), 1);
        assert_eq!(degraded((1 << CAP_BPF) | (1 << CAP_PERFMON)).len(), 3);
    }

    /// The kernel's answer is this thread's `CapEff` line.
    #[test]
    fn reads_the_effective_set() {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = format!("CapEff:\t{:016x}", effective_capabilities().unwrap());
        assert!(status.lines().any(|l| l == line), "{line} not in {status}");
    }
}
