//! `cargo xtask fuzz`: the property tests of the parsers of outside data (every test named
//! `fuzz_*`: /proc and tracefs files, kernel records, netlink replies, flags), run round after round
//! with a fresh seed and many more cases than `cargo test` gives them, until the time is up. Each
//! round prints its seed, so a failure is reproduced by running that round again; proptest also
//! saves the failing case under the crate's `proptest-regressions/`, to be committed with the fix.
use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::cargo::{cargo, cargo_step};

/// The crates whose unit tests include `fuzz_*` tests. A new parser's tests in one of them are
/// found by their name; another crate is one more line here.
const PACKAGES: &[&str] = &["tracer"];

/// The test-name filter that selects the fuzz tests.
const FILTER: &str = "fuzz_";

#[derive(clap::Args)]
pub struct Options {
    /// Keep starting rounds until this many seconds have passed (the last round ends after).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Cases of each test per round (PROPTEST_CASES; `cargo test` runs 256): 10 000 make a round
    /// of about 15 s on two busy cores.
    #[arg(long, default_value_t = 10_000)]
    pub cases: u32,
}

impl Options {
    /// The short run `cargo xtask test` makes: fresh seeds on every run of the suite.
    pub fn smoke() -> Self {
        Self {
            seconds: 30,
            cases: 10_000,
        }
    }
}

pub fn run(options: &Options) -> Result<()> {
    let mut test = vec!["test", "--release", "--lib"];
    for package in PACKAGES {
        test.extend(["--package", package]);
    }
    // Built once, with cargo's usual lines; the rounds then only run the tests.
    cargo_step(
        "building the fuzz tests (release)",
        &[&test[..], &["--no-run"]].concat(),
    )?;

    let budget = Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut round = 0;
    while round == 0 || started.elapsed() < budget {
        round += 1;
        let seed = fresh_seed();
        let reproduce = format!(
            "PROPTEST_RNG_SEED={seed} PROPTEST_CASES={} cargo {} {FILTER}",
            options.cases,
            test.join(" ")
        );
        eprintln!("xtask: fuzz round {round}: {reproduce}");
        let round_started = Instant::now();
        let status = cargo()
            .args(&test)
            .args(["--quiet", FILTER])
            .env("PROPTEST_RNG_SEED", seed.to_string())
            .env("PROPTEST_CASES", options.cases.to_string())
            .status()?;
        if !status.success() {
            bail!(
                "fuzz round {round} failed: rerun it with `{reproduce}`; commit the case proptest \
                 saved under proptest-regressions/ with the fix"
            );
        }
        eprintln!(
            "xtask: fuzz round {round} passed in {:.1} s",
            round_started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "xtask: fuzzing found nothing in {round} rounds ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A seed no round used before: from the kernel's random source, else from the clock.
fn fresh_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    match random {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64),
    }
}
