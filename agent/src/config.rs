//! The agent's configuration file (TOML): parsing, defaults and validation.
//!
//! Every problem is reported with the field's path (`link[1].peer_ip`) and the
//! reason, all at once, so an operator fixes a file in one pass.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default UDP port of the probes between the two agents.
pub const DEFAULT_PORT: u16 = 7405;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML or has an unknown/mistyped field: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", .errors.len(), list(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole file, as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(rename = "link", default)]
    pub links: Vec<LinkConfig>,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
    #[serde(default)]
    pub garp: GarpConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This server's name, used in logs, status and hooks.
    pub name: String,
    /// Election priority, 1..=254 (higher wins an election between two backups).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Never take the VIPs from a healthy holder (the seed's setting).
    #[serde(default = "default_true")]
    pub nopreempt: bool,
    /// With `nopreempt = false`: how long a higher-priority backup waits before preempting.
    #[serde(default)]
    pub preempt_delay_ms: u64,
    /// File holding the shared HMAC key (mode 0600 or 0400, owned by root).
    pub key_file: PathBuf,
    /// Unix socket for `ha-agent status` and `ha-agent switchover`.
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// UDP port of the probes (same on both servers).
    #[serde(default = "default_port")]
    pub port: u16,
    /// A holder that reaches neither the peer nor any witness for this long drops its VIPs.
    #[serde(default = "default_fence_ms")]
    pub fence_timeout_ms: u64,
    /// How long a starting agent listens for its peer before deciding alone.
    /// Default: 3 x the slowest link's detection time, at least 100 ms.
    #[serde(default)]
    pub init_timeout_ms: Option<u64>,
    /// Name given to hooks as GROUP (keepalived's vrrp_sync_group name).
    #[serde(default = "default_group")]
    pub group: String,
    /// Run the probe sender with this SCHED_FIFO priority (1..=99), 0 = normal scheduling.
    #[serde(default = "default_rt_priority")]
    pub rt_priority: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Short name for logs and status ("outside", "inside").
    pub name: String,
    pub interface: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    /// Probe interval on this link.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Probes missed in a row before the peer is down on this link.
    #[serde(default = "default_multiplier")]
    pub multiplier: u32,
    /// Address probed by ARP to tell "I lost my uplink" from "the peer died" (usually the gateway).
    #[serde(default)]
    pub witness: Option<Ipv4Addr>,
    #[serde(default = "default_witness_interval_ms")]
    pub witness_interval_ms: u64,
    #[serde(default = "default_multiplier")]
    pub witness_multiplier: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Address with prefix length, e.g. "10.96.153.239/24".
    pub address: String,
    pub interface: String,
    /// Name given to hooks as INSTANCE (keepalived's vrrp_instance name).
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GarpConfig {
    /// Gratuitous ARPs sent per VIP on takeover.
    #[serde(default = "default_garp_count")]
    pub count: u32,
    /// Spacing between the ARPs of a burst.
    #[serde(default = "default_garp_spacing_ms")]
    pub spacing_ms: u64,
    /// Re-announce the VIPs this often while holding them; 0 = never.
    #[serde(default)]
    pub refresh_ms: u64,
}

impl Default for GarpConfig {
    fn default() -> Self {
        Self {
            count: default_garp_count(),
            spacing_ms: default_garp_spacing_ms(),
            refresh_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    /// Called as keepalived does: `notify GROUP|INSTANCE NAME STATE PRIORITY`.
    pub notify: Option<String>,
    #[serde(default = "default_hook_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify: None,
            timeout_ms: default_hook_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfConfig {
    /// eBPF object to load instead of the one built into the binary.
    pub object: Option<PathBuf>,
    /// "native" (driver XDP, fall back to generic), or "generic" (skb mode).
    #[serde(default)]
    pub xdp_mode: Option<String>,
}

fn default_priority() -> u8 {
    100
}
fn default_true() -> bool {
    true
}
fn default_status_socket() -> PathBuf {
    PathBuf::from("/run/ha-agent/ha-agent.sock")
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_fence_ms() -> u64 {
    300
}
fn default_group() -> String {
    "VG_1".into()
}
fn default_rt_priority() -> u8 {
    50
}
fn default_interval_ms() -> u64 {
    5
}
fn default_multiplier() -> u32 {
    3
}
fn default_witness_interval_ms() -> u64 {
    20
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_spacing_ms() -> u64 {
    10
}
fn default_hook_timeout_ms() -> u64 {
    10_000
}

/// A VIP after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub interface: String,
    pub instance: String,
}

impl LinkConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// Silence after which the peer is down on this link.
    pub fn detect_time(&self) -> Duration {
        self.interval() * self.multiplier
    }
    pub fn witness_interval(&self) -> Duration {
        Duration::from_millis(self.witness_interval_ms)
    }
    pub fn witness_detect_time(&self) -> Duration {
        self.witness_interval() * self.witness_multiplier
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let errors = config.problems();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                errors,
            })
        }
    }

    /// Every problem in the file (empty when valid).
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut bad = |field: String, reason: &str| {
            errs.push(FieldError {
                field,
                reason: reason.to_string(),
            })
        };
        let n = &self.node;
        if n.name.trim().is_empty() {
            bad("node.name".into(), "must not be empty");
        }
        if n.priority == 0 || n.priority == 255 {
            bad(
                "node.priority".into(),
                "must be between 1 and 254 (0 and 255 are reserved as in VRRP)",
            );
        }
        if n.port == 0 {
            bad("node.port".into(), "must not be 0");
        }
        if n.fence_timeout_ms == 0 {
            bad(
                "node.fence_timeout_ms".into(),
                "must be > 0: an isolated holder must keep its VIPs at least through a blip",
            );
        }
        if n.rt_priority > 99 {
            bad(
                "node.rt_priority".into(),
                "must be 0 (normal scheduling) or 1..=99 (SCHED_FIFO)",
            );
        }
        if !n.nopreempt && n.preempt_delay_ms > 3_600_000 {
            bad("node.preempt_delay_ms".into(), "must be at most one hour");
        }
        if n.group.trim().is_empty() {
            bad("node.group".into(), "must not be empty");
        }
        if self.links.is_empty() {
            bad(
                "link".into(),
                "at least one [[link]] is needed (the seed uses two: outside eth0 and inside eth1)",
            );
        }
        if self.links.len() > agent_ebpf::MAX_LINKS as usize {
            bad(
                "link".into(),
                &format!("at most {} links are supported", agent_ebpf::MAX_LINKS),
            );
        }
        let mut names = BTreeSet::new();
        let mut ifaces = BTreeSet::new();
        for (i, l) in self.links.iter().enumerate() {
            let f = |name: &str| format!("link[{i}].{name}");
            if l.name.trim().is_empty() {
                bad(f("name"), "must not be empty");
            } else if !names.insert(l.name.clone()) {
                bad(f("name"), "is used by another link");
            }
            check_ifname(&l.interface, &f("interface"), &mut bad);
            if !l.interface.is_empty() && !ifaces.insert(l.interface.clone()) {
                bad(f("interface"), "is used by another link");
            }
            if !is_unicast(l.local_ip) {
                bad(f("local_ip"), "must be a unicast IPv4 address");
            }
            if !is_unicast(l.peer_ip) {
                bad(f("peer_ip"), "must be a unicast IPv4 address");
            }
            if l.local_ip == l.peer_ip {
                bad(f("peer_ip"), "must differ from local_ip");
            }
            if l.interval_ms == 0 || l.interval_ms > 10_000 {
                bad(f("interval_ms"), "must be between 1 and 10000");
            }
            if !(2..=100).contains(&l.multiplier) {
                bad(
                    f("multiplier"),
                    "must be between 2 and 100 (1 would declare death on a single lost probe)",
                );
            }
            if let Some(w) = l.witness {
                if !is_unicast(w) {
                    bad(f("witness"), "must be a unicast IPv4 address");
                }
                if w == l.local_ip || w == l.peer_ip {
                    bad(
                        f("witness"),
                        "must be a third host (the gateway), not one of the two servers",
                    );
                }
            }
            if l.witness_interval_ms == 0 || l.witness_interval_ms > 10_000 {
                bad(f("witness_interval_ms"), "must be between 1 and 10000");
            }
            if !(2..=100).contains(&l.witness_multiplier) {
                bad(f("witness_multiplier"), "must be between 2 and 100");
            }
        }
        if self.vips.is_empty() {
            bad("vip".into(), "at least one [[vip]] is needed");
        }
        let mut addrs = BTreeSet::new();
        for (i, v) in self.vips.iter().enumerate() {
            let f = |name: &str| format!("vip[{i}].{name}");
            match parse_cidr(&v.address) {
                Ok((ip, _)) => {
                    if !addrs.insert(ip) {
                        bad(f("address"), "is listed twice");
                    }
                    if self
                        .links
                        .iter()
                        .any(|l| l.local_ip == ip || l.peer_ip == ip)
                    {
                        bad(
                            f("address"),
                            "is a server's own address; a VIP must be a separate address",
                        );
                    }
                }
                Err(reason) => bad(f("address"), &reason),
            }
            check_ifname(&v.interface, &f("interface"), &mut bad);
            if !v.interface.is_empty() && !self.links.iter().any(|l| l.interface == v.interface) {
                bad(
                    f("interface"),
                    "is not the interface of any [[link]]: a VIP must live on a monitored link",
                );
            }
        }
        if self.garp.count == 0 || self.garp.count > 100 {
            bad("garp.count".into(), "must be between 1 and 100");
        }
        if self.garp.spacing_ms > 10_000 {
            bad("garp.spacing_ms".into(), "must be at most 10000");
        }
        if self.garp.refresh_ms != 0 && self.garp.refresh_ms < 100 {
            bad(
                "garp.refresh_ms".into(),
                "must be 0 (off) or at least 100 ms",
            );
        }
        if self.hooks.timeout_ms == 0 {
            bad("hooks.timeout_ms".into(), "must be > 0");
        }
        for (name, cmd) in [
            ("hooks.notify_master", &self.hooks.notify_master),
            ("hooks.notify_backup", &self.hooks.notify_backup),
            ("hooks.notify_fault", &self.hooks.notify_fault),
            ("hooks.notify", &self.hooks.notify),
        ] {
            if let Some(c) = cmd {
                if c.split_whitespace().next().is_none() {
                    bad(name.into(), "must not be empty (leave it out instead)");
                }
            }
        }
        if let Some(mode) = &self.ebpf.xdp_mode {
            if mode != "native" && mode != "generic" {
                bad("ebpf.xdp_mode".into(), "must be \"native\" or \"generic\"");
            }
        }
        errs
    }

    /// The VIPs, parsed (call on a validated config).
    pub fn vips(&self) -> Vec<Vip> {
        self.vips
            .iter()
            .filter_map(|v| {
                let (address, prefix_len) = parse_cidr(&v.address).ok()?;
                let instance = v.instance.clone().unwrap_or_else(|| {
                    self.links
                        .iter()
                        .find(|l| l.interface == v.interface)
                        .map(|l| format!("{}_network", l.name))
                        .unwrap_or_else(|| v.interface.clone())
                });
                Some(Vip {
                    address,
                    prefix_len,
                    interface: v.interface.clone(),
                    instance,
                })
            })
            .collect()
    }

    /// How long a starting agent waits to hear its peer.
    pub fn init_timeout(&self) -> Duration {
        match self.node.init_timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => {
                let slowest = self
                    .links
                    .iter()
                    .map(|l| l.detect_time())
                    .max()
                    .unwrap_or_default();
                (slowest * 3).max(Duration::from_millis(100))
            }
        }
    }

    pub fn witnesses_configured(&self) -> bool {
        self.links.iter().any(|l| l.witness.is_some())
    }
}

fn check_ifname(name: &str, field: &str, bad: &mut impl FnMut(String, &str)) {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        bad(
            field.to_string(),
            "must be an interface name of 1 to 15 characters without '/' or spaces",
        );
    }
}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// Parses "a.b.c.d/len" (a bare address means /32).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: Ipv4Addr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address with optional /prefix"))?;
    let len = match len {
        None => 32,
        Some(l) => match l.trim().parse::<u8>() {
            Ok(n) if (1..=32).contains(&n) => n,
            _ => return Err(format!("{s:?} has a prefix length that is not 1..32")),
        },
    };
    if !is_unicast(ip) {
        return Err(format!("{s:?} is not a unicast address"));
    }
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "server1"
priority = 101
key_file = "/etc/ha-agent/key"

[[link]]
name = "outside"
interface = "eth0"
local_ip = "10.96.153.110"
peer_ip = "10.96.153.114"
witness = "10.96.153.1"

[[link]]
name = "inside"
interface = "eth1"
local_ip = "192.168.1.100"
peer_ip = "192.168.1.101"

[[vip]]
address = "10.96.153.239/24"
interface = "eth0"

[[vip]]
address = "192.168.1.150/24"
interface = "eth1"
instance = "inside_network"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn fields(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node.priority, 101);
        assert!(c.node.nopreempt);
        assert_eq!(c.links[0].detect_time(), Duration::from_millis(15));
        assert_eq!(c.init_timeout(), Duration::from_millis(100));
        let vips = c.vips();
        assert_eq!(vips[0].instance, "outside_network");
        assert_eq!(vips[1].instance, "inside_network");
        assert_eq!(vips[1].prefix_len, 24);
        assert!(c.witnesses_configured());
    }

    #[test]
    fn bad_fields_are_all_named() {
        let text = GOOD
            .replace("priority = 101", "priority = 0")
            .replace("\"10.96.153.114\"", "\"10.96.153.110\"")
            .replace("192.168.1.150/24", "192.168.1.150/40")
            .replace(
                "interface = \"eth1\"\ninstance",
                "interface = \"eth7\"\ninstance",
            );
        let f = fields(&text);
        assert_eq!(
            f,
            vec![
                "node.priority",
                "link[0].peer_ip",
                "vip[1].address",
                "vip[1].interface"
            ]
        );
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let text = GOOD.replace("priority = 101", "priorty = 101");
        match parse(&text) {
            Err(ConfigError::Syntax { message, .. }) => assert!(message.contains("priorty")),
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    #[test]
    fn multiplier_of_one_is_rejected() {
        let text = GOOD.replace(
            "peer_ip = \"192.168.1.101\"",
            "peer_ip = \"192.168.1.101\"\nmultiplier = 1",
        );
        assert_eq!(fields(&text), vec!["link[1].multiplier"]);
    }

    #[test]
    fn vip_must_not_be_a_server_address() {
        let text = GOOD.replace("10.96.153.239/24", "10.96.153.114/24");
        assert_eq!(fields(&text), vec!["vip[0].address"]);
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("10.0.0.1/24").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 1), 24)
        );
        assert_eq!(parse_cidr("10.0.0.1").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.1/0").is_err());
        assert!(parse_cidr("nonsense").is_err());
        assert!(parse_cidr("224.0.0.1/4").is_err());
    }
}
