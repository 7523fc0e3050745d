//! Puts the programs into the kernel: checks privileges and prerequisites, reads the running
//! kernel's layouts, fills the programs' read-only globals, loads and attaches. Dropping the
//! returned [`Probe`] detaches everything (and the kernel does the same if the process dies).
pub mod kernel_layout;
pub mod mounts;
pub mod pinning;
pub mod privileges;
pub mod prog_stats;
pub mod tracefs;

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use tracer_common::{AF_INET, AF_INET6, KernelFilter, SockRecord, counter};

use self::{kernel_layout::VMLINUX_BTF, tracefs::Format};
use crate::{events::Family, filter::SocketFilter};

/// The eBPF object built by build.rs, embedded so the daemon is a single file.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What to load, from the command line.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub ring_buffer_size: u32,
    pub filter: SocketFilter,
    /// Where to pin the per-socket map; `None`: not pinned.
    pub pin_dir: Option<PathBuf>,
}

/// The loaded and attached programs.
pub struct Probe {
    ebpf: Ebpf,
    /// TIME-WAIT tracking is attached (it needs BTF tracepoints and a readable kallsyms).
    pub timewait: Option<String>,
    /// Accept owners are tracked in the kernel (it needs syscall tracepoints).
    pub accept_owners: Option<String>,
    /// The pinned per-socket map, when pinning works; kept for the lock it holds.
    pub pins: Option<pinning::PinDir>,
}

pub fn load(settings: &LoadSettings) -> Result<Probe> {
    let capabilities = privileges::effective_capabilities()?;
    privileges::check(capabilities)?;
    for limit in privileges::degraded(capabilities) {
        tracing::warn!("{limit}");
    }
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "the kernel exposes no BTF ({VMLINUX_BTF} is missing): a kernel built with CONFIG_DEBUG_INFO_BTF=y is required"
        );
    }
    // /proc/kallsyms is slow to read: read it meanwhile, it is needed only for TIME-WAIT.
    let tw_handler = std::thread::spawn(|| {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        kernel_layout::kernel_symbol(&kallsyms, "tw_timer_handler")
    });
    let tracefs = tracefs::ensure_mounted()?;
    // Accept owners need the syscall tracepoints, which some kernels are built without.
    let accept_exit = Format::read(&tracefs, "syscalls", "sys_exit_accept4")
        .and_then(|f| f.check("ret", tracer_common::ACCEPT_RET_OFFSET, 8));
    let kernel = kernel_layout::read_offsets(Path::new(VMLINUX_BTF))?;

    let pins = match &settings.pin_dir {
        Some(dir) => {
            let shape = pinning::Shape {
                max_entries: tracer_common::SOCKET_RECORDS,
            };
            match pinning::PinDir::open(dir, &shape) {
                Ok(pins) => Some(pins),
                Err(err @ pinning::PinError::Busy(_)) => return Err(err.into()),
                Err(err) => {
                    tracing::warn!("socket ages will not survive a restart: {err}");
                    None
                }
            }
        }
        None => None,
    };
    let btf = aya::Btf::from_sys_fs().context("cannot parse the kernel's BTF")?;
    let wanted = &settings.filter;
    let filter = KernelFilter {
        family: match wanted.family {
            None => 0,
            Some(Family::Ipv4) => AF_INET,
            Some(Family::Ipv6) => AF_INET6,
        },
        local_ports: u8::from(!wanted.local_ports.is_empty()),
        remote_ports: u8::from(!wanted.remote_ports.is_empty()),
        netns: wanted.netns.unwrap_or(0),
    };
    // Wake the reader once a quarter of the buffer is used; the poll timer covers the rest.
    let wakeup_bytes = u64::from(settings.ring_buffer_size / 4);
    let mut loader = EbpfLoader::new();
    if let Some(pins) = &pins {
        loader.map_pin_path("SOCKETS", pins.sockets.as_path());
    }
    let mut ebpf = loader
        .btf(Some(&btf))
        .map_max_entries("EVENTS", settings.ring_buffer_size)
        .override_global("FILTER", &filter, true)
        .override_global("OFFSETS", &kernel.offsets, true)
        .override_global("TIMER_FUNCTION", &kernel.timer_function, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
        .load(PROGRAMS)
        .context(
            "loading the eBPF programs failed (is BPF allowed here? check lockdown and seccomp)",
        )?;

    fill_port_map(&mut ebpf, "LOCAL_PORTS", &wanted.local_ports)?;
    fill_port_map(&mut ebpf, "REMOTE_PORTS", &wanted.remote_ports)?;

    attach_btf_tracepoint(&mut ebpf, &btf, "inet_sock_set_state")?;
    let accept_owners = match accept_exit {
        Ok(()) => attach_tracepoint(
            &mut ebpf,
            "sys_exit_accept",
            &[
                ("syscalls", "sys_exit_accept4"),
                ("syscalls", "sys_exit_accept"),
            ],
        )
        .err()
        .map(|err| format!("{err:#}")),
        Err(err) => Some(format!("{err:#}")),
    };
    let timewait = match tw_handler.join().ok().flatten() {
        Some(address) => attach_timewait(&mut ebpf, &btf, address)
            .err()
            .map(|err| format!("{err:#}")),
        None => Some("tw_timer_handler is not readable in /proc/kallsyms".to_owned()),
    };
    Ok(Probe {
        ebpf,
        timewait,
        accept_owners,
        pins,
    })
}

fn fill_port_map(ebpf: &mut Ebpf, name: &str, ports: &[u16]) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} missing"))?;
    let mut map: HashMap<_, u16, u8> = HashMap::try_from(map)?;
    for port in ports {
        map.insert(port, 1, 0)
            .with_context(|| format!("adding port {port} to {name}"))?;
    }
    Ok(())
}

fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, points: &[(&str, &str)]) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("the kernel refused program {program}"))?;
    for (category, name) in points {
        prog.attach(category, name)
            .with_context(|| format!("attaching to tracepoint {category}/{name}"))?;
    }
    Ok(())
}

fn attach_timewait(ebpf: &mut Ebpf, btf: &aya::Btf, tw_timer_handler: u64) -> Result<()> {
    let map = ebpf
        .map_mut("TW_TIMER_HANDLER")
        .context("map TW_TIMER_HANDLER missing")?;
    let mut handler: Array<_, u64> = Array::try_from(map)?;
    handler
        .set(0, tw_timer_handler, 0)
        .context("setting the timewait timer handler")?;
    for name in ["timer_start", "timer_cancel"] {
        attach_btf_tracepoint(ebpf, btf, name)?;
    }
    Ok(())
}

/// Loads and attaches the program of this name to the BTF tracepoint of the same name.
fn attach_btf_tracepoint(ebpf: &mut Ebpf, btf: &aya::Btf, name: &str) -> Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()?;
    prog.load(name, btf)
        .with_context(|| format!("the kernel refused tp_btf/{name}"))?;
    prog.attach()
        .with_context(|| format!("attaching tp_btf/{name}"))?;
    Ok(())
}

impl Probe {
    /// Takes the ring buffer of events out of the loaded object.
    pub fn events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("map EVENTS missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Sum over CPUs of one of the kernel's counters.
    fn counter(&self, index: u32) -> Result<u64> {
        let map = self.ebpf.map("COUNTERS").context("map COUNTERS missing")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counters.get(&index, 0)?.iter().sum())
    }

    /// Events the kernel could not write to the ring buffer: transitions, and all kinds.
    pub fn lost_events(&self) -> Result<(u64, u64)> {
        let transitions = self.counter(counter::LOST_TRANSITIONS)?;
        Ok((
            transitions,
            transitions + self.counter(counter::LOST_OTHER)?,
        ))
    }

    /// The kernel's accounting of the tracer's programs whose names `wanted` accepts, summed.
    pub fn program_stats(&self, wanted: impl Fn(&str) -> bool) -> Result<prog_stats::ProgramStats> {
        let mut total = prog_stats::ProgramStats::default();
        for (name, program) in self.ebpf.programs().filter(|(name, _)| wanted(name)) {
            let Ok(fd) = program.fd() else {
                continue; // not loaded (e.g. TIME-WAIT tracking off)
            };
            let stats = prog_stats::read(fd.as_fd())
                .with_context(|| format!("reading the statistics of {name}"))?;
            total = total + stats;
        }
        Ok(total)
    }

    /// The kernel's per-socket records of live sockets (not of closed ones), with their address.
    pub fn socket_records(&self) -> Result<Vec<(u64, SockRecord)>> {
        let map = self.ebpf.map("SOCKETS").context("map SOCKETS missing")?;
        let records: HashMap<_, u64, SockRecord> = HashMap::try_from(map)?;
        Ok(records
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| r.state != tracer_common::TcpState::Close as u8)
            .collect())
    }

    /// Gives the aya-log records of the programs a reader (their ring buffer).
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the kernel log reader")
    }
}
