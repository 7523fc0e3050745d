//! Micro-benchmark of the transition lines, the `format!`/serde code (`reference`) against the
//! hand-built lines, side by side in one run. It measures, it asserts nothing about time:
//!
//! ```sh
//! cargo test --release -p tracer --lib export::log::bench -- --ignored --nocapture
//! ```
use crate::owner::{Comm, Owner};
use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use tracer_common::{End, TcpState};

use super::{
    LogFormat, json,
    line::Line,
    model::TransitionLine,
    text::{self, TextStyle},
};
use crate::{
    export::wall_clock::WallClock,
    source::events::{ConnectionEnd, Endpoints, Family, Transition},
};

const LINES: usize = 200_000;
/// Lines between two flushes of the daemon's buffer: the output is emptied as a flush would.
const BATCH: usize = 250;
const ROUNDS: usize = 5;

/// Loopback connections as the benchmark's workloads make them: a client and a server socket,
/// IPv4 and IPv6, five transitions each, a few microseconds apart, most with an owner.
fn workload() -> Vec<Transition> {
    let states = [
        (TcpState::Close, TcpState::SynSent, None),
        (TcpState::SynSent, TcpState::Established, Some(45_123)),
        (TcpState::Established, TcpState::FinWait1, Some(120_201_234)),
        (TcpState::FinWait1, TcpState::FinWait2, Some(2_724_000)),
        (TcpState::FinWait2, TcpState::Close, Some(415_534_871)),
    ];
    let cgroup = Arc::new(crate::enrich::containers::describe(
        "/user.slice/user-0.slice/session-1.scope".to_owned(),
    ));
    (0..LINES)
        .map(|i| {
            let conn = (i / states.len()) as u16;
            let (old, new, prev_state_ns) = states[i % states.len()];
            let (family, ip) = if conn.is_multiple_of(2) {
                (Family::Ipv4, IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                (Family::Ipv6, IpAddr::V6(Ipv6Addr::LOCALHOST))
            };
            Transition {
                ts_ns: 1_800_000_000_000_000_000 + i as u64 * 4_321,
                cookie: 0x1_0000 + u64::from(conn),
                object: 0x3a5c_0e11_7f20_4c80 + u64::from(conn) * 0x1c0,
                endpoints: Endpoints {
                    netns: 4026531840,
                    family,
                    local: ip,
                    local_port: 32768 + conn % 28000,
                    remote: ip,
                    remote_port: 8080,
                },
                old,
                new,
                prev_state_ns,
                owner: (!conn.is_multiple_of(5)).then(|| Owner {
                    pid: 20916,
                    comm: Comm::new("python3"),
                    cgroup: Some(cgroup.clone()),
                }),
                end: (new == TcpState::Close).then_some(ConnectionEnd {
                    end: End::Fin,
                    error: None,
                    reset_reason: None,
                }),
                syn_retransmits: (old == TcpState::SynSent).then_some(0),
            }
        })
        .collect()
}

/// CPU time of this thread: on a shared machine, less noisy than wall time, which also counts
/// the time other processes held the CPU.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds per line: CPU time of the thread and wall time.
#[derive(Clone, Copy)]
struct PerLine {
    cpu: f64,
    wall: f64,
}

/// Time per line of `write` over the workload, into a Vec emptied every batch.
fn time(transitions: &[Transition], mut write: impl FnMut(&mut Vec<u8>, &Transition)) -> PerLine {
    let mut out = Vec::with_capacity(BATCH * 400);
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    for batch in transitions.chunks(BATCH) {
        out.clear();
        for t in batch {
            write(&mut out, t);
        }
        black_box(&out);
    }
    let lines = transitions.len() as f64;
    PerLine {
        cpu: (thread_cpu_ns() - cpu) as f64 / lines,
        wall: wall.elapsed().as_nanos() as f64 / lines,
    }
}

/// Median of each measure over rounds.
fn median(rounds: &[PerLine]) -> PerLine {
    let of = |pick: fn(&PerLine) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    PerLine {
        cpu: of(|r| r.cpu),
        wall: of(|r| r.wall),
    }
}

#[test]
#[ignore = "a benchmark: run with --release --ignored --nocapture"]
fn transition_lines() {
    let clock = WallClock::fixed(0, UNIX_EPOCH + Duration::ZERO);
    let transitions = workload();
    let mut line = Line::new();
    // The header is not timed: it is written once.
    let mut style = TextStyle {
        color: false,
        header_written: true,
    };
    for format in [LogFormat::Text, LogFormat::Json] {
        // Old and new alternate, so that both see the same load of the shared machine.
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            old.push(time(&transitions, |out, t| {
                let line = TransitionLine::new(&clock, t, &[]);
                let result = match format {
                    LogFormat::Text => text::reference::transition(out, &line),
                    LogFormat::Json => json::line(out, &line),
                };
                result.unwrap();
            }));
            new.push(time(&transitions, |out, t| {
                line.clear();
                let model = TransitionLine::new(&clock, t, &[]);
                match format {
                    LogFormat::Text => text::transition(&mut line, &mut style, &model).unwrap(),
                    LogFormat::Json => json::transition(&mut line, &model),
                }
                out.extend_from_slice(line.as_bytes());
            }));
        }
        let (old, new) = (median(&old), median(&new));
        println!(
            "{format:?}, ns/line, median of {ROUNDS} rounds of {} lines: \
             old {:.0} CPU ({:.0} wall), new {:.0} CPU ({:.0} wall), {:.1}x less CPU",
            transitions.len(),
            old.cpu,
            old.wall,
            new.cpu,
            new.wall,
            old.cpu / new.cpu,
        );
    }
}
