//! ha-agent: sub-second, data-safe failover for a two-server web + MySQL stack.
//!
//! The election is a pure state machine ([`election`]); everything else is a
//! thin driver that owns one thing (eBPF liveness, VIPs, ARP, hooks, status).

pub mod config;
