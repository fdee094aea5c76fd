//! ha-agent: sub-second, data-safe failover for a two-server web + MySQL stack.
//!
//! The election is a pure state machine ([`election`]); everything else is a
//! thin driver that owns one thing (eBPF liveness, VIPs, ARP, hooks, status).

pub mod arp;
pub mod atlas;
pub mod config;
pub mod daemon;
pub mod database;
pub mod ebpf;
pub mod election;
pub mod hooks;
pub mod mysql;
pub mod privileges;
pub mod protocol;
pub mod proxy;
pub mod sender;
pub mod services;
pub mod status;
#[cfg(test)]
mod testns;
pub mod vip;
