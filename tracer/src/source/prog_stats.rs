//! The kernel's own accounting of a program: how often the kernel skipped it because it was
//! already running on the same CPU (`recursion_misses`), events that never reached the program,
//! which no counter of the program itself can see.
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{Result, bail};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgramStats {
    pub(crate) recursion_misses: u64,
}

impl std::ops::Add for ProgramStats {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            recursion_misses: self.recursion_misses + other.recursion_misses,
        }
    }
}

/// Reads `bpf_prog_info` of a loaded program (aya 0.14 does not expose `recursion_misses`).
pub(crate) fn read(fd: BorrowedFd<'_>) -> Result<ProgramStats> {
    // SAFETY: both are plain C structs for which all-zero is the required initial state.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The `info` member of the union is the one this command reads.
    attr.info.bpf_fd = fd.as_fd().as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&mut info as *mut bpf_prog_info) as u64;
    // SAFETY: the attribute points at `info`, which lives through the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ProgramStats {
        recursion_misses: info.recursion_misses,
    })
}
