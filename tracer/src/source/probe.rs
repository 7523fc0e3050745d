//! Puts the programs into the kernel: checks privileges and prerequisites, reads the running
//! kernel's layouts, fills the programs' read-only globals, sizes and pins the record maps, loads
//! and attaches. Dropping the returned [`Probe`] detaches everything (and the kernel does the same
//! if the process dies).
use std::{
    hash::{BuildHasher as _, RandomState},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{BtfTracePoint, Iter, TracePoint},
};
use tracer_common::{Config, SockRecord, TcpState, Tuple, TwRecord, names};

use super::{
    filter::SocketFilter,
    health::{KernelHealth, Seen},
    jiffies,
    kernel_layout::{self, VMLINUX_BTF},
    kernel_maps::{Aggregates, KernelCounts, RecordMap, RecordMaps},
    pinning, privileges,
    socket_owners::SocketOwners,
    tracefs,
};

/// Locked memory the maps need where the kernel charges them to `RLIMIT_MEMLOCK` (before 5.11):
/// the ring buffer and the record maps' tables, with room.
const MEMLOCK_NEEDED: u64 = 64 << 20;

/// The eBPF object built by build.rs, embedded so the daemon is a single file.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What to load.
#[derive(Debug, Clone)]
pub(crate) struct LoadSettings {
    pub(crate) ring_buffer_size: u32,
    pub(crate) filter: SocketFilter,
    /// Where to pin the record maps; `None`: not pinned.
    pub(crate) pin_dir: Option<PathBuf>,
    /// Full sockets the kernel keeps records of, at most (timewait and watched sockets in
    /// proportion).
    pub(crate) max_sockets: u32,
    /// Stuck threshold of each state, in nanoseconds; 0: not watched.
    pub(crate) thresholds_ns: [u64; TcpState::COUNT],
    /// Every transition goes to the ring buffer.
    pub(crate) log_all: bool,
    /// accept() is traced (`--accept-wait`): it names the owners of accepted sockets at once and
    /// times their wait in the accept queue. (Also on while every transition is logged.)
    pub(crate) accept_waits: bool,
    /// bind() is traced (`--bind-failures`): a TCP socket's failure for want of its address or
    /// port is reported.
    pub(crate) bind_failures: bool,
    /// Transitions and durations are counted per service port too.
    pub(crate) port_labels: bool,
}

impl LoadSettings {
    /// Sizes of the record maps: timewait sockets, sockets in watched states and lingering
    /// timewait sockets are fewer than sockets.
    fn map_sizes(&self) -> [(&'static str, u32); 4] {
        let sockets = self.max_sockets.max(1024);
        [
            (names::SOCKETS, sockets),
            (names::TIMEWAIT, (sockets / 2).max(1024)),
            (names::WATCHED, (sockets / 4).max(1024)),
            (names::LINGERING, (sockets / 16).max(1024)),
        ]
    }
}

/// An optional part of the tracer: attached, or off for a reason the daemon tells the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Attached,
    /// Not needed with these settings.
    Unused,
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
    pub(super) ebpf: Ebpf,
    /// TIME-WAIT tracking (it needs a readable `tw_timer_handler` in kallsyms).
    pub(crate) timewait: Part,
    /// accept(): owners of accepted sockets at once, and their waits in the accept queue
    /// (with `--accept-wait`, or while logging every transition).
    pub(crate) accept_owners: Part,
    /// bind() failures (with `--bind-failures`).
    pub(crate) bind_failures: Part,
    /// Resets a socket sends as it ends (`reset_sent` ends).
    pub(crate) resets: Part,
    /// SYNs a connect sent again (a connect's retries; a stuck connect's local port).
    pub(crate) syn_retransmits: Part,
    /// SYN-ACKs a listener sent again (its half-open connections).
    pub(crate) synack_retransmits: Part,
    /// The kernel's tracepoint passes a reset's reason (Linux 6.10 and later).
    pub(crate) reset_reason_arg: bool,
    /// The programs name full sockets by cookie, as the kernel's socket list does (Linux 5.12
    /// and later); else by address, and the records cannot be checked against that list.
    pub(crate) socket_cookies: bool,
    /// The kernel's names of its reset reasons (`enum sk_rst_reason`), by number.
    pub(crate) reset_reasons: Vec<String>,
    /// Finding the processes that hold sockets with a task_file iterator (else from /proc).
    pub(crate) owner_iterator: Part,
    /// Records the pinned maps held when this daemon started, by state: the kernel's own
    /// counts start at zero.
    pub(crate) pinned_by_state: [i64; TcpState::COUNT],
    /// The pinned maps were kept from an earlier daemon.
    pub(crate) restarted: bool,
    /// Kept for the lock it holds.
    _pins: Option<pinning::PinDir>,
}

pub(crate) fn load(settings: &LoadSettings) -> Result<Probe> {
    let capabilities = privileges::effective_capabilities()?;
    privileges::check(capabilities)?;
    for limit in privileges::degraded(capabilities) {
        tracing::warn!("{limit}");
    }
    privileges::raise_memlock_limit();
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
    let kernel_btf = kernel_layout::read_kernel_btf(Path::new(VMLINUX_BTF))?;
    let kernel = kernel_layout::read_offsets(&kernel_btf)?;
    // Records named by address cannot be told from a reused address after a restart.
    let pins = if kernel.socket_cookies {
        open_pins(settings)?
    } else {
        None
    };
    // Parsed again, by aya, for loading: aya's `Btf` (aya-obj 0.3) shows none of its types, so
    // it cannot answer the offsets above, and only it is taken by the loader and the programs'
    // `load`; making one from the other would mean rebuilding every type. Nor is this the only
    // other parse: `EbpfLoader::new()` parses the file itself, unasked, before `.btf()` replaces
    // it (the file is opened twice). btf-rs is the costly parse: about 90 ms of the 500 ms to
    // READY on the project's test machine, aya's about 10 ms each.
    let btf = aya::Btf::parse(&kernel_btf, aya::Endianness::default())
        .context("cannot parse the kernel's BTF")?;
    drop(kernel_btf);
    let config = Config {
        ns_per_jiffy: jiffies::ns_per_jiffy().unwrap_or(0),
        watched: (0..TcpState::COUNT)
            .filter(|state| settings.thresholds_ns[*state] != 0)
            .fold(0, |mask, state| mask | (1 << state)),
        log_all: u8::from(settings.log_all),
        port_labels: u8::from(settings.port_labels),
        reset_reason_arg: u8::from(kernel.reset_reason_arg),
        socket_cookies: u8::from(kernel.socket_cookies),
        _pad: [0; 2],
        // Random for each run, from the keys the standard library draws from the kernel.
        disguise_key: RandomState::new().hash_one(0u64),
        disguise_factor: RandomState::new().hash_one(1u64) | 1,
    };
    let filter = settings.filter.kernel_filter();
    // Wake the reader once a quarter of the buffer is used; the poll timer covers the rest.
    let wakeup_bytes = u64::from(settings.ring_buffer_size / 4);
    let mut loader = EbpfLoader::new();
    if let Some(pins) = &pins {
        for (map, path) in &pins.paths {
            loader.map_pin_path(map, path.as_path());
        }
    }
    for (map, size) in settings.map_sizes() {
        loader.map_max_entries(map, size);
    }
    let mut ebpf = loader
        .btf(Some(&btf))
        .map_max_entries(names::EVENTS, settings.ring_buffer_size)
        .override_global(names::CONFIG, &config, true)
        .override_global(names::FILTER, &filter, true)
        .override_global(names::OFFSETS, &kernel.offsets, true)
        .override_global(names::TIMER_FUNCTION, &kernel.timer_function, true)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
        .load(PROGRAMS)
        .with_context(|| match privileges::memlock_limit() {
            Some(limit) if limit < MEMLOCK_NEEDED => format!(
                "loading the eBPF programs failed: the locked-memory limit is {} KiB, which kernels before 5.11 charge BPF maps to (raise it: LimitMEMLOCK=infinity in the unit, ulimit -l unlimited, or CAP_SYS_RESOURCE)",
                limit / 1024
            ),
            _ => "loading the eBPF programs failed (is BPF allowed here? check lockdown and seccomp)"
                .to_owned(),
        })?;

    fill_port_map(&mut ebpf, names::LOCAL_PORTS, &settings.filter.local_ports)?;
    fill_port_map(
        &mut ebpf,
        names::REMOTE_PORTS,
        &settings.filter.remote_ports,
    )?;
    let mut thresholds: Array<_, u64> = Array::try_from(
        ebpf.map_mut(names::THRESHOLDS)
            .context("map THRESHOLDS missing")?,
    )?;
    for (state, ns) in settings.thresholds_ns.iter().enumerate() {
        thresholds.set(state as u32, ns, 0)?;
    }
    let mut probe = Probe {
        ebpf,
        timewait: Part::Unused,
        accept_owners: Part::Unused,
        bind_failures: Part::Unused,
        resets: Part::Unused,
        syn_retransmits: Part::Unused,
        synack_retransmits: Part::Unused,
        reset_reason_arg: kernel.reset_reason_arg,
        socket_cookies: kernel.socket_cookies,
        reset_reasons: kernel.reset_reasons,
        owner_iterator: Part::Unused,
        pinned_by_state: [0; TcpState::COUNT],
        restarted: pins.as_ref().is_some_and(|p| p.reused),
        _pins: pins,
    };
    // Records kept by an earlier daemon are counted before anything can change them.
    if probe.restarted {
        let maps = probe.record_maps()?;
        let sockets: Vec<(u64, SockRecord)> = maps.all(RecordMap::Sockets)?;
        let timewaits: Vec<(Tuple, TwRecord)> = maps.all(RecordMap::Timewait)?;
        let states = sockets
            .iter()
            .map(|(_, r)| r.state)
            .chain(timewaits.iter().map(|(_, r)| r.substate));
        for state in states {
            probe.pinned_by_state[usize::from(state).min(TcpState::COUNT - 1)] += 1;
        }
    }
    probe.timewait = match tw_handler.join().ok().flatten() {
        Some(address) => Part::of(attach_timewait(&mut probe.ebpf, &btf, address)),
        None => Part::Off("tw_timer_handler is not readable in /proc/kallsyms".to_owned()),
    };
    attach_btf_tracepoint(&mut probe.ebpf, &btf, names::TRANSITION_PROGRAM)?;
    // Each optional hook on its own: one the kernel refuses takes nothing else down with it.
    probe.resets = Part::of(attach_btf_tracepoint(
        &mut probe.ebpf,
        &btf,
        names::RESET_PROGRAM,
    ));
    probe.syn_retransmits = Part::of(attach_btf_tracepoint(
        &mut probe.ebpf,
        &btf,
        names::RETRANSMIT_PROGRAM,
    ));
    probe.synack_retransmits = Part::of(attach_btf_tracepoint(
        &mut probe.ebpf,
        &btf,
        names::SYNACK_PROGRAM,
    ));
    if settings.log_all || settings.accept_waits {
        probe.accept_owners = Part::of(attach_accept(&mut probe.ebpf));
    }
    if settings.bind_failures {
        probe.bind_failures = Part::of(attach_bind(&mut probe.ebpf));
    }
    probe.owner_iterator = Part::of(load_owner_iterator(&mut probe.ebpf, &btf));
    Ok(probe)
}

/// Opens the pin directory for the record maps, sized as they will be loaded.
fn open_pins(settings: &LoadSettings) -> Result<Option<pinning::PinDir>> {
    let Some(dir) = &settings.pin_dir else {
        return Ok(None);
    };
    let sizes = settings.map_sizes();
    let shapes = [
        pinning::Shape {
            map: names::SOCKETS,
            key_size: size_of::<u64>(),
            value_size: size_of::<SockRecord>(),
            max_entries: sizes[0].1,
        },
        pinning::Shape {
            map: names::TIMEWAIT,
            key_size: size_of::<Tuple>(),
            value_size: size_of::<TwRecord>(),
            max_entries: sizes[1].1,
        },
    ];
    match pinning::PinDir::open(dir, &shapes) {
        Ok(pins) => Ok(Some(pins)),
        Err(err @ pinning::PinError::Busy(_)) => Err(err.into()),
        Err(err) => {
            tracing::warn!("socket ages will not survive a restart: {err}");
            Ok(None)
        }
    }
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

/// The accept() tracepoints are classic ones: they need tracefs, which is mounted when it is not.
fn attach_accept(ebpf: &mut Ebpf) -> Result<()> {
    let tracefs = tracefs::ensure_mounted()?;
    tracefs::Format::read(&tracefs, "syscalls", "sys_exit_accept4")?.check(
        "ret",
        tracer_common::SYSCALL_RET_OFFSET,
        8,
    )?;
    attach_syscall_program(ebpf, names::ACCEPT_PROGRAM, &names::ACCEPT_TRACEPOINTS)
}

/// bind()'s entry and exit, classic tracepoints like accept()'s.
fn attach_bind(ebpf: &mut Ebpf) -> Result<()> {
    let tracefs = tracefs::ensure_mounted()?;
    let enter = tracefs::Format::read(&tracefs, "syscalls", "sys_enter_bind")?;
    enter.check("fd", tracer_common::BIND_FD_OFFSET, 8)?;
    enter.check("umyaddr", tracer_common::BIND_ADDR_OFFSET, 8)?;
    tracefs::Format::read(&tracefs, "syscalls", "sys_exit_bind")?.check(
        "ret",
        tracer_common::SYSCALL_RET_OFFSET,
        8,
    )?;
    attach_syscall_program(ebpf, names::BIND_ENTER_PROGRAM, &["sys_enter_bind"])?;
    attach_syscall_program(ebpf, names::BIND_EXIT_PROGRAM, &["sys_exit_bind"])
}

/// Loads the classic tracepoint program `program` and attaches it to these `syscalls/`
/// tracepoints.
fn attach_syscall_program(ebpf: &mut Ebpf, program: &str, tracepoints: &[&str]) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("the kernel refused program {program}"))?;
    for tracepoint in tracepoints {
        prog.attach("syscalls", tracepoint)
            .with_context(|| format!("attaching to tracepoint syscalls/{tracepoint}"))?;
    }
    Ok(())
}

fn attach_timewait(ebpf: &mut Ebpf, btf: &aya::Btf, tw_timer_handler: u64) -> Result<()> {
    attach_btf_tracepoint(ebpf, btf, names::TIMER_EXPIRE_PROGRAM)?;
    // Set last: the transition program hands closes over to timewait records only once expiries
    // are seen, so no record is left without an end.
    let map = ebpf
        .map_mut(names::TW_TIMER_HANDLER)
        .context("map TW_TIMER_HANDLER missing")?;
    let mut handler: Array<_, u64> = Array::try_from(map)?;
    handler
        .set(0, tw_timer_handler, 0)
        .context("setting the timewait timer handler")
}

/// Loads and attaches the program of this name to the BTF tracepoint of the same name.
/// Loads the owner iterator; it is linked and read per lookup.
fn load_owner_iterator(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<()> {
    let prog: &mut Iter = ebpf
        .program_mut(names::OWNER_ITER_PROGRAM)
        .context("program socket_owners missing")?
        .try_into()?;
    prog.load("task_file", btf)
        .context("the kernel refused the task_file iterator")?;
    Ok(())
}

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

/// One part of the tracer as loaded: what it does, its program, whether it works here.
pub(crate) struct PartReport {
    /// What the part does, for people.
    pub(crate) what: &'static str,
    pub(crate) program: &'static str,
    pub(crate) state: Part,
    /// Instructions the verifier processed to load the program (Linux 5.16 and later say).
    pub(crate) verified_instructions: Option<u32>,
}

impl Probe {
    /// The kernel's account of everything it could not deliver.
    pub(crate) fn health(&self) -> Result<KernelHealth> {
        KernelCounts(&self.ebpf).health()
    }

    /// What the programs saw, counted in the kernel.
    pub(crate) fn seen(&self) -> Result<Seen> {
        KernelCounts(&self.ebpf).seen()
    }

    /// The aggregates, summed over CPUs.
    pub(crate) fn aggregates(&self, port_labels: bool) -> Result<Aggregates> {
        KernelCounts(&self.ebpf).aggregates(port_labels, self.accept_owners == Part::Attached)
    }

    /// The record maps, to read and fix from another thread.
    pub(crate) fn record_maps(&self) -> Result<RecordMaps> {
        KernelCounts(&self.ebpf).record_maps()
    }

    /// Every part of the tracer, the transition program first.
    pub(crate) fn parts(&self) -> Vec<PartReport> {
        [
            (
                "TCP state transitions",
                names::TRANSITION_PROGRAM,
                &Part::Attached,
            ),
            (
                "TIME-WAIT tracking",
                names::TIMER_EXPIRE_PROGRAM,
                &self.timewait,
            ),
            (
                "accept waits and owners of accepted sockets",
                names::ACCEPT_PROGRAM,
                &self.accept_owners,
            ),
            (
                "bind() failures of TCP sockets",
                names::BIND_EXIT_PROGRAM,
                &self.bind_failures,
            ),
            (
                "resets sent as connections end (they count as other ends)",
                names::RESET_PROGRAM,
                &self.resets,
            ),
            (
                "SYN retransmissions (connect retries; a stuck connect's local port)",
                names::RETRANSMIT_PROGRAM,
                &self.syn_retransmits,
            ),
            (
                "SYN-ACK retransmissions (half-open connections per listener)",
                names::SYNACK_PROGRAM,
                &self.synack_retransmits,
            ),
            (
                "finding socket owners in the kernel (else read from /proc)",
                names::OWNER_ITER_PROGRAM,
                &self.owner_iterator,
            ),
        ]
        .into_iter()
        .map(|(what, program, state)| PartReport {
            what,
            program,
            state: state.clone(),
            verified_instructions: self
                .ebpf
                .program(program)
                .and_then(|p| p.info().ok())
                .and_then(|info| info.verified_instruction_count()),
        })
        .collect()
    }

    /// Takes the ring buffer of events out of the loaded object.
    pub(crate) fn events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .context("map EVENTS missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The owner iterator, for use off the event loop; `None` when it did not load.
    pub(crate) fn socket_owners(&self) -> Result<Option<SocketOwners>> {
        if self.owner_iterator != Part::Attached {
            return Ok(None);
        }
        let program: &Iter = self
            .ebpf
            .program(names::OWNER_ITER_PROGRAM)
            .context("program socket_owners missing")?
            .try_into()?;
        let program = program
            .fd()?
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the owner iterator's descriptor")?;
        let wanted = KernelCounts(&self.ebpf)
            .hash_map_fd(names::WANTED_SOCKETS)?
            .try_clone_to_owned()
            .context("duplicating the descriptor of WANTED_SOCKETS")?;
        Ok(Some(SocketOwners::new(program, wanted)))
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

    /// Every program's deepest chain of BPF-to-BPF calls fits 384 bytes of stack, counted as a
    /// verifier without private stacks does (5.10, or no JIT: frames rounded to 32 bytes). Such a
    /// verifier refuses a chain over 512 bytes at load time; the rest is headroom for the
    /// compiler's next layout. `--nocapture` prints every chain.
    #[test]
    fn every_program_stack_chain_fits_the_budget() {
        const BUDGET: u32 = 384;
        let chains = xtask::bpf_stack::analyze(PROGRAMS).unwrap();
        print!("{}", xtask::bpf_stack::report(&chains));
        assert!(!chains.is_empty(), "no programs found in the object");
        let over: Vec<String> = chains
            .iter()
            .filter(|chain| chain.total > BUDGET)
            .map(ToString::to_string)
            .collect();
        assert!(
            over.is_empty(),
            "stack over the {BUDGET}-byte budget (the verifier refuses 512):\n{}",
            over.join("\n")
        );
    }
}
