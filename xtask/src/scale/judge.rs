//! What the tracer said against what is true: the planted sockets and their owners, the
//! kernel's list, its own accounting of events. These are the smoke run's assertions, which hold
//! whatever the machine's speed.
use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use super::{Clock, Options, Phase, Tracer, fleet::Planted, kernel, report::Check};

/// How long past its threshold a stuck report is waited for (it should come within a second).
const STUCK_GRACE: Duration = Duration::from_secs(60);

/// The stuck reports of the planted sockets: each once, within a second of the threshold,
/// naming the worker that holds it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StuckReports {
    pub planted: usize,
    pub reported: usize,
    pub with_owner: usize,
    /// Reports past the threshold by more than a second.
    pub late: usize,
    /// The largest `age_ms - threshold_ms`.
    pub max_late_ms: Option<f64>,
    /// From the start of the stuck clock (the planting, or the tracer's spawn when started after)
    /// until the last planted socket was reported with its owner.
    pub all_owned_after_ms: Option<f64>,
    /// Stuck reports of sockets that were not planted.
    pub unplanted: usize,
    /// The first few of them: state, addresses, age.
    pub unplanted_examples: Vec<String>,
    pub wrong_owner: Vec<String>,
}

pub(super) fn wait_stuck(
    tracer: &Tracer,
    planted: &[Planted],
    due: Instant,
    origin: Clock,
) -> Result<StuckReports> {
    let deadline = due + STUCK_GRACE;
    loop {
        let reports = tracer.events("stuck");
        let done = planted
            .iter()
            .all(|p| reports.iter().any(|r| is_report_of(r, p)));
        if done || Instant::now() > deadline {
            return Ok(judge_stuck(&reports, planted, origin.wall));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn is_report_of(report: &Value, planted: &Planted) -> bool {
    let end = |addr: &str, port: &str| {
        format!("{}:{}", report[addr].as_str().unwrap_or(""), report[port])
    };
    report["state"] == "CLOSE_WAIT"
        && end("saddr", "sport") == planted.local
        && end("daddr", "dport") == planted.peer
}

fn judge_stuck(reports: &[Value], planted: &[Planted], origin: SystemTime) -> StuckReports {
    let unplanted: Vec<&Value> = reports
        .iter()
        .filter(|r| !planted.iter().any(|p| is_report_of(r, p)))
        .collect();
    let mut judged = StuckReports {
        planted: planted.len(),
        unplanted: unplanted.len(),
        unplanted_examples: unplanted
            .iter()
            .take(5)
            .map(|r| {
                // Strings without their JSON quotes.
                let f = |key: &str| match &r[key] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!(
                    "{} {}:{} <-> {}:{} for {} ms, pid {}",
                    f("state"),
                    f("saddr"),
                    f("sport"),
                    f("daddr"),
                    f("dport"),
                    f("age_ms"),
                    f("pid")
                )
            })
            .collect(),
        ..StuckReports::default()
    };
    let mut last_owned: Option<SystemTime> = None;
    for p in planted {
        let Some(report) = reports.iter().find(|r| is_report_of(r, p)) else {
            continue;
        };
        judged.reported += 1;
        let late = report["age_ms"].as_f64().unwrap_or(f64::INFINITY)
            - report["threshold_ms"].as_f64().unwrap_or(0.0);
        judged.late += usize::from(late > 1000.0);
        judged.max_late_ms = Some(judged.max_late_ms.map_or(late, |m: f64| m.max(late)));
        match report["pid"].as_u64() {
            Some(pid) if pid == u64::from(p.pid) => {
                judged.with_owner += 1;
                let at = report["ts"]
                    .as_str()
                    .and_then(|ts| humantime::parse_rfc3339(ts).ok());
                last_owned = last_owned.max(at);
            }
            other => judged.wrong_owner.push(format!(
                "{} <-> {}: pid {other:?}, held by {}",
                p.local, p.peer, p.pid
            )),
        }
    }
    judged.all_owned_after_ms = last_owned
        .filter(|_| judged.with_owner == planted.len())
        .and_then(|at| at.duration_since(origin).ok())
        .map(|d| d.as_secs_f64() * 1e3);
    judged
}

/// The tracer's table against the kernel's list, by state, at a summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableCheck {
    pub equal: bool,
    /// Summaries compared until they were equal (the last one otherwise).
    pub attempts: usize,
    pub tracked: u64,
    pub tracer: BTreeMap<String, u64>,
    pub kernel: BTreeMap<String, u64>,
}

/// Compares summaries with the kernel's list until they agree, for at most one reconciliation
/// interval and two summaries more: nothing changes in the namespace meanwhile (the planted
/// sockets' peers may expire), so a difference that lasts is the tracer's.
pub(super) fn compare_table(tracer: &Tracer, options: &Options) -> Result<TableCheck> {
    let attempts = (options.reconcile_interval.as_secs_f64()
        / options.summary_interval.as_secs_f64().max(1.0))
    .ceil() as usize
        + 2;
    let seen = tracer.events("summary").len();
    let mut check = TableCheck::default();
    for attempt in 0..attempts {
        let summary =
            tracer.summary_after(seen + attempt, options.summary_interval + STUCK_GRACE)?;
        let kernel = kernel::socket_counts()?;
        let counts: BTreeMap<String, u64> = summary["sockets"]
            .as_object()
            .context("a summary without sockets")?
            .iter()
            .map(|(state, n)| (state.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        let tracked = summary["tracked"]
            .as_u64()
            .context("a summary without tracked")?;
        check = TableCheck {
            equal: counts == kernel && tracked == kernel.values().sum::<u64>(),
            attempts: attempt + 1,
            tracked,
            tracer: counts,
            kernel,
        };
        if check.equal {
            break;
        }
    }
    Ok(check)
}

/// The accounting of the tracer's final summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalSummary {
    pub lost_events: u64,
    pub skipped_events: u64,
    /// Sockets the kernel had no room to keep a record of, or to index in a watched state.
    pub unrecorded_sockets: u64,
    pub unwatched_sockets: u64,
    pub transitions: u64,
    pub reconciliation_runs: u64,
    pub reconciliation_fixes: u64,
}

impl FinalSummary {
    pub(super) fn of(stdout: &[String]) -> Result<Self> {
        let summary = stdout
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "summary" && v["final"] == true)
            .context("the tracer wrote no final summary")?;
        let number = |value: &Value| value.as_u64().context("a final summary field is missing");
        Ok(Self {
            lost_events: number(&summary["lost_events"])?,
            skipped_events: number(&summary["skipped_events"])?,
            unrecorded_sockets: number(&summary["unrecorded_sockets"])?,
            unwatched_sockets: number(&summary["unwatched_sockets"])?,
            transitions: number(&summary["events"]["transitions"])?,
            reconciliation_runs: number(&summary["reconciliation"]["runs"])?,
            reconciliation_fixes: number(&summary["reconciliation"]["fixes"])?,
        })
    }
}

/// What must hold whatever the machine's speed; asserted by the smoke run.
pub(super) fn checks(phases: &[Phase]) -> Vec<Check> {
    let mut checks = Vec::new();
    for phase in phases {
        let mut check = |what: &'static str, ok: bool, detail: String| {
            checks.push(Check {
                phase: phase.started,
                what,
                ok,
                detail,
            });
        };
        let t = &phase.table;
        check(
            "the table equals the kernel's list",
            t.equal,
            format!(
                "tracer {:?} ({} tracked), kernel {:?}",
                t.tracer, t.tracked, t.kernel
            ),
        );
        let s = &phase.stuck;
        check(
            "every planted CLOSE_WAIT socket is reported with its owner",
            s.reported == s.planted && s.with_owner == s.planted,
            format!(
                "{} planted, {} reported, {} with the right owner {:?}",
                s.planted, s.reported, s.with_owner, s.wrong_owner
            ),
        );
        check(
            "no other socket is reported stuck",
            s.unplanted == 0,
            format!(
                "{} other stuck reports {:?}",
                s.unplanted, s.unplanted_examples
            ),
        );
        let f = &phase.final_summary;
        check(
            "no event lost; skipped ones counted",
            f.lost_events == 0,
            format!(
                "lost {}, skipped {} (healed by reconciliation: the table check above)",
                f.lost_events, f.skipped_events
            ),
        );
        check(
            "every socket recorded and every watched one indexed",
            f.unrecorded_sockets == 0 && f.unwatched_sockets == 0,
            format!(
                "{} unrecorded, {} unwatched",
                f.unrecorded_sockets, f.unwatched_sockets
            ),
        );
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck(sport: u16, dport: u16, pid: Option<u32>, age_ms: f64) -> Value {
        serde_json::json!({
            "event": "stuck", "state": "CLOSE_WAIT", "saddr": "127.1.0.1", "sport": sport,
            "daddr": "127.0.0.1", "dport": dport, "age_ms": age_ms, "threshold_ms": 5000.0,
            "pid": pid, "ts": "2026-11-25T09:01:56.500000Z",
        })
    }

    fn planted(peer_port: u16, pid: u32) -> Planted {
        Planted {
            pid,
            local: "127.1.0.1:1000".to_owned(),
            peer: format!("127.0.0.1:{peer_port}"),
        }
    }

    #[test]
    fn judges_stuck_reports() {
        let origin = humantime::parse_rfc3339("2026-11-25T09:01:50Z").unwrap();
        let planted = [planted(40000, 7), planted(40001, 8), planted(40002, 9)];
        let reports = [
            stuck(1000, 40000, Some(7), 5100.0),
            stuck(1000, 40001, Some(1), 7000.0),
            stuck(1000, 50000, Some(7), 5000.0),
        ];
        let judged = judge_stuck(&reports, &planted, origin);
        assert_eq!(judged.planted, 3);
        assert_eq!(judged.reported, 2);
        assert_eq!(judged.with_owner, 1);
        assert_eq!(judged.late, 1);
        assert_eq!(judged.max_late_ms, Some(2000.0));
        assert_eq!(judged.unplanted, 1);
        assert_eq!(
            judged.unplanted_examples,
            ["CLOSE_WAIT 127.1.0.1:1000 <-> 127.0.0.1:50000 for 5000.0 ms, pid 7"]
        );
        assert_eq!(judged.wrong_owner.len(), 1);
        // Not every planted socket has its owner: no time to report.
        assert_eq!(judged.all_owned_after_ms, None);

        let judged = judge_stuck(&reports[..1], &planted[..1], origin);
        assert_eq!(judged.all_owned_after_ms, Some(6500.0));
    }

    #[test]
    fn reads_the_final_summary() {
        let lines = vec![
            "not json".to_owned(),
            r#"{"event":"summary","final":true,"lost_events":1,"skipped_events":2,"unrecorded_sockets":3,"unwatched_sockets":7,"events":{"transitions":4},"reconciliation":{"runs":5,"fixes":6}}"#.to_owned(),
        ];
        let f = FinalSummary::of(&lines).unwrap();
        assert_eq!(
            (
                f.lost_events,
                f.skipped_events,
                f.unrecorded_sockets,
                f.unwatched_sockets
            ),
            (1, 2, 3, 7)
        );
        assert_eq!(
            (f.transitions, f.reconciliation_runs, f.reconciliation_fixes),
            (4, 5, 6)
        );
        assert!(FinalSummary::of(&lines[..1]).is_err());
    }
}
