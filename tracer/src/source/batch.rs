//! Whole-map reads and deletions in few system calls (`BPF_MAP_*_BATCH`, which aya 0.14 does not
//! offer): the daemon reads and fixes maps of up to millions of records, where one call per
//! record would cost seconds. Writes go one by one: they must not replace a record the programs
//! wrote meanwhile, and the batch call cannot say so.
use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{Result, bail};
use aya::Pod;
use aya_obj::generated::bpf_cmd;

use super::bpf_syscall::{bpf, zeroed_attr};

/// Records moved per call.
const CHUNK: usize = 8192;

/// Every (key, value) of a hash map. `value_len` is the size of one value as the kernel copies
/// it: `size_of::<V>()` for a plain map, that times the possible CPUs (8-byte aligned) for a
/// per-CPU one, which is returned as raw bytes per key.
pub(crate) fn dump_raw<K: Pod>(fd: BorrowedFd<'_>, value_len: usize) -> Result<Vec<(K, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut keys = vec![0u8; CHUNK * size_of::<K>()];
    let mut values = vec![0u8; CHUNK * value_len];
    // Hash maps page through buckets: the cursor is a bucket index the kernel hands back.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        // The `batch` member of the union is the one this command reads.
        attr.batch.in_batch = if first {
            0
        } else {
            &mut cursor_in as *mut u64 as u64
        };
        attr.batch.out_batch = &mut cursor_out as *mut u64 as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = CHUNK as u32;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote how many elements it copied into `count`.
        let copied = unsafe { attr.batch.count } as usize;
        for i in 0..copied.min(CHUNK) {
            // SAFETY: `K` is plain data and the slice holds one whole key.
            let key: K = unsafe {
                std::ptr::read_unaligned(keys[i * size_of::<K>()..].as_ptr().cast::<K>())
            };
            out.push((key, values[i * value_len..(i + 1) * value_len].to_vec()));
        }
        match result {
            Ok(()) => {}
            // ENOENT: the last batch (possibly partial) was returned.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(err) => bail!("BPF_MAP_LOOKUP_BATCH: {err}"),
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// Every (key, value) of a (non per-CPU) hash map.
pub(crate) fn dump<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Result<Vec<(K, V)>> {
    Ok(dump_raw::<K>(fd, size_of::<V>())?
        .into_iter()
        .map(|(key, bytes)| {
            // SAFETY: `V` is plain data and the buffer holds exactly one value.
            let value: V = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<V>()) };
            (key, value)
        })
        .collect())
}

/// How a write treats keys that exist (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    Any = 0,
    /// Only keys not present: the kernel's own record, written since, wins.
    New = 1,
    /// Only keys present: a record the kernel removed meanwhile stays removed.
    Existing = 2,
}

/// Writes these entries; returns which were written (an entry refused under `mode` is skipped,
/// the rest are written all the same). One call per entry: the batch call takes no `mode`.
pub(crate) fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(K, V)],
    mode: Write,
) -> Result<Vec<bool>> {
    entries
        .iter()
        .map(|(key, value)| {
            let mut attr = zeroed_attr();
            // The element member of the union; key and value outlive the call.
            attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
            attr.__bindgen_anon_2.key = key as *const K as u64;
            attr.__bindgen_anon_2.__bindgen_anon_1.value = value as *const V as u64;
            attr.__bindgen_anon_2.flags = mode as u64;
            match bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) {
                Ok(()) => Ok(true),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EEXIST | libc::ENOENT | libc::E2BIG)
                    ) =>
                {
                    Ok(false)
                }
                Err(err) => bail!("BPF_MAP_UPDATE_ELEM: {err}"),
            }
        })
        .collect()
}

/// Deletes these keys; returns which were there (and are gone now).
pub(crate) fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<Vec<bool>> {
    let mut deleted = vec![false; keys.len()];
    let mut start = 0;
    while start < keys.len() {
        let end = (start + CHUNK).min(keys.len());
        let mut attr = zeroed_attr();
        // The buffer holds `end - start` keys.
        attr.batch.keys = keys[start..].as_ptr() as u64;
        attr.batch.count = (end - start) as u32;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
        // SAFETY: the kernel wrote how many keys it deleted.
        let done = (unsafe { attr.batch.count } as usize).min(end - start);
        deleted[start..start + done].fill(true);
        match result {
            Ok(()) => start = end,
            // A key gone already: skip it.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => start += done + 1,
            Err(err) => bail!("BPF_MAP_DELETE_BATCH: {err}"),
        }
    }
    Ok(deleted)
}

/// One value by key; `None` when the key is absent.
pub(crate) fn lookup<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K) -> Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = zeroed_attr();
    // The element member of the union; key and value outlive the call.
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key as *const K as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        // SAFETY: the kernel filled the value.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => bail!("BPF_MAP_LOOKUP_ELEM: {err}"),
    }
}
