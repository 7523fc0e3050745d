//! The kernel's own accounting of a program: how often the kernel skipped it because it was
//! already running on the same CPU (`recursion_misses`), events that never reached the program,
//! which no counter of the program itself can see.
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, Result};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use super::bpf_syscall::{bpf, zeroed_attr};

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
    // SAFETY: a plain C struct for which all-zero is the required initial state.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    // The `info` member of the union is the one this command reads.
    attr.info.bpf_fd = fd.as_fd().as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&mut info as *mut bpf_prog_info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(ProgramStats {
        recursion_misses: info.recursion_misses,
    })
}
