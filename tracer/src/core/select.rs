//! The owner filters (`--pid`, `--comm`, `--cgroup`, `--container`): which sockets are reported
//! one by one.
//! They select every report about a single socket (transition lines, stuck and unstuck reports,
//! reminders) and the stuck counts; totals of all sockets (by state, transitions, time in state)
//! count every socket the address filters let through, since an owner is not known for every
//! transition (an accepted socket has none before `accept()`).
use crate::owner::Owner;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OwnerFilter {
    pub(crate) pids: Vec<u32>,
    pub(crate) comms: Vec<String>,
    /// A cgroup path prefix.
    pub(crate) cgroup_prefix: Option<String>,
    /// A container id's prefix (at least its 12 digits, lowercase).
    pub(crate) container: Option<String>,
}

impl OwnerFilter {
    pub(crate) fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.comms.is_empty()
            && self.cgroup_prefix.is_none()
            && self.container.is_none()
    }

    /// Whether a socket with this owner is reported; with a filter set, a socket whose owner is
    /// not known is not.
    pub(crate) fn matches(&self, owner: Option<&Owner>) -> bool {
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
                    .is_some_and(|cgroup| cgroup.path.starts_with(prefix.as_str()))
            })
            && self.container.as_ref().is_none_or(|prefix| {
                owner
                    .cgroup
                    .as_deref()
                    .and_then(|cgroup| cgroup.workload.container_id.as_ref())
                    .is_some_and(|id| id.as_str().starts_with(prefix.as_str()))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::owner::{Cgroup, Comm, ContainerId, Workload};

    const ID: &str = "b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f";

    #[test]
    fn owner_filters() {
        let owner = Owner {
            pid: 42,
            comm: Comm::new("nginx"),
            cgroup: Some(Arc::new(Cgroup {
                path: "/kubepods/pod1/abc".into(),
                workload: Workload {
                    container_id: ContainerId::parse(ID),
                    ..Workload::default()
                },
            })),
        };
        assert!(OwnerFilter::default().matches(None));
        let by_pid = OwnerFilter {
            pids: vec![42],
            ..Default::default()
        };
        assert!(by_pid.matches(Some(&owner)));
        assert!(!by_pid.matches(None), "unknown owners are not guessed");
        let by_comm = OwnerFilter {
            comms: vec!["java".into()],
            ..Default::default()
        };
        assert!(!by_comm.matches(Some(&owner)));
        let by_cgroup = OwnerFilter {
            cgroup_prefix: Some("/kubepods/".into()),
            ..Default::default()
        };
        assert!(by_cgroup.matches(Some(&owner)));
        let elsewhere = OwnerFilter {
            cgroup_prefix: Some("/system.slice".into()),
            ..Default::default()
        };
        assert!(!elsewhere.matches(Some(&owner)));
        let by_container = |prefix: &str| OwnerFilter {
            container: Some(prefix.into()),
            ..Default::default()
        };
        assert!(by_container(&ID[..12]).matches(Some(&owner)));
        assert!(by_container(ID).matches(Some(&owner)));
        assert!(!by_container("0123456789ab").matches(Some(&owner)));
        let outside = Owner {
            cgroup: Some(Cgroup::at("/system.slice/nginx.service")),
            ..owner.clone()
        };
        assert!(!by_container(&ID[..12]).matches(Some(&outside)));
    }
}
