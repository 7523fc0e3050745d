//! The container, Kubernetes pod and systemd unit a process runs in, read from its cgroup path
//! alone: operators name containers, not paths. A pure parser of the path the owners report (cgroup
//! v2, else the first v1 hierarchy); every runtime names its cgroups after the container, so no
//! runtime socket or API is asked. Each field is `None` when the path does not say it: an
//! unexpected component gives nothing rather than a guess.
//!
//! - `runtime`: whose naming the innermost container's cgroup follows: `docker`
//!   (`docker-<id>.scope`, cgroupfs driver `/docker/<id>`), `containerd` (CRI's
//!   `cri-containerd-<id>.scope`, nerdctl's `nerdctl-<id>.scope`), `cri-o` (`crio-<id>.scope`,
//!   cgroupfs `crio-<id>`), `podman` (`libpod-<id>.scope`, cgroupfs `libpod-<id>`). `None` outside
//!   containers, and for a container under kubelet's cgroupfs driver (`/kubepods/<qos>/pod<uid>/<id>`),
//!   whose bare id does not say which runtime made it.
//! - `container_id`: the innermost container whose cgroup holds the process (a process of a
//!   sub-cgroup, like crun's `<scope>/container`, belongs to it), exactly as written in the path:
//!   always the full 64 lowercase hex digits, which every runtime above writes. Shorter hex is not
//!   taken: no runtime writes it there, and it would match `user-1000.slice` or `session-3.scope`.
//!   The runtimes' monitors
//!   (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not containers.
//! - `pod_uid`: the innermost Kubernetes pod holding the process, in the canonical dashed form
//!   (kubelet's systemd driver writes `_` for `-`, its slice names' separator), or 32 hex digits
//!   for a static pod (kubelet's hash of the manifest; its mirror pod in the API has a uid of its
//!   own and carries the hash in the `kubernetes.io/config.mirror` annotation).
//! - `qos`: that pod's QoS class, from kubelet's hierarchy: `burstable` and `besteffort` have a
//!   level of their own, a `guaranteed` pod sits directly under `kubepods`. Set with every pod, and
//!   alone for a process under a QoS level but in no pod (the level's own cgroup).
//! - `unit`: the innermost systemd unit whose cgroup holds the process: a service
//!   (`nginx.service`, `getty@tty1.service`), a scope (`session-3.scope`, a login session;
//!   `init.scope`, PID 1; `docker-<id>.scope`, a container), or a socket, mount or swap unit;
//!   under `user@1000.service` the user manager's own unit, inside a container running systemd
//!   the container's. Slices only group units and are not reported.
//!
//! The path must be absolute, as /proc gives it. Leading `..` components (a cgroup outside the
//! reader's cgroup namespace) are skipped and the rest is read: systemd slice names carry their
//! whole hierarchy, but a cgroupfs `pod<uid>` is only taken under a visible `kubepods`. The
//! ` (deleted)` the kernel appends for a removed cgroup is ignored. An empty, `.` or inner `..`
//! component makes the whole path unreadable.
//!
//! Plain component matching, no regex: every name is a fixed prefix or suffix around an id.
use std::sync::Arc;

use crate::owner::{Cgroup, ContainerId, PodUid, Qos, Runtime, Workload};

/// Names of the cgroups the runtimes create for a container, before its id: as a systemd scope
/// (`<prefix><id>.scope`) or, for CRI-O and Podman, as a cgroupfs directory (`<prefix><id>`).
/// The monitors (`crio-conmon-<id>`, `libpod-conmon-<id>`) never match: `conmon-…` is not hex.
const CONTAINER_PREFIXES: [(&str, Runtime); 5] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("nerdctl-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

/// Unit types whose cgroups hold processes (a mount unit holds its helpers and FUSE daemons).
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];
/// systemd's longest unit name.
const UNIT_NAME_MAX: usize = 255;

/// Where a path is in kubelet's hierarchy: `kubepods`, then a QoS level (none for a Guaranteed
/// pod), then the pod.
#[derive(Clone, Copy)]
enum Kube {
    Root,
    Qos(Qos),
    Pod(PodUid, Qos),
}

impl Kube {
    /// The level below this one named `name`, if that is kubelet's next level; `separator` as
    /// in [`PodUid::parse`].
    fn child(self, name: &str, separator: u8) -> Option<Self> {
        let pod = |name: &str| PodUid::parse(name.strip_prefix("pod")?, separator);
        match self {
            Self::Root => Qos::from_level(name)
                .map(Self::Qos)
                .or_else(|| Some(Self::Pod(pod(name)?, Qos::Guaranteed))),
            Self::Qos(qos) => Some(Self::Pod(pod(name)?, qos)),
            Self::Pod(..) => None,
        }
    }

    /// A slice of kubelet's systemd driver: its name spells the hierarchy, levels joined by `-`
    /// (`kubepods-burstable-pod<uid>`), after kubelet's cgroup root (`kubelet-kubepods…` in kind).
    fn from_slice(name: &str) -> Option<Self> {
        let mut levels = name.split('-');
        levels.find(|level| *level == "kubepods")?;
        levels.try_fold(Self::Root, |kube, level| kube.child(level, b'_'))
    }
}

/// An owner's cgroup, with the container, pod and unit its path names.
pub(crate) fn describe(path: String) -> Cgroup {
    Cgroup {
        workload: identify(&path),
        path: path.into(),
    }
}

/// Identifies the workload a cgroup path names; `Workload::default()` when it names none.
pub(crate) fn identify(cgroup_path: &str) -> Workload {
    walk(cgroup_path).unwrap_or_default()
}

/// `None` for a path that is not one /proc writes.
fn walk(path: &str) -> Option<Workload> {
    // The kernel marks a removed cgroup this way; its name still says what it held.
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let path = path.strip_prefix('/')?;
    let mut found = Found::default();
    let mut parent = "";
    // The root, `/`, is one empty component: nothing, like any path with one.
    for component in path.split('/').skip_while(|c| *c == "..") {
        if matches!(component, "" | "." | "..") {
            return None;
        }
        found.component(component, parent);
        parent = component;
    }
    Some(found.into_workload())
}

/// What the walk has found so far, borrowing from the path.
#[derive(Default)]
struct Found<'a> {
    runtime: Option<Runtime>,
    container_id: Option<ContainerId>,
    /// Set together, from the innermost kubelet level.
    pod_uid: Option<PodUid>,
    qos: Option<Qos>,
    unit: Option<&'a str>,
    /// The previous component's place in kubelet's hierarchy, if it had one.
    kube: Option<Kube>,
}

impl<'a> Found<'a> {
    fn component(&mut self, name: &'a str, parent: &str) {
        // Kubelet's levels are consecutive: any other component ends the walk down them.
        let above = self.kube.take();
        if let Some(slice) = name.strip_suffix(".slice") {
            if let Some(kube) = Kube::from_slice(slice) {
                self.enter(kube);
            }
        } else if is_unit(name) {
            self.unit = Some(name);
            if let Some(scope) = name.strip_suffix(".scope") {
                self.container(prefixed_container(scope));
            }
        } else if name == "kubepods" {
            self.enter(Kube::Root);
        } else if let Some(kube) = above.and_then(|kube| kube.child(name, b'-')) {
            self.enter(kube);
        } else {
            self.container(
                bare_container(above, parent, name).or_else(|| prefixed_container(name)),
            );
        }
    }

    fn enter(&mut self, kube: Kube) {
        (self.pod_uid, self.qos) = match kube {
            Kube::Root => (None, None),
            Kube::Qos(qos) => (None, Some(qos)),
            Kube::Pod(uid, qos) => (Some(uid), Some(qos)),
        };
        self.kube = Some(kube);
    }

    /// A deeper container replaces an outer one (Kubernetes in Docker, Docker in a pod).
    fn container(&mut self, container: Option<Container>) {
        if let Some((runtime, id)) = container {
            (self.runtime, self.container_id) = (runtime, Some(id));
        }
    }

    fn into_workload(self) -> Workload {
        Workload {
            runtime: self.runtime,
            container_id: self.container_id,
            pod_uid: self.pod_uid,
            qos: self.qos,
            unit: self.unit.map(Arc::from),
        }
    }
}

/// A container's cgroup: the runtime its name says, if it says one, and the id.
type Container = (Option<Runtime>, ContainerId);

fn prefixed_container(name: &str) -> Option<Container> {
    CONTAINER_PREFIXES.iter().find_map(|&(prefix, runtime)| {
        Some((
            Some(runtime),
            ContainerId::parse(name.strip_prefix(prefix)?)?,
        ))
    })
}

/// cgroupfs drivers name a container's directory by its bare id: Docker's under `docker`,
/// kubelet's under the pod's, which does not say which runtime made it.
fn bare_container(above: Option<Kube>, parent: &str, name: &str) -> Option<Container> {
    let runtime = match above {
        Some(Kube::Pod(..)) => None,
        _ if parent == "docker" => Some(Runtime::Docker),
        _ => return None,
    };
    Some((runtime, ContainerId::parse(name)?))
}

/// A unit name as systemd allows it: a known type, a non-empty name of its characters.
fn is_unit(name: &str) -> bool {
    let valid = |c: u8| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c);
    name.len() <= UNIT_NAME_MAX
        && UNIT_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(valid))
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::owner::{HASH_UID_LEN, ID_LEN, UUID_DASHES, UUID_LEN, is_lower_hex};

    const ID: &str = "b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f";
    const ID2: &str = "2b05fddc3f2527d5586074c617d13c2b18ff9a6dd27551f13336a7ab74f5ec01";
    const UID: &str = "60e5cfb5-11a2-40d0-9f86-8c4075cd5d0a";
    const STATIC_UID: &str = "76e5c004282c4dc6fbce5c7e5fb583a5";

    /// A case's expected fields, space-separated, `-` for `None`: runtime, container id, pod uid,
    /// QoS, unit. Placeholders `{ID}`, `{ID2}`, `{UID}` (`{UID_}` with underscores) and
    /// `{STATIC}` stand for the constants, in paths and expectations alike.
    fn fill(template: &str) -> String {
        template
            .replace("{ID}", ID)
            .replace("{ID2}", ID2)
            .replace("{UID_}", &UID.replace('-', "_"))
            .replace("{UID}", UID)
            .replace("{STATIC}", STATIC_UID)
    }

    fn fields(w: &Workload) -> String {
        [
            w.runtime.map(Runtime::as_str),
            w.container_id.as_ref().map(ContainerId::as_str),
            w.pod_uid.as_ref().map(PodUid::as_str),
            w.qos.map(Qos::as_str),
            w.unit.as_deref(),
        ]
        .map(|field| field.unwrap_or("-"))
        .join(" ")
    }

    fn check(cases: &[(&str, &str)]) {
        for (path, expected) in cases {
            let path = fill(path);
            assert_eq!(fields(&identify(&path)), fill(expected), "{path}");
        }
    }

    #[test]
    fn docker() {
        check(&[
            // systemd driver, cgroup v2 (and v1: the same path in each hierarchy)
            (
                "/system.slice/docker-{ID}.scope",
                "docker {ID} - - docker-{ID}.scope",
            ),
            // cgroupfs driver, cgroup v1 (and v2)
            ("/docker/{ID}", "docker {ID} - - -"),
            // rootless, under the user's manager
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope",
                "docker {ID} - - docker-{ID}.scope",
            ),
            // the daemon itself is a service, not a container
            ("/system.slice/docker.service", "- - - - docker.service"),
            ("/docker", "- - - - -"),
            // a short or malformed id is not an id; the scope is still a unit
            (
                "/system.slice/docker-b9ec786121db.scope",
                "- - - - docker-b9ec786121db.scope",
            ),
            ("/docker/b9ec786121db", "- - - - -"),
            ("/docker/{ID}0", "- - - - -"),
            (
                "/docker/B9EC786121DBF6E4F162E4C11C6607CA4E04914BD9649AEE73EEB98A116AD37F",
                "- - - - -",
            ),
        ]);
    }

    #[test]
    fn containerd_and_kubernetes_systemd_driver() {
        check(&[
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {UID} burstable cri-containerd-{ID}.scope",
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {UID} besteffort cri-containerd-{ID}.scope",
            ),
            // Guaranteed pods have no level of their own
            (
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {UID} guaranteed cri-containerd-{ID}.scope",
            ),
            // a static pod's uid is a hash
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {STATIC} burstable cri-containerd-{ID}.scope",
            ),
            // crun's sub-cgroup of the container
            (
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/container",
                "containerd {ID} {UID} guaranteed cri-containerd-{ID}.scope",
            ),
            // the pod's and the levels' own cgroups
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
                "- - {UID} burstable -",
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice",
                "- - - besteffort -",
            ),
            ("/kubepods.slice", "- - - - -"),
            // Docker as kubelet's runtime (dockershim, cri-dockerd)
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope",
                "docker {ID} {UID} burstable docker-{ID}.scope",
            ),
            // nerdctl, outside Kubernetes
            (
                "/system.slice/nerdctl-{ID}.scope",
                "containerd {ID} - - nerdctl-{ID}.scope",
            ),
            // containerd and kubelet themselves
            (
                "/system.slice/containerd.service",
                "- - - - containerd.service",
            ),
            ("/system.slice/kubelet.service", "- - - - kubelet.service"),
        ]);
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        check(&[
            // the bare id does not say which runtime
            (
                "/kubepods/burstable/pod{UID}/{ID}",
                "- {ID} {UID} burstable -",
            ),
            (
                "/kubepods/besteffort/pod{UID}/{ID}",
                "- {ID} {UID} besteffort -",
            ),
            ("/kubepods/pod{UID}/{ID}", "- {ID} {UID} guaranteed -"),
            ("/kubepods/pod{STATIC}/{ID}", "- {ID} {STATIC} guaranteed -"),
            ("/kubepods/burstable/pod{UID}", "- - {UID} burstable -"),
            ("/kubepods/burstable", "- - - burstable -"),
            ("/kubepods", "- - - - -"),
            // kind and other kubelets with a cgroup root of their own
            (
                "/kubelet/kubepods/pod{UID}/{ID}",
                "- {ID} {UID} guaranteed -",
            ),
            // a sub-cgroup of the container belongs to it
            (
                "/kubepods/burstable/pod{UID}/{ID}/exec",
                "- {ID} {UID} burstable -",
            ),
            // the systemd driver's underscores are not a cgroupfs directory's form, and back
            ("/kubepods/burstable/pod{UID_}/{ID}", "- - - burstable -"),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice",
                "- - - burstable -",
            ),
            // levels out of kubelet's order, or with something between them
            (
                "/kubepods/burstable/besteffort/pod{UID}/{ID}",
                "- - - burstable -",
            ),
            (
                "/kubepods/burstable/extra/pod{UID}/{ID}",
                "- - - burstable -",
            ),
            ("/kubepods/pod{UID}/extra/{ID}", "- - {UID} guaranteed -"),
            ("/burstable/pod{UID}/{ID}", "- - - - -"),
            ("/pod{UID}/{ID}", "- - - - -"),
            ("/kubepods/guaranteed/pod{UID}/{ID}", "- - - - -"),
            // an uppercase or malformed uid
            (
                "/kubepods/pod60E5CFB5-11A2-40D0-9F86-8C4075CD5D0A/{ID}",
                "- - - - -",
            ),
            (
                "/kubepods/pod60e5cfb5-11a2-40d0-9f868c4075cd5d0a/{ID}",
                "- - - - -",
            ),
            ("/kubepods/pod/{ID}", "- - - - -"),
        ]);
    }

    #[test]
    fn cri_o() {
        check(&[
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope",
                "cri-o {ID} {UID} burstable crio-{ID}.scope",
            ),
            (
                "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope/container",
                "cri-o {ID} {UID} guaranteed crio-{ID}.scope",
            ),
            // the monitor is not the container
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope",
                "- - {UID} burstable crio-conmon-{ID}.scope",
            ),
            // cgroupfs driver
            (
                "/kubepods/burstable/pod{UID}/crio-{ID}",
                "cri-o {ID} {UID} burstable -",
            ),
            (
                "/kubepods/burstable/pod{UID}/crio-conmon-{ID}",
                "- - {UID} burstable -",
            ),
            ("/system.slice/crio.service", "- - - - crio.service"),
        ]);
    }

    #[test]
    fn podman() {
        check(&[
            // rootless
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
                "podman {ID} - - libpod-{ID}.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
                "podman {ID} - - libpod-{ID}.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope",
                "- - - - libpod-conmon-{ID}.scope",
            ),
            // rootful
            (
                "/machine.slice/libpod-{ID}.scope",
                "podman {ID} - - libpod-{ID}.scope",
            ),
            (
                "/machine.slice/libpod-conmon-{ID}.scope",
                "- - - - libpod-conmon-{ID}.scope",
            ),
            // a container of a pod (the pod id is not reported)
            (
                "/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope",
                "podman {ID} - - libpod-{ID}.scope",
            ),
            // cgroupfs driver
            ("/libpod_parent/libpod-{ID}", "podman {ID} - - -"),
            ("/libpod_parent/conmon", "- - - - -"),
        ]);
    }

    #[test]
    fn systemd_units() {
        check(&[
            ("/", "- - - - -"),
            ("/init.scope", "- - - - init.scope"),
            ("/system.slice/nginx.service", "- - - - nginx.service"),
            (
                "/system.slice/system-getty.slice/getty@tty1.service",
                "- - - - getty@tty1.service",
            ),
            (
                "/system.slice/system-postgresql.slice/postgresql@15-main.service",
                "- - - - postgresql@15-main.service",
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                "- - - - session-3.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox@1a2b.service",
                "- - - - app-firefox@1a2b.service",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                "- - - - init.scope",
            ),
            ("/system.slice/run-r1b2c3.scope", "- - - - run-r1b2c3.scope"),
            ("/system.slice/mnt-data.mount", "- - - - mnt-data.mount"),
            ("/system.slice/sshd.socket", "- - - - sshd.socket"),
            // a service's own sub-cgroups (delegation)
            (
                "/system.slice/user@1000.service/payload",
                "- - - - user@1000.service",
            ),
            ("/system.slice", "- - - - -"),
            ("/user.slice/user-1000.slice", "- - - - -"),
            // not unit names
            ("/system.slice/.service", "- - - - -"),
            ("/system.slice/ngi nx.service", "- - - - -"),
            ("/system.slice/nginx.service.d", "- - - - -"),
            ("/system.slice/nginx.timer", "- - - - -"),
        ]);
    }

    #[test]
    fn nested() {
        check(&[
            // systemd inside a container: the container's own unit
            (
                "/system.slice/docker-{ID}.scope/system.slice/nginx.service",
                "docker {ID} - - nginx.service",
            ),
            // Docker in Docker: the inner container
            ("/docker/{ID2}/docker/{ID}", "docker {ID} - - -"),
            // kind: a pod inside a node container; the node's kubelet
            (
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {UID} besteffort cri-containerd-{ID}.scope",
            ),
            (
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet.service",
                "docker {ID2} - - kubelet.service",
            ),
            // Docker in a pod: the pod holds the inner container; its runtime is Docker's
            (
                "/kubepods/burstable/pod{UID}/{ID2}/docker/{ID}",
                "docker {ID} {UID} burstable -",
            ),
        ]);
    }

    #[test]
    fn cgroup_namespaces_and_deleted() {
        check(&[
            // read from inside a cgroup namespace: slice names carry their hierarchy
            (
                "/../../kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
                "containerd {ID} {UID} burstable cri-containerd-{ID}.scope",
            ),
            (
                "/../../../system.slice/nginx.service",
                "- - - - nginx.service",
            ),
            // cgroupfs directories do not: without `kubepods` a bare id is nobody's
            ("/../../pod{UID}/{ID}", "- - - - -"),
            ("/../crio-{ID}", "cri-o {ID} - - -"),
            ("/..", "- - - - -"),
            // a removed cgroup
            (
                "/system.slice/docker-{ID}.scope (deleted)",
                "docker {ID} - - docker-{ID}.scope",
            ),
            (
                "/system.slice/nginx.service (deleted)",
                "- - - - nginx.service",
            ),
        ]);
    }

    #[test]
    fn garbage() {
        let long = format!("/{}", "system.slice/".repeat(10_000));
        let long_unit = format!("/system.slice/{}.service", "a".repeat(UNIT_NAME_MAX));
        let deep = format!("{}/docker-{ID}.scope", "/a".repeat(50_000));
        check(&[
            ("", "- - - - -"),
            (" ", "- - - - -"),
            ("/ ", "- - - - -"),
            ("//", "- - - - -"),
            ("system.slice/docker-{ID}.scope", "- - - - -"),
            ("/system.slice//docker-{ID}.scope", "- - - - -"),
            ("/system.slice/docker-{ID}.scope/", "- - - - -"),
            ("/system.slice/./docker-{ID}.scope", "- - - - -"),
            ("/system.slice/../docker-{ID}.scope", "- - - - -"),
            ("/docker-{ID}.scope/..", "- - - - -"),
            ("0::/system.slice/nginx.service", "- - - - -"),
            ("/system.slice/nginx.service\n", "- - - - -"),
            ("/system.slice/docker-{ID}.scope.bak", "- - - - -"),
            (
                "/system.slice/docker-{ID}-{ID2}.scope",
                "- - - - docker-{ID}-{ID2}.scope",
            ),
            ("/system.slice/docker-ü{ID}.scope", "- - - - -"),
            (
                "/kubepods.slice/kubepods-burstable-pod{UID_}-extra.slice",
                "- - - - -",
            ),
            (
                "/kubepods.slice/kubepods-burstable-burstable.slice",
                "- - - - -",
            ),
            (
                "/kubepods.slice/kubepods-pod{UID_}-pod{UID_}.slice",
                "- - - - -",
            ),
            ("/kubepods.slice/kubepods-.slice", "- - - - -"),
            ("/ (deleted)", "- - - - -"),
            (long.as_str(), "- - - - -"),
            (long_unit.as_str(), "- - - - -"),
            (deep.as_str(), "docker {ID} - - docker-{ID}.scope"),
        ]);
    }

    #[test]
    fn ids_and_forms() {
        let described = describe(fill("/system.slice/docker-{ID}.scope"));
        assert_eq!(&*described.path, fill("/system.slice/docker-{ID}.scope"));
        assert_eq!(described.workload.runtime, Some(Runtime::Docker));
        assert_eq!(
            described.workload.unit.as_deref(),
            Some(&*fill("docker-{ID}.scope"))
        );
        let w = identify(&fill("/system.slice/docker-{ID}.scope"));
        let id = w.container_id.expect("an id");
        assert_eq!(format!("{id:?}"), ID);
        let uid = identify(&fill("/kubepods/pod{UID}"))
            .pod_uid
            .expect("a uid");
        assert_eq!(format!("{uid:?}"), UID);
    }

    fn is_id(s: &str) -> bool {
        s.len() == ID_LEN && s.bytes().all(|c| is_lower_hex(&c))
    }

    fn is_canonical_uid(s: &str) -> bool {
        let b = s.as_bytes();
        match b.len() {
            HASH_UID_LEN => b.iter().all(is_lower_hex),
            UUID_LEN => b.iter().enumerate().all(|(i, c)| {
                if UUID_DASHES.contains(&i) {
                    *c == b'-'
                } else {
                    is_lower_hex(c)
                }
            }),
            _ => false,
        }
    }

    /// What any answer must satisfy: well-formed ids, each taken from the path as written, and a
    /// unit that is one of its components.
    fn assert_sound(path: &str, w: &Workload) -> Result<(), TestCaseError> {
        if let Some(id) = w.container_id {
            prop_assert!(
                is_id(id.as_str()) && path.contains(id.as_str()),
                "{path}: {id:?}"
            );
        }
        prop_assert!(
            w.runtime.is_none() || w.container_id.is_some(),
            "{path}: {w:?}"
        );
        if let Some(uid) = w.pod_uid {
            let written = uid.as_str().replace('-', "_");
            prop_assert!(is_canonical_uid(uid.as_str()), "{path}: {uid:?}");
            prop_assert!(
                path.contains(uid.as_str()) || path.contains(&written),
                "{path}: {uid:?}"
            );
            prop_assert!(w.qos.is_some(), "{path}: {w:?}");
        }
        if let Some(unit) = w.unit.as_deref() {
            let deleted = format!("{unit} (deleted)");
            prop_assert!(
                path.split('/').any(|c| c == unit || c == deleted),
                "{path}: {unit}"
            );
        }
        Ok(())
    }

    /// Components of real paths, and near misses, to build paths that reach the deeper cases.
    fn component() -> impl Strategy<Value = String> {
        let id = "[0-9a-f]{64}";
        let uid = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
        prop_oneof![
            prop::sample::select(vec![
                "kubepods",
                "kubepods.slice",
                "burstable",
                "besteffort",
                "system.slice",
                "docker",
                "..",
                "init.scope",
                "nginx.service",
                "container",
                "libpod_parent",
                "",
            ])
            .prop_map(str::to_owned),
            (
                prop::sample::select(vec![
                    "docker-",
                    "cri-containerd-",
                    "crio-",
                    "libpod-",
                    "crio-conmon-",
                    ""
                ]),
                id,
                prop::sample::select(vec![".scope", ""]),
            )
                .prop_map(|(prefix, id, suffix)| format!("{prefix}{id}{suffix}")),
            (
                prop::sample::select(vec!["pod", "kubepods-pod", "kubepods-burstable-pod"]),
                uid,
                any::<bool>()
            )
                .prop_map(|(prefix, uid, slice)| if slice {
                    format!("{prefix}{}.slice", uid.replace('-', "_"))
                } else {
                    format!("{prefix}{uid}")
                }),
            "[ -~]{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn fuzz_identify_arbitrary_strings(path in any::<String>()) {
            assert_sound(&path, &identify(&path))?;
        }

        #[test]
        fn fuzz_identify_arbitrary_paths(path in "(/[a-z0-9._@:\\\\ -]{0,20}){0,12}") {
            assert_sound(&path, &identify(&path))?;
        }

        #[test]
        fn fuzz_identify_plausible_paths(
            components in prop::collection::vec(component(), 0..10),
            deleted in any::<bool>(),
        ) {
            let path = format!("/{}{}", components.join("/"), if deleted { " (deleted)" } else { "" });
            assert_sound(&path, &identify(&path))?;
        }

        #[test]
        fn fuzz_identify_runtime_scopes(
            id in "[0-9a-f]{64}",
            prefix in prop::sample::select(vec!["docker-", "cri-containerd-", "nerdctl-", "crio-", "libpod-"]),
        ) {
            let found = identify(&format!("/system.slice/{prefix}{id}.scope")).container_id;
            prop_assert_eq!(found.map(|id| id.as_str().to_owned()), Some(id));
        }

        /// Real paths broken (cut, a component mangled, bytes that are not UTF-8): sound answers.
        #[test]
        fn fuzz_identify_mutated(
            path in prop::collection::vec(component(), 0..10)
                .prop_flat_map(|c| crate::fuzz::mutated(format!("/{}", c.join("/")))),
        ) {
            assert_sound(&path, &identify(&path))?;
        }

        /// A pod uid as either driver writes it reads as the canonical form; nothing else does.
        #[test]
        fn fuzz_pod_uid(
            uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}",
            other in crate::fuzz::any_text(),
        ) {
            let read = |s: &str, separator| PodUid::parse(s, separator).map(|u| u.as_str().to_owned());
            prop_assert_eq!(read(&uid, b'-'), Some(uid.clone()));
            prop_assert_eq!(read(&uid.replace('-', "_"), b'_'), Some(uid.clone()));
            for separator in [b'-', b'_'] {
                if let Some(found) = read(&other, separator) {
                    prop_assert!(is_canonical_uid(&found), "{found}");
                    prop_assert_eq!(found.replace('-', &char::from(separator).to_string()), other.clone());
                }
            }
            let id = ContainerId::parse(&other).map(|id| id.as_str().to_owned());
            prop_assert!(id.is_none_or(|id| is_id(&id) && id == other));
        }
    }
}
