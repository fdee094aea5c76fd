//! ha-agent: sub-second, data-safe failover for a two-server web + MySQL stack.
//!
//! The folders show the architecture:
//! - [`decisions`]: sans-IO state machines (events and the time in, actions
//!   and the next deadline out): the election, the database controller, the
//!   proxy wish;
//! - [`drivers`]: thin owners of one thing each (eBPF liveness, probe
//!   senders, VIPs, ARP, hooks, MySQL, Atlas);
//! - [`operator`]: what the operator sees and writes (config, status);
//! - [`protocol`]: the probe on the wire, shared by decisions and drivers;
//! - [`daemon`]: the wiring that feeds drivers' events to the decisions and
//!   carries out their actions.

pub mod daemon;
pub mod decisions;
pub mod drivers;
pub mod operator;
pub mod protocol;
