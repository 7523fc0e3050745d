//! `socket_owners`, a task_file iterator: the processes holding the sockets the daemon wants
//! (`WANTED_SOCKETS`, by cookie), found by walking every open file in the kernel in one read of
//! the iterator: no listing of the kernel's sockets to learn their inodes, and no `readlink` per
//! descriptor of every process from user space (seconds on a host with a million sockets). Runs
//! only when the daemon reads it, for the sockets it reports.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_kernel, generated::bpf_seq_write},
};
use tracer_common::OwnerHit;

use crate::{
    maps::{WANTED_SOCKETS, global},
    read::{disguised, member},
};

/// `S_IFMT` and `S_IFSOCK` of an inode's mode.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// The iterator's context: `bpf_iter_meta *meta`, `task_struct *task`, `u32 fd`, `file *file`,
/// each in an 8-byte slot.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn socket_owners(ctx: *mut c_void) -> i32 {
    let slots = ctx as *const u64;
    // SAFETY: the four slots of the iterator's context.
    let (meta, task, fd, file) = unsafe { (*slots, *slots.add(1), *slots.add(2), *slots.add(3)) };
    if meta == 0 || task == 0 || file == 0 {
        return 0;
    }
    let inode: u64 = member(file, global!(OFFSETS.file_f_inode));
    if inode == 0 || member::<u16>(inode, global!(OFFSETS.inode_i_mode)) & S_IFMT != S_IFSOCK {
        return 0;
    }
    // A socket's file: its `struct socket` (an untyped pointer, so read with the helper), then
    // the sock and its cookie (0 until someone asked for it).
    let socket: u64 = member(file, global!(OFFSETS.file_private_data));
    // SAFETY: probe reads check the addresses.
    let sk = unsafe {
        bpf_probe_read_kernel((socket + global!(OFFSETS.socket_sk) as u64) as *const u64)
            .unwrap_or(0)
    };
    if sk == 0 {
        return 0;
    }
    // SAFETY: as above.
    let cookie = unsafe {
        bpf_probe_read_kernel((sk + global!(OFFSETS.skc_cookie) as u64) as *const u64).unwrap_or(0)
    };
    // SAFETY: lookups only test presence.
    let wanted = |id: u64| id != 0 && unsafe { WANTED_SOCKETS.get(&id) }.is_some();
    // Sockets are wanted by cookie; where the programs cannot ask for cookies, by the disguised
    // address that is their id there (`read::socket_id`), listeners still by the cookie the
    // socket list gave them.
    let cookie = if wanted(cookie) {
        cookie
    } else if global!(CONFIG.socket_cookies) == 0 {
        let id = disguised(sk);
        if !wanted(id) {
            return 0;
        }
        id
    } else {
        return 0;
    };
    let hit = OwnerHit {
        cookie,
        pid: member::<i32>(task, global!(OFFSETS.task_tgid)) as u32,
        fd: fd as u32,
    };
    // `meta->seq`, the seq_file the iterator's reader reads.
    let seq: u64 = member(meta, 0);
    // SAFETY: `hit` lives on the stack for the call; the helper copies it.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            (&raw const hit).cast(),
            size_of::<OwnerHit>() as u32,
        )
    };
    0
}
