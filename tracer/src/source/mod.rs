//! Stage 1, the source: everything that touches the kernel's BPF objects. It loads and attaches
//! the programs ([`probe`], with what it reads of the running kernel: [`kernel_layout`],
//! [`jiffies`], [`tracefs`], [`privileges`], [`mounts`], [`pinning`]), reads the ring buffer
//! ([`ring`]) and decodes its records into typed [`events`] ([`decode`]), and reads and writes the
//! kernel's maps ([`kernel_maps`], [`batch`]): the aggregates, the records, and the health
//! figures ([`health`], [`prog_stats`]); and runs the owner iterator ([`socket_owners`]). Its output is plain data for the later stages.
pub(crate) mod batch;
mod bpf_syscall;
pub(crate) mod clock;
pub(crate) mod decode;
pub(crate) mod events;
pub(crate) mod filter;
pub(crate) mod health;
pub(crate) mod jiffies;
pub(crate) mod kernel_layout;
pub(crate) mod kernel_maps;
pub(crate) mod mounts;
pub(crate) mod pinning;
pub(crate) mod privileges;
pub(crate) mod probe;
pub(crate) mod prog_stats;
pub(crate) mod ring;
pub(crate) mod socket_owners;
pub(crate) mod tracefs;
