//! Builds the guest's initramfs: static busybox, the few modules needed to mount the shared root
//! (virtio-pci, virtiofs, overlay and what they depend on, decompressed so busybox's `insmod`
//! loads them), and an `/init` that mounts the host's root read-only under a tmpfs overlay, mounts
//! the results share, and `switch_root`s into it. The archive (newc cpio, uncompressed) is written
//! here rather than with `cpio`, one package less on the host.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Unpacked;

/// The modules the guest needs before it can mount anything; their dependencies come from
/// modules.dep. Those a kernel has built in (trixie's virtio and fuse) are skipped.
const NEEDED_MODULES: [&str; 6] = [
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "overlay",
];

/// Where the guest finds things; the tags match the virtiofs shares QEMU is given.
pub(crate) struct Layout<'a> {
    pub root_tag: &'a str,
    pub out_tag: &'a str,
    /// The workspace's share, mounted at the workspace's own path by stage 2.
    pub work_tag: &'a str,
    /// Mount point of the results share in the guest.
    pub out_mount: &'a str,
    /// What pid 1 runs after `switch_root`, a path inside the new root.
    pub stage2: &'a str,
}

/// Writes the initramfs for `kernel` to `path`, unless the file there already holds exactly that.
pub(crate) fn build(kernel: &Unpacked, layout: &Layout, path: &Path) -> Result<()> {
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let dep = fs::read_to_string(kernel.modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", kernel.modules.display()))?;
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let order = load_order(
        &NEEDED_MODULES,
        &parse_modules_dep(&dep),
        &builtin_names(&builtin),
    )
    .with_context(|| format!("kernel {}", kernel.release))?;

    let mut cpio = Cpio::default();
    for dir in [
        "bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut names = Vec::new();
    for module in &order {
        let name = module_name(module);
        let data = decompressed(&kernel.modules.join(module))?;
        cpio.file(&format!("modules/{name}.ko"), 0o644, &data);
        names.push(name);
    }
    cpio.file(
        "init",
        0o755,
        init_script(&names, &kernel.modules, layout).as_bytes(),
    );
    let bytes = cpio.finish();
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The first stage, run by busybox as pid 1 in the initramfs. It makes every mount the command
/// sees, with busybox: each program started from the shared root costs far more (FUSE lookups,
/// code translated again under emulation), so the second stage starts nothing but the command.
fn init_script(modules: &[String], module_tree: &Path, layout: &Layout) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /modules/{m}.ko || fail \"cannot load module {m}\"\n"))
        .collect();
    let module_tree = module_tree.to_string_lossy();
    let Layout {
        root_tag,
        out_tag,
        out_mount,
        stage2,
        ..
    } = layout;
    format!(
        r#"#!/bin/busybox sh
# Stage 1 (xtask vm): mount the host's root read-only with a tmpfs overlay on top, then
# switch_root into it (not chroot: the kernel runs modprobe in pid 1's root).
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{
    echo "tcpstate-vm: $*" >&2
    echo o > /proc/sysrq-trigger
    sleep 30
}}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{insmods}mount -t virtiofs -o ro {root_tag} /lower || fail "cannot mount the shared root"
mount -t tmpfs -o mode=0755 overlay-rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay"
mkdir -p /newroot{out_mount}
mount -t virtiofs {out_tag} /newroot{out_mount} || fail "cannot mount the results share"
for fs in proc sys dev; do
    mount --move /$fs /newroot/$fs
done
cd /newroot
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs tmp
mkdir -p dev/pts dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs dev/shm
ln -sf /proc/self/fd dev/fd
ln -sf /proc/self/fd/0 dev/stdin
ln -sf /proc/self/fd/1 dev/stdout
ln -sf /proc/self/fd/2 dev/stderr
mount -t bpf bpf sys/fs/bpf
mount -t tracefs tracefs sys/kernel/tracing
mount -t debugfs debugfs sys/kernel/debug
mount -t cgroup2 cgroup2 sys/fs/cgroup
# The kernel's own modules, for the modprobe it runs on demand (sock_diag, nf_tables, veth...).
# lib is usually a relative link to usr/lib, which resolves inside /newroot.
release=$(uname -r)
mkdir -p lib/modules/$release
mount --bind /newroot{module_tree} lib/modules/$release || fail "cannot mount the module tree"
ip link set lo up
hostname -F etc/hostname 2>/dev/null
cd /
exec switch_root /newroot /bin/bash {stage2}
"#
    )
}

/// modules.dep as a map from a module's name to its path and its dependencies' paths.
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut modules = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        modules.insert(module_name(path), (path.trim().to_owned(), deps));
    }
    modules
}

/// The names of the modules listed in modules.builtin.
fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect()
}

/// `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs`; `-` and `_` are the same in module names.
fn module_name(path: &str) -> String {
    let file = path.trim().rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files to load, each after the modules it depends on.
fn load_order(
    wanted: &[&str],
    modules: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        modules: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some((path, deps)) = modules.get(name) else {
            bail!("modules.dep has no module {name}");
        };
        for dep in deps {
            visit(&module_name(dep), modules, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        if builtin.contains(*name) && !modules.contains_key(*name) {
            continue;
        }
        if !modules.contains_key(*name) {
            bail!("the kernel has no module {name}, built in or not");
        }
        visit(name, modules, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// A module file's contents, decompressed with the host's xz/zstd/gzip when it is compressed.
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        super::ensure_host_packages(&[("/usr/bin/zstd", "zstd")])?;
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{} is no module file this runner knows", path.display());
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot start {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as its initramfs. Times are 0 so
/// the same contents make the same bytes (the cache compares them).
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | permissions, 1, (0, 0), data);
    }

    fn char_device(&mut self, name: &str, permissions: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | permissions, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let header = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // device major
            0, // device minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // checksum (unused by newc)
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in header {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.inode = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"#!x\n");
        let bytes = cpio.finish();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000001000081ed000000000000000000000001\
             0000000000000004\
             00000000000000000000000000000000\
             0000000500000000"
        );
        // 110 header + 5 name bytes = 115, padded to 116; then 4 data bytes.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"#!x\n");
        assert_eq!(&bytes[120..126], b"070701");
        assert!(bytes.len().is_multiple_of(4));
        let trailer = &bytes[120..];
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
    }

    #[test]
    fn device_numbers_go_in_rdev() {
        let mut cpio = Cpio::default();
        cpio.char_device("dev/console", 0o600, 5, 1);
        let header = std::str::from_utf8(&cpio.bytes[..110]).unwrap();
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..94], "0000000500000001");
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "\
kernel/fs/fuse/virtiofs.ko.xz: kernel/fs/fuse/fuse.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/fs/fuse/fuse.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
";
        let modules = parse_modules_dep(dep);
        let order = load_order(
            &["virtio_pci", "virtiofs", "overlay"],
            &modules,
            &BTreeSet::new(),
        )
        .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        let position = |n: &str| names.iter().position(|m| m == n).unwrap();
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(position("virtio") < position("virtio_ring"));
        assert!(position("virtio_ring") < position("virtio_pci"));
        assert!(position("virtio_pci_modern_dev") < position("virtio_pci"));
        assert!(position("fuse") < position("virtiofs"));
    }

    #[test]
    fn builtin_modules_are_skipped_and_missing_ones_named() {
        let modules = parse_modules_dep("kernel/fs/overlayfs/overlay.ko.xz:\n");
        let builtin = builtin_names("kernel/fs/fuse/fuse.ko\nkernel/fs/fuse/virtiofs.ko\n");
        let order = load_order(&["fuse", "virtiofs", "overlay"], &modules, &builtin).unwrap();
        assert_eq!(order, ["kernel/fs/overlayfs/overlay.ko.xz"]);
        let err = load_order(&["nine_p"], &modules, &builtin).unwrap_err();
        assert!(err.to_string().contains("nine_p"), "{err}");
    }

    #[test]
    fn module_names_drop_folders_and_compression() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko.zst"), "virtiofs");
        assert_eq!(
            module_name("kernel/drivers/iommu/virtio-iommu.ko"),
            "virtio_iommu"
        );
    }
}
