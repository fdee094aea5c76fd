//! Drivers: each owns one thing of the outside world and does what the
//! decisions ask, nothing more.

pub mod arp;
pub mod atlas;
pub mod boot;
pub mod carrier;
pub mod ebpf;
pub mod hooks;
pub mod mysql;
pub mod privileges;
pub mod probe_socket;
pub mod sender;
#[cfg(test)]
pub(crate) mod testns;
pub mod vip;
