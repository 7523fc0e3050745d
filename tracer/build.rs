//! Builds the kernel programs (tracer-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `main.rs` embeds it: the daemon ships as one file.
//!
//! The BPF target has no prebuilt `core`, so it is built from source (`-Z build-std=core`), which
//! stable rustc allows with RUSTC_BOOTSTRAP=1. That variable is set here, for the inner cargo only;
//! `cargo xtask setup` provides the rust-src component and bpf-linker this needs.
//!
//! aya-build relays every line the inner cargo writes to stderr as a `cargo:warning`, so its
//! progress ("Compiling core", ...) would reach users as some sixty warnings. The inner cargo runs
//! quiet instead: what it still prints are real warnings and errors. Quieting it here rather than
//! building the object separately in xtask keeps plain `cargo build` working the same, the object
//! embedded, and incremental builds as fast as before.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // Unless the user asked for verbose output (cargo refuses both at once).
    if std::env::var_os("CARGO_TERM_VERBOSE").is_none_or(|v| v == "false") {
        // SAFETY: as above.
        unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("tracer-ebpf");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    println!("cargo:rerun-if-changed=../tracer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
}
