//! `--check`: loads and attaches the programs as the other flags set them up, says which parts
//! work on this kernel (and why one does not) with what the verifier spent on each program, and
//! exits. Operators run it before rolling the tracer out; the kernel-matrix tests run it in every
//! mode the flags can produce.
use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cli::Settings,
    export::log::LogFormat,
    source::probe::{self, Part},
};

/// The check's one line (JSON) or paragraph (text).
#[derive(Serialize)]
struct Check<'a> {
    event: &'static str,
    /// The running kernel's release (`uname -r`).
    kernel: &'a str,
    /// The programs name sockets by cookie (Linux 5.12), so the records are checked against the
    /// kernel's socket list and survive restarts.
    socket_cookies: bool,
    /// Resets sent carry the kernel's reason (Linux 6.10).
    reset_reasons: bool,
    parts: Vec<CheckedPart<'a>>,
}

#[derive(Serialize)]
struct CheckedPart<'a> {
    program: &'a str,
    what: &'a str,
    /// `attached`, `unused` (not needed with these settings) or `off`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// Instructions the verifier processed (null where the kernel does not say: before 5.16).
    verified_instructions: Option<u32>,
}

pub(super) fn run(settings: &Settings, mut out: impl Write) -> Result<()> {
    let probe = probe::load(&settings.load)?;
    let parts = probe.parts();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel's release")?;
    let check = Check {
        event: "check",
        kernel: release.trim(),
        socket_cookies: probe.socket_cookies,
        reset_reasons: probe.reset_reason_arg,
        parts: parts
            .iter()
            .map(|part| {
                let (state, reason) = match &part.state {
                    Part::Attached => ("attached", None),
                    Part::Unused => ("unused", None),
                    Part::Off(reason) => ("off", Some(reason.as_str())),
                };
                CheckedPart {
                    program: part.program,
                    what: part.what,
                    state,
                    reason,
                    verified_instructions: part.verified_instructions,
                }
            })
            .collect(),
    };
    match settings.log.format {
        LogFormat::Json => {
            serde_json::to_writer(&mut out, &check)?;
            writeln!(out)?;
        }
        LogFormat::Text => write_text(&check, &mut out)?,
    }
    out.flush().context("writing the check")
}

fn write_text(check: &Check<'_>, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "kernel {}: the tracer can run here", check.kernel)?;
    for part in &check.parts {
        let verified = part
            .verified_instructions
            .map(|n| format!(", {n} instructions verified"))
            .unwrap_or_default();
        match part.reason {
            Some(reason) => writeln!(out, "  {}: off ({reason})", part.what)?,
            None => writeln!(out, "  {}: {}{verified}", part.what, part.state)?,
        }
    }
    let yes_no = |yes: bool| if yes { "yes" } else { "no" };
    writeln!(
        out,
        "  socket cookies (records checked against the kernel's list, ages kept over restarts): {} (Linux 5.12)",
        yes_no(check.socket_cookies)
    )?;
    writeln!(
        out,
        "  reasons of resets sent: {} (Linux 6.10)",
        yes_no(check.reset_reasons)
    )
}
