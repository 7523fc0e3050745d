//! The `bpf()` system call itself, for the commands aya 0.14 does not offer (batch map
//! operations, iterator links, program statistics): one wrapper for all of them.
use std::os::fd::{FromRawFd as _, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

pub(super) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<()> {
    call(cmd, attr).map(drop)
}

/// A command that returns a new file descriptor (a link, an iterator).
pub(super) fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    let fd = call(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn call(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr that outlives the call; the buffers
    // it points at are sized by the callers for what the command writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union for which all-zero is the required initial state.
    unsafe { std::mem::zeroed() }
}
