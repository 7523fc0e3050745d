//! The kernel matrix: the real-kernel tests again, inside VMs booting the kernels users run
//! (Debian's 5.10, 6.1 and 6.12; `xtask::vm`). The test binaries are built on the host and run in
//! each guest from the shared root filesystem, with their waits stretched for emulation
//! (`TCPSTATE_TIME_SCALE`): what they assert is the same everywhere. A VM that cannot start is a
//! failure, never a skip.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::vm;

use crate::cargo::{KERNEL_TESTS, cargo, workspace_root};

/// Emulation runs the guest several times slower than the host (KERNELS.md): every wait of the
/// tests is this many times longer there.
const TIME_SCALE: u32 = 10;

/// A guest that has not powered off after this long is killed (its tests take 10 to 15 minutes).
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs the real-kernel tests in a VM for each kernel named (all of the matrix when none), then
/// says how each went; fails when one failed or could not run.
pub fn run(names: &[String]) -> Result<()> {
    let kernels: Vec<&vm::Kernel> = if names.is_empty() {
        vm::kernels().iter().collect()
    } else {
        names.iter().map(|n| vm::kernel(n)).collect::<Result<_>>()?
    };
    let binaries = test_binaries()?;
    let script = guest_script(&binaries);
    let mut results = Vec::new();
    for kernel in kernels {
        eprintln!(
            "xtask: kernel matrix: the real-kernel tests in a VM booting {}",
            kernel.name
        );
        let started = Instant::now();
        let outcome = vm::run_in_vm(kernel, std::slice::from_ref(&script), VM_TIMEOUT)
            .with_context(|| format!("the VM booting Linux {} could not run", kernel.name));
        let line = match &outcome {
            Ok(o) if o.status == 0 => format!("{} ({}): passed", kernel.name, o.release),
            Ok(o) => format!(
                "{} ({}): FAILED (exit status {})",
                kernel.name, o.release, o.status
            ),
            Err(err) => format!("{}: FAILED: {err:#}", kernel.name),
        };
        results.push((
            format!("{line}, {:.0} s", started.elapsed().as_secs_f64()),
            matches!(outcome, Ok(ref o) if o.status == 0),
        ));
    }
    eprintln!("xtask: kernel matrix:");
    for (line, _) in &results {
        eprintln!("xtask:   {line}");
    }
    if results.iter().any(|(_, passed)| !passed) {
        bail!("the real-kernel tests failed on a kernel of the matrix (see above)");
    }
    Ok(())
}

/// The integration-test binaries of the tracer (the real-kernel tests), built for the host.
fn test_binaries() -> Result<Vec<String>> {
    let out = cargo()
        .args(["test", "--release", "--package", "tracer", "--no-run"])
        .args(["--features", KERNEL_TESTS])
        .args(["--message-format", "json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if message["reason"] == "compiler-artifact"
            && is_test
            && let Some(path) = message["executable"].as_str()
        {
            binaries.push(path.to_owned());
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no integration test of the tracer");
    }
    binaries.sort();
    Ok(binaries)
}

/// The guest's command: what the kernel lets the tracer do, then every test binary (from the
/// package's folder, as cargo runs them), each timed; the exit status says whether all passed.
fn guest_script(binaries: &[String]) -> String {
    let tracer = workspace_root().join("target/release/tracer");
    let package = workspace_root().join("tracer");
    // The guest's init leaves the kernel's default of 4,096 descriptors; a test holds 5,000 idle
    // connections (root may raise it there, unlike on the host).
    let mut script = format!(
        "ulimit -n 65536 2>/dev/null; cd '{}' && '{}' --check --no-pin; failed=0; ",
        package.display(),
        tracer.display()
    );
    // A binary that fails with its tests side by side runs again one test at a time: under
    // emulation, races that the host's speed hides show up (a connection closing during the
    // start-up snapshot lost its FIN_WAIT2 -> TIME_WAIT line until 9f96faf). It is said as FLAKY,
    // never hidden; failing again is a failure.
    for binary in binaries {
        let name = binary.rsplit('/').next().unwrap_or(binary);
        let run = format!("CI=true TCPSTATE_TIME_SCALE={TIME_SCALE} '{binary}'");
        script.push_str(&format!(
            "s=$(date +%s); if ! {run} --test-threads=2; then \
             echo \"FLAKY?: {name} failed with its tests side by side; again, one at a time\"; \
             if {run} --test-threads=1; then echo \"FLAKY: {name} passed one test at a time\"; \
             else failed=1; echo \"FAILED: {name}\"; fi; fi; \
             echo \"{name}: $(( $(date +%s) - s )) s\"; "
        ));
    }
    script.push_str("exit $failed");
    script
}
