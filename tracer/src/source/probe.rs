//! Puts the programs into the kernel: checks privileges and prerequisites, reads the running
//! kernel's layouts, fills the programs' read-only globals, loads and attaches. Dropping the
//! returned [`Probe`] detaches everything (and the kernel does the same if the process dies).
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
use tracer_common::{SockRecord, counter, names};

use super::{
    decode::pinned_record,
    events::PinnedRecord,
    filter::SocketFilter,
    health::KernelHealth,
    kernel_layout::{self, VMLINUX_BTF},
    pinning, privileges, prog_stats,
    tracefs::{self, Format},
};

/// The eBPF object built by build.rs, embedded so the daemon is a single file.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What to load.
#[derive(Debug, Clone)]
pub(crate) struct LoadSettings {
    pub(crate) ring_buffer_size: u32,
    pub(crate) filter: SocketFilter,
    /// Where to pin the per-socket map; `None`: not pinned.
    pub(crate) pin_dir: Option<PathBuf>,
}

/// An optional part of the tracer: attached, or off for a reason the daemon tells the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Attached,
    Off(String),
}

impl Part {
    fn of(result: Result<()>) -> Self {
        match result {
            Ok(()) => Self::Attached,
            Err(err) => Self::Off(format!("{err:#}")),
        }
    }
}

/// The loaded and attached programs.
pub(crate) struct Probe {
    ebpf: Ebpf,
    /// TIME-WAIT tracking (it needs BTF tracepoints and a readable kallsyms).
    pub(crate) timewait: Part,
    /// Owners of accepted sockets (it needs syscall tracepoints).
    pub(crate) accept_owners: Part,
    /// The pinned per-socket map, when pinning works; kept for the lock it holds.
    pins: Option<pinning::PinDir>,
}

pub(crate) fn load(settings: &LoadSettings) -> Result<Probe> {
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
    let filter = settings.filter.kernel_filter();
    // Wake the reader once a quarter of the buffer is used; the poll timer covers the rest.
    let wakeup_bytes = u64::from(settings.ring_buffer_size / 4);
    let mut loader = EbpfLoader::new();
    if let Some(pins) = &pins {
        loader.map_pin_path(names::SOCKETS, pins.sockets.as_path());
    }
    let mut ebpf = loader
        .btf(Some(&btf))
        .map_max_entries(names::EVENTS, settings.ring_buffer_size)
        .override_global(names::FILTER, &filter, true)
        .override_global(names::OFFSETS, &kernel.offsets, true)
        .override_global(names::TIMER_FUNCTION, &kernel.timer_function, true)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
        .load(PROGRAMS)
        .context(
            "loading the eBPF programs failed (is BPF allowed here? check lockdown and seccomp)",
        )?;

    fill_port_map(&mut ebpf, names::LOCAL_PORTS, &settings.filter.local_ports)?;
    fill_port_map(
        &mut ebpf,
        names::REMOTE_PORTS,
        &settings.filter.remote_ports,
    )?;

    attach_btf_tracepoint(&mut ebpf, &btf, names::TRANSITION_PROGRAM)?;
    let accept_owners = Part::of(accept_exit.and_then(|()| {
        attach_tracepoint(&mut ebpf, names::ACCEPT_PROGRAM, &names::ACCEPT_TRACEPOINTS)
    }));
    let timewait = match tw_handler.join().ok().flatten() {
        Some(address) => Part::of(attach_timewait(&mut ebpf, &btf, address)),
        None => Part::Off("tw_timer_handler is not readable in /proc/kallsyms".to_owned()),
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
        .map_mut(names::TW_TIMER_HANDLER)
        .context("map TW_TIMER_HANDLER missing")?;
    let mut handler: Array<_, u64> = Array::try_from(map)?;
    handler
        .set(0, tw_timer_handler, 0)
        .context("setting the timewait timer handler")?;
    for name in [names::TIMER_START_PROGRAM, names::TIMER_CANCEL_PROGRAM] {
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
    pub(crate) fn events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .context("map EVENTS missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Sum over CPUs of one of the kernel's counters.
    fn counter(&self, index: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .context("map COUNTERS missing")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counters.get(&index, 0)?.iter().sum())
    }

    /// The kernel's account of everything it could not deliver.
    pub(crate) fn health(&self) -> Result<KernelHealth> {
        Ok(KernelHealth {
            lost_transitions: self.counter(counter::LOST_TRANSITIONS)?,
            lost_other: self.counter(counter::LOST_OTHER)?,
            skipped_transitions: self
                .program_stats(|name| name == names::TRANSITION_PROGRAM)?
                .recursion_misses,
            skipped_all: self.program_stats(|_| true)?.recursion_misses,
            failed_reads: self.counter(counter::READ_FAILED)?,
            unrecorded_sockets: self.counter(counter::RECORD_FAILED)?,
        })
    }

    /// The kernel's accounting of the tracer's programs whose names `wanted` accepts, summed.
    fn program_stats(&self, wanted: impl Fn(&str) -> bool) -> Result<prog_stats::ProgramStats> {
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

    /// Whether the per-socket map was pinned by an earlier daemon: this one is a restart.
    pub(crate) fn restarted(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.reused)
    }

    /// The kernel's per-socket records of live sockets (not of closed ones).
    pub(crate) fn socket_records(&self) -> Result<Vec<PinnedRecord>> {
        let map = self
            .ebpf
            .map(names::SOCKETS)
            .context("map SOCKETS missing")?;
        let records: HashMap<_, u64, SockRecord> = HashMap::try_from(map)?;
        Ok(records
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(sock, record)| pinned_record(sock, &record))
            .collect())
    }

    /// Gives the aya-log records of the programs a reader (their ring buffer).
    pub(crate) fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the kernel log reader")
    }
}

#[cfg(test)]
mod tests {
    use aya_obj::btf::BtfKind;

    use super::*;

    /// Every name the daemon opens is in the embedded object: the kernel side names its maps,
    /// programs and globals as `tracer_common::names` says.
    #[test]
    fn the_object_has_every_name_the_daemon_uses() {
        let object = aya_obj::Object::parse(PROGRAMS).unwrap();
        for map in names::MAPS {
            assert!(object.maps.contains_key(map), "map {map}");
        }
        for program in names::PROGRAMS {
            assert!(object.programs.contains_key(program), "program {program}");
        }
        let btf = object.btf.as_ref().expect("the object carries BTF");
        for global in names::GLOBALS {
            assert!(
                btf.id_by_type_name_kind(global, BtfKind::Var).is_ok(),
                "global {global}"
            );
        }
    }
}
