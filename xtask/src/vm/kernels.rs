//! Fetches a Debian cloud kernel: finds the newest `linux-image-<series>.*-cloud-amd64` in the
//! kernel's suites with the host's own apt tools pointed at a private index
//! (`$CARGO_HOME/tcpstate-kernels/<kernel>/apt`), downloads it with `apt-get download`, unpacks it with `dpkg-deb -x`
//! and indexes its modules with `depmod -b`. What is unpacked is reused on later runs without
//! touching the network; `refresh` looks the newest version up again.
use std::{
    cmp::Ordering,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{Archive, Kernel};

/// A kernel unpacked on the host, ready to boot.
pub(crate) struct Unpacked {
    /// `uname -r` in the guest, e.g. `6.1.0-41-cloud-amd64`.
    pub release: String,
    /// The Debian package and version it came from.
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The module tree, `…/lib/modules/<release>`, with the `modules.dep` depmod made.
    pub modules: PathBuf,
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Written last, after a tree was unpacked and indexed: "<package> <version> <release>".
const STAMP: &str = "kernel.txt";

/// The kernel unpacked under `dir` (`$CARGO_HOME/tcpstate-kernels/<kernel>`), fetching it first when there is none
/// or when `refresh` asks for the newest one again.
pub(crate) fn prepare(kernel: &Kernel, dir: &Path, refresh: bool) -> Result<Unpacked> {
    if !refresh && let Some(unpacked) = cached(dir)? {
        return Ok(unpacked);
    }
    let apt = Apt::new(kernel, dir)?;
    eprintln!(
        "xtask: vm {}: looking up the newest linux-image-{}.*-cloud-amd64 in {}",
        kernel.name,
        kernel.series,
        suite_names(kernel)
    );
    if let Err(err) = apt.update() {
        // Asked to refresh without a mirror: the kernel already here still proves something.
        if let Some(unpacked) = cached(dir)? {
            eprintln!(
                "xtask: vm {}: {err:#}; booting the kernel fetched before, {} {}",
                kernel.name, unpacked.package, unpacked.version
            );
            return Ok(unpacked);
        }
        return Err(err);
    }
    let (package, version) = apt.newest_image(kernel.series)?;
    if let Some(unpacked) = cached(dir)?
        && unpacked.package == package
        && unpacked.version == version
    {
        return Ok(unpacked);
    }
    let deb = apt.download(&package, &version)?;
    unpack(dir, &deb, &package, &version)?;
    // Only the newest package is kept: older ones would pile up at 30-40 MB each.
    if let Ok(entries) = fs::read_dir(deb.parent().unwrap_or(dir)) {
        for entry in entries.flatten() {
            if entry.path() != deb && entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    cached(dir)?.context("the unpacked kernel vanished right after unpacking")
}

fn suite_names(kernel: &Kernel) -> String {
    let names: Vec<&str> = kernel.suites.iter().map(|(_, suite)| *suite).collect();
    names.join(", ")
}

/// The tree unpacked by an earlier run, when it is complete.
fn cached(dir: &Path) -> Result<Option<Unpacked>> {
    let Ok(stamp) = fs::read_to_string(dir.join(STAMP)) else {
        return Ok(None);
    };
    let mut words = stamp.split_whitespace();
    let (Some(package), Some(version), Some(release)) = (words.next(), words.next(), words.next())
    else {
        return Ok(None);
    };
    let root = dir.join("root");
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let modules = root.join(format!("lib/modules/{release}"));
    if !vmlinuz.is_file() || !modules.join("modules.dep").is_file() {
        return Ok(None);
    }
    Ok(Some(Unpacked {
        release: release.to_owned(),
        package: package.to_owned(),
        version: version.to_owned(),
        vmlinuz,
        modules,
    }))
}

/// Unpacks the package beside the current tree, indexes its modules, then swaps it in, so an
/// interrupted run never leaves a half-unpacked tree that looks complete.
fn unpack(dir: &Path, deb: &Path, package: &str, version: &str) -> Result<()> {
    eprintln!("xtask: vm: unpacking {package} {version}");
    let fresh = dir.join("root.new");
    remove_dir_if_present(&fresh)?;
    fs::create_dir_all(&fresh).with_context(|| format!("creating {}", fresh.display()))?;
    run_quiet(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&fresh),
        "dpkg-deb -x",
    )?;
    let release = release_of(&fresh.join("boot"))
        .with_context(|| format!("{package} has no boot/vmlinuz-<release>"))?;
    // trixie's packages put modules in usr/lib/modules; the host's depmod (kmod 30) and the
    // bind mount in the guest look in lib/modules.
    if !fresh.join("lib").exists() && fresh.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", fresh.join("lib"))
            .with_context(|| format!("linking {}/lib to usr/lib", fresh.display()))?;
    }
    if !fresh.join("lib/modules").join(&release).is_dir() {
        bail!("{package} has no lib/modules/{release}");
    }
    // modules.dep, modules.alias…: the guest's own on-demand modprobe and the initramfs need them.
    run_quiet(
        Command::new("depmod").arg("-b").arg(&fresh).arg(&release),
        "depmod",
    )?;
    let root = dir.join("root");
    remove_dir_if_present(&root)?;
    fs::rename(&fresh, &root)
        .with_context(|| format!("renaming {} to {}", fresh.display(), root.display()))?;
    fs::write(dir.join(STAMP), format!("{package} {version} {release}\n"))
        .with_context(|| format!("writing {}", dir.join(STAMP).display()))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The release named by the one `vmlinuz-<release>` in `boot`.
fn release_of(boot: &Path) -> Result<String> {
    for entry in fs::read_dir(boot).with_context(|| format!("reading {}", boot.display()))? {
        let name = entry?.file_name();
        if let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) {
            return Ok(release.to_owned());
        }
    }
    bail!("no vmlinuz-<release> in {}", boot.display())
}

/// Runs a tool, failing with the lines it printed about why (apt's `E:` lines when there are).
fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, why_failed(&stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt's errors on one line: its `E:` lines, or else the last line it printed.
fn why_failed(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("E: "))
        .collect();
    if errors.is_empty() {
        stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_owned()
    } else {
        errors.join("; ")
    }
}

/// apt-get with its own sources, index and download cache under `<cache>/<kernel>/apt`: the
/// host's apt configuration (proxies…) still applies, its package lists are left alone.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(kernel: &Kernel, dir: &Path) -> Result<Apt> {
        let dir = dir.join("apt");
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mirrors = host_mirrors();
        let signed_by = if Path::new(KEYRING).is_file() {
            format!(" signed-by={KEYRING}")
        } else {
            String::new()
        };
        let mut sources = String::new();
        for (archive, suite) in kernel.suites {
            let uri = match archive {
                Archive::Main => &mirrors.main,
                Archive::Security => &mirrors.security,
            };
            // Only the package lists: no translations, no AppStream metadata.
            sources.push_str(&format!(
                "deb [arch=amd64 target=Packages{signed_by}] {uri} {suite} main\n"
            ));
        }
        let list = dir.join("sources.list");
        fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        Ok(Apt { dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        let dir = self.dir.display();
        for option in [
            format!("Dir::Etc::sourcelist={dir}/sources.list"),
            "Dir::Etc::sourceparts=-".to_owned(),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::Cache={dir}/cache"),
            // Nothing here is installed: the host's package state is irrelevant.
            "Dir::State::status=/dev/null".to_owned(),
            "APT::Architecture=amd64".to_owned(),
            "APT::Architectures=amd64".to_owned(),
            "Acquire::Languages=none".to_owned(),
            // Plain lists, read by newest_image (Debian's docker images default to gzipped ones).
            "Acquire::GzipIndexes=false".to_owned(),
            // The folder may not be reachable by the `_apt` user; nothing is installed anyway.
            "APT::Sandbox::User=root".to_owned(),
        ] {
            cmd.args(["-o", &option]);
        }
        cmd.arg("-q").args(args);
        cmd
    }

    fn update(&self) -> Result<()> {
        let out = self
            .command(&["update"])
            .output()
            .context("cannot start apt-get update")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 when a mirror cannot be reached, with only a warning.
        let unreachable = stderr
            .lines()
            .find_map(|l| l.strip_prefix("W: Failed to fetch "));
        if !out.status.success() || unreachable.is_some() {
            let why = unreachable.map_or_else(|| why_failed(&stderr), str::to_owned);
            bail!("cannot read the kernel's Debian package index: {why}");
        }
        Ok(())
    }

    /// The newest cloud image package of `series` in the index (name, version).
    fn newest_image(&self, series: &str) -> Result<(String, String)> {
        let lists = self.dir.join("lists");
        let mut newest: Option<(String, String)> = None;
        for entry in fs::read_dir(&lists).with_context(|| format!("reading {}", lists.display()))? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with("_Packages") {
                continue;
            }
            let file =
                fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
            let found = newest_in(BufReader::new(file).lines().map_while(Result::ok), series);
            newest = newer(newest, found);
        }
        newest.with_context(|| {
            format!(
                "no linux-image-{series}.*-cloud-amd64 in the package index {}",
                lists.display()
            )
        })
    }

    /// The package's `.deb` in `apt/debs`, downloaded unless an earlier run did.
    fn download(&self, package: &str, version: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let deb = debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if deb.is_file() {
            return Ok(deb);
        }
        eprintln!("xtask: vm: downloading {package} {version}");
        run_quiet(
            self.command(&["download", &format!("{package}={version}")])
                .current_dir(&debs),
            "apt-get download",
        )
        .with_context(|| format!("cannot download {package} {version}"))?;
        if !deb.is_file() {
            bail!("apt-get download did not leave {} behind", deb.display());
        }
        Ok(deb)
    }
}

/// Whether `name` is a signed cloud image of the kernel series, e.g. `linux-image-6.1.0-41-cloud-amd64`
/// or `linux-image-6.12.57+deb13-cloud-amd64` (not the `-unsigned` or `-dbg` packages).
fn is_cloud_image(name: &str, series: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|n| n.strip_suffix("-cloud-amd64"))
        .and_then(|n| n.strip_prefix(series))
        .and_then(|n| n.strip_prefix('.'))
        .is_some_and(|rest| {
            rest.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.~-".contains(c))
        })
}

/// The newest cloud image of `series` among the stanzas of a `Packages` file.
fn newest_in(lines: impl Iterator<Item = String>, series: &str) -> Option<(String, String)> {
    let mut newest = None;
    let mut package: Option<String> = None;
    for line in lines {
        if line.is_empty() {
            package = None;
        } else if let Some(name) = line.strip_prefix("Package: ") {
            package = Some(name.trim().to_owned()).filter(|n| is_cloud_image(n, series));
        } else if let Some(version) = line.strip_prefix("Version: ")
            && let Some(name) = package.take()
        {
            newest = newer(newest, Some((name, version.trim().to_owned())));
        }
    }
    newest
}

fn newer(a: Option<(String, String)>, b: Option<(String, String)>) -> Option<(String, String)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if compare_versions(&b.1, &a.1) == Ordering::Greater {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// Debian's version order (dpkg's `verrevcmp`): epoch, then upstream version, then revision.
fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) => (e.parse().unwrap_or(0), rest),
            None => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| compare_part(ra.as_bytes(), rb.as_bytes()))
}

fn compare_part(a: &[u8], b: &[u8]) -> Ordering {
    // '~' sorts before everything, even the end; letters before other characters.
    fn order(c: Option<&u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
            Some(b'~') => -1,
            Some(c) => i32::from(*c) + 256,
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while a.get(i).is_some_and(|c| !c.is_ascii_digit())
            || b.get(j).is_some_and(|c| !c.is_ascii_digit())
        {
            let (ac, bc) = (order(a.get(i)), order(b.get(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
            if !x.is_ascii_digit() || !y.is_ascii_digit() {
                break;
            }
            if first_diff == Ordering::Equal {
                first_diff = x.cmp(y);
            }
            i += 1;
            j += 1;
        }
        if a.get(i).is_some_and(u8::is_ascii_digit) {
            return Ordering::Greater;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// The Debian mirrors the host's apt uses: its main archive and its security archive.
struct Mirrors {
    main: String,
    security: String,
}

fn host_mirrors() -> Mirrors {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    text.push('\n');
    let mut deb822 = String::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(content) = fs::read_to_string(&path) else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some("list") => text.push_str(&content),
                Some("sources") => deb822.push_str(&content),
                _ => continue,
            }
            text.push('\n');
            deb822.push_str("\n\n");
        }
    }
    let mut entries = one_line_entries(&text);
    entries.extend(deb822_entries(&deb822));
    mirrors_of(&entries)
}

/// (URI, suite) pairs of `deb` lines in the one-line format.
fn one_line_entries(text: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        // Skip the `[option=value …]` block.
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push((uri.to_owned(), suite.to_owned()));
        }
    }
    entries
}

/// (URI, suite) pairs of `Types: deb` stanzas in the deb822 format.
fn deb822_entries(text: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites) = ("", "", "");
        for line in stanza.lines() {
            if let Some((key, value)) = line.split_once(':') {
                match key.trim().to_ascii_lowercase().as_str() {
                    "types" => types = value,
                    "uris" => uris = value,
                    "suites" => suites = value,
                    _ => {}
                }
            }
        }
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                entries.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    entries
}

/// The first HTTP(S) entries naming a Debian suite (main archive) and a `-security` suite;
/// deb.debian.org where the host names none.
fn mirrors_of(entries: &[(String, String)]) -> Mirrors {
    const CODENAMES: [&str; 7] = [
        "buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable",
    ];
    // Third-party repositories are not Debian mirrors even when they name a Debian suite.
    let http = |uri: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://")) && uri.contains("debian")
    };
    let trim = |uri: &str| uri.trim_end_matches('/').to_owned();
    let security = entries
        .iter()
        .find(|(uri, suite)| http(uri) && suite.ends_with("-security"))
        .map(|(uri, _)| trim(uri));
    let main = entries
        .iter()
        .find(|(uri, suite)| {
            let codename = suite.split('-').next().unwrap_or("");
            http(uri) && !suite.ends_with("-security") && CODENAMES.contains(&codename)
        })
        .map(|(uri, _)| trim(uri));
    Mirrors {
        main: main.unwrap_or_else(|| "http://deb.debian.org/debian".to_owned()),
        security: security.unwrap_or_else(|| "http://deb.debian.org/debian-security".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_are_ordered_like_dpkg() {
        use Ordering::*;
        for (a, b, want) in [
            ("6.1.158-1", "6.1.158-1", Equal),
            ("6.1.158-1", "6.1.99-1", Greater),
            ("6.12.57-1", "6.12.117-1", Less),
            ("5.10.244-1", "5.10.237-1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("1:0.1-1", "9.9-1", Greater),
            ("1.0a-1", "1.0-1", Greater),
            ("1.0+b1", "1.0", Greater),
            ("1.00-1", "1.0-1", Equal),
            ("6.12.115+deb13.1-1", "6.12.115+deb13-1", Greater),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn cloud_images_are_told_from_their_neighbours() {
        assert!(is_cloud_image("linux-image-6.1.0-41-cloud-amd64", "6.1"));
        assert!(is_cloud_image(
            "linux-image-6.12.57+deb13-cloud-amd64",
            "6.12"
        ));
        assert!(is_cloud_image("linux-image-5.10.0-36-cloud-amd64", "5.10"));
        assert!(!is_cloud_image(
            "linux-image-6.12.57+deb13-cloud-amd64",
            "6.1"
        ));
        assert!(!is_cloud_image(
            "linux-image-6.1.0-41-cloud-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_cloud_image(
            "linux-image-6.1.0-41-cloud-amd64-dbg",
            "6.1"
        ));
        assert!(!is_cloud_image("linux-image-6.1.0-41-amd64", "6.1"));
        assert!(!is_cloud_image("linux-image-cloud-amd64", "6.1"));
    }

    #[test]
    fn the_newest_image_is_found_in_a_packages_file() {
        let packages = "\
Package: linux-image-6.1.0-9-cloud-amd64
Source: linux-signed-amd64 (6.1.27+1)
Version: 6.1.27-1
Depends: kmod

Package: linux-image-6.1.0-41-cloud-amd64
Version: 6.1.158-1

Package: linux-image-6.1.0-41-cloud-amd64-dbg
Version: 6.1.999-1

Package: linux-image-cloud-amd64
Version: 6.1.999-1

Package: linux-image-6.1.0-10-cloud-amd64
Version: 6.1.38-1
";
        let newest = newest_in(packages.lines().map(str::to_owned), "6.1");
        assert_eq!(
            newest,
            Some((
                "linux-image-6.1.0-41-cloud-amd64".to_owned(),
                "6.1.158-1".to_owned()
            ))
        );
        assert_eq!(newest_in(packages.lines().map(str::to_owned), "5.10"), None);
    }

    #[test]
    fn mirrors_come_from_the_hosts_sources() {
        let deb822 = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security/
Suites: bookworm-security
Components: main
";
        let mirrors = mirrors_of(&deb822_entries(deb822));
        assert_eq!(mirrors.main, "http://deb.debian.org/debian");
        assert_eq!(mirrors.security, "http://security.example/debian-security");

        let list = "\
# deb cdrom:[Debian]/ bookworm main
deb-src http://src.example/debian bookworm main
deb https://packages.example.com/repo bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian/ bookworm main
";
        let mirrors = mirrors_of(&one_line_entries(list));
        assert_eq!(mirrors.main, "http://ftp.example/debian");
        assert_eq!(mirrors.security, "http://deb.debian.org/debian-security");

        let none = mirrors_of(&[]);
        assert_eq!(none.main, "http://deb.debian.org/debian");
    }
}
