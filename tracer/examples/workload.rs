//! A loopback workload in a process of its own, for the integration tests: the sockets it holds
//! have a known owner (this process, named `workload`) that is not the test itself.
//!
//! `workload close-wait <ip> <count>`: leaves `count` accepted sockets in CLOSE_WAIT; their clients,
//! closed first, linger in FIN_WAIT2 (held by timewait sockets) until `tcp_fin_timeout`. Prints one
//! JSON line with the pid and ports, closes the accepted sockets when a line arrives on stdin,
//! prints `released`, and exits at the end of stdin.
use std::{
    io::{BufRead as _, Write as _},
    net::IpAddr,
};

use anyhow::{Context as _, Result, bail};
use xtask::workload::CloseWaitLeak;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, ip, count] = args.as_slice() else {
        bail!("usage: workload close-wait <ip> <count>");
    };
    if mode != "close-wait" {
        bail!("unknown workload {mode}");
    }
    let ip: IpAddr = ip.parse().context("ip")?;
    let leak = CloseWaitLeak::start(ip, count.parse().context("count")?)?;
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "{}",
        serde_json::json!({
            "pid": std::process::id(),
            "listen_port": leak.listen_port,
            "client_ports": leak.client_ports,
        })
    )?;
    stdout.flush()?;
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    leak.release();
    writeln!(stdout, "released")?;
    stdout.flush()?;
    for _ in lines {}
    Ok(())
}
