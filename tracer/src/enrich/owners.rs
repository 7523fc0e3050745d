//! Who owns a socket, as people name processes: the process id, the process's name (its main
//! thread's, as `ps` and `ss -p` show it, rather than the name of the thread that made the system
//! call) and its cgroup (the container, where there is one). Read from /proc once per process and
//! cached. Sockets that predate the tracer are matched to processes by socket inode, the way
//! `ss -p` does: a scan of every process's descriptors, run off the event loop.
use crate::owner::{Cgroup, Comm, Owner};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use anyhow::Result;
use procfs::{
    ProcessCGroups,
    process::{FDTarget, Process, all_processes},
};
use tracer_common::TcpState;

use super::{
    containers,
    socket_list::{ListenerIndex, take_listing},
};
use crate::source::{events::Endpoints, filter::SocketFilter, socket_owners::SocketOwners};

/// A socket whose owner is wanted: its cookie, its state and its addresses.
pub(crate) type Wanted = (u64, TcpState, Endpoints);

/// How long a process's name and cgroup are trusted before they are read again (pids are reused,
/// processes move between cgroups).
const REFRESH_NS: u64 = 30_000_000_000;
/// Processes remembered at most; the cache is cleared when it grows past this.
const MAX_CACHED: usize = 65_536;

#[derive(Debug, Clone)]
struct Cached {
    comm: Comm,
    cgroup: Option<Arc<Cgroup>>,
    read_ns: u64,
}

#[derive(Default)]
pub(crate) struct Owners {
    cache: HashMap<u32, Cached>,
}

impl Owners {
    /// Describes an owner the kernel named: the process's own name and its cgroup, with the
    /// container, pod and unit the cgroup's path names. /proc is read
    /// for a new or stale process; the kernel's name (of the calling thread) stands in when the
    /// process is gone.
    pub(crate) fn describe(&mut self, owner: &mut Owner, now_ns: u64) {
        let fresh = self
            .cache
            .get(&owner.pid)
            .is_some_and(|c| now_ns.saturating_sub(c.read_ns) < REFRESH_NS);
        if !fresh {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            let cached = match read_process(owner.pid) {
                Some((comm, cgroup)) => Cached {
                    comm,
                    cgroup: cgroup.map(|path| Arc::new(containers::describe(path))),
                    read_ns: now_ns,
                },
                None => Cached {
                    comm: owner.comm,
                    cgroup: None,
                    read_ns: now_ns,
                },
            };
            self.cache.insert(owner.pid, cached);
        }
        if let Some(cached) = self.cache.get(&owner.pid) {
            owner.comm = cached.comm;
            owner.cgroup = cached.cgroup.clone();
        }
    }
}

/// Finds the processes holding these socket inodes (one per inode: the first found), by reading
/// every process's file descriptors in /proc, as `ss -p` does. A blocking scan.
pub(crate) fn holders_of(inodes: &HashSet<u32>) -> HashMap<u32, Owner> {
    let mut found = HashMap::new();
    let Ok(processes) = all_processes() else {
        return found;
    };
    for process in processes.flatten() {
        let Ok(fds) = process.fd() else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(inode) = socket_inode(&fd.target)
                && inodes.contains(&inode)
                && !found.contains_key(&inode)
            {
                let comm = process
                    .stat()
                    .map(|s| Comm::new(&s.comm))
                    .unwrap_or(Comm::new(""));
                let owner = Owner {
                    pid: process.pid() as u32,
                    comm,
                    cgroup: None,
                };
                found.insert(inode, owner);
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// The socket inode a descriptor's link names (`socket:[N]`), if it names one the kernel's socket
/// list can hold (32 bits).
fn socket_inode(target: &FDTarget) -> Option<u32> {
    match target {
        FDTarget::Socket(inode) => u32::try_from(*inode).ok(),
        _ => None,
    }
}

/// Who holds sockets looked up by cookie.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Holders {
    /// The process holding each socket found; for a socket no process ever accepted, its
    /// listener's (the process that should have accepted it).
    pub(crate) owners: HashMap<u64, Owner>,
    /// Sockets no process ever accepted: they have no file (inode 0) and are not listeners.
    pub(crate) never_accepted: HashSet<u64>,
}

/// The owners of sockets the kernel knows by cookie (in the namespaces the filter lets through):
/// with the kernel's owner iterator when it loaded, else from their inodes in the kernel's socket
/// list and /proc. A connection that no process holds, in a state it may wait to be accepted in,
/// was never accepted: its listener's owner stands in. A blocking scan; sockets not found are
/// left out.
pub(crate) fn holders_by_cookie(
    wanted: &[Wanted],
    filter: &SocketFilter,
    iterator: Option<&SocketOwners>,
) -> Result<Holders> {
    if let Some(iterator) = iterator {
        match holders_by_iterator(wanted, filter, iterator) {
            Ok(holders) => return Ok(holders),
            Err(err) => tracing::warn!("the owner iterator failed, reading /proc instead: {err:#}"),
        }
    }
    holders_by_inode(wanted, filter)
}

/// The kernel's owner iterator finds the processes holding the sockets by cookie, in one pass.
fn holders_by_iterator(
    wanted: &[Wanted],
    filter: &SocketFilter,
    iterator: &SocketOwners,
) -> Result<Holders> {
    let found = iterator.holders(&wanted.iter().map(|(cookie, ..)| *cookie).collect())?;
    let mut holders = Holders::default();
    for (cookie, pid) in &found {
        holders.owners.insert(*cookie, process_owner(*pid));
    }
    let queued: Vec<&Wanted> = wanted
        .iter()
        .filter(|(cookie, state, _)| !found.contains_key(cookie) && may_wait_to_be_accepted(*state))
        .collect();
    if queued.is_empty() {
        return Ok(holders);
    }
    let listeners = take_listing(None, Some(TcpState::Listen), filter)?;
    let index = ListenerIndex::new(&listeners.sockets);
    let mut by_listener: HashMap<u64, Vec<u64>> = HashMap::new();
    for (cookie, _, endpoints) in queued {
        holders.never_accepted.insert(*cookie);
        if let Some(listener) = index.listener_of(endpoints) {
            by_listener
                .entry(listener.cookie)
                .or_default()
                .push(*cookie);
        }
    }
    for (listener, pid) in iterator.holders(&by_listener.keys().copied().collect())? {
        for cookie in by_listener.get(&listener).into_iter().flatten() {
            holders.owners.insert(*cookie, process_owner(pid));
        }
    }
    Ok(holders)
}

/// Without the iterator: the sockets' inodes from the kernel's list (by state), then /proc.
fn holders_by_inode(wanted: &[Wanted], filter: &SocketFilter) -> Result<Holders> {
    let states: HashSet<TcpState> = wanted.iter().map(|(_, state, _)| *state).collect();
    let cookies: HashSet<u64> = wanted.iter().map(|(cookie, ..)| *cookie).collect();
    let mut by_inode: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut unaccepted = Vec::new();
    let mut namespaces = None;
    for state in states {
        let listing = take_listing(namespaces.take(), Some(state), filter)?;
        for socket in listing
            .sockets
            .iter()
            .filter(|s| cookies.contains(&s.cookie))
        {
            if socket.inode != 0 {
                by_inode
                    .entry(socket.inode)
                    .or_default()
                    .push(socket.cookie);
            } else if may_wait_to_be_accepted(socket.state) && !socket.timewait {
                unaccepted.push(socket.clone());
            }
        }
        namespaces = Some(listing.namespaces);
    }
    let mut holders = Holders::default();
    if !unaccepted.is_empty() {
        let listeners = take_listing(namespaces, Some(TcpState::Listen), filter)?;
        let index = ListenerIndex::new(&listeners.sockets);
        for socket in &unaccepted {
            holders.never_accepted.insert(socket.cookie);
            if let Some(listener) = index
                .listener_of(&socket.endpoints)
                .filter(|l| l.inode != 0)
            {
                by_inode
                    .entry(listener.inode)
                    .or_default()
                    .push(socket.cookie);
            }
        }
    }
    for (inode, owner) in holders_of(&by_inode.keys().copied().collect()) {
        for cookie in by_inode.get(&inode).into_iter().flatten() {
            holders.owners.insert(*cookie, owner.clone());
        }
    }
    Ok(holders)
}

/// The states a connection is in while it waits in its listener's accept queue (its client may
/// have closed meanwhile). Other sockets without a process were closed by theirs (orphans).
fn may_wait_to_be_accepted(state: TcpState) -> bool {
    matches!(
        state,
        TcpState::SynRecv | TcpState::Established | TcpState::CloseWait
    )
}

/// A process found by pid; its name and cgroup are read when the enrich stage describes it.
fn process_owner(pid: u32) -> Owner {
    Owner {
        pid,
        comm: Comm::new(""),
        cgroup: None,
    }
}

fn read_process(pid: u32) -> Option<(Comm, Option<String>)> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let comm = Comm::new(&process.stat().ok()?.comm);
    let cgroup = process.cgroups().ok().and_then(cgroup_path);
    Some((comm, cgroup))
}

/// The path of a process's cgroup, from its /proc/<pid>/cgroup: the unified hierarchy's (0),
/// else the first v1 hierarchy's.
fn cgroup_path(groups: ProcessCGroups) -> Option<String> {
    let groups = groups.0;
    let index = groups.iter().position(|g| g.hierarchy == 0).unwrap_or(0);
    groups.into_iter().nth(index).map(|g| g.pathname)
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _, str::FromStr as _};

    use procfs::FromRead as _;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    /// A /proc/<pid>/cgroup file: v1 hierarchies (number, controllers, path), then (or not) the
    /// unified one's line.
    fn cgroup_file(v1: &[(u32, String, String)], unified: &Option<String>) -> String {
        let mut text: String = v1
            .iter()
            .map(|(n, controllers, path)| format!("{n}:{controllers}:{path}\n"))
            .collect();
        if let Some(path) = unified {
            text += &format!("0::{path}\n");
        }
        text
    }

    fn cgroup_lines() -> impl Strategy<Value = (Vec<(u32, String, String)>, Option<String>)> {
        let path = "(/[a-z0-9.:@ _-]{1,12}){0,4}|/";
        (
            prop::collection::vec((1u32..20, "[a-z_,=]{0,20}", path), 0..4),
            prop::option::of(path),
        )
    }

    fn parsed(text: &str) -> Option<String> {
        ProcessCGroups::from_read(text.as_bytes())
            .ok()
            .and_then(cgroup_path)
    }

    proptest! {
        /// The unified hierarchy's path when there is one, else the first hierarchy's.
        #[test]
        fn fuzz_cgroup_path_valid((v1, unified) in cgroup_lines()) {
            let expected = unified.clone().or_else(|| v1.first().map(|(_, _, path)| path.clone()));
            prop_assert_eq!(parsed(&cgroup_file(&v1, &unified)), expected);
        }

        #[test]
        fn fuzz_cgroup_path_mutated(text in cgroup_lines().prop_flat_map(|(v1, u)| mutated(cgroup_file(&v1, &u)))) {
            let found = parsed(&text);
            prop_assert!(found.is_none_or(|path| text.contains(&path)));
        }

        #[test]
        fn fuzz_cgroup_path_arbitrary(text in any_text()) {
            let found = parsed(&text);
            prop_assert!(found.is_none_or(|path| text.contains(&path)));
        }

        /// A descriptor's link names a socket by inode; inodes past 32 bits are no socket of the
        /// kernel's list.
        #[test]
        fn fuzz_socket_inode_valid(inode in prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()]) {
            let target = FDTarget::from_str(&format!("socket:[{inode}]"));
            prop_assert!(target.is_ok());
            let found = target.ok().and_then(|t| socket_inode(&t));
            prop_assert_eq!(found, u32::try_from(inode).ok());
            let pipe = FDTarget::from_str(&format!("pipe:[{inode}]")).ok();
            prop_assert_eq!(pipe.and_then(|t| socket_inode(&t)), None);
        }

        #[test]
        fn fuzz_socket_inode_arbitrary(link in prop_oneof![
            any_text(),
            any::<u64>().prop_flat_map(|inode| mutated(format!("socket:[{inode}]"))),
        ]) {
            let found = FDTarget::from_str(&link).ok().and_then(|t| socket_inode(&t));
            prop_assert!(found.is_none_or(|inode| link.starts_with("socket:") && link.contains(&inode.to_string())));
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::costly(4))]

        /// A process's name, whatever it holds (parentheses, spaces), is read back from its
        /// /proc/<pid>/stat as the kernel writes it.
        #[test]
        fn fuzz_stat_comm(comm in "[ -~]{0,15}|[()) a-z]{0,15}") {
            let own = std::fs::read_to_string("/proc/self/stat").unwrap();
            let (Some(open), Some(close)) = (own.find('('), own.rfind(')')) else {
                panic!("{own}");
            };
            let stat = format!("{}{comm}{}", &own[..=open], &own[close..]);
            let read = procfs::process::Stat::from_read(stat.as_bytes()).map(|s| s.comm);
            prop_assert_eq!(read.ok(), Some(comm.clone()));
            let kept = Comm::new(&comm);
            prop_assert_eq!(kept.as_str(), comm.as_str());
        }
    }

    fn me() -> Owner {
        Owner {
            pid: std::process::id(),
            comm: Comm::new("thread-name"),
            cgroup: None,
        }
    }

    #[test]
    fn describes_the_process_not_the_thread() {
        let mut owners = Owners::default();
        let mut owner = me();
        owners.describe(&mut owner, 0);
        let process_name = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(owner.comm.as_str(), process_name.trim());
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let cgroup = owner.cgroup.expect("a cgroup");
        assert!(
            own_cgroup.contains(&*cgroup.path),
            "{cgroup:?} in {own_cgroup}"
        );
        // The path's names come with it, as the parser reads them.
        let named = containers::describe(cgroup.path.to_string());
        assert_eq!(*cgroup, named);
    }

    #[test]
    fn a_gone_process_keeps_the_kernel_name() {
        let mut owners = Owners::default();
        let mut ghost = Owner {
            pid: u32::MAX - 1,
            comm: Comm::new("gone"),
            cgroup: None,
        };
        owners.describe(&mut ghost, 0);
        assert_eq!((ghost.comm.as_str().as_ref(), ghost.cgroup), ("gone", None));
    }

    #[test]
    fn finds_socket_owners_by_cookie() {
        use std::net::TcpStream;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let netns = crate::enrich::socket_list::own_netns().unwrap();
        let listed = crate::enrich::socket_list::list_tcp_sockets(netns, None).unwrap();
        let mine = listed
            .iter()
            .find(|s| s.endpoints.local_port == port && s.endpoints.remote_port != 0)
            .expect("the accepted socket is listed");
        let found = holders_by_cookie(
            &[
                (mine.cookie, TcpState::Established, mine.endpoints),
                (u64::MAX, TcpState::Listen, mine.endpoints),
            ],
            &SocketFilter::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            found.owners.get(&mine.cookie).map(|o| o.pid),
            Some(std::process::id())
        );
        assert_eq!(found.owners.len(), 1, "an unknown cookie finds nobody");
        assert!(found.never_accepted.is_empty());
    }

    /// A connection still in its listener's accept queue has no file: never accepted, and its
    /// listener's owner stands in.
    #[test]
    fn a_socket_never_accepted_names_its_listener() {
        use std::net::TcpStream;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let netns = crate::enrich::socket_list::own_netns().unwrap();
        let listed = crate::enrich::socket_list::list_tcp_sockets(netns, None).unwrap();
        let queued = listed
            .iter()
            .find(|s| s.endpoints.local_port == port && s.endpoints.remote_port != 0)
            .expect("the queued socket is listed");
        assert_eq!(queued.inode, 0, "no file until accepted");
        let found = holders_by_cookie(
            &[(queued.cookie, queued.state, queued.endpoints)],
            &SocketFilter::default(),
            None,
        )
        .unwrap();
        assert!(found.never_accepted.contains(&queued.cookie));
        assert_eq!(
            found.owners.get(&queued.cookie).map(|o| o.pid),
            Some(std::process::id()),
            "the listener's owner"
        );
    }

    #[test]
    fn finds_socket_owners_by_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let path = format!("/proc/self/fd/{}", listener.as_raw_fd());
        let inode = std::fs::metadata(path).unwrap().ino() as u32;
        let found = holders_of(&HashSet::from([inode]));
        assert_eq!(found.get(&inode).map(|p| p.pid), Some(std::process::id()));
        assert!(holders_of(&HashSet::new()).is_empty());
    }
}
