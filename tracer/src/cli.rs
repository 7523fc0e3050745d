//! Command-line flags, turned into each stage's settings. Parsing is the only validation users
//! meet first, so every value is checked here with a message that names the flag and the accepted
//! form. A leaf: no stage imports it.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, ValueEnum};
use tracer_common::TcpState;
use tracing_subscriber::filter::LevelFilter;

use crate::{
    core::{self, select::OwnerFilter, stuck::Thresholds},
    export::log::LogFormat,
    source::{
        events::Family,
        filter::SocketFilter,
        privileges::{self, Keep},
        probe::LoadSettings,
    },
    units::nanos,
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tracer",
    version,
    about = "Trace TCP state transitions with eBPF: time spent in each state, stuck sockets, TIME-WAIT.",
    after_help = "Runs as root, or with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYSLOG (what each is for: the systemd unit)."
)]
pub struct Config {
    /// Output format of every event line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// Log every transition. `auto`: yes for a bounded capture (--duration) or on a terminal, no
    /// for a long-running daemon writing to a pipe or the journal.
    #[arg(long, value_enum, default_value_t = When::Auto, num_args = 0..=1,
          default_missing_value = "always", value_name = "WHEN")]
    pub(crate) log_transitions: When,

    /// Stop after this long (e.g. 30s, 5m), printing a final summary.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) duration: Option<Duration>,

    /// Only sockets with one of these local ports (comma-separated or repeated).
    #[arg(long = "lport", visible_alias = "local-port", value_delimiter = ',',
          value_parser = parse_port, value_name = "PORT")]
    pub(crate) local_ports: Vec<u16>,

    /// Only sockets with one of these remote ports (comma-separated or repeated).
    #[arg(long = "rport", visible_alias = "remote-port", value_delimiter = ',',
          value_parser = parse_port, value_name = "PORT")]
    pub(crate) remote_ports: Vec<u16>,

    /// Report only sockets owned by these process ids (comma-separated or repeated): their
    /// transition lines, stuck reports and stuck counts. Totals count every traced socket.
    #[arg(long = "pid", value_delimiter = ',', value_name = "PID")]
    pub(crate) pids: Vec<u32>,

    /// Report only sockets owned by processes with these names (comma-separated or repeated),
    /// as --pid does.
    #[arg(long = "comm", value_delimiter = ',', value_name = "NAME")]
    pub(crate) comms: Vec<String>,

    /// Report only sockets owned by processes in cgroups under this path (e.g. /kubepods), as
    /// --pid does.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub(crate) cgroup: Option<String>,

    /// Report only sockets owned by processes in this container, as --pid does: its id or at
    /// least its first 12 digits, as `docker ps` shows it or `kubectl get pod -o yaml` gives it
    /// (containerd://ID).
    #[arg(long = "container", value_parser = parse_container, value_name = "ID")]
    pub(crate) container: Option<String>,

    /// Only sockets of this network namespace: its inode number, or a path to it
    /// (/proc/PID/ns/net, /run/netns/NAME).
    #[arg(long, value_parser = parse_netns, value_name = "NETNS")]
    pub(crate) netns: Option<u32>,

    /// Only IPv4 sockets (IPv4-mapped IPv6 sockets count as IPv4).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub(crate) ipv4: bool,

    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub(crate) ipv6: bool,

    /// Report a socket as stuck after this long in a state: STATE=DURATION or STATE=off
    /// (repeatable). Defaults: syn-sent=10s close-wait=60s last-ack=60s
    /// fin-wait-1=60s closing=60s fin-wait-2=120s listen=30s syn-recv=10s (listen: a listener
    /// whose accept queue does not drain this long, its process no longer accepting; syn-recv: a
    /// listener with a half-open connection this old, its handshake never completing).
    #[arg(long = "stuck", value_parser = parse_threshold, value_name = "STATE=DURATION")]
    pub(crate) stuck: Vec<(TcpState, Option<Duration>)>,

    /// Repeat a stuck socket in the summaries at most this often.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) stuck_repeat: Duration,

    /// Log a summary this often (and once at exit).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) summary_interval: Duration,

    /// Compare the kernel's records with its socket list this often, and fix differences (spaced
    /// further on hosts with very many sockets, so that it takes at most 2 % of a CPU).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) reconcile_interval: Duration,

    /// Warn when connections to one destination (network namespace, local address, remote address
    /// and port) hold this share of its namespace's ephemeral ports, TIME-WAIT included, in
    /// percent (checked at each reconciliation; 0: off).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100), value_name = "PERCENT")]
    pub(crate) port_pressure: u8,

    /// Time how long connections wait in their listener's accept queue (and name the process
    /// that accepts a socket at once). Off by default: the program on accept() turns on the
    /// kernel's system-call tracing path for every process, which cost nginx with a connection
    /// per request 7 % of its throughput in the bench (docs/benchmarks.md).
    #[arg(long)]
    pub(crate) accept_wait: bool,

    /// Report TCP sockets' bind() calls that fail with EADDRINUSE or EADDRNOTAVAIL (a port taken,
    /// no ephemeral port left, an address not on the host), per process. Off by default: its
    /// programs run on every bind() of every process, TCP or not (about 0.3 µs each).
    #[arg(long)]
    pub(crate) bind_failures: bool,

    /// Most sockets the kernel keeps records of (timewait sockets: half as many; sockets in
    /// watched states: a quarter). Each costs about 100 bytes when used and 29 bytes reserved;
    /// sockets past it are counted, not traced.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..), value_name = "N")]
    pub(crate) max_sockets: u32,

    /// Serve Prometheus metrics at http://ADDR/metrics: PORT (loopback) or HOST:PORT.
    #[arg(long, value_parser = parse_metrics_addr, value_name = "[HOST:]PORT")]
    pub(crate) metrics_addr: Option<SocketAddr>,

    /// Add a `port` label (the port a socket listens on or connects to) to the transition and
    /// time-in-state metrics, for at most 64 distinct ports (the rest are `other`).
    #[arg(long, requires = "metrics_addr")]
    pub(crate) metrics_port_label: bool,

    /// Protect the metrics endpoint with TLS, client certificates and basic auth: a web config
    /// file in the format of node_exporter and Prometheus' exporter-toolkit (tls_server_config,
    /// basic_auth_users, http_server_config.headers), re-read when it or its certificates change.
    #[arg(
        long = "web.config.file",
        requires = "metrics_addr",
        value_name = "FILE"
    )]
    pub(crate) web_config_file: Option<PathBuf>,

    /// Capabilities kept once the programs are attached, beside CAP_BPF (reading the kernel's
    /// maps): names (sys_admin or CAP_SYS_ADMIN), `none`, or `all` to drop nothing. The default
    /// is what entering containers' network namespaces and finding their sockets' owners use.
    #[arg(long, default_value = privileges::KEPT_BY_DEFAULT, value_parser = privileges::parse_keep, value_name = "LIST")]
    pub(crate) capabilities_keep: Keep,

    /// Most connections the metrics endpoint keeps open; one more closes the least recently
    /// active, so idle clients cannot keep a scrape out.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub(crate) metrics_max_connections: u16,

    /// Lowest level logged: error, warn (stuck reports only), info, debug, trace. RUST_LOG adds
    /// per-target levels (targets tcpstate::transition, ::stuck, ::unstuck, ::summary).
    #[arg(long, default_value = "info", value_parser = parse_level, value_name = "LEVEL")]
    pub log_level: LevelFilter,

    /// Where the per-socket kernel state is pinned (bpffs), so a restarted tracer keeps the true
    /// ages of sockets already open.
    #[arg(
        long,
        default_value = "/sys/fs/bpf/tcpstate",
        value_name = "DIR",
        conflicts_with = "no_pin"
    )]
    pub(crate) pin_dir: PathBuf,

    /// Do not pin the per-socket kernel state: ages of open sockets are forgotten on restart, and
    /// several tracers can run side by side.
    #[arg(long)]
    pub(crate) no_pin: bool,

    /// Size of the kernel-to-daemon ring buffer, in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 4 << 20, value_parser = parse_ring_size, value_name = "BYTES")]
    pub(crate) ring_buffer_size: u32,

    /// Longest time an event may wait in the ring buffer before the daemon reads it.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) poll_interval: Duration,

    /// Load and attach the kernel programs as the other flags set them up, say which parts work
    /// on this kernel (and why a part does not), with the instructions the verifier processed for
    /// each program, then exit: 0 when the tracer can run here.
    #[arg(long)]
    pub(crate) check: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Auto,
    Always,
    Never,
}

/// Every stage's settings, from the flags.
pub(crate) struct Settings {
    /// `--check`: load, report, exit.
    pub(crate) check: bool,
    pub(crate) load: LoadSettings,
    pub(crate) core: core::Settings,
    pub(crate) log: LogSettings,
    pub(crate) metrics: Option<MetricsSettings>,
    pub(crate) schedule: Schedule,
    /// `--capabilities-keep`.
    pub(crate) keep: Keep,
}

/// What the log writer shows, before `--log-level` and RUST_LOG have their say.
pub(crate) struct LogSettings {
    pub(crate) format: LogFormat,
    /// `--log-transitions`, `auto` resolved.
    pub(crate) transitions: bool,
    /// Colour (stdout is a terminal).
    pub(crate) color: bool,
}

pub(crate) struct MetricsSettings {
    pub(crate) addr: SocketAddr,
    pub(crate) port_label: bool,
    pub(crate) web_config: Option<PathBuf>,
    pub(crate) max_connections: usize,
}

/// When the daemon does what.
pub(crate) struct Schedule {
    pub(crate) duration: Option<Duration>,
    pub(crate) poll: Duration,
    pub(crate) summaries: Duration,
    pub(crate) reconciliations: Duration,
}

impl Config {
    pub(crate) fn settings(&self, stdout_is_terminal: bool) -> Settings {
        // Transition lines cost the kernel an event each: only when they are shown.
        let transitions = self.logs_transitions(stdout_is_terminal)
            && tracing::enabled!(target: "tcpstate::transition", tracing::Level::INFO);
        Settings {
            check: self.check,
            load: LoadSettings {
                ring_buffer_size: self.ring_buffer_size,
                filter: self.socket_filter(),
                pin_dir: self.pin_dir(),
                max_sockets: self.max_sockets,
                thresholds_ns: self.thresholds().as_nanos(),
                log_all: transitions,
                accept_waits: self.accept_wait,
                bind_failures: self.bind_failures,
                port_labels: self.metrics_port_label,
            },
            core: core::Settings {
                thresholds: self.thresholds(),
                repeat_ns: nanos(self.stuck_repeat),
                owners: self.owner_filter(),
                port_pressure: self.port_pressure,
            },
            log: LogSettings {
                format: self.log_format,
                transitions,
                color: stdout_is_terminal,
            },
            metrics: self.metrics_addr.map(|addr| MetricsSettings {
                addr,
                port_label: self.metrics_port_label,
                web_config: self.web_config_file.clone(),
                max_connections: usize::from(self.metrics_max_connections),
            }),
            keep: self.capabilities_keep.clone(),
            schedule: Schedule {
                duration: self.duration,
                poll: self.poll_interval,
                summaries: self.summary_interval,
                reconciliations: self.reconcile_interval,
            },
        }
    }

    /// The directory to pin kernel state in, unless `--no-pin`.
    fn pin_dir(&self) -> Option<PathBuf> {
        (!self.no_pin).then(|| self.pin_dir.clone())
    }

    /// The owners to report, from `--pid`, `--comm`, `--cgroup` and `--container`.
    fn owner_filter(&self) -> OwnerFilter {
        OwnerFilter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            cgroup_prefix: self.cgroup.clone(),
            container: self.container.clone(),
        }
    }

    /// Stuck thresholds: the defaults, changed by `--stuck`.
    fn thresholds(&self) -> Thresholds {
        let mut thresholds = Thresholds::default();
        for (state, threshold) in &self.stuck {
            thresholds.set(*state, *threshold);
        }
        thresholds
    }

    /// The sockets to report, from the address and port flags.
    fn socket_filter(&self) -> SocketFilter {
        SocketFilter {
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(Family::Ipv4),
                (_, true) => Some(Family::Ipv6),
                _ => None,
            },
            netns: self.netns,
            local_ports: self.local_ports.clone(),
            remote_ports: self.remote_ports.clone(),
        }
    }

    /// Whether transitions are logged, `auto` resolved against where the output goes.
    fn logs_transitions(&self, stdout_is_terminal: bool) -> bool {
        match self.log_transitions {
            When::Always => true,
            When::Never => false,
            When::Auto => self.duration.is_some() || stdout_is_terminal,
        }
    }
}

/// The longest duration a flag takes: far past any schedule or threshold, and well within what the
/// daemon's clocks hold (nanoseconds in 64 bits last 584 years; a deadline past that would panic).
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600); // humantime's `100y`

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration like 500ms, 30s or 5m ({err})"))?;
    if duration.is_zero() {
        return Err("a duration must be longer than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err(format!("`{text}` is longer than 100 years"));
    }
    Ok(duration)
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        Ok(port) => Err(format!("port {port} is out of range (1-65535)")),
        Err(_) => Err(format!("`{text}` is not a port number (1-65535)")),
    }
}

/// Parses `STATE=DURATION` (or `STATE=off`), the form of `--stuck`.
fn parse_threshold(text: &str) -> Result<(TcpState, Option<Duration>), String> {
    let (state, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not STATE=DURATION (e.g. close-wait=60s)"))?;
    let state = TcpState::parse(state).ok_or_else(|| {
        format!("`{state}` is not a TCP state (e.g. close-wait, syn-sent, fin-wait-1, last-ack)")
    })?;
    if matches!(
        state,
        TcpState::Close | TcpState::NewSynRecv | TcpState::BoundInactive
    ) {
        return Err(format!("{} is not a state sockets stay in", state.name()));
    }
    if state == TcpState::TimeWait {
        return Err("TIME_WAIT ends by itself after 60 s: it is not watched".to_owned());
    }
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok((state, None));
    }
    let threshold = parse_duration(value)?;
    Ok((state, Some(threshold)))
}

/// The metrics address: a port alone means loopback.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.trim_start_matches(':').parse::<u32>() {
        let port = parse_port(&port.to_string())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let addr = text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not PORT or HOST:PORT (e.g. 9100, 127.0.0.1:9100, [::1]:9100)")
    })?;
    // Port 0 would serve the metrics at a port the kernel picks and nobody knows.
    parse_port(&addr.port().to_string())?;
    Ok(addr)
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    let error = || format!("`{text}` is not a log level (error, warn, info, debug, trace, off)");
    // tracing reads an empty level as `error`: an empty value is a mistake, not a choice.
    if text.trim().is_empty() {
        return Err(error());
    }
    text.trim().parse().map_err(|_| error())
}

/// A network namespace: an inode number, or the path of a namespace file.
fn parse_netns(text: &str) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(inode) = text.trim().parse::<u32>() {
        return Ok(inode);
    }
    let meta = std::fs::metadata(text.trim()).map_err(|err| {
        format!("`{text}` is neither a namespace inode number nor a readable path ({err})")
    })?;
    u32::try_from(meta.ino()).map_err(|_| format!("`{text}` has an inode number out of range"))
}

/// A container id or its prefix (12 to 64 hex digits), bare or after a runtime's `NAME://` as
/// Kubernetes writes a container's id in a pod's status.
fn parse_container(text: &str) -> Result<String, String> {
    let id = text
        .trim()
        .split_once("://")
        .map_or(text.trim(), |(_, id)| id)
        .to_ascii_lowercase();
    if (12..=64).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(format!(
            "`{text}` is not a container id: 12 to 64 hex digits, as `docker ps` shows"
        ))
    }
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!("{size} is not a power of two of at least 4096"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated};

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    /// A duration the daemon can schedule: longer than zero, at most the bound, a deadline that
    /// exists, nanoseconds that fit the kernel's counters.
    fn usable(duration: Duration) -> bool {
        !duration.is_zero()
            && duration <= MAX_DURATION
            && std::time::Instant::now().checked_add(duration).is_some()
            && u64::try_from(duration.as_nanos()).is_ok()
    }

    /// How people write durations: a number and a unit, with spaces around perhaps.
    fn written_duration() -> impl Strategy<Value = (String, Option<Duration>)> {
        let units: [(&str, u64); 7] = [
            ("ns", 1),
            ("us", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
            ("d", 86_400_000_000_000),
        ];
        (
            prop_oneof![0u64..100_000, any::<u64>()],
            prop::sample::select(units.to_vec()),
            " {0,2}",
        )
            .prop_map(|(n, (unit, ns), pad)| {
                let expected = u64::try_from(u128::from(n) * u128::from(ns))
                    .ok()
                    .map(Duration::from_nanos);
                (format!("{pad}{n}{unit}{pad}"), expected)
            })
    }

    /// The flags, their values written well and badly, and odd words: command lines to parse.
    fn argv() -> impl Strategy<Value = Vec<String>> {
        let flags = prop::sample::select(vec![
            "--log-format",
            "--log-transitions",
            "--duration",
            "--lport",
            "--local-port",
            "--rport",
            "--pid",
            "--comm",
            "--cgroup",
            "--container",
            "--netns",
            "-4",
            "-6",
            "--ipv4",
            "--stuck",
            "--stuck-repeat",
            "--summary-interval",
            "--reconcile-interval",
            "--max-sockets",
            "--metrics-addr",
            "--metrics-port-label",
            "--log-level",
            "--pin-dir",
            "--no-pin",
            "--ring-buffer-size",
            "--poll-interval",
            "--check",
            "--help",
            "--version",
            "-h",
            "-V",
            "--",
            "-",
            "--lport=",
            "--stuck=close-wait=",
            "-46",
        ])
        .prop_map(str::to_owned);
        let values = prop::sample::select(vec![
            "5s",
            "0s",
            "500000000000y",
            "1h",
            "off",
            "close-wait=10s",
            "listen=off",
            "json",
            "text",
            "always",
            "80,443",
            "65536",
            "0",
            "9100",
            "[::1]:9100",
            "0.0.0.0:0",
            "debug",
            "4096",
            "4097",
            "/proc/self/ns/net",
            "4026531840",
            "b9ec786121db",
            "",
            ",",
            "=",
        ])
        .prop_map(str::to_owned);
        prop::collection::vec(prop_oneof![4 => flags, 4 => values, 1 => any_text()], 0..8)
    }

    proptest! {
        #[test]
        fn fuzz_parse_duration_valid((text, expected) in written_duration()) {
            let parsed = parse_duration(&text);
            match expected {
                Some(d) if usable(d) => prop_assert_eq!(parsed, Ok(d)),
                _ => prop_assert!(parsed.is_err(), "{parsed:?}"),
            }
        }

        #[test]
        fn fuzz_parse_duration_arbitrary(text in prop_oneof![
            any_text(),
            written_duration().prop_flat_map(|(text, _)| mutated(text)),
        ]) {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(usable(d), "{d:?}");
            }
        }

        #[test]
        fn fuzz_parse_port(port in any::<u32>(), text in any_text()) {
            let parsed = parse_port(&format!(" {port}"));
            match u16::try_from(port) {
                Ok(p) if p != 0 => prop_assert_eq!(parsed, Ok(p)),
                _ => prop_assert!(parsed.is_err()),
            }
            if let Ok(p) = parse_port(&text) {
                prop_assert!(p != 0 && text.contains(&p.to_string()));
            }
        }

        #[test]
        fn fuzz_parse_threshold(
            state in prop::sample::select(TcpState::ALL.to_vec()),
            spelling in 0..3usize,
            (duration, expected) in prop_oneof![written_duration(), Just(("OFF".to_owned(), None))],
            text in any_text(),
        ) {
            let name = match spelling {
                0 => state.name().to_owned(),
                1 => state.name().to_ascii_lowercase().replace('_', "-"),
                _ => format!("tcp_{}", state.name()),
            };
            let parsed = parse_threshold(&format!("{name}={duration}"));
            let stays = !matches!(
                state,
                TcpState::Close | TcpState::NewSynRecv | TcpState::BoundInactive | TcpState::TimeWait
            );
            let off = duration == "OFF";
            match expected {
                _ if !stays => prop_assert!(parsed.is_err()),
                None if off => prop_assert_eq!(parsed, Ok((state, None))),
                Some(d) if usable(d) => prop_assert_eq!(parsed, Ok((state, Some(d)))),
                _ => prop_assert!(parsed.is_err(), "{parsed:?}"),
            }
            if let Ok((state, threshold)) = parse_threshold(&text) {
                prop_assert!(!matches!(state, TcpState::Close | TcpState::TimeWait));
                prop_assert!(threshold.is_none_or(usable));
            }
        }

        #[test]
        fn fuzz_parse_metrics_addr(
            ip in any::<IpAddr>(),
            port in prop_oneof![Just(0u16), any::<u16>()],
            text in any_text(),
        ) {
            let addr = SocketAddr::new(ip, port);
            let parsed = parse_metrics_addr(&addr.to_string());
            let alone = parse_metrics_addr(&port.to_string());
            if port == 0 {
                prop_assert!(parsed.is_err() && alone.is_err(), "{parsed:?} {alone:?}");
            } else {
                prop_assert_eq!(parsed, Ok(addr));
                prop_assert_eq!(alone, Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
            }
            if let Ok(found) = parse_metrics_addr(&text) {
                prop_assert!(found.port() != 0 && text.contains(&found.port().to_string()));
            }
        }

        #[test]
        fn fuzz_parse_netns(inode in any::<u32>(), text in any_text()) {
            prop_assert_eq!(parse_netns(&inode.to_string()), Ok(inode));
            if let Ok(found) = parse_netns(&text) {
                let named = text.trim().parse::<u32>() == Ok(found);
                prop_assert!(named || std::path::Path::new(text.trim()).exists());
            }
        }

        #[test]
        fn fuzz_parse_container(
            id in "[0-9a-fA-F]{12,64}",
            runtime in prop::option::of("[a-z]{1,12}"),
            text in prop_oneof![any_text(), "[0-9a-f]{12,64}".prop_flat_map(mutated)],
        ) {
            let given = runtime.map_or(id.clone(), |r| format!("{r}://{id}"));
            prop_assert_eq!(parse_container(&given), Ok(id.to_ascii_lowercase()));
            if let Ok(found) = parse_container(&text) {
                prop_assert!((12..=64).contains(&found.len()));
                prop_assert!(found.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
                prop_assert!(text.to_ascii_lowercase().contains(&found));
            }
        }

        #[test]
        fn fuzz_parse_ring_size(size in prop_oneof![(12u32..32).prop_map(|b| 1u32 << b), any::<u32>()], text in any_text()) {
            let parsed = parse_ring_size(&size.to_string());
            if size >= 4096 && size.is_power_of_two() {
                prop_assert_eq!(parsed, Ok(size));
            } else {
                prop_assert!(parsed.is_err());
            }
            if let Ok(found) = parse_ring_size(&text) {
                prop_assert!(found >= 4096 && found.is_power_of_two());
            }
        }

        #[test]
        fn fuzz_parse_level(text in any_text()) {
            if let Ok(level) = parse_level(&text) {
                prop_assert!(text.to_ascii_lowercase().contains(&level.to_string().to_ascii_lowercase()) || text.trim().parse::<u8>().is_ok());
            }
        }

        /// Any command line: the flags or an error, never a panic; the flags give settings.
        #[test]
        fn fuzz_command_line(args in argv()) {
            if let Ok(config) = Config::try_parse_from(std::iter::once("tracer".to_owned()).chain(args.clone())) {
                let settings = config.settings(false);
                prop_assert!(settings.schedule.duration.is_none_or(usable));
                prop_assert!(usable(settings.schedule.poll) && usable(settings.schedule.summaries));
                prop_assert!(settings.load.ring_buffer_size.is_power_of_two());
                prop_assert!(settings.metrics.is_none_or(|m| m.addr.port() != 0));
            }
        }
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.socket_filter(), SocketFilter::default());
        assert!(config.local_ports.is_empty());
        assert!(!config.logs_transitions(false));
        assert!(config.logs_transitions(true));
    }

    #[test]
    fn ports_lists_and_ranges() {
        let config = parse(&["--lport", "80,443", "--rport", "5432", "--rport=6379"]).unwrap();
        assert_eq!(config.local_ports, vec![80, 443]);
        assert_eq!(config.remote_ports, vec![5432, 6379]);
        for bad in ["70000", "0", "http", "-1"] {
            let err = parse(&[&format!("--lport={bad}")]).unwrap_err().to_string();
            assert!(err.contains("port"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        let config = parse(&["--duration", "5s"]).unwrap();
        assert_eq!(config.duration, Some(Duration::from_secs(5)));
        assert!(
            config.logs_transitions(false),
            "a bounded capture logs transitions"
        );
        assert!(parse(&["--duration", "abc"]).is_err());
        assert!(parse(&["--duration", "0s"]).is_err());
        let quiet = parse(&["--duration", "5s", "--log-transitions", "never"]).unwrap();
        assert!(!quiet.logs_transitions(true));
        let loud = parse(&["--log-transitions"]).unwrap();
        assert!(loud.logs_transitions(false));
    }

    #[test]
    fn stuck_thresholds() {
        let config = parse(&[
            "--stuck",
            "close-wait=2s",
            "--stuck=syn-sent=off",
            "--stuck",
            "established=1h",
        ])
        .unwrap();
        let t = config.thresholds();
        assert_eq!(t.get(TcpState::CloseWait), Some(Duration::from_secs(2)));
        assert_eq!(t.get(TcpState::SynSent), None);
        assert_eq!(
            t.get(TcpState::Established),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(t.get(TcpState::LastAck), Some(Duration::from_secs(60)));
        // LISTEN and SYN_RECV are for listeners (accept queues, half-open connections): never
        // handed to the kernel as stays.
        let listener = parse(&["--stuck", "listen=5s", "--stuck", "syn-recv=3s"])
            .unwrap()
            .thresholds();
        assert_eq!(listener.get(TcpState::Listen), Some(Duration::from_secs(5)));
        assert_eq!(
            listener.get(TcpState::SynRecv),
            Some(Duration::from_secs(3))
        );
        for state in [TcpState::Listen, TcpState::SynRecv] {
            assert!(!listener.watches(state));
            assert_eq!(listener.as_nanos()[state as usize], 0);
        }
        for bad in ["close-wait=abc", "nowhere=5s", "close-wait"] {
            assert!(parse(&["--stuck", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--max-sockets", "0"]).is_err());
        assert!(
            parse(&["--stuck", "time-wait=30s"]).is_err(),
            "TIME_WAIT is not watched"
        );
    }

    #[test]
    fn pinning() {
        assert_eq!(
            parse(&[]).unwrap().pin_dir(),
            Some(PathBuf::from("/sys/fs/bpf/tcpstate"))
        );
        assert_eq!(parse(&["--no-pin"]).unwrap().pin_dir(), None);
        assert_eq!(
            parse(&["--pin-dir", "/sys/fs/bpf/x"]).unwrap().pin_dir(),
            Some(PathBuf::from("/sys/fs/bpf/x"))
        );
        assert!(parse(&["--no-pin", "--pin-dir", "/x"]).is_err());
    }

    #[test]
    fn metrics_addresses() {
        let local = parse(&["--metrics-addr", "9100"])
            .unwrap()
            .metrics_addr
            .unwrap();
        assert_eq!(local.to_string(), "127.0.0.1:9100");
        assert_eq!(
            parse_metrics_addr(":9100").unwrap().to_string(),
            "127.0.0.1:9100"
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        assert!(
            parse_metrics_addr("70000")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_metrics_addr("localhost").is_err());
        assert!(
            parse(&["--metrics-port-label"]).is_err(),
            "needs --metrics-addr"
        );
    }

    /// Found by fuzz_parse_duration_*: past 2^64 ns (584 years) the kernel's thresholds
    /// saturated, and past 2^63 s the daemon's deadlines would overflow and panic.
    #[test]
    fn durations_are_bounded() {
        for text in ["18446744074s", "18837166730s", "500000000000y", "101y"] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("longer than 100 years"), "{text}: {err}");
        }
        assert_eq!(
            parse_duration("100y"),
            Ok(Duration::from_secs(3_155_760_000))
        );
        assert!(parse(&["--duration", "500000000000y"]).is_err());
        assert!(parse_threshold("established=18446744074s").is_err());
    }

    /// Found by fuzz_parse_metrics_addr: HOST:0 was taken (a port nobody knows) where 0 alone
    /// was refused.
    #[test]
    fn metrics_port_zero_is_refused() {
        for text in ["0.0.0.0:0", "[::1]:0", "0", ":0"] {
            let err = parse_metrics_addr(text).unwrap_err();
            assert!(err.contains("out of range"), "{text}: {err}");
        }
    }

    /// Found by fuzz_parse_level: tracing reads "" as `error`.
    #[test]
    fn empty_log_level_is_refused() {
        assert!(parse_level("").is_err());
        assert!(parse_level("  ").is_err());
        assert!(parse(&["--log-level", ""]).is_err());
        assert_eq!(parse_level(" Debug "), Ok(LevelFilter::DEBUG));
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse(&[]).unwrap().log_level, LevelFilter::INFO);
        assert_eq!(
            parse(&["--log-level", "warn"]).unwrap().log_level,
            LevelFilter::WARN
        );
        assert!(parse(&["--log-level", "loud"]).is_err());
    }

    #[test]
    fn network_namespaces() {
        assert_eq!(
            parse(&["--netns", "4026531840"]).unwrap().netns,
            Some(4026531840)
        );
        let own = parse(&["--netns", "/proc/self/ns/net"])
            .unwrap()
            .netns
            .unwrap();
        assert!(own > 0);
        assert_eq!(
            parse(&["--netns", "/proc/self/ns/net"])
                .unwrap()
                .socket_filter()
                .netns,
            Some(own)
        );
        assert!(parse(&["--netns", "/no/such/ns"]).is_err());
    }

    #[test]
    fn owner_filters() {
        let config = parse(&["--pid", "1,2", "--comm", "nginx", "--cgroup", "/kubepods"]).unwrap();
        let filter = config.owner_filter();
        assert_eq!(filter.pids, vec![1, 2]);
        assert_eq!(filter.comms, vec!["nginx".to_owned()]);
        assert_eq!(filter.cgroup_prefix.as_deref(), Some("/kubepods"));
        assert!(parse(&["--pid", "x"]).is_err());
        assert!(parse(&[]).unwrap().owner_filter().is_empty());
        let id = "b9ec786121dbf6e4f162e4c11c6607ca4e04914bd9649aee73eeb98a116ad37f";
        for (given, taken) in [
            ("b9ec786121db", "b9ec786121db"),
            ("B9EC786121DB", "b9ec786121db"),
            (&format!("containerd://{id}"), id),
            (id, id),
        ] {
            let filter = parse(&["--container", given]).unwrap().owner_filter();
            assert_eq!(filter.container.as_deref(), Some(taken), "{given}");
        }
        for bad in [
            "b9ec786121d",
            "not-a-container",
            &format!("{id}0"),
            "docker://",
        ] {
            assert!(parse(&["--container", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn families_exclude_each_other() {
        assert_eq!(
            parse(&["-4"]).unwrap().socket_filter().family,
            Some(Family::Ipv4)
        );
        assert_eq!(
            parse(&["-6"]).unwrap().socket_filter().family,
            Some(Family::Ipv6)
        );
        assert!(parse(&["-4", "-6"]).is_err());
    }

    #[test]
    fn parses_thresholds() {
        assert_eq!(
            parse_threshold("close-wait=2s"),
            Ok((TcpState::CloseWait, Some(Duration::from_secs(2))))
        );
        assert_eq!(
            parse_threshold("SYN_SENT=1500ms"),
            Ok((TcpState::SynSent, Some(Duration::from_millis(1500))))
        );
        assert_eq!(
            parse_threshold("last-ack=off"),
            Ok((TcpState::LastAck, None))
        );
        assert!(
            parse_threshold("close-wait=abc")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_threshold("close-wait")
                .unwrap_err()
                .contains("STATE=DURATION")
        );
        assert!(
            parse_threshold("sleepy=5s")
                .unwrap_err()
                .contains("not a TCP state")
        );
        assert!(
            parse_threshold("close=5s")
                .unwrap_err()
                .contains("not a state sockets stay in")
        );
        assert!(parse_threshold("close-wait=0s").is_err());
    }

    #[test]
    fn settings_follow_the_flags() {
        let config = parse(&[
            "--stuck-repeat",
            "2s",
            "--max-sockets",
            "2048",
            "--metrics-addr",
            "9100",
            "--no-pin",
        ])
        .unwrap();
        let settings = config.settings(false);
        assert_eq!(settings.core.repeat_ns, 2_000_000_000);
        assert_eq!(settings.load.max_sockets, 2048);
        assert_eq!(settings.load.pin_dir, None);
        assert!(!settings.log.transitions && !settings.log.color);
        let metrics = settings.metrics.unwrap();
        assert_eq!(
            (metrics.addr.to_string(), metrics.port_label),
            ("127.0.0.1:9100".to_owned(), false)
        );
        assert_eq!(settings.schedule.reconciliations, Duration::from_secs(30));
    }

    #[test]
    fn ring_buffer_size_must_be_a_power_of_two() {
        assert_eq!(
            parse(&["--ring-buffer-size", "65536"])
                .unwrap()
                .ring_buffer_size,
            65536
        );
        assert!(parse(&["--ring-buffer-size", "5000"]).is_err());
        assert!(parse(&["--ring-buffer-size", "1024"]).is_err());
    }
}
