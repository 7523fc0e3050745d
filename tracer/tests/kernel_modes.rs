//! Every mode the flags can produce loads on the running kernel. The programs read their
//! settings from read-only globals and the verifier prunes by them, so each combination of
//! settings is a different program to verify: one refused combination would stop the daemon for
//! the users who pick it. `tracer --check` loads and attaches everything as the flags say and
//! reports each part; here it runs over a set of combinations that holds every pair of settings
//! (two flags' settings together are what most often make a path the verifier has not seen).
//! The log format and the owner filters never reach the kernel, so they are not combined.
// Real-kernel tests: root, run by `cargo xtask test` (README, "Development").
#![cfg(feature = "kernel-tests")]
mod support;

use std::{collections::HashSet, process::Command};

use serde_json::Value;
use support::{TRACER, require_root};

/// Instructions the verifier may process per program: a quarter of the kernel's limit, so the
/// programs keep room to grow and to load on kernels that count differently.
const VERIFIED_BUDGET: u64 = 250_000;

/// The settings the flags can give the kernel side, each with its possible values.
fn axes(own_netns: &str) -> Vec<Vec<Vec<String>>> {
    let flags = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let every_state = flags(&[
        "--stuck",
        "syn-sent=10s",
        "--stuck",
        "syn-recv=10s",
        "--stuck",
        "established=1h",
        "--stuck",
        "fin-wait-1=60s",
        "--stuck",
        "fin-wait-2=60s",
        "--stuck",
        "close-wait=60s",
        "--stuck",
        "last-ack=60s",
        "--stuck",
        "closing=60s",
        "--stuck",
        "listen=30s",
    ]);
    let no_state = flags(&[
        "--stuck",
        "syn-sent=off",
        "--stuck",
        "syn-recv=off",
        "--stuck",
        "fin-wait-1=off",
        "--stuck",
        "fin-wait-2=off",
        "--stuck",
        "close-wait=off",
        "--stuck",
        "last-ack=off",
        "--stuck",
        "closing=off",
        "--stuck",
        "listen=off",
    ]);
    vec![
        // Transition lines, or the quiet path; and the accept() hook, which `--accept-wait` adds
        // (transition lines have it anyway).
        vec![
            flags(&["--log-transitions", "never"]),
            flags(&["--log-transitions", "always"]),
        ],
        vec![vec![], flags(&["--accept-wait"])],
        // The bind() hooks, which `--bind-failures` adds.
        vec![vec![], flags(&["--bind-failures"])],
        // Counts per port.
        vec![
            vec![],
            flags(&["--metrics-addr", "127.0.0.1:9977", "--metrics-port-label"]),
        ],
        // Address families.
        vec![vec![], flags(&["-4"]), flags(&["-6"])],
        vec![vec![], flags(&["--netns", own_netns])],
        vec![vec![], flags(&["--lport", "80,443"])],
        vec![vec![], flags(&["--rport", "5432"])],
        // The watched states: the defaults, every state, none.
        vec![vec![], every_state, no_state],
    ]
}

/// Combinations of one value per axis (by index) that together hold every pair of values of two
/// axes: greedily, the combination that covers the most pairs not yet covered, until none is
/// left.
fn pairwise(sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut all: Vec<Vec<usize>> = vec![vec![]];
    for size in sizes {
        all = all
            .into_iter()
            .flat_map(|c| {
                (0..*size).map(move |v| {
                    let mut c = c.clone();
                    c.push(v);
                    c
                })
            })
            .collect();
    }
    let pairs_of = |c: &[usize]| {
        let mut pairs = Vec::new();
        for a in 0..c.len() {
            for b in a + 1..c.len() {
                pairs.push((a, c[a], b, c[b]));
            }
        }
        pairs
    };
    let mut uncovered: HashSet<(usize, usize, usize, usize)> =
        all.iter().flat_map(|c| pairs_of(c)).collect();
    let mut chosen = Vec::new();
    while !uncovered.is_empty() {
        let best = all
            .iter()
            .max_by_key(|c| pairs_of(c).iter().filter(|p| uncovered.contains(p)).count())
            .expect("combinations")
            .clone();
        for p in pairs_of(&best) {
            uncovered.remove(&p);
        }
        chosen.push(best);
    }
    chosen
}

#[test]
fn the_combinations_hold_every_pair_of_settings() {
    let sizes = [2, 2, 3, 2, 2, 2, 3];
    let chosen = pairwise(&sizes);
    for a in 0..sizes.len() {
        for b in a + 1..sizes.len() {
            for va in 0..sizes[a] {
                for vb in 0..sizes[b] {
                    assert!(
                        chosen.iter().any(|c| c[a] == va && c[b] == vb),
                        "axes {a}={va} and {b}={vb} never together"
                    );
                }
            }
        }
    }
    assert!(chosen.len() < 20, "{} combinations", chosen.len());
}

#[test]
fn every_mode_loads_and_attaches() {
    require_root();
    let own_netns = "/proc/self/ns/net";
    let axes = axes(own_netns);
    let sizes: Vec<usize> = axes.iter().map(Vec::len).collect();
    let combinations = pairwise(&sizes);
    for combination in &combinations {
        let flags: Vec<String> = combination
            .iter()
            .enumerate()
            .flat_map(|(axis, value)| axes[axis][*value].clone())
            .collect();
        let out = Command::new(TRACER)
            .args(["--check", "--log-format", "json", "--no-pin"])
            .args(&flags)
            .output()
            .expect("cannot start the tracer binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tracer --check {} failed ({}):\n{stderr}",
            flags.join(" "),
            out.status
        );
        let check: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "--check printed no JSON ({err}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let logs_all = flags.iter().any(|f| f == "always");
        let accept_wait = flags.iter().any(|f| f == "--accept-wait");
        let bind_failures = flags.iter().any(|f| f == "--bind-failures");
        for part in check["parts"].as_array().expect("parts") {
            let program = part["program"].as_str().expect("program");
            let state = part["state"].as_str().expect("state");
            // Every part the settings need attaches on every kernel of the matrix; only the
            // system-call hooks may be left out.
            let unused = match program {
                "sys_exit_accept" => !accept_wait && !logs_all,
                "sys_exit_bind" => !bind_failures,
                _ => false,
            };
            let expected = if unused { "unused" } else { "attached" };
            assert_eq!(
                state,
                expected,
                "{program} with {}: {part}\n{stderr}",
                flags.join(" ")
            );
            // The kernel says how many instructions it verified from Linux 5.16 on.
            if let Some(verified) = part["verified_instructions"].as_u64() {
                assert!(
                    verified <= VERIFIED_BUDGET,
                    "{program} with {}: {verified} instructions verified, over {VERIFIED_BUDGET}",
                    flags.join(" ")
                );
            }
        }
        println!(
            "{}: {}",
            flags.join(" "),
            check["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}={}", p["program"], p["verified_instructions"]))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "{} combinations on {}",
        combinations.len(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
    );
}
