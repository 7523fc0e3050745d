//! Stage 2, enrich: what the kernel's events do not say, from the rest of the system. Owners
//! ([`owners`]: process names and cgroups from /proc, the container, pod and unit their cgroups
//! name ([`containers`]), and the holders of the sockets reported), the kernel's own socket list
//! ([`socket_list`], sock_diag), which the core consumes as plain data to seed and heal the
//! records, with each namespace's ephemeral port range ([`port_range`]), and the connections
//! listeners turned away ([`listen_drops`]). The scans are blocking: the daemon runs them off its
//! event loop.
pub(crate) mod containers;
pub(crate) mod listen_drops;
pub(crate) mod owners;
pub(crate) mod port_range;
pub mod socket_list;
