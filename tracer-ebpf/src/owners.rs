//! `socket_owners`, a task_file iterator: the processes holding the socket inodes the daemon
//! wants (`WANTED_INODES`), found by walking every open file in the kernel in one read of the
//! iterator, instead of a `readlink` per descriptor of every process from user space (seconds on a
//! host with a million sockets). Runs only when the daemon reads it, for the sockets it reports.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_seq_write};
use tracer_common::OwnerHit;

use crate::{
    maps::{OFFSETS, WANTED_INODES},
    read::member,
};

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
    let offsets = OFFSETS.load();
    let inode: u64 = member(file, offsets.file_f_inode);
    if inode == 0 {
        return 0;
    }
    let number: u64 = member(inode, offsets.inode_i_ino);
    let Ok(key) = u32::try_from(number) else {
        return 0;
    };
    // SAFETY: a lookup only tests presence.
    if unsafe { WANTED_INODES.get(&key) }.is_none() {
        return 0;
    }
    let hit = OwnerHit {
        inode: number,
        pid: member::<i32>(task, offsets.task_tgid) as u32,
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
