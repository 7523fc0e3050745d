//! The harness's side of the workers: starts them in waves (the connections are made at the
//! speed of the CPUs; more at once only crowd out the tracer), asks some to leave sockets in
//! CLOSE_WAIT, and stops them all — on every path, by Drop when the run fails.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::worker;

/// The port every worker listens on, each on an address of its own in 127.0.0.0/8: below the
/// ephemeral range the harness sets, so no client is ever given it.
pub const LISTEN_PORT: u16 = 1000;
/// File descriptors a worker keeps for itself besides its sockets (stdio, the listener, slack).
const SPARE_FDS: u64 = 64;

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    listen: SocketAddrV4,
    connections: usize,
}

/// A server socket left in CLOSE_WAIT, and the process that holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Planted {
    pub pid: u32,
    pub local: String,
    pub peer: String,
}

pub struct Fleet {
    workers: Vec<Worker>,
}

impl Fleet {
    /// Starts workers holding `connections` connections in all, at most `per_worker` each,
    /// `parallel` building at a time.
    pub fn start(connections: usize, per_worker: usize, parallel: usize) -> Result<Self> {
        let fds = worker::fd_limit()?;
        if per_worker == 0 || 2 * per_worker as u64 + SPARE_FDS > fds {
            bail!(
                "{per_worker} connections per worker need {} file descriptors; a process may hold {fds}",
                2 * per_worker as u64 + SPARE_FDS
            );
        }
        let count = connections.div_ceil(per_worker);
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let mut fleet = Self {
            workers: Vec::with_capacity(count),
        };
        let mut ready = 0;
        for index in 0..count {
            let share = (connections - index * per_worker).min(per_worker);
            let listen = SocketAddrV4::new(worker_address(index), LISTEN_PORT);
            let mut child = Command::new(&exe)
                .args(["scale-worker", "--listen", &listen.to_string()])
                .args(["--connections", &share.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a worker")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
            fleet.workers.push(Worker {
                stdin: child.stdin.take(),
                child,
                stdout,
                listen,
                connections: share,
            });
            // Wait for a wave to finish before starting the next.
            if fleet.workers.len().is_multiple_of(parallel.max(1)) || index + 1 == count {
                for worker in &mut fleet.workers[ready..] {
                    worker.wait_ready()?;
                }
                ready = fleet.workers.len();
                eprintln!(
                    "xtask: scale: {} of {connections} connections established",
                    fleet.connections()
                );
            }
        }
        Ok(fleet)
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn connections(&self) -> usize {
        self.workers.iter().map(|w| w.connections).sum()
    }

    /// Leaves `count` server sockets in CLOSE_WAIT, spread over the workers so that they have
    /// several owners.
    pub fn plant(&mut self, count: usize) -> Result<Vec<Planted>> {
        let workers = self.workers.len().max(1);
        let mut planted = Vec::with_capacity(count);
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let share = count / workers + usize::from(index < count % workers);
            if share > 0 {
                planted.extend(worker.plant(share)?);
            }
        }
        Ok(planted)
    }

    /// Closes the workers' standard input (they reset their connections and exit), waits for
    /// them, and kills those that do not exit.
    pub fn stop(mut self) -> Result<()> {
        for worker in &mut self.workers {
            drop(worker.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for worker in &mut self.workers {
            loop {
                if let Some(status) = worker.child.try_wait().context("waiting for a worker")? {
                    if !status.success() {
                        bail!("worker on {} failed ({status})", worker.listen);
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!("worker on {} did not exit within 120 s", worker.listen);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    /// Whatever happened, no worker survives the harness (they also die with it, by
    /// PR_SET_PDEATHSIG). Their network namespace goes with the last of its processes.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if matches!(worker.child.try_wait(), Ok(None)) {
                let _ = worker.child.kill();
            }
            let _ = worker.child.wait();
        }
    }
}

impl Worker {
    fn wait_ready(&mut self) -> Result<()> {
        let line = self.read_line()?;
        if line.trim() != format!("ready {}", self.connections) {
            bail!("worker on {} said {line:?}", self.listen);
        }
        Ok(())
    }

    fn plant(&mut self, count: usize) -> Result<Vec<Planted>> {
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        writeln!(stdin, "plant {count}").context("asking a worker to plant")?;
        stdin.flush()?;
        let mut planted = Vec::with_capacity(count);
        loop {
            let line = self.read_line()?;
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("planted-all"), None, None) => return Ok(planted),
                (Some("planted"), Some(local), Some(peer)) => planted.push(Planted {
                    pid: self.child.id(),
                    local: local.to_owned(),
                    peer: peer.to_owned(),
                }),
                _ => bail!("worker on {} said {line:?}", self.listen),
            }
        }
    }

    /// One line of the worker's output; its exit status when it ended instead.
    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .context("reading a worker's output")?;
        if read == 0 {
            let status = self.child.wait().context("waiting for a worker")?;
            bail!(
                "worker on {} exited ({status}); its error is above",
                self.listen
            );
        }
        Ok(line)
    }
}

/// 127.1.0.1, 127.1.0.2, …: one listening address per worker, so each worker's clients have a
/// destination of their own and the ephemeral ports are shared between destinations.
fn worker_address(index: usize) -> Ipv4Addr {
    let n = index + 1;
    Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_have_addresses_of_their_own() {
        assert_eq!(worker_address(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(worker_address(255), Ipv4Addr::new(127, 1, 1, 0));
        assert_eq!(worker_address(300), Ipv4Addr::new(127, 1, 1, 45));
    }
}
