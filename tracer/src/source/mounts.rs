//! The pseudo-filesystems the daemon needs (tracefs, bpffs): found in /proc/self/mounts, and
//! mounted when they are missing.
use std::{ffi::CString, io};

use anyhow::{Context as _, Result};
use procfs::MountEntry;

/// This process's mounts: /proc/mounts (a link to /proc/self/mounts), read by procfs.
pub(crate) fn current() -> Result<Vec<MountEntry>> {
    procfs::mounts().context("reading /proc/self/mounts")
}

/// Whether a filesystem of `fstype` is mounted at `target`.
pub(crate) fn is_mounted(mounts: &[MountEntry], target: &str, fstype: &str) -> bool {
    mounts
        .iter()
        .any(|m| m.fs_file == target && m.fs_vfstype == fstype)
}

/// mount(2) of a pseudo-filesystem, without options.
pub(crate) fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (source, target, fstype) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The text of a mounts file as procfs reads it; `None` where it refuses it.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Option<Vec<MountEntry>> {
    use procfs::FromBufRead as _;
    Vec::<MountEntry>::from_buf_read(text.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    /// Mount lines as /proc/self/mounts writes them: source, target, type, options, 0 0.
    fn mount_lines() -> impl Strategy<Value = Vec<(String, String, String)>> {
        prop::collection::vec(
            (
                "[a-z]{1,8}",
                "(/[a-z0-9]{1,8}){1,4}",
                prop::sample::select(vec!["proc", "sysfs", "tracefs", "bpf", "ext4", "tmpfs"]),
            )
                .prop_map(|(s, t, f)| (s, t, f.to_owned())),
            0..10,
        )
    }

    fn mounts_file(lines: &[(String, String, String)]) -> String {
        lines
            .iter()
            .map(|(source, target, fstype)| format!("{source} {target} {fstype} rw,relatime 0 0\n"))
            .collect()
    }

    proptest! {
        #[test]
        fn fuzz_is_mounted_valid(lines in mount_lines(), pick in any::<prop::sample::Index>()) {
            let mounts = parse(&mounts_file(&lines)).unwrap_or_default();
            prop_assert_eq!(mounts.len(), lines.len());
            for (_, target, fstype) in &lines {
                prop_assert!(is_mounted(&mounts, target, fstype));
            }
            let (target, fstype) = if lines.is_empty() {
                ("/sys/fs/bpf".to_owned(), "bpf".to_owned())
            } else {
                let (_, target, fstype) = pick.get(&lines);
                (target.clone(), fstype.clone())
            };
            let expected = lines.iter().any(|(_, t, f)| *t == target && *f == fstype);
            prop_assert_eq!(is_mounted(&mounts, &target, &fstype), expected);
            let below = format!("{target}/x");
            prop_assert!(!is_mounted(&mounts, &below, &fstype));
        }

        /// Damaged text is refused or read without panicking; a mount found is one it names.
        #[test]
        fn fuzz_is_mounted_mutated(text in mount_lines().prop_flat_map(|l| mutated(mounts_file(&l)))) {
            let mounts = parse(&text).unwrap_or_default();
            for (target, fstype) in [("/sys/kernel/tracing", "tracefs"), ("/proc", "proc")] {
                if is_mounted(&mounts, target, fstype) {
                    prop_assert!(text.contains(target) && text.contains(fstype));
                }
            }
        }

        #[test]
        fn fuzz_is_mounted_arbitrary(text in any_text(), target in any_text(), fstype in any_text()) {
            let mounts = parse(&text).unwrap_or_default();
            if is_mounted(&mounts, &target, &fstype) {
                prop_assert!(text.contains(&target) && text.contains(&fstype));
            }
        }
    }

    #[test]
    fn finds_mounts_by_place_and_type() {
        let mounts = parse("proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\nbpffs /sys/fs/bpf bpf rw 0 0\n").unwrap();
        assert!(is_mounted(&mounts, "/sys/kernel/tracing", "tracefs"));
        assert!(is_mounted(&mounts, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted(&mounts, "/sys/fs/bpf", "tracefs"));
        assert!(!is_mounted(&[], "/sys/fs/bpf", "bpf"));
    }

    /// This process's own mounts are read (procfs is always mounted where the daemon runs).
    #[test]
    fn reads_its_own_mounts() {
        assert!(is_mounted(&current().unwrap(), "/proc", "proc"));
    }
}
