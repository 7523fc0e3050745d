use std::io::IsTerminal as _;

use clap::Parser as _;
use tracer::cli::Config;

fn main() {
    let config = Config::parse();
    tracing_subscriber::fmt()
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
