//! ha-agent: sub-second, data-safe failover for a two-server web + MySQL stack.
//!
//! The election is a pure state machine ([`election`]); everything else is a
//! thin driver that owns one thing (eBPF liveness, VIPs, ARP, hooks, status).

pub mod arp;
pub mod config;
pub mod ebpf;
pub mod election;
pub mod daemon;
pub mod hooks;
pub mod privileges;
pub mod status;
pub mod sender;
pub mod protocol;
pub mod vip;
#[cfg(test)]
mod testns;
