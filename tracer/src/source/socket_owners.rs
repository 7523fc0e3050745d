//! The daemon's side of the owner iterator (`socket_owners`, a task_file iterator): the processes
//! holding some sockets, by cookie, found in one pass over every open file in the kernel. The way `ss
//! -p` finds them, a `readlink` of every descriptor of every process, takes seconds on a host with
//! a million sockets; the iterator reads only what matches. Used off the event loop, one lookup at
//! a time.
use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};
use aya_obj::generated::{bpf_attach_type, bpf_cmd};
use tracer_common::OwnerHit;

use super::{
    batch::{self, Write},
    bpf_syscall::{bpf_fd, zeroed_attr},
};

/// Sockets looked for at once: the size of the kernel's `WANTED_SOCKETS` map.
const WANTED_AT_ONCE: usize = 1 << 16;

pub(crate) struct SocketOwners {
    program: OwnedFd,
    wanted: OwnedFd,
}

impl SocketOwners {
    pub(super) fn new(program: OwnedFd, wanted: OwnedFd) -> Self {
        Self { program, wanted }
    }

    /// The process holding each of these sockets (by cookie) that one does (the first found).
    pub(crate) fn holders(&self, cookies: &HashSet<u64>) -> Result<HashMap<u64, u32>> {
        let mut found = HashMap::new();
        let cookies: Vec<u64> = cookies.iter().copied().collect();
        for chunk in cookies.chunks(WANTED_AT_ONCE) {
            let entries: Vec<(u64, u8)> = chunk.iter().map(|cookie| (*cookie, 0)).collect();
            batch::update(self.wanted.as_fd(), &entries, Write::Any)?;
            let hits = self.iterate();
            batch::delete(self.wanted.as_fd(), chunk)?;
            for hit in hits? {
                found.entry(hit.cookie).or_insert(hit.pid);
            }
        }
        Ok(found)
    }

    /// One pass of the iterator: a link, an iterator over it, everything it writes.
    fn iterate(&self) -> Result<Vec<OwnerHit>> {
        let mut attr = zeroed_attr();
        // The link_create member of the union: an iterator link of this program, no target.
        attr.link_create.__bindgen_anon_1.prog_fd = self.program.as_raw_fd() as u32;
        attr.link_create.attach_type = bpf_attach_type::BPF_TRACE_ITER as u32;
        let link =
            bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr).context("linking the owner iterator")?;
        let mut attr = zeroed_attr();
        attr.iter_create.link_fd = link.as_raw_fd() as u32;
        let iterator =
            bpf_fd(bpf_cmd::BPF_ITER_CREATE, &mut attr).context("creating the owner iterator")?;
        let mut bytes = Vec::new();
        std::fs::File::from(iterator)
            .read_to_end(&mut bytes)
            .context("reading the owner iterator")?;
        Ok(hits(&bytes))
    }
}

/// The records the iterator wrote, back to back. The kernel writes whole records only; a partial
/// one at the end is no hit.
fn hits(bytes: &[u8]) -> Vec<OwnerHit> {
    bytes
        .chunks_exact(size_of::<OwnerHit>())
        // SAFETY: each chunk holds one whole `OwnerHit`, plain data.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<OwnerHit>()) })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(hits: &[OwnerHit]) -> Vec<u8> {
        hits.iter()
            .flat_map(|hit| {
                let mut bytes = hit.cookie.to_ne_bytes().to_vec();
                bytes.extend(hit.pid.to_ne_bytes());
                bytes.extend(hit.fd.to_ne_bytes());
                bytes
            })
            .collect()
    }

    fn hit() -> impl Strategy<Value = OwnerHit> {
        any::<(u64, u32, u32)>().prop_map(|(cookie, pid, fd)| OwnerHit { cookie, pid, fd })
    }

    proptest! {
        /// What the iterator wrote, read back; a partial record after them adds nothing.
        #[test]
        fn fuzz_owner_hits(
            written_hits in prop::collection::vec(hit(), 0..20),
            tail in prop::collection::vec(any::<u8>(), 0..size_of::<OwnerHit>()),
        ) {
            let mut bytes = written(&written_hits);
            prop_assert_eq!(&hits(&bytes), &written_hits);
            bytes.extend(tail);
            prop_assert_eq!(hits(&bytes), written_hits);
        }

        #[test]
        fn fuzz_owner_hits_arbitrary(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let read = hits(&bytes);
            prop_assert_eq!(read.len(), bytes.len() / size_of::<OwnerHit>());
            prop_assert_eq!(written(&read), bytes[..read.len() * size_of::<OwnerHit>()].to_vec());
        }
    }
}
