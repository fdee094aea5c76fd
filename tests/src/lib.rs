//! Network-namespace lab for ha-agent.
//!
//! [`Lab::new`] builds the seed topology in network namespaces whose names
//! share a unique prefix (so a crashed run's leftovers can be found by
//! [`Lab::cleanup_stale`]):
//!
//! ```text
//!                      switch namespace (<prefix>-sw)
//!        br-out 198.51.100.1/24 (gateway, witness)     br-in 203.0.113.1/24
//!          |  s1o      |  s2o      |  cl0                |  s1i     |  s2i
//!        eth0        eth0        eth0                  eth1       eth1
//!     server1     server2      client               server1    server2
//!   198.51.100.11  .12        198.51.100.50        203.0.113.11  .12
//! ```
//!
//! The VIPs 198.51.100.100/24 (eth0) and 203.0.113.100/24 (eth1) are added by
//! the agent, never by the lab. Faults are injected in the switch namespace
//! only (port state and nftables `bridge` rules) and undone by [`Lab::heal`].
//! Nothing is added to the root namespace except the `/run/netns/<name>`
//! entries of the lab's own namespaces.
//!
//! Every helper that waits is bounded; every process is killed on drop; the
//! lab removes its namespaces and processes on drop, also while panicking.

pub mod agent;
pub mod atlas_fixture;
pub mod attacker;
pub mod capture;
pub mod evidence;
pub mod faults;
pub mod keepalived;
pub mod mariadb;
pub mod netns;
pub mod pair;
pub mod pinger;
pub mod port;
pub mod process;
pub mod selftest;
pub mod stack;
pub mod topology;
pub mod vips;
pub mod wait;
pub mod writer;

pub use agent::{agent_bin, Overrides};
pub use netns::Cidr;
pub use pinger::{Gap, PingLog, Pinger, Reply};
pub use process::{spawn_in, LabProcess};
pub use topology::{Lab, Link, Node, Server};
pub use wait::{
    check_interrupt, install_interrupt_handler, interrupted, sleep, wait_until, wait_until_ok,
};

use std::net::Ipv4Addr;

/// The outside gateway: the switch's address on `br-out`, the agents' witness.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The switch's address on `br-in` (nothing uses it as a witness).
pub const INSIDE_SWITCH: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The client on the outside bridge.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
/// Outside VIP (on eth0), where web clients connect.
pub const OUTSIDE_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
/// Inside VIP (on eth1), the MySQL primary.
pub const INSIDE_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
/// Prefix length of both lab subnets.
pub const PREFIX_LEN: u8 = 24;
/// The default base of lab prefixes (`hl<pid-hex>n<counter>`).
pub const DEFAULT_BASE: &str = "hl";
