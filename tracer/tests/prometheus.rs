//! The operator's kit against the real tools (Debian's prometheus package): the alert rules under
//! promtool's unit tests and loaded into a real Prometheus that scrapes the tracer while sockets
//! leak, and the Grafana dashboard's queries checked by promtool and against the metrics the
//! tracer exports. Like every test that starts the tracer, these never skip: without root or the
//! prometheus package they fail.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Namespace, TempDir, Workload, free_port, http_get, promtool, scrape_until, start_tracer, value,
};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// How long a change can take to show on the tracer's gauges, at worst (see the Prometheus test).
const GAUGE_LAG: Duration = Duration::from_secs(60);

fn alert_rules() -> PathBuf {
    Path::new(DEPLOY).join("prometheus/alerts.yml")
}

/// Runs promtool; fails with its output unless it succeeds.
fn promtool_ok(args: &[&str], dir: &Path) {
    let out = promtool().args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let dir = Path::new(DEPLOY).join("prometheus");
    promtool_ok(&["check", "rules", "alerts.yml"], &dir);
    promtool_ok(&["test", "rules", "alerts_test.yml"], &dir);
}

/// The `for:` of the shipped rules is minutes; the same rules with `for` seconds let a test see
/// an alert go pending, then firing, in seconds.
fn rules_with_for(seconds: u32) -> String {
    let text = std::fs::read_to_string(alert_rules()).unwrap();
    let mut changed = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let body = line.trim_start();
            if body.starts_with("for:") {
                changed += 1;
                format!("{}for: {seconds}s", &line[..line.len() - body.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(
        changed >= 3,
        "no `for:` found in {}",
        alert_rules().display()
    );
    lines.join("\n") + "\n"
}

/// Debian's `prometheus`, scraping one tracer every second with the alert rules loaded, on a free
/// loopback port with storage of its own. Killed on drop, also when the test fails.
struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    fn start(tracer_port: u16, rules: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules_path = dir.0.join("alerts.yml");
        std::fs::write(&rules_path, rules).unwrap();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tcpstate\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{tracer_port}']\n",
                rules_path.display()
            ),
        )
        .unwrap();
        promtool_ok(&["check", "config", "prometheus.yml"], &dir.0);
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start prometheus ({err}): install Debian's prometheus package \
                     (apt-get install --no-install-recommends prometheus; .ci/run does)"
                )
            });
        let mut prometheus = Prometheus { child, port, dir };
        prometheus.wait_for(Duration::from_secs(30), "Prometheus to be ready", |p| {
            p.get("/-/ready").is_some()
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// The body of a 200 answer, `None` for anything else (not ready yet, refused).
    fn get(&mut self, path: &str) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let (head, body) = http_get(self.port, path);
        head.starts_with("HTTP/1.0 200").then_some(body)
    }

    /// The `data` of an API answer.
    fn api(&mut self, path: &str) -> Value {
        let body = self
            .get(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "GET {path}: {answer}");
        answer["data"].clone()
    }

    /// An instant query: each series' labels and value.
    fn query(&mut self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The single value of a query that must give at most one series (0 when it gives none).
    fn value(&mut self, promql: &str) -> f64 {
        let result = self.query(promql);
        assert!(result.len() <= 1, "{promql} gave {result:?}");
        result.first().map_or(0.0, |(_, v)| *v)
    }

    /// Pending and firing alerts named `name`.
    fn alerts(&mut self, name: &str) -> Vec<Value> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }

    fn wait_for(&mut self, timeout: Duration, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                let stuck = self.query("tcpstate_stuck_sockets");
                let alerts = self.api("/api/v1/alerts");
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nstuck sockets now: \
                     {stuck:?}\nalerts now: {alerts}\nPrometheus's log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but the unreserved characters).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped rules in a real Prometheus scraping the tracer: three CLOSE_WAIT sockets leaked
/// past a 2 s threshold show on the stuck gauge, the CLOSE_WAIT alert goes pending then fires
/// naming the state, and resolves once they are closed; every dashboard query finds data; a
/// stopped tracer fires the tracer-down alert. The rules are the shipped file with each `for:`
/// shortened to 5 s (the shipped minutes would make a test of minutes); the expressions, labels
/// and annotations are the shipped ones. The tracer is limited to a network namespace of the
/// test's own and the Prometheus scrapes only it, so other tests' sockets do not count.
///
/// The waits on the stuck gauge are long: the tracer refreshes its gauges with its FIN_WAIT2 check,
/// every second, but that check is spaced out to stay under 2 % of a CPU, and on a host with very
/// many sockets (another test's million) the gauge was seen 20 s late; reconciliation (30 s)
/// refreshes it at the latest.
#[test]
fn prometheus_fires_and_resolves_the_close_wait_alert() {
    let ns = Namespace::new().unwrap();
    // With accept waits: the dashboard has a panel of them.
    let (tracer, tracer_port) = start_tracer(&ns, &["--stuck", "close-wait=2s", "--accept-wait"]);
    let mut prometheus = Prometheus::start(tracer_port, &rules_with_for(5));
    let instance = format!("127.0.0.1:{tracer_port}");
    let up = format!("up{{job=\"tcpstate\",instance=\"{instance}\"}}");
    prometheus.wait_for(Duration::from_secs(20), "the tracer scraped", |p| {
        p.value(&up) == 1.0
    });

    let mut server = Workload::close_wait("127.0.0.1", 3, Some(&ns.wrapper()));
    let stuck = "tcpstate_stuck_sockets{job=\"tcpstate\",state=\"CLOSE_WAIT\"}";
    prometheus.wait_for(GAUGE_LAG, "3 stuck sockets in Prometheus", |p| {
        p.value(stuck) == 3.0
    });

    // Pending for the rule's `for`, then firing; Prometheus's own ALERTS series keeps both.
    prometheus.wait_for(
        Duration::from_secs(60),
        "TcpstateCloseWaitStuck firing",
        |p| {
            p.alerts("TcpstateCloseWaitStuck")
                .iter()
                .any(|a| a["state"] == "firing")
        },
    );
    let pending = "max_over_time(ALERTS{alertname=\"TcpstateCloseWaitStuck\",\
                   alertstate=\"pending\",state=\"CLOSE_WAIT\"}[10m])";
    assert_eq!(
        prometheus.value(pending),
        1.0,
        "never pending before firing"
    );
    let alerts = prometheus.alerts("TcpstateCloseWaitStuck");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["labels"]["state"], "CLOSE_WAIT", "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(alert["labels"]["instance"], instance.as_str(), "{alert}");
    assert_eq!(
        alert["annotations"]["summary"],
        format!("3 socket(s) stuck in CLOSE_WAIT on {instance}"),
        "{alert}"
    );
    // No other state is reported stuck.
    assert_eq!(
        prometheus.alerts("TcpstateSocketsStuck"),
        Vec::<Value>::new()
    );

    // Closed: the gauge drops and the alert resolves (leaves the list of active alerts).
    server.release();
    prometheus.wait_for(GAUGE_LAG, "the alert to resolve", |p| {
        p.value(stuck) == 0.0 && p.alerts("TcpstateCloseWaitStuck").is_empty()
    });

    // Each of the dashboard's queries finds data in what Prometheus scraped from the tracer.
    let dashboard = dashboard_expressions();
    prometheus.wait_for(
        Duration::from_secs(30),
        "every dashboard query to find data",
        |p| {
            dashboard
                .iter()
                .all(|(_, expr)| !p.query(&with_grafana_variables(expr)).is_empty())
        },
    );

    // Without the tracer, the down alert fires.
    drop(tracer);
    prometheus.wait_for(Duration::from_secs(30), "TcpstateTracerDown firing", |p| {
        p.alerts("TcpstateTracerDown")
            .iter()
            .any(|a| a["state"] == "firing" && a["labels"]["instance"] == instance.as_str())
    });
}

/// Every PromQL expression of the dashboard, with where it comes from: panel targets (inside rows
/// too) and the template variables' queries.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("grafana/tcpstate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut found = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            found.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
        }
    }
    found.sort();
    found
}

/// An expression as Grafana sends it, with the variables set to "all hosts".
fn with_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// Metric names an expression reads: what is left once strings, label matchers, ranges and label
/// lists are taken out, and functions, aggregations and keywords set aside.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Besides the label-list keywords below.
    const NOT_NAMES: [&str; 14] = [
        "bool", "and", "or", "unless", "offset", "sum", "min", "max", "avg", "count", "group",
        "stddev", "stdvar", "quantile",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    // Index just past the quoted string starting at `i`.
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // Index just past the `close` that ends the group starting at `i`, strings skipped.
    let skip_group = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            i = if "\"'`".contains(chars[i]) {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let mut previous_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if "\"'`".contains(c) {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_group(i, '}');
        } else if c == '[' {
            i = skip_group(i, ']');
        } else if c == '(' && LABEL_LISTS.contains(&previous_word.as_str()) {
            i = skip_group(i, ')');
            previous_word.clear();
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if next != Some(&'(')
                && !NOT_NAMES.contains(&word.as_str())
                && !LABEL_LISTS.contains(&word.as_str())
            {
                names.insert(word.clone());
            }
            previous_word = word;
        } else if c.is_ascii_digit() {
            // A number (0.99, 1e3): its letters are not names.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            if !c.is_whitespace() {
                previous_word.clear();
            }
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_and_labels() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, state) (rate(a_bucket{x=~\"$y\", s=\"}\"}[1m]))) \
             * on (instance) group_left (version) b or vector(0) > bool 1e3"
        ),
        BTreeSet::from(["a_bucket".to_owned(), "b".to_owned()])
    );
}

/// Every panel's PromQL parses (promtool checks it as a recording rule) and reads only metrics
/// the tracer exports, as a real scrape shows them, or Prometheus's own `up`.
#[test]
fn dashboard_queries_parse_and_name_exported_metrics() {
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 10, "{expressions:?}");

    let dir = TempDir::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in expressions.iter().enumerate() {
        let expr = serde_json::to_string(&with_grafana_variables(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {expr}\n"
        ));
    }
    std::fs::write(dir.0.join("dashboard.yml"), rules).unwrap();
    promtool_ok(&["check", "rules", "dashboard.yml"], &dir.0);

    // A scrape with every metric present: sockets leaked past a threshold, then closed.
    let ns = Namespace::new().unwrap();
    let (tracer, port) = start_tracer(&ns, &["--stuck", "close-wait=1s", "--accept-wait"]);
    let mut server = Workload::close_wait("127.0.0.1", 2, Some(&ns.wrapper()));
    scrape_until(port, "2 stuck sockets", |s| {
        value(s, "tcpstate_stuck_sockets", "state=CLOSE_WAIT") == 2.0
    });
    server.release();
    let text = scrape_until(port, "the sockets closed", |s| {
        value(s, "tcpstate_stuck_sockets", "state=CLOSE_WAIT") == 0.0
            && value(s, "tcpstate_transitions_total", "new=CLOSE,old=LAST_ACK") == 2.0
    });
    drop(tracer);
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .chain(["up".to_owned()])
        .collect();

    let mut unknown = Vec::new();
    for (panel, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {panel:?} reads no metric: {expr}");
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(|n| format!("{n} (panel {panel:?})")),
        );
    }
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics the tracer does not export: {unknown:?}\nexported: {exported:?}"
    );
}
