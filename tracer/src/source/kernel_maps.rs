//! The daemon's side of the kernel's maps: the per-CPU aggregates read once per interval, the
//! records and indexes read and fixed by reconciliation, and the counters. Whole maps move in a
//! few batch calls.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{Map, PerCpuArray},
};
use tracer_common::{
    End, EndCounts, TcpState, Watch,
    aggregate::{
        AcceptWaits, DURATION_BUCKETS, Durations, Gauges, ListenerKey, OCTAVES, PortDurations,
        PortKey, TransitionCounts, duration_bucket,
    },
    counter,
    ends::ERRNO_SLOTS,
    names,
};

use super::{
    batch::{self, Write},
    decode::watched,
    events::Watched,
    health::{KernelHealth, Seen},
    prog_stats,
};

const STATES: usize = TcpState::COUNT;

/// The kernel's aggregates, summed over CPUs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Aggregates {
    /// Transitions by (old, new): `transitions[old * COUNT + new]`.
    pub(crate) transitions: Vec<u64>,
    /// Time spent in each state, by state number.
    pub(crate) durations: Vec<StateDurations>,
    /// Records by state, as the programs moved them (the daemon adds what it wrote itself).
    pub(crate) gauges: [i64; STATES],
    /// With port labels: transitions by (port, old, new), port 0 for ports past the maps' room.
    pub(crate) port_transitions: Vec<(u16, u8, u8, u64)>,
    /// With port labels: time in a state by (port, state).
    pub(crate) port_durations: Vec<PortStateDurations>,
    /// How connections ended.
    pub(crate) ends: Ends,
    /// Connect times (SYN_SENT to ESTABLISHED): `[0]` without a SYN retransmitted, `[1]` with.
    pub(crate) connects: Vec<StateDurations>,
    /// How long each listener's connections waited to be accepted.
    pub(crate) accept_waits: Vec<ListenerWaits>,
}

/// How long one listener's connections waited to be accepted, since the programs were loaded.
/// Netns and port 0: the listeners past the kernel map's room, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerWaits {
    pub(crate) netns: u32,
    pub(crate) port: u16,
    /// The process that accepted the last of them; 0 when unknown.
    pub(crate) pid: u32,
    pub(crate) waits: StateDurations,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self {
            transitions: vec![0; STATES * STATES],
            durations: vec![StateDurations::default(); STATES],
            gauges: [0; STATES],
            port_transitions: Vec::new(),
            port_durations: Vec::new(),
            ends: Ends::default(),
            connects: vec![StateDurations::default(); 2],
            accept_waits: Vec::new(),
        }
    }
}

/// How connections ended, summed over CPUs (see `tracer_common::EndCounts`). Per CPU a count
/// may have wrapped (an end taken back on another CPU than it was counted on): sums and
/// differences wrap too, and come out right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ends {
    /// By `End as usize`.
    pub(crate) ends: [u64; End::COUNT],
    /// Of sockets that never got past SYN_SENT, by `End as usize`.
    pub(crate) connect_failures: [u64; End::COUNT],
    /// Ends of kind `End::Error`, by errno; and those of connecting sockets.
    pub(crate) errors: Vec<u64>,
    pub(crate) connect_errors: Vec<u64>,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            ends: [0; End::COUNT],
            connect_failures: [0; End::COUNT],
            errors: vec![0; ERRNO_SLOTS],
            connect_errors: vec![0; ERRNO_SLOTS],
        }
    }
}

impl Ends {
    fn add(&mut self, counts: &EndCounts) {
        let pairs = [
            (&mut self.ends[..], &counts.ends[..]),
            (&mut self.connect_failures[..], &counts.connect_failures[..]),
            (&mut self.errors[..], &counts.errors[..]),
            (&mut self.connect_errors[..], &counts.connect_errors[..]),
        ];
        for (total, cpu) in pairs {
            for (t, n) in total.iter_mut().zip(cpu) {
                *t = t.wrapping_add(*n);
            }
        }
    }

    /// What was counted since `then`.
    pub(crate) fn since(&self, then: &Ends) -> Ends {
        let minus = |now: &[u64], then: &[u64]| -> Vec<u64> {
            now.iter()
                .zip(then)
                .map(|(n, t)| n.wrapping_sub(*t))
                .collect()
        };
        let array = |v: Vec<u64>| -> [u64; End::COUNT] { v.try_into().unwrap_or([0; End::COUNT]) };
        Ends {
            ends: array(minus(&self.ends, &then.ends)),
            connect_failures: array(minus(&self.connect_failures, &then.connect_failures)),
            errors: minus(&self.errors, &then.errors),
            connect_errors: minus(&self.connect_errors, &then.connect_errors),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateDurations {
    /// `tracer_common::aggregate` buckets.
    pub(crate) buckets: Vec<u64>,
    pub(crate) count: u64,
    pub(crate) sum_ns: u64,
    /// 0 when no duration was recorded.
    pub(crate) min_ns: u64,
    pub(crate) max_ns: u64,
}

impl Default for StateDurations {
    fn default() -> Self {
        Self {
            buckets: vec![0; DURATION_BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: 0,
            max_ns: 0,
        }
    }
}

impl StateDurations {
    /// Adds one duration, as the kernel programs do.
    pub(crate) fn add(&mut self, ns: u64) {
        self.buckets[duration_bucket(ns).min(DURATION_BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_ns += ns;
        self.min_ns = if self.min_ns == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        }
        .max(1);
        self.max_ns = self.max_ns.max(ns);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortStateDurations {
    pub(crate) port: u16,
    pub(crate) state: u8,
    /// Octave buckets (`tracer_common::aggregate::octave`).
    pub(crate) buckets: [u64; OCTAVES],
    pub(crate) count: u64,
    pub(crate) sum_ns: u64,
}

/// The loaded object's maps, as the daemon reads them: the kernel's counters and aggregates, and
/// descriptors of the record maps for [`RecordMaps`]. (Kept apart from `Probe`, which holds the
/// programs and their links.)
pub(crate) struct KernelCounts<'a>(pub(crate) &'a Ebpf);

impl KernelCounts<'_> {
    fn per_cpu<T: Pod>(&self, name: &str, index: u32) -> Result<Vec<T>> {
        let map = self
            .0
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        let array: PerCpuArray<_, T> = PerCpuArray::try_from(map)?;
        Ok(array.get(&index, 0)?.iter().copied().collect())
    }

    /// Sum over CPUs of one of the kernel's counters.
    fn counter(&self, index: u32) -> Result<u64> {
        Ok(self.per_cpu::<u64>(names::COUNTERS, index)?.iter().sum())
    }

    /// The kernel's account of everything it could not deliver.
    pub(crate) fn health(&self) -> Result<KernelHealth> {
        Ok(KernelHealth {
            lost_transitions: self.counter(counter::LOST_TRANSITIONS)?,
            lost_other: self.counter(counter::LOST_OTHER)?,
            // The kernel's own skips (a program interrupted by itself, 5.15 and later count
            // them), and the transition program's runs nested too deep to have room.
            skipped_transitions: self
                .program_stats(|name| name == names::TRANSITION_PROGRAM)?
                .recursion_misses
                + self.counter(counter::SKIPPED_NESTED)?,
            skipped_all: self.program_stats(|_| true)?.recursion_misses
                + self.counter(counter::SKIPPED_NESTED)?,
            failed_reads: self.counter(counter::READ_FAILED)?,
            unrecorded_sockets: self.counter(counter::RECORD_FAILED)?,
            unwatched_sockets: self.counter(counter::WATCH_FAILED)?,
            unmatched_resets: self.counter(counter::UNMATCHED_RESETS)?,
            unlabelled: self.counter(counter::UNLABELLED)?,
        })
    }

    pub(crate) fn seen(&self) -> Result<Seen> {
        Ok(Seen {
            transitions: self.counter(counter::TRANSITIONS)?,
            timewait_ends: self.counter(counter::TIMEWAIT_ENDS)?,
            accepts: self.counter(counter::ACCEPTS)?,
            accepts_untimed: self.counter(counter::ACCEPTS_UNTIMED)?,
            syn_retransmits: self.counter(counter::SYN_RETRANSMITS)?,
            synack_retransmits: self.counter(counter::SYNACK_RETRANSMITS)?,
        })
    }

    /// The kernel's accounting of the tracer's programs whose names `wanted` accepts, summed.
    fn program_stats(&self, wanted: impl Fn(&str) -> bool) -> Result<prog_stats::ProgramStats> {
        let mut total = prog_stats::ProgramStats::default();
        for (name, program) in self.0.programs().filter(|(name, _)| wanted(name)) {
            let Ok(fd) = program.fd() else {
                continue; // not loaded (e.g. TIME-WAIT tracking off)
            };
            let stats = prog_stats::read(fd.as_fd())
                .with_context(|| format!("reading the statistics of {name}"))?;
            total = total + stats;
        }
        Ok(total)
    }

    /// The aggregates, summed over CPUs (`accept_waits`: the accept program is attached, so its
    /// map is worth reading).
    pub(crate) fn aggregates(&self, port_labels: bool, accept_waits: bool) -> Result<Aggregates> {
        let mut aggregates = Aggregates::default();
        for counts in self.per_cpu::<TransitionCounts>(names::COUNTS, 0)? {
            for (total, n) in aggregates.transitions.iter_mut().zip(counts.counts) {
                *total += n;
            }
        }
        for gauges in self.per_cpu::<Gauges>(names::GAUGES, 0)? {
            for (total, n) in aggregates.gauges.iter_mut().zip(gauges.by_state) {
                *total += n;
            }
        }
        for (state, total) in aggregates.durations.iter_mut().enumerate() {
            for d in self.per_cpu::<Durations>(names::DURATIONS, state as u32)? {
                add_durations(total, &d);
            }
        }
        for (index, total) in aggregates.connects.iter_mut().enumerate() {
            for d in self.per_cpu::<Durations>(names::CONNECT_DURATIONS, index as u32)? {
                add_durations(total, &d);
            }
        }
        for counts in self.per_cpu::<EndCounts>(names::ENDS, 0)? {
            aggregates.ends.add(&counts);
        }
        let listeners = if accept_waits {
            self.per_cpu_hash::<ListenerKey, AcceptWaits>(names::ACCEPT_WAITS)?
        } else {
            Vec::new()
        };
        aggregates.accept_waits = listeners
            .into_iter()
            .map(|(key, per_cpu)| {
                let mut total = ListenerWaits {
                    netns: key.netns,
                    port: key.port,
                    pid: 0,
                    waits: StateDurations::default(),
                };
                for w in per_cpu {
                    add_durations(&mut total.waits, &w.waits);
                    if w.pid != 0 {
                        total.pid = w.pid;
                    }
                }
                total
            })
            .collect();
        if port_labels {
            aggregates.port_transitions = self
                .per_cpu_hash::<PortKey, u64>(names::PORT_COUNTS)?
                .into_iter()
                .map(|(key, per_cpu)| (key.port, key.old, key.new, per_cpu.iter().sum()))
                .collect();
            aggregates.port_durations = self
                .per_cpu_hash::<PortKey, PortDurations>(names::PORT_DURATIONS)?
                .into_iter()
                .map(|(key, per_cpu)| {
                    let mut total = PortStateDurations {
                        port: key.port,
                        state: key.old,
                        buckets: [0; OCTAVES],
                        count: 0,
                        sum_ns: 0,
                    };
                    for d in per_cpu {
                        for (t, n) in total.buckets.iter_mut().zip(d.buckets) {
                            *t += n;
                        }
                        total.count += d.count;
                        total.sum_ns += d.sum_ns;
                    }
                    total
                })
                .collect();
        }
        Ok(aggregates)
    }

    /// The file descriptor of a hash map (plain or per-CPU), for whole-map reads and writes.
    pub(super) fn hash_map_fd(&self, name: &str) -> Result<BorrowedFd<'_>> {
        match self.0.map(name) {
            Some(Map::HashMap(data) | Map::PerCpuHashMap(data) | Map::PerCpuLruHashMap(data)) => {
                Ok(data.fd().as_fd())
            }
            Some(_) => bail!("map {name} is not a hash map"),
            None => bail!("map {name} missing"),
        }
    }

    fn per_cpu_hash<K: Pod, V: Pod>(&self, name: &str) -> Result<Vec<(K, Vec<V>)>> {
        per_cpu_entries(self.hash_map_fd(name)?).with_context(|| format!("reading {name}"))
    }

    /// The record maps, to read and fix from another thread.
    pub(crate) fn record_maps(&self) -> Result<RecordMaps> {
        let owned = |name: &str| -> Result<OwnedFd> {
            self.hash_map_fd(name)?
                .try_clone_to_owned()
                .with_context(|| format!("duplicating the descriptor of {name}"))
        };
        Ok(RecordMaps {
            sockets: owned(names::SOCKETS)?,
            timewait: owned(names::TIMEWAIT)?,
            watched: owned(names::WATCHED)?,
            lingering: owned(names::LINGERING)?,
            listener_synacks: owned(names::LISTENER_SYNACKS)?,
        })
    }
}

/// Every entry of a per-CPU hash map, with its value on each CPU.
fn per_cpu_entries<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Result<Vec<(K, Vec<V>)>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    let stride = size_of::<V>().div_ceil(8) * 8;
    let raw = batch::dump_raw::<K>(fd, stride * cpus)?;
    Ok(raw
        .into_iter()
        .map(|(key, bytes)| {
            let values = (0..cpus)
                // SAFETY: `V` is plain data; each CPU's value starts at a multiple of the
                // stride, inside the buffer.
                .map(|cpu| unsafe {
                    std::ptr::read_unaligned(bytes[cpu * stride..].as_ptr().cast::<V>())
                })
                .collect();
            (key, values)
        })
        .collect())
}

/// The kernel's record maps and indexes: full sockets by cookie, timewait sockets by address, the
/// index of sockets in watched states, the lingering timewait sockets; and the listeners' SYN-ACK
/// retransmits. Read and fixed by the blocking jobs, off the event loop.
pub(crate) struct RecordMaps {
    sockets: OwnedFd,
    timewait: OwnedFd,
    watched: OwnedFd,
    lingering: OwnedFd,
    listener_synacks: OwnedFd,
}

/// The record maps, by what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordMap {
    Sockets,
    Timewait,
    Watched,
    Lingering,
}

impl RecordMaps {
    fn fd(&self, map: RecordMap) -> BorrowedFd<'_> {
        match map {
            RecordMap::Sockets => self.sockets.as_fd(),
            RecordMap::Timewait => self.timewait.as_fd(),
            RecordMap::Watched => self.watched.as_fd(),
            RecordMap::Lingering => self.lingering.as_fd(),
        }
    }

    /// Every (key, value) of a map.
    pub(crate) fn all<K: Pod, V: Pod>(&self, map: RecordMap) -> Result<Vec<(K, V)>> {
        batch::dump(self.fd(map)).with_context(|| format!("reading {map:?}"))
    }

    /// The sockets in watched states, decoded.
    pub(crate) fn watched(&self) -> Result<Vec<Watched>> {
        let entries: Vec<(u64, Watch)> = self.all(RecordMap::Watched)?;
        Ok(entries
            .iter()
            .filter_map(|(cookie, watch)| watched(*cookie, watch).ok())
            .collect())
    }

    /// SYN-ACKs retransmitted by each listener (by cookie) since the programs were loaded.
    pub(crate) fn listener_synacks(&self) -> Result<HashMap<u64, u64>> {
        let entries: Vec<(u64, Vec<u64>)> = per_cpu_entries(self.listener_synacks.as_fd())
            .context("reading the listeners' SYN-ACK retransmits")?;
        Ok(entries
            .into_iter()
            .map(|(cookie, per_cpu)| (cookie, per_cpu.iter().sum()))
            .collect())
    }

    /// One value as it is now.
    pub(crate) fn get<K: Pod, V: Pod>(&self, map: RecordMap, key: &K) -> Result<Option<V>> {
        batch::lookup(self.fd(map), key).with_context(|| format!("reading {map:?}"))
    }

    /// Writes entries; returns which were written.
    pub(crate) fn write<K: Pod, V: Pod>(
        &self,
        map: RecordMap,
        entries: &[(K, V)],
        mode: Write,
    ) -> Result<Vec<bool>> {
        batch::update(self.fd(map), entries, mode).with_context(|| format!("writing to {map:?}"))
    }

    /// Deletes keys; returns which were there.
    pub(crate) fn delete<K: Pod>(&self, map: RecordMap, keys: &[K]) -> Result<Vec<bool>> {
        batch::delete(self.fd(map), keys).with_context(|| format!("deleting from {map:?}"))
    }
}

fn add_durations(total: &mut StateDurations, d: &Durations) {
    for (t, n) in total.buckets.iter_mut().zip(d.buckets) {
        *t += n;
    }
    total.count += d.count;
    total.sum_ns += d.sum_ns;
    if d.min_ns != 0 && (total.min_ns == 0 || d.min_ns < total.min_ns) {
        total.min_ns = d.min_ns;
    }
    total.max_ns = total.max_ns.max(d.max_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_add_up_over_cpus() {
        let mut total = StateDurations::default();
        let mut d = Durations {
            buckets: [0; DURATION_BUCKETS],
            count: 2,
            sum_ns: 30,
            min_ns: 10,
            max_ns: 20,
        };
        d.buckets[3] = 2;
        add_durations(&mut total, &d);
        let empty = Durations {
            buckets: [0; DURATION_BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: 0,
            max_ns: 0,
        };
        add_durations(&mut total, &empty);
        d.min_ns = 5;
        d.max_ns = 7;
        add_durations(&mut total, &d);
        assert_eq!((total.count, total.sum_ns), (4, 60));
        assert_eq!(
            (total.min_ns, total.max_ns),
            (5, 20),
            "an idle CPU's 0 is no minimum"
        );
        assert_eq!(total.buckets[3], 4);
    }
}
