//! The metrics endpoint protected as node_exporter's is, tried with curl: a web config file in
//! exporter-toolkit's format (TLS, client certificates, basic auth, headers), certificates rotated
//! without a restart, bad files refused at start-up in one line, and a crowd of idle connections
//! that cannot keep a scrape out.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use support::{TRACER, TempDir, Tracer, free_port, http_get, patience};

/// A certificate authority of the test's own.
struct Authority(CertifiedIssuer<'static, KeyPair>);

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Authority(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// Writes `<name>.pem` (the authority's certificate) into `dir`.
    fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.pem")), self.0.pem()).unwrap();
    }

    /// Writes `<name>.pem` and `<name>-key.pem`, a certificate for `names` signed by this
    /// authority, for a server or a client. Written beside, then moved in: as a rotation is done.
    fn issue(&self, dir: &Path, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        for (file, text) in [
            (format!("{name}.pem"), cert.pem()),
            (format!("{name}-key.pem"), key.serialize_pem()),
        ] {
            let staged = dir.join(format!(".{file}.new"));
            std::fs::write(&staged, text).unwrap();
            std::fs::rename(&staged, dir.join(file)).unwrap();
        }
    }
}

/// A folder of the test's own with an authority (`ca.pem`) and a server certificate it signed
/// for loopback (`server.pem`, `server-key.pem`).
fn server_files(what: &str) -> (TempDir, Authority) {
    let dir = TempDir::new(what);
    let ca = Authority::new("tcpstate test CA");
    ca.write(&dir.0, "ca");
    ca.issue(
        &dir.0,
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    (dir, ca)
}

/// What curl got: the HTTP status ("000" when no HTTP answer came), its exit code, the response
/// headers and the body.
struct Answer {
    status: String,
    exit: i32,
    head: String,
    body: String,
}

fn curl(dir: &Path, args: &[&str]) -> Answer {
    let head = dir.join("curl-head");
    let body = dir.join("curl-body");
    let _ = std::fs::remove_file(&head);
    let _ = std::fs::remove_file(&body);
    let out = Command::new("curl")
        .current_dir(dir)
        .args(["-sS", "--max-time", "10", "-w", "%{http_code}"])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("curl is missing: install Debian's curl (.ci/run does)");
    Answer {
        status: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        exit: out.status.code().unwrap_or(-1),
        head: std::fs::read_to_string(head).unwrap_or_default(),
        body: std::fs::read_to_string(body).unwrap_or_default(),
    }
}

/// A tracer serving metrics on a free loopback port with this web config file.
fn start(config: &Path, extra: &[&str]) -> (Tracer, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let config = config.to_str().unwrap();
    let mut args = vec![
        "--metrics-addr",
        &port_text,
        "--web.config.file",
        config,
        "--log-transitions",
        "never",
    ];
    args.extend_from_slice(extra);
    (Tracer::start(&args), port)
}

fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/metrics")
}

#[test]
fn tls_and_basic_auth_guard_the_metrics() {
    let (dir, _) = server_files("web-tls");
    let dir = dir.0.as_path();
    // Cost 10, as `htpasswd -nBC 10` makes them.
    let hash = bcrypt::hash("scrape-pw", 10).unwrap();
    // Relative file names: beside the config file, as the toolkit reads them.
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .unwrap();
    let (tracer, port) = start(&config, &[]);

    let authorised = |ca: &str| {
        curl(
            dir,
            &["--cacert", ca, "-u", "prometheus:scrape-pw", &url(port)],
        )
    };
    let anonymous = curl(dir, &["--cacert", "ca.pem", &url(port)]);
    assert_eq!(anonymous.status, "401", "without credentials");
    assert!(
        anonymous
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{}",
        anonymous.head
    );
    assert!(!anonymous.body.contains("tcpstate_"), "{}", anonymous.body);
    for wrong in ["prometheus:wrong", "grafana:scrape-pw", "prometheus:"] {
        let answer = curl(dir, &["--cacert", "ca.pem", "-u", wrong, &url(port)]);
        assert_eq!(answer.status, "401", "{wrong}");
    }
    let scrape = authorised("ca.pem");
    assert_eq!(scrape.status, "200", "{}", scrape.body);
    assert!(scrape.body.contains("tcpstate_"), "{}", scrape.body);
    assert!(
        scrape
            .head
            .to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{}",
        scrape.head
    );

    // Plain HTTP to the TLS endpoint gets no HTTP answer at all: not the metrics, not an error
    // page.
    let plain = curl(dir, &[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(plain.status, "000");
    assert_ne!(plain.exit, 0);
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(patience(Duration::from_secs(15))))
        .unwrap();
    raw.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        !reply.contains("HTTP/") && !reply.contains("tcpstate_"),
        "plain HTTP answered: {reply}"
    );

    // A rotated certificate (another authority's) is served from the next connection, without a
    // restart.
    let next = Authority::new("tcpstate test CA 2");
    next.write(dir, "ca2");
    next.issue(
        dir,
        "server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let rotated = authorised("ca2.pem");
    assert_eq!(rotated.status, "200", "the rotated certificate is served");
    let old = authorised("ca.pem");
    assert_eq!(old.status, "000", "the old authority no longer verifies it");

    // A broken change keeps the last good configuration, and says so.
    std::fs::write(dir.join("server-key.pem"), "not a key\n").unwrap();
    let kept = authorised("ca2.pem");
    assert_eq!(kept.status, "200", "the last good configuration stays");
    let finished = tracer.stop();
    assert!(
        finished
            .stderr
            .contains("the previous configuration stays in use"),
        "{}",
        finished.stderr
    );
}

#[test]
fn client_certificates_are_required_and_checked() {
    let (dir, ca) = server_files("web-mtls");
    let dir = dir.0.as_path();
    ca.issue(
        dir,
        "scraper",
        &["scraper.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    ca.issue(
        dir,
        "stranger",
        &["stranger.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let other = Authority::new("someone else's CA");
    other.issue(
        dir,
        "forged",
        &["scraper.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server-key.pem\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {0}/ca.pem\n  \
             client_allowed_sans: [scraper.example]\n  min_version: TLS12\n",
            dir.display()
        ),
    )
    .unwrap();
    let (tracer, port) = start(&config, &[]);
    let with = |name: &str| {
        curl(
            dir,
            &[
                "--cacert",
                "ca.pem",
                "--cert",
                &format!("{name}.pem"),
                "--key",
                &format!("{name}-key.pem"),
                &url(port),
            ],
        )
    };
    let scraper = with("scraper");
    assert_eq!(scraper.status, "200", "a client certificate of the CA");
    assert!(scraper.body.contains("tcpstate_"), "{}", scraper.body);
    let none = curl(dir, &["--cacert", "ca.pem", &url(port)]);
    assert_eq!(none.status, "000", "no client certificate");
    assert_eq!(with("forged").status, "000", "another CA's certificate");
    assert_eq!(with("stranger").status, "000", "a name not allowed");
    drop(tracer);
}

#[test]
fn bad_web_configs_stop_the_daemon_in_one_line() {
    let (dir, _) = server_files("web-bad");
    let dir = dir.0.as_path();
    let cases = [
        (
            "missing key",
            "tls_server_config:\n  cert_file: server.pem\n",
            "key",
        ),
        (
            "unreadable key",
            "tls_server_config:\n  cert_file: server.pem\n  key_file: nowhere.pem\n",
            "nowhere.pem",
        ),
        (
            "key of no certificate",
            "tls_server_config:\n  cert_file: server.pem\n  key_file: ca.pem\n",
            "key",
        ),
        (
            "plain password",
            "basic_auth_users:\n  prometheus: secret\n",
            "bcrypt",
        ),
        (
            "typo",
            "basic_auth_user:\n  prometheus: x\n",
            "basic_auth_user",
        ),
        (
            "unknown client auth",
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  \
             client_auth_type: Sometimes\n",
            "Sometimes",
        ),
        (
            "verification without a CA",
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  \
             client_auth_type: RequireAndVerifyClientCert\n",
            "client_ca_file",
        ),
        ("not YAML", "tls_server_config: [\n", "web.config.file"),
    ];
    for (what, text, says) in cases {
        let config = dir.join("bad.yml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(TRACER)
            .args(["--no-pin", "--metrics-addr", &free_port().to_string()])
            .arg("--web.config.file")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted\n{stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line\n{stderr}"
        );
        assert!(
            stderr.contains("--web.config.file") && stderr.contains(says),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    // A missing file too.
    let out = Command::new(TRACER)
        .args(["--no-pin", "--metrics-addr", &free_port().to_string()])
        .args(["--web.config.file", "/nonexistent/web.yml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

/// Descriptors a process holds.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_connections_cannot_keep_a_scrape_out() {
    // 5,000 idle clients need as many descriptors here.
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        assert!(
            limit.rlim_max >= 5_500,
            "this test holds 5,000 connections: the descriptor limit ({}) is too low (ulimit -n)",
            limit.rlim_max
        );
    }
    let dir = TempDir::new("web-idle");
    let config = dir.0.join("web.yml");
    std::fs::write(&config, "").unwrap();
    let (tracer, port) = start(&config, &[]);
    let before = descriptors(tracer.pid());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let idle: Vec<TcpStream> = (0..5_000)
        .map(|_| TcpStream::connect_timeout(&addr, patience(Duration::from_secs(10))).unwrap())
        .collect();
    let started = Instant::now();
    let (head, body) = http_get(port, "/metrics");
    let took = started.elapsed();
    assert!(head.contains(" 200 "), "{head}");
    assert!(body.contains("tcpstate_"), "{body}");
    assert!(
        took < patience(Duration::from_secs(1)),
        "a scrape took {took:?} beside 5,000 idle connections"
    );
    let held = descriptors(tracer.pid()).saturating_sub(before);
    assert!(
        held <= 64 + 2,
        "the daemon holds {held} more descriptors for its 5,000 idle clients"
    );
    eprintln!("scrape beside 5,000 idle connections: {took:?}; descriptors held for them: {held}");
    drop(idle);
}
