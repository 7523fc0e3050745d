//! Who owns a socket, as people name processes: the process id, the process's name (its main
//! thread's, as `ps` and `ss -p` show it, rather than the name of the thread that made the system
//! call) and its cgroup (the container, where there is one). Looked up in /proc once per process
//! and cached; sockets that predate the tracer are matched to processes by socket inode, the way
//! `ss -p` does.
use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

use procfs::process::{FDTarget, Process as ProcProcess, all_processes};

use crate::events::{Comm, Process};

/// How long a process's name and cgroup are trusted before they are read again (pids are reused,
/// processes move between cgroups).
const REFRESH_NS: u64 = 30_000_000_000;
/// Processes remembered at most; the cache is cleared when it grows past this.
const MAX_CACHED: usize = 65_536;

/// What the tracer reports of an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerInfo {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup path: the cgroup v2 path, else the first v1 hierarchy's; `None` when unknown.
    pub cgroup: Option<Rc<str>>,
}

#[derive(Debug, Clone)]
struct Cached {
    comm: Comm,
    cgroup: Option<Rc<str>>,
    read_ns: u64,
}

#[derive(Default)]
pub struct Owners {
    cache: HashMap<u32, Cached>,
}

impl Owners {
    /// Notes a socket owner seen in an event; reads /proc for a new or stale process. The kernel's
    /// name (of the calling thread) stands in when the process is gone.
    pub fn observe(&mut self, owner: &Process, now_ns: u64) {
        let fresh = self
            .cache
            .get(&owner.pid)
            .is_some_and(|c| now_ns.saturating_sub(c.read_ns) < REFRESH_NS);
        if fresh {
            return;
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let cached = read_process(owner.pid).map_or(
            Cached {
                comm: owner.comm,
                cgroup: None,
                read_ns: now_ns,
            },
            |(comm, cgroup)| Cached {
                comm,
                cgroup: cgroup.map(Rc::from),
                read_ns: now_ns,
            },
        );
        self.cache.insert(owner.pid, cached);
    }

    /// Records what is known of a process without reading /proc (for tests and tools).
    pub fn assume(&mut self, pid: u32, comm: Comm, cgroup: Option<&str>) {
        let cached = Cached {
            comm,
            cgroup: cgroup.map(Rc::from),
            read_ns: u64::MAX,
        };
        self.cache.insert(pid, cached);
    }

    /// The owner as reported: process name and cgroup when known.
    pub fn describe(&self, owner: &Process) -> OwnerInfo {
        match self.cache.get(&owner.pid) {
            Some(c) => OwnerInfo {
                pid: owner.pid,
                comm: c.comm,
                cgroup: c.cgroup.clone(),
            },
            None => OwnerInfo {
                pid: owner.pid,
                comm: owner.comm,
                cgroup: None,
            },
        }
    }

    /// Finds the processes holding these socket inodes (one per inode: the first found), by
    /// reading every process's file descriptors.
    pub fn by_inode(&mut self, inodes: &HashSet<u32>, now_ns: u64) -> HashMap<u32, Process> {
        let mut found = HashMap::new();
        if inodes.is_empty() {
            return found;
        }
        let Ok(processes) = all_processes() else {
            return found;
        };
        for process in processes.flatten() {
            let Ok(fds) = process.fd() else {
                continue;
            };
            for fd in fds.flatten() {
                if let FDTarget::Socket(inode) = fd.target
                    && let Ok(inode) = u32::try_from(inode)
                    && inodes.contains(&inode)
                    && !found.contains_key(&inode)
                {
                    let pid = process.pid() as u32;
                    let comm = process
                        .stat()
                        .map(|s| Comm::new(&s.comm))
                        .unwrap_or(Comm::new(""));
                    let owner = Process { pid, comm };
                    self.observe(&owner, now_ns);
                    found.insert(inode, owner);
                }
            }
            if found.len() == inodes.len() {
                break;
            }
        }
        found
    }
}

fn read_process(pid: u32) -> Option<(Comm, Option<String>)> {
    let process = ProcProcess::new(i32::try_from(pid).ok()?).ok()?;
    let comm = Comm::new(&process.stat().ok()?.comm);
    let cgroup = process.cgroups().ok().and_then(|groups| {
        let groups = groups.0;
        groups
            .iter()
            .find(|g| g.hierarchy == 0)
            .or_else(|| groups.first())
            .map(|g| g.pathname.clone())
    });
    Some((comm, cgroup))
}

/// What the user asked about owners: `--pid`, `--comm`, `--cgroup` (a path prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub cgroup_prefix: Option<String>,
}

impl OwnerFilter {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroup_prefix.is_none()
    }

    /// Whether a socket with this owner is reported; with a filter set, a socket whose owner is
    /// not known is not.
    pub fn matches(&self, owner: Option<&OwnerInfo>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(owner) = owner else {
            return false;
        };
        (self.pids.is_empty() || self.pids.contains(&owner.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| *c == owner.comm.as_str()))
            && self.cgroup_prefix.as_ref().is_none_or(|prefix| {
                owner
                    .cgroup
                    .as_deref()
                    .is_some_and(|path| path.starts_with(prefix.as_str()))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _};

    use super::*;

    fn me() -> Process {
        Process {
            pid: std::process::id(),
            comm: Comm::new("thread-name"),
        }
    }

    #[test]
    fn describes_the_process_not_the_thread() {
        let mut owners = Owners::default();
        owners.observe(&me(), 0);
        let info = owners.describe(&me());
        let process_name = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(info.comm.as_str(), process_name.trim());
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let cgroup = info.cgroup.expect("a cgroup");
        assert!(own_cgroup.contains(&*cgroup), "{cgroup} in {own_cgroup}");
    }

    #[test]
    fn a_gone_process_keeps_the_kernel_name() {
        let mut owners = Owners::default();
        let ghost = Process {
            pid: u32::MAX - 1,
            comm: Comm::new("gone"),
        };
        owners.observe(&ghost, 0);
        let info = owners.describe(&ghost);
        assert_eq!((info.comm.as_str().as_ref(), info.cgroup), ("gone", None));
    }

    #[test]
    fn finds_socket_owners_by_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let path = format!("/proc/self/fd/{}", listener.as_raw_fd());
        let inode = std::fs::metadata(path).unwrap().ino() as u32;
        let mut owners = Owners::default();
        let found = owners.by_inode(&HashSet::from([inode]), 0);
        assert_eq!(found.get(&inode).map(|p| p.pid), Some(std::process::id()));
        assert!(owners.by_inode(&HashSet::new(), 0).is_empty());
    }

    #[test]
    fn owner_filters() {
        let info = OwnerInfo {
            pid: 42,
            comm: Comm::new("nginx"),
            cgroup: Some(Rc::from("/kubepods/pod1/abc")),
        };
        assert!(OwnerFilter::default().matches(None));
        let by_pid = OwnerFilter {
            pids: vec![42],
            ..Default::default()
        };
        assert!(by_pid.matches(Some(&info)));
        assert!(!by_pid.matches(None), "unknown owners are not guessed");
        let by_comm = OwnerFilter {
            comms: vec!["java".into()],
            ..Default::default()
        };
        assert!(!by_comm.matches(Some(&info)));
        let by_cgroup = OwnerFilter {
            cgroup_prefix: Some("/kubepods/".into()),
            ..Default::default()
        };
        assert!(by_cgroup.matches(Some(&info)));
        let elsewhere = OwnerFilter {
            cgroup_prefix: Some("/system.slice".into()),
            ..Default::default()
        };
        assert!(!elsewhere.matches(Some(&info)));
    }
}
