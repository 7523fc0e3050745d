//! The pseudo-filesystems the daemon needs (tracefs, bpffs): found in /proc/self/mounts, and
//! mounted when they are missing.
use std::{ffi::CString, io};

/// Whether a filesystem of `fstype` is mounted at `target`, per the text of /proc/self/mounts.
pub(crate) fn is_mounted(mounts: &str, target: &str, fstype: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(target) && fields.next() == Some(fstype)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_place_and_type() {
        let mounts = "proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\nbpffs /sys/fs/bpf bpf rw 0 0\n";
        assert!(is_mounted(mounts, "/sys/kernel/tracing", "tracefs"));
        assert!(is_mounted(mounts, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted(mounts, "/sys/fs/bpf", "tracefs"));
        assert!(!is_mounted("", "/sys/fs/bpf", "bpf"));
    }
}
