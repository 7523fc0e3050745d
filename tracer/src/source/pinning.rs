//! The kernel's record maps outlive the daemon, pinned in bpffs, so a restarted daemon (upgrade,
//! crash, SIGKILL) still knows when each socket entered its state. The pins' names carry the
//! record layout's version; a pin of another version, or of a map of another shape, is replaced,
//! never trusted. One daemon at a time holds the pinned state (a lock on its directory).
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, MapType};
use tracer_common::RECORD_VERSION;

const BPFFS: &str = "/sys/fs/bpf";

/// The pinned-state directory, locked for this daemon's life.
pub(crate) struct PinDir {
    /// Where each pinned map is (or will be) pinned, by map name.
    pub(crate) paths: Vec<(&'static str, PathBuf)>,
    /// Compatible maps were pinned already: the daemon restarts on them.
    pub(crate) reused: bool,
    _lock: File,
}

#[derive(Debug)]
pub(crate) enum PinError {
    /// Another daemon holds the pinned state.
    Busy(PathBuf),
    /// Pinning cannot be used here (no bpffs, no permission).
    Unavailable(anyhow::Error),
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy(dir) => write!(
                f,
                "another tracer is running with the pinned state in {}: stop it, or run this one \
                 with --no-pin (or another --pin-dir)",
                dir.display()
            ),
            Self::Unavailable(err) => write!(f, "{err:#}"),
        }
    }
}

impl std::error::Error for PinError {}

/// A pinned map, and what it must look like to be reused.
pub(crate) struct Shape {
    /// The map's name in the object (`tracer_common::names`).
    pub(crate) map: &'static str,
    pub(crate) key_size: usize,
    pub(crate) value_size: usize,
    pub(crate) max_entries: u32,
}

impl Shape {
    /// The pin's file name: the map's name and the records' layout version.
    fn file_name(&self) -> String {
        format!("{}_v{RECORD_VERSION}", self.map.to_ascii_lowercase())
    }
}

impl PinDir {
    /// Mounts bpffs if needed, creates `dir` (mode 0700), takes the lock, and removes pins the
    /// daemon cannot trust. Errors mean pinning is unavailable; another daemon holding the lock is
    /// reported as such.
    pub(crate) fn open(dir: &Path, shapes: &[Shape]) -> Result<Self, PinError> {
        let unavailable = PinError::Unavailable;
        ensure_bpffs().map_err(unavailable)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .map_err(unavailable)?;
        let lock = File::open(dir)
            .with_context(|| format!("opening {}", dir.display()))
            .map_err(unavailable)?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PinError::Busy(dir.to_path_buf()));
        }
        let paths: Vec<(&'static str, PathBuf)> = shapes
            .iter()
            .map(|shape| (shape.map, dir.join(shape.file_name())))
            .collect();
        remove_stale(dir, shapes, &paths).map_err(unavailable)?;
        Ok(Self {
            reused: paths.iter().all(|(_, path)| path.exists()),
            paths,
            _lock: lock,
        })
    }
}

/// Removes pins of other record versions (any `*_v*` file that is not a current pin), and the
/// current pins whose maps have another shape.
fn remove_stale(dir: &Path, shapes: &[Shape], current: &[(&str, PathBuf)]) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let path = entry.path();
        let name = entry.file_name();
        let pinned_by_us = name.to_str().is_some_and(|n| n.contains("_v"));
        if pinned_by_us && !current.iter().any(|(_, p)| *p == path) {
            tracing::warn!(
                "removing {}, pinned by an incompatible version",
                path.display()
            );
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (shape, (_, path)) in shapes.iter().zip(current) {
        if path.exists() && !compatible(path, shape) {
            tracing::warn!(
                "removing {}: its map does not have the layout of this version",
                path.display()
            );
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn compatible(path: &Path, shape: &Shape) -> bool {
    let Ok(map) = MapData::from_pin(path) else {
        return false;
    };
    let Ok(info) = map.info() else {
        return false;
    };
    matches!(info.map_type(), Ok(MapType::Hash))
        && info.key_size() as usize == shape.key_size
        && info.value_size() as usize == shape.value_size
        && info.max_entries() == shape.max_entries
}

fn ensure_bpffs() -> Result<()> {
    if !super::mounts::is_mounted(&super::mounts::current()?, BPFFS, "bpf") {
        super::mounts::mount("bpffs", BPFFS, "bpf")
            .with_context(|| format!("bpffs is not mounted at {BPFFS} and mounting it failed"))?;
    }
    Ok(())
}
