//! tcpstate: traces TCP state transitions with eBPF. Data flows one way:
//! kernel programs → ring buffer → [`events`] (decode) → [`output`].
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod events;
pub mod loader;
pub mod output;
