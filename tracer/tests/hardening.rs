//! A root daemon on every host must not cause an incident: it keeps the true ages of sockets
//! across restarts, leaves nothing attached when it dies, refuses to share its pinned state, counts
//! what a flood makes it lose and heals afterwards, and stays within its bounds.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Namespace, TRACER, Tracer, Workload, kernel_features, of_kind, stuck_on_port, time_scale,
};
use tracer::enrich::socket_list as kernel_view;
use tracer_common::RECORD_VERSION;

/// A pin directory of the test's own under bpffs, removed at the end.
struct PinDir(String);

impl PinDir {
    fn new(name: &str) -> PinDir {
        let dir = format!("/sys/fs/bpf/tcpstate-test-{}-{name}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ids of the BPF programs a process holds, from its file descriptors.
fn program_ids(pid: u32) -> HashSet<u32> {
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// The kernel's own list of loaded programs.
fn loaded_program_ids() -> HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// After SIGTERM, SIGINT and even SIGKILL, none of the tracer's programs stays loaded.
#[test]
fn nothing_is_left_attached() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let tracer = Tracer::start(&[]);
        let ids = program_ids(tracer.pid());
        // The transition and the TIME-WAIT programs (accept() only while logging transitions).
        assert!(ids.len() >= 2, "the tracer holds its programs: {ids:?}");
        assert!(ids.is_subset(&loaded_program_ids()));
        let done = tracer.stop_with(signal);
        if signal != libc::SIGKILL {
            assert!(done.status.success(), "signal {signal}: {}", done.stderr);
        }
        // Programs are freed once their last reference goes; give the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<u32> = ids.intersection(&loaded_program_ids()).copied().collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "signal {signal}: programs {left:?} still loaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A CLOSE_WAIT socket keeps its true age when the tracer is killed and restarted: the kernel kept
/// its record in the pinned map.
#[test]
fn a_restart_keeps_true_ages() {
    let pins = PinDir::new("restart");
    if !kernel_features().socket_cookies {
        return says_nothing_is_pinned(&pins);
    }
    let first = Tracer::start(&["--pin-dir", &pins.0]);
    let server = Workload::close_wait("127.0.0.1", 2, None);
    let leaked_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    first.stop_with(libc::SIGKILL);
    // Started: ready, its start-up snapshot in.
    let second = Tracer::start(&["--pin-dir", &pins.0, "--stuck", "close-wait=1s"]);
    assert!(second.stderr().contains("restart: "), "{}", second.stderr());
    let mine = |events: &[Value]| stuck_on_port(events, server.listen_port);
    second.wait_for(Duration::from_secs(10), "2 stuck reports", |events| {
        mine(events).len() >= 2
    });
    let elapsed = leaked_at.elapsed().as_secs_f64() * 1e3;
    let done = second.stop();
    for e in mine(&done.events) {
        assert_eq!(e["age_known"], true, "the age survived the restart: {e}");
        let age = e["age_ms"].as_f64().unwrap();
        assert!(
            age >= 3000.0 && age <= elapsed + 100.0,
            "true age {age} ms, leaked {elapsed} ms ago: {e}"
        );
        assert_eq!(e["pid"], server.pid);
    }
    // What it writes is not world-writable.
    for path in [
        pins.0.clone(),
        format!("{}/sockets_v{RECORD_VERSION}", pins.0),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o002, 0, "{path} is world-writable ({mode:o})");
    }
    assert_eq!(
        std::fs::metadata(&pins.0).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// A second tracer on the same pinned state refuses with a clear message; without pinning it runs
/// side by side.
#[test]
fn a_second_instance_refuses_or_runs_side_by_side() {
    let pins = PinDir::new("second");
    if !kernel_features().socket_cookies {
        // Nothing pinned, nothing to share: tracers run side by side.
        return says_nothing_is_pinned(&pins);
    }
    let first = Tracer::start(&["--pin-dir", &pins.0]);
    let out = Command::new(TRACER)
        .args(["--pin-dir", &pins.0, "--duration", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another tracer is running with the pinned state"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    let beside = Tracer::start(&["--no-pin"]);
    drop(beside);
    drop(first);
}

fn bpf_syscall(cmd: u32, attr: &mut aya_obj::generated::bpf_attr) -> i64 {
    // SAFETY: the attribute is a zeroed bpf_attr with the command's member filled in.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut aya_obj::generated::bpf_attr,
            size_of::<aya_obj::generated::bpf_attr>(),
        )
    }
}

/// Where the programs name sockets by address (before Linux 5.12), a reused address cannot be
/// told from the socket a record was kept for: nothing is pinned, and the tracer says so.
fn says_nothing_is_pinned(pins: &PinDir) {
    let tracer = Tracer::start(&["--pin-dir", &pins.0]);
    let stderr = tracer.stderr();
    assert!(
        stderr.contains("socket ages do not survive a restart"),
        "{stderr}"
    );
    assert!(!stderr.contains("restart:"), "{stderr}");
    drop(tracer);
    assert!(
        !Path::new(&format!("{}/sockets_v{RECORD_VERSION}", pins.0)).exists(),
        "nothing pinned"
    );
}

/// Pins a map of the wrong shape (a plain hash, 4-byte values) at `path`.
fn pin_foreign_map(path: &str) {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};
    // SAFETY: all-zero is the required initial state of bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_1.map_type = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    attr.__bindgen_anon_1.key_size = 8;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 16;
    // Kernels before 5.11 charge maps to the locked-memory limit of their user (root here,
    // whose tracers of the tests running beside this one count too): lift it, as the tracer
    // itself does.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a local struct; failing leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let fd = bpf_syscall(bpf_cmd::BPF_MAP_CREATE as u32, &mut attr);
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path).unwrap();
    // SAFETY: as above.
    let mut pin: bpf_attr = unsafe { std::mem::zeroed() };
    pin.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    pin.__bindgen_anon_4.bpf_fd = fd as u32;
    assert_eq!(
        bpf_syscall(bpf_cmd::BPF_OBJ_PIN as u32, &mut pin),
        0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: closing the descriptor the kernel gave.
    unsafe { libc::close(fd as i32) };
}

/// Pins left by an incompatible version are detected and replaced, not trusted.
#[test]
fn stale_pins_are_replaced() {
    let pins = PinDir::new("stale");
    if !kernel_features().socket_cookies {
        return says_nothing_is_pinned(&pins);
    }
    std::fs::create_dir_all(&pins.0).unwrap();
    pin_foreign_map(&format!("{}/sockets_v{RECORD_VERSION}", pins.0));
    pin_foreign_map(&format!("{}/sockets_v0", pins.0));
    let tracer = Tracer::start(&["--pin-dir", &pins.0]);
    let stderr = tracer.stderr();
    assert!(
        stderr.contains("sockets_v0, pinned by an incompatible version"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "sockets_v{RECORD_VERSION}: its map does not have the layout"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("restart:"),
        "a foreign map is not a restart: {stderr}"
    );
    drop(tracer);
    assert!(!Path::new(&format!("{}/sockets_v0", pins.0)).exists());
    let map =
        aya::maps::MapData::from_pin(format!("{}/sockets_v{RECORD_VERSION}", pins.0)).unwrap();
    assert_eq!(
        map.info().unwrap().value_size() as usize,
        size_of::<tracer_common::SockRecord>()
    );
}

/// Counts of sockets by state in one namespace, from the kernel's own list.
fn kernel_counts(ns: &Namespace) -> BTreeMap<String, u64> {
    let netns = ns.inode().unwrap();
    let (listing, listed) =
        kernel_view::list_namespaces(&HashMap::from([(netns, ns.holder_pid())]), None).unwrap();
    assert!(listed.contains(&netns));
    let mut counts = BTreeMap::new();
    for socket in listing.iter().filter(|s| s.endpoints.netns == netns) {
        *counts.entry(socket.state.name().to_owned()).or_default() += 1;
    }
    counts
}

/// The ring buffer overflows while the reader is paused: the transition lines the kernel could
/// not deliver are counted as lost, while the transitions themselves are all counted (the kernel
/// counts them itself), and the table still holds what the kernel lists.
#[test]
fn an_overflow_is_counted_and_healed() {
    let ns = Namespace::new().unwrap();
    let tracer = Tracer::start(&[
        "--netns",
        &ns.path(),
        "--log-transitions",
        "--ring-buffer-size",
        "4096",
        "--reconcile-interval",
        "1s",
        "--summary-interval",
        "1s",
    ]);
    // SAFETY: pausing and resuming our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    let connections = 400;
    let mut burst = Workload::run("burst", "127.0.0.1", connections, Some(&ns.wrapper()));
    burst.expect_line("done");
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    // A reconciliation after the burst (spaced by the CPU the last one took: longer on a slow
    // machine).
    tracer.wait_for(Duration::from_secs(20), "a reconciliation", |events| {
        of_kind(events, "summary")
            .iter()
            .any(|s| s["reconciliation"]["runs"].as_u64().unwrap_or(0) >= 1)
    });
    let expected_counts = kernel_counts(&ns);
    let done = tracer.stop();
    let summary = of_kind(&done.events, "summary")
        .last()
        .copied()
        .cloned()
        .expect("a final summary");
    let events = &summary["events"];
    let read = events["transitions"].as_u64().unwrap();
    let lost = events["transitions_lost"].as_u64().unwrap();
    let skipped = events["transitions_skipped"].as_u64().unwrap();
    // A handshake completed twice at once (the client's ACK and a retransmitted one on two
    // CPUs, seen under emulation) makes a second child that the kernel drops: LISTEN ->
    // SYN_RECV -> CLOSE, two real transitions more.
    let dropped_children = summary["transitions"]["total"]["SYN_RECV->CLOSE"]
        .as_u64()
        .unwrap_or(0);
    let expected = connections as u64 * xtask::workload::TRANSITIONS_PER_CONNECTION
        + xtask::workload::TRANSITIONS_PER_LISTENER
        + 2 * dropped_children;
    assert!(
        lost > 0,
        "a 4 KiB buffer with a paused reader overflows: {summary}"
    );
    // Skips are counted per program, whatever the namespace (the program did not run to see it):
    // they may include other tests' events.
    assert!(
        read <= expected && expected <= read + skipped,
        "every transition is counted, lost line or not: {summary}"
    );
    let lines = of_kind(&done.events, "transition").len() as u64;
    assert!(
        lines + lost >= read,
        "every transition is a line or a lost line: {lines} lines, {summary}"
    );
    assert!(summary["lost_events"].as_u64().unwrap() >= lost);
    // Said as a warning, not only counted: a health line (within 10 s, or at exit) that names
    // the loss and counts it as the summary does.
    let health = of_kind(&done.events, "health");
    let said = health
        .iter()
        .find(|h| {
            h["grew"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "lost_events")
        })
        .unwrap_or_else(|| panic!("a health line names the lost events: {health:?}"));
    assert_eq!(said["level"], "warn");
    assert!(said["lost_events"].as_u64().unwrap() >= lost.min(1));
    assert!(
        health.last().unwrap()["lost_events"].as_u64().unwrap()
            <= summary["lost_events"].as_u64().unwrap()
    );
    // Healed: the table holds what the kernel lists.
    let table: BTreeMap<String, u64> = summary["sockets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(table, expected_counts, "{summary}");
    assert!(summary["reconciliation"]["runs"].as_u64().unwrap() >= 1);
}

/// A flood: 200,000 short connections and a listener that never accepts, against records bounded
/// at 5,000 sockets (and 2,500 timewait sockets; the flood leaves more than that in TIME-WAIT).
/// The records stay within their bound (what does not fit is counted), memory stays within a
/// bound, and the metrics endpoint keeps answering throughout.
#[test]
fn a_flood_stays_within_bounds() {
    let ns = Namespace::new().unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tracer = Tracer::start(&[
        "--netns",
        &ns.path(),
        "--max-sockets",
        "5000",
        "--metrics-addr",
        &metrics_port.to_string(),
        "--summary-interval",
        "2s",
    ]);
    let backlog = Workload::run("backlog", "127.0.0.1", 500, Some(&ns.wrapper()));
    // 200,000 connections; fewer where the machine is many times slower (an emulated VM of
    // the kernel matrix), still four times what the records hold.
    let connections = (200_000.0 / time_scale()).max(20_000.0) as usize;
    let mut flood = Workload::run("burst", "127.0.0.1", connections, Some(&ns.wrapper()));
    let scraper = std::thread::spawn(move || {
        let mut scrapes = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let mut stream =
                std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("endpoint up");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            use std::io::{Read as _, Write as _};
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut body = String::new();
            stream
                .read_to_string(&mut body)
                .expect("the endpoint answers during the flood");
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            scrapes += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        scrapes
    });
    flood.expect_line("done");
    assert!(scraper.join().unwrap() >= 10);
    std::thread::sleep(Duration::from_secs(3));
    let peak_kib = procfs::process::Process::new(tracer.pid().try_into().unwrap())
        .and_then(|p| p.status())
        .unwrap()
        .vmhwm
        .unwrap();
    drop(backlog);
    let done = tracer.stop();
    let summaries = of_kind(&done.events, "summary");
    for s in &summaries {
        assert!(
            s["tracked"].as_u64().unwrap() <= 5_000 + 2_500,
            "over the bound: {s}"
        );
    }
    let last = summaries.last().unwrap();
    assert!(
        last["unrecorded_sockets"].as_u64().unwrap() > 0,
        "the flood filled the records, and it is counted: {last}"
    );
    assert_eq!(
        last["events"]["transitions_lost"], 0,
        "default sizes lose nothing: {last}"
    );
    // The bound documented in docs/operations.md.
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    eprintln!("flood: peak RSS {peak_kib} KiB");
}
