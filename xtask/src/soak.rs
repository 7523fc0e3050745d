//! `cargo xtask soak`: the quiet tracer under steady connection churn for a long while (10 minutes
//! by default), in a network namespace of its own, sampling its memory and its table size against
//! the sockets the kernel holds. A leak shows as memory or a table that keeps growing while the
//! kernel's count stays flat. Not part of the test suite: it takes minutes.
use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{bench::measure, cargo::workspace_root};
use xtask::workload;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// How long to run.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Connections per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Long-lived connections held throughout.
    #[arg(long, default_value_t = 100)]
    pub long_lived: usize,
}

struct Sample {
    at: Duration,
    rss: u64,
    tracked: u64,
    kernel: u64,
    connections: u64,
}

pub fn run(options: &Options) -> Result<()> {
    let netns = xtask::netns::enter_new()?;
    let summary_every = Duration::from_secs(10);
    let mut tracer = Command::new(workspace_root().join("target/release/tracer"))
        .args([
            "--log-format",
            "json",
            "--no-pin",
            "--log-transitions",
            "never",
        ])
        .args(["--netns", &netns.to_string(), "--summary-interval", "10s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the tracer")?;
    let pid = tracer.id();
    let summaries = BufReader::new(tracer.stdout.take().context("stdout")?);

    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    // Long-lived connections: the table must hold them, and only them, besides the churn.
    let keep = TcpListener::bind("127.0.0.1:0")?;
    let held: Vec<_> = (0..options.long_lived)
        .map(|_| std::net::TcpStream::connect(keep.local_addr()?).map(|c| (c, keep.accept())))
        .collect::<Result<_, _>>()?;
    let churn = {
        let (stop, connections, rate) = (stop.clone(), connections.clone(), options.rate);
        thread::spawn(move || -> Result<()> {
            let per_batch = u64::from(rate / 10).max(1);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let listener = TcpListener::bind("127.0.0.1:0")?;
                workload::sequential(listener, per_batch as usize)?;
                connections.fetch_add(per_batch, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
            Ok(())
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    for line in summaries.lines() {
        let line = line?;
        let Ok(summary) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if summary["event"] != "summary" {
            continue;
        }
        samples.push(Sample {
            at: started.elapsed(),
            rss: measure::rss(pid)?,
            tracked: summary["tracked"].as_u64().unwrap_or(0),
            kernel: kernel_sockets()?,
            connections: connections.load(Ordering::Relaxed),
        });
        eprintln!(
            "xtask: soak {:?}: {} sockets tracked",
            started.elapsed(),
            samples.last().map_or(0, |s| s.tracked)
        );
        if started.elapsed() + summary_every > options.duration {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
    drop(held);
    // SAFETY: stopping our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    tracer.wait()?;

    let report = report(&samples, options);
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("soak.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// TCP sockets the kernel holds in this namespace (`ss`, every state).
fn kernel_sockets() -> Result<u64> {
    let out = Command::new("ss")
        .args(["-Htan", "state", "all"])
        .output()
        .context("running ss")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}

fn report(samples: &[Sample], options: &Options) -> String {
    let mut out = format!(
        "Soak: {} connections/s and {} long-lived connections for {}.\n\n\
         | time | connections so far | tracer RSS MiB | sockets tracked | sockets the kernel lists |\n|---|---|---|---|---|\n",
        options.rate,
        options.long_lived,
        humantime::format_duration(options.duration)
    );
    for s in samples {
        out.push_str(&format!(
            "| {}s | {} | {:.1} | {} | {} |\n",
            s.at.as_secs(),
            s.connections,
            s.rss as f64 / f64::from(1 << 20),
            s.tracked,
            s.kernel
        ));
    }
    if let (Some(first), Some(last)) = (samples.get(1), samples.last()) {
        out.push_str(&format!(
            "\nRSS from the second sample to the last: {:.1} → {:.1} MiB.\n",
            first.rss as f64 / f64::from(1 << 20),
            last.rss as f64 / f64::from(1 << 20)
        ));
    }
    out
}
