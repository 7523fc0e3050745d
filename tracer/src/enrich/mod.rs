//! Stage 2, enrich: what the kernel's events do not say, from the rest of the system. Owners
//! ([`owners`]: process names and cgroups from /proc, and the holders of sockets older than the
//! tracer) and the kernel's own socket list ([`socket_list`], sock_diag), which the core consumes
//! as plain data to seed and heal its table. The scans are blocking: the daemon runs them off its
//! event loop.
pub(crate) mod containers;
pub(crate) mod owners;
pub mod socket_list;
