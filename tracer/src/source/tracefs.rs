//! tracefs: where classic tracepoints are found by name, and where their record layouts are
//! described. Machines often boot without it mounted; the daemon mounts it itself.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY_MOUNT_POINT: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing if it is not mounted yet.
pub(crate) fn ensure_mounted() -> Result<PathBuf> {
    if let Some(path) = mounted_tracefs(&super::mounts::current()?) {
        return Ok(path);
    }
    let target = Path::new(MOUNT_POINT);
    if !target.is_dir() {
        bail!(
            "tracefs is not mounted and {MOUNT_POINT} does not exist (kernel built without tracing?)"
        );
    }
    super::mounts::mount("nodev", MOUNT_POINT, "tracefs").map_err(|err| {
        anyhow::anyhow!("tracefs is not mounted and mounting it at {MOUNT_POINT} failed: {err}")
    })?;
    Ok(target.to_path_buf())
}

/// Finds a tracefs mount at one of the places aya looks.
fn mounted_tracefs(mounts: &[procfs::MountEntry]) -> Option<PathBuf> {
    [MOUNT_POINT, LEGACY_MOUNT_POINT]
        .into_iter()
        .find(|target| super::mounts::is_mounted(mounts, target, "tracefs"))
        .map(PathBuf::from)
}

/// A tracepoint's record layout: field name to (offset, size), from its `format` file.
#[derive(Debug)]
pub(crate) struct Format {
    tracepoint: String,
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub(crate) fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}/{name} is not available ({} unreadable)",
                path.display()
            )
        })?;
        Ok(Self::parse(&format!("{category}/{name}"), &text))
    }

    pub(crate) fn parse(tracepoint: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim().strip_prefix("field:")?;
                let mut parts = line.split(';').map(str::trim);
                let declaration = parts.next()?;
                let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
                let size = parts.next()?.strip_prefix("size:")?.parse().ok()?;
                // "__u8 saddr[4]" -> "saddr"; "const void * skaddr" -> "skaddr"
                let name = declaration.rsplit([' ', '*']).next()?;
                let name = name.split('[').next()?;
                Some((name.to_owned(), (offset, size)))
            })
            .collect();
        Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        }
    }

    /// Checks a field is where, and as wide as, the program reads it.
    pub(crate) fn check(&self, field: &str, offset: usize, size: usize) -> Result<()> {
        match self.fields.get(field) {
            Some(&(at, width)) if at as usize == offset && width as usize == size => Ok(()),
            Some(&(at, width)) => bail!(
                "tracepoint {} field `{field}` is at offset {at} ({width} bytes), the tracer reads \
                 it at {offset} ({size} bytes): unsupported kernel",
                self.tracepoint
            ),
            None => bail!(
                "tracepoint {} has no field `{field}`: unsupported kernel",
                self.tracepoint
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    /// A format file declaring these fields (distinct names), as tracefs writes it.
    fn format_file(fields: &[(String, u32, u32)]) -> String {
        let mut text = "name: inet_sock_set_state\nID: 2287\nformat:\n".to_owned();
        for (i, (name, offset, size)) in fields.iter().enumerate() {
            let declaration = match i % 3 {
                0 => format!("int {name}"),
                1 => format!("const void * {name}"),
                _ => format!("__u8 {name}[{size}]"),
            };
            text += &format!("\tfield:{declaration};\toffset:{offset};\tsize:{size};\tsigned:0;\n");
        }
        text + "\nprint fmt: \"family=%s\"\n"
    }

    fn fields() -> impl Strategy<Value = Vec<(String, u32, u32)>> {
        prop::collection::btree_map("[a-z_][a-z0-9_]{0,15}", (any::<u32>(), any::<u32>()), 0..8)
            .prop_map(|m| m.into_iter().map(|(name, (o, s))| (name, o, s)).collect())
    }

    /// Every field found is named in the text, its numbers too.
    fn written_in(text: &str, format: &Format) -> bool {
        format.fields.iter().all(|(name, (offset, size))| {
            text.contains(name.as_str())
                && text.contains(&offset.to_string())
                && text.contains(&size.to_string())
        })
    }

    proptest! {
        #[test]
        fn fuzz_format_parse_valid(fields in fields()) {
            let format = Format::parse("sock/x", &format_file(&fields));
            for (name, offset, size) in &fields {
                prop_assert!(format.check(name, *offset as usize, *size as usize).is_ok(), "{name}");
            }
            prop_assert_eq!(format.fields.len(), fields.len());
        }

        #[test]
        fn fuzz_format_parse_mutated(text in fields().prop_flat_map(|f| mutated(format_file(&f)))) {
            let format = Format::parse("sock/x", &text);
            prop_assert!(written_in(&text, &format), "{format:?}");
        }

        #[test]
        fn fuzz_format_parse_arbitrary(text in any_text()) {
            let format = Format::parse("sock/x", &text);
            prop_assert!(written_in(&text, &format), "{format:?}");
        }
    }

    const FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_fields() {
        let format = Format::parse("sock/inet_sock_set_state", FORMAT);
        format.check("skaddr", 8, 8).unwrap();
        format.check("oldstate", 16, 4).unwrap();
        format.check("sport", 24, 2).unwrap();
        format.check("saddr_v6", 40, 16).unwrap();
        format.check("common_pid", 4, 4).unwrap();
    }

    #[test]
    fn rejects_missing_moved_or_resized_fields() {
        let format = Format::parse("sock/inet_sock_set_state", FORMAT);
        let err = format.check("daddr", 36, 4).unwrap_err().to_string();
        assert!(err.contains("no field `daddr`"), "{err}");
        let err = format.check("sport", 24, 4).unwrap_err().to_string();
        assert!(err.contains("(2 bytes)"), "{err}");
        let err = format.check("sport", 26, 2).unwrap_err().to_string();
        assert!(err.contains("at offset 24"), "{err}");
    }

    /// The running kernel's layout is the one the programs read.
    #[cfg_attr(
        not(feature = "kernel-tests"),
        ignore = "needs root: cargo xtask test runs it"
    )]
    #[test]
    fn running_kernel_matches_the_programs() {
        let tracefs = ensure_mounted().unwrap();
        let format = Format::read(&tracefs, "syscalls", "sys_exit_accept4").unwrap();
        format
            .check("ret", tracer_common::SYSCALL_RET_OFFSET, 8)
            .unwrap();
        assert!(
            Format::read(Path::new("/nonexistent"), "sock", "x")
                .unwrap_err()
                .to_string()
                .contains("not available")
        );
    }

    #[test]
    fn finds_tracefs_mounts() {
        let found = |text: &str| mounted_tracefs(&crate::source::mounts::parse(text).unwrap());
        let mounts = "proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(found(mounts), Some(PathBuf::from(MOUNT_POINT)));
        let legacy = "debugfs /sys/kernel/debug debugfs rw 0 0\ntracefs /sys/kernel/debug/tracing tracefs rw 0 0\n";
        assert_eq!(found(legacy), Some(PathBuf::from(LEGACY_MOUNT_POINT)));
        assert_eq!(found("tracefs /elsewhere tracefs rw 0 0\n"), None);
        assert_eq!(found(""), None);
    }
}
