//! Who a socket belongs to: the process, its cgroup, and the workload (container, pod, unit) the
//! cgroup's path names. Shared vocabulary: the source names the process, the enrich stage its
//! cgroup and workload, the core selects and reports by them, the exports write them.
use std::{fmt, sync::Arc};

/// A process name as the kernel stores it: up to 15 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Comm([u8; 16]);

impl Comm {
    pub(crate) fn new(text: &str) -> Self {
        let mut bytes = [0u8; 16];
        let len = text.len().min(15);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self(bytes)
    }

    pub(crate) fn from_kernel(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub(crate) fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process a socket belongs to. The kernel gives the pid and the name of the thread that made
/// the call; the enrich stage replaces the name with the process's own (as `ps` shows it) and adds
/// its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    pub(crate) comm: Comm,
    /// `None` when unknown.
    pub(crate) cgroup: Option<Arc<Cgroup>>,
}

/// A process's cgroup, and the workload its path names (see `enrich::containers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Cgroup {
    /// The cgroup v2 path, else the first v1 hierarchy's.
    pub(crate) path: Box<str>,
    pub(crate) workload: Workload,
}

impl Cgroup {
    /// Only the path, naming nothing.
    #[cfg(test)]
    pub(crate) fn at(path: &str) -> Arc<Self> {
        Arc::new(Self {
            path: path.into(),
            ..Self::default()
        })
    }
}

/// What a cgroup path says about the process in it: its container, pod and unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Workload {
    pub(crate) runtime: Option<Runtime>,
    pub(crate) container_id: Option<ContainerId>,
    pub(crate) pod_uid: Option<PodUid>,
    pub(crate) qos: Option<Qos>,
    pub(crate) unit: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

impl Runtime {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
        }
    }
}

/// A Kubernetes pod's QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }

    /// The classes with a level of their own in kubelet's hierarchy.
    pub(crate) fn from_level(name: &str) -> Option<Self> {
        match name {
            "burstable" => Some(Self::Burstable),
            "besteffort" => Some(Self::BestEffort),
            _ => None,
        }
    }
}

pub(crate) const ID_LEN: usize = 64;

/// A full container id: 64 lowercase hex digits, held inline (no allocation, `Copy`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ContainerId([u8; ID_LEN]);

impl ContainerId {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; ID_LEN] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(is_lower_hex).then_some(Self(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        ascii(&self.0)
    }
}

pub(crate) const UUID_LEN: usize = 36;
/// Where a UUID's groups end (8-4-4-4-12).
pub(crate) const UUID_DASHES: [usize; 4] = [8, 13, 18, 23];
/// A static pod's uid: an MD5 in hex.
pub(crate) const HASH_UID_LEN: usize = 32;

/// A pod uid in canonical form: a dashed UUID, or a static pod's 32 hex digits. Inline, `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PodUid {
    bytes: [u8; UUID_LEN],
    len: u8,
}

impl PodUid {
    /// `separator` is what the path writes between the UUID's groups: `-` in a cgroupfs
    /// directory, `_` in a systemd slice name, where `-` separates the levels.
    pub(crate) fn parse(s: &str, separator: u8) -> Option<Self> {
        let b = s.as_bytes();
        let mut bytes = [0; UUID_LEN];
        match b.len() {
            HASH_UID_LEN if b.iter().all(is_lower_hex) => bytes[..HASH_UID_LEN].copy_from_slice(b),
            UUID_LEN => {
                for (i, (&c, out)) in b.iter().zip(&mut bytes).enumerate() {
                    let dash = UUID_DASHES.contains(&i);
                    *out = if dash && c == separator {
                        b'-'
                    } else if !dash && is_lower_hex(&c) {
                        c
                    } else {
                        return None;
                    };
                }
            }
            _ => return None,
        }
        Some(Self {
            bytes,
            len: b.len() as u8, // 32 or 36
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        ascii(&self.bytes[..usize::from(self.len)])
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn is_lower_hex(c: &u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'f')
}

/// The ids are checked to be ASCII when parsed, so this never falls back.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}
