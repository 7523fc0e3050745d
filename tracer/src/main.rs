use std::io::IsTerminal as _;

use clap::Parser as _;
use tracer::cli::Config;
use tracing_subscriber::EnvFilter;

fn main() {
    let config = Config::parse();
    // --log-level first, then RUST_LOG's per-target directives on top.
    let directives = match std::env::var("RUST_LOG") {
        Ok(extra) if !extra.trim().is_empty() => format!("{},{extra}", config.log_level),
        _ => config.log_level.to_string(),
    };
    let filter = match EnvFilter::try_new(&directives) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("tracer: error: RUST_LOG `{directives}` is not a valid filter: {err}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => fail(anyhow::Error::new(err).context("starting the runtime")),
    };
    let stdout = std::io::stdout();
    let is_terminal = stdout.is_terminal();
    if let Err(err) = runtime.block_on(tracer::daemon::run(config, stdout.lock(), is_terminal)) {
        fail(err);
    }
}

fn fail(err: anyhow::Error) -> ! {
    eprintln!("tracer: error: {err:#}");
    std::process::exit(1);
}
