//! The agent's configuration file (TOML): parsing, defaults and validation.
//!
//! Every problem is reported with the field's path (`link[1].peer_ip`) and the
//! reason, all at once, so an operator fixes a file in one pass.
//!
//! Two steps, one path for `run` and `check-config`:
//! - [`Config::load`] / [`Config::parse`]: the file alone, typed at parse
//!   time (VIPs, XDP mode) and validated; touches no other file, so the CLI
//!   clients (`status`) use it too;
//! - [`Checked::load`]: that, and what start-up reads besides the config
//!   (the key and password files, the status socket's path, hook
//!   executables, the status group), every problem reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::drivers::atlas::Password;
pub use crate::drivers::ebpf::XdpMode;
use crate::drivers::hooks::split_command;
use crate::drivers::mysql::credentials::{read_password_file, Secret};
use crate::protocol::Key;

/// Probe sender threads at most (one per CPU): the kernel watches each
/// one's beat.
pub const MAX_SENDERS: usize = agent_ebpf::MAX_SENDERS as usize;

/// Default UDP port of the probes between the two agents.
pub const DEFAULT_PORT: u16 = 7405;

/// The longest node name: the probe carries 16 bytes of it.
pub const NODE_NAME_MAX: usize = 16;

/// A Unix socket path must fit `sun_path` (108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

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
    /// The file it was read from (for messages).
    #[serde(skip)]
    path: PathBuf,
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
    /// Keep the local Atlas proxy's backends right (absent: Atlas is not managed).
    #[serde(default)]
    pub atlas: Option<AtlasConfig>,
    /// Fence, promote and rejoin the local MySQL/MariaDB (absent: not managed).
    #[serde(default)]
    pub mysql: Option<MysqlConfig>,
    /// Serve Prometheus metrics (absent: no listener).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `[metrics]`: the Prometheus endpoint (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port to listen on, e.g. "127.0.0.1:9405" (no TLS, no
    /// authentication: keep it on loopback or a management network).
    pub listen: SocketAddr,
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
    /// Run the probe senders with this SCHED_FIFO priority (1..=99), 0 = normal scheduling.
    #[serde(default = "default_rt_priority")]
    pub rt_priority: u8,
    /// Probe sender threads, one per CPU (0 = one per CPU the agent may use, at most 4).
    #[serde(default)]
    pub senders: usize,
    /// How long this node's kernel keeps serving the VIPs after its agent
    /// stops renewing the lease (a hung agent). Default: 4 x the slowest
    /// link's detection time, at least 10 ms.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Where the agent keeps its boot counter (mode 0700, owned by root).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Members of this group may read `ha-agent status` (only root may
    /// change anything). Absent: root only.
    #[serde(default)]
    pub status_group: Option<String>,
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
    #[serde(default = "default_peer_multiplier")]
    pub multiplier: u32,
    /// Address probed by ARP to tell "I lost my uplink" from "the peer died" (usually the gateway).
    #[serde(default)]
    pub witness: Option<Ipv4Addr>,
    #[serde(default = "default_witness_interval_ms")]
    pub witness_interval_ms: u64,
    #[serde(default = "default_witness_multiplier")]
    pub witness_multiplier: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Address with the link's prefix length, e.g. "10.96.153.239/24".
    pub address: VipAddress,
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
    /// "native" (driver XDP, fall back to generic; the default), or
    /// "generic" (skb mode).
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

/// `[atlas]`: the local Atlas proxy, reconciled through its admin port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtlasConfig {
    /// Atlas's `admin-address`.
    #[serde(default = "default_atlas_admin_address")]
    pub admin_address: SocketAddr,
    /// Atlas's `admin-username`.
    pub user: String,
    /// File holding Atlas's `admin-password` (mode 0600 or 0400, owned by root).
    pub password_file: PathBuf,
    /// The rw backend Atlas must list. Default: the inside VIP, port 3306.
    #[serde(default)]
    pub rw_backend: Option<SocketAddrV4>,
    /// How run-time changes survive an Atlas restart.
    #[serde(default)]
    pub persist: AtlasPersist,
    /// Atlas's `.cnf`: rewritten with `persist = "cnf"`; with
    /// `"save_config"`, compared with the table and given its mode and
    /// owner back after each `SAVE CONFIG` (which makes it 0644).
    #[serde(default)]
    pub cnf_path: Option<PathBuf>,
    /// Weights of ro backends (`"ip:port" = weight`), written as `@weight`
    /// into the `.cnf` (weights found in the `.cnf` itself are kept too).
    #[serde(default)]
    pub ro_weights: BTreeMap<SocketAddrV4, u32>,
    /// Alarm when the rw backend has not been `up` in Atlas for this long.
    #[serde(default = "default_atlas_rw_alarm_ms")]
    pub rw_not_up_alarm_ms: u64,
    /// The uid Atlas runs as: the agent only logs in to an admin port
    /// served by it (root unless Atlas runs as another user).
    #[serde(default)]
    pub admin_uid: u32,
    /// Re-check the table this often (and at once when the wanted table changes).
    #[serde(default = "default_atlas_period_ms")]
    pub period_ms: u64,
    #[serde(default = "default_atlas_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_atlas_timeout_ms")]
    pub query_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtlasPersist {
    /// `SAVE CONFIG` when the `.cnf` is out of date (Atlas rewrites it; the
    /// agent puts back its mode, owner, weights and host names).
    #[default]
    SaveConfig,
    /// The agent rewrites the two backend lines of `cnf_path` itself.
    Cnf,
    /// Run-time changes only (the agent re-applies them after a restart anyway).
    None,
}

impl AtlasConfig {
    /// The rw backend: `rw_backend`, or the inside VIP on port 3306.
    pub fn rw_backend_or(&self, inside_vip: Ipv4Addr) -> SocketAddrV4 {
        self.rw_backend
            .unwrap_or(SocketAddrV4::new(inside_vip, 3306))
    }
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }
    pub fn rw_not_up_alarm(&self) -> Duration {
        Duration::from_millis(self.rw_not_up_alarm_ms)
    }

    fn problems(&self, bad: &mut impl FnMut(String, &str)) {
        let f = |name: &str| format!("atlas.{name}");
        if self.admin_address.port() == 0 {
            bad(
                f("admin_address"),
                "must have a port (Atlas's admin-address, e.g. 127.0.0.1:2345)",
            );
        }
        if self.user.is_empty() || self.user.contains('\0') {
            bad(
                f("user"),
                "must be Atlas's admin-username (not empty, no NUL)",
            );
        }
        if self.password_file.as_os_str().is_empty() {
            bad(
                f("password_file"),
                "must name the file holding Atlas's admin-password",
            );
        }
        if let Some(rw) = self.rw_backend {
            if !is_unicast(*rw.ip()) || rw.port() == 0 {
                bad(
                    f("rw_backend"),
                    "must be a unicast IPv4 address with a port, e.g. 192.168.1.150:3306",
                );
            }
        }
        match (self.persist, &self.cnf_path) {
            (AtlasPersist::Cnf, None) => bad(
                f("cnf_path"),
                "is needed with persist = \"cnf\" (Atlas's .cnf, e.g. /usr/local/mysql-proxy/conf/my.cnf)",
            ),
            (AtlasPersist::SaveConfig, None) => bad(
                f("cnf_path"),
                "is needed with persist = \"save_config\" (the default): Atlas's SAVE CONFIG rewrites its .cnf readable by every user (0644) and drops weights; the agent restores them and needs the path (e.g. /usr/local/mysql-proxy/conf/my.cnf), or set persist = \"cnf\" or \"none\"",
            ),
            (AtlasPersist::None, Some(_)) => bad(
                f("cnf_path"),
                "is not used with persist = \"none\" (remove it, or set persist = \"cnf\" or \"save_config\")",
            ),
            _ => {}
        }
        if self.persist == AtlasPersist::None && !self.ro_weights.is_empty() {
            bad(
                f("ro_weights"),
                "is only written to the .cnf: set persist = \"cnf\" or \"save_config\" (run-time backends added through the admin port always have weight 1)",
            );
        }
        if self.ro_weights.values().any(|w| !(1..=1000).contains(w)) {
            bad(f("ro_weights"), "weights must be between 1 and 1000");
        }
        if !(1000..=3_600_000).contains(&self.rw_not_up_alarm_ms) {
            bad(
                f("rw_not_up_alarm_ms"),
                "must be between 1000 and 3600000 (Atlas's checker marks a backend up within about 4 s)",
            );
        }
        if !(100..=3_600_000).contains(&self.period_ms) {
            bad(f("period_ms"), "must be between 100 and 3600000");
        }
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("query_timeout_ms", self.query_timeout_ms),
        ] {
            if !(10..=60_000).contains(&v) {
                bad(f(name), "must be between 10 and 60000");
            }
        }
    }
}

fn default_atlas_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2345))
}
fn default_atlas_period_ms() -> u64 {
    1000
}
fn default_atlas_timeout_ms() -> u64 {
    500
}
/// Two of Atlas's 4 s checker periods, plus its 1 s connect timeout and margin.
fn default_atlas_rw_alarm_ms() -> u64 {
    10_000
}

/// `[mysql]`: the local MySQL/MariaDB server the agent fences, promotes and
/// rejoins (absent: the database is not managed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// The local server (TCP: the agent never relies on a socket path).
    #[serde(default = "default_mysql_address")]
    pub address: SocketAddr,
    /// Local admin account (needs SUPER or, on MariaDB, READ_ONLY ADMIN +
    /// REPLICATION SLAVE ADMIN + BINLOG ADMIN; RELOAD for a forced rejoin).
    pub user: String,
    /// File holding `user`'s password (mode 0600 or 0400; never logged).
    pub password_file: PathBuf,
    /// The account each server replicates with; the agent also reads the
    /// peer's GTID state with it.
    pub replication_user: String,
    /// File holding `replication_user`'s password (mode 0600 or 0400).
    pub replication_password_file: PathBuf,
    /// The peer's MySQL on its inside address (not the VIP): source of the
    /// rejoin and the other side of the errant-GTID comparison.
    pub peer_address: SocketAddr,
    /// How long a promotion waits for the relay log to be applied.
    #[serde(default = "default_catchup_timeout_ms")]
    pub catchup_timeout_ms: u64,
    /// What a promotion does when the relay log is not applied in time.
    #[serde(default)]
    pub catchup_policy: CatchupPolicy,
    /// The local server down this long makes this node unfit to hold the VIPs.
    #[serde(default = "default_down_handover_ms")]
    pub down_handover_ms: u64,
    /// Semi-synchronous replication (AFTER_SYNC) on promotion and rejoin.
    #[serde(default)]
    pub semisync: bool,
    /// With `semisync`: what a semi-sync acknowledgement promises (default
    /// `strict`). See [`Durability`].
    #[serde(default)]
    pub durability: Option<Durability>,
    /// With `semisync`: how long commits may wait for the replica's
    /// acknowledgement before the primary asks to go asynchronous (strict:
    /// only once the replica has heard it; available: the server's own
    /// semi-sync timeout).
    #[serde(default = "default_semisync_timeout_ms")]
    pub semisync_timeout_ms: u64,
    /// Where the agent keeps what must survive a crash: the semi-sync
    /// journal and the records of undone transactions. Absent: the node's
    /// `state_dir` (filled in at parse time).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// How often the daemon probes the local server's health.
    #[serde(default = "default_check_interval_ms")]
    pub check_interval_ms: u64,
    /// Bound on connecting and on every statement (the catch-up wait has its own).
    #[serde(default = "default_mysql_timeout_ms")]
    pub timeout_ms: u64,
    /// A replica is offered to Atlas for reads once it has applied all it
    /// received, and stays offered while both threads run and it lags at
    /// most this many seconds (`Seconds_Behind_Master`).
    #[serde(default = "default_max_replica_lag_s")]
    pub max_replica_lag_s: u64,
}

/// What a promotion does when the replica has not applied everything it
/// received within `catchup_timeout_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchupPolicy {
    /// Stay read-only (the VIP is held but writes fail) and keep applying;
    /// the promotion completes once caught up. No received transaction is
    /// ever skipped; a stuck applier needs an operator.
    #[default]
    StayReadOnly,
    /// Become writable anyway, discarding the unapplied relay log (the
    /// seed's behaviour); the skipped GTIDs are logged and reported.
    Promote,
}

/// What an acknowledged write survives, with `semisync = true`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A write the primary acknowledged is on the replica when it is
    /// promoted, or the replica is not promoted automatically: the primary
    /// goes asynchronous only after the replica heard it will, and a
    /// replica that heard so does not promote itself after a death. A
    /// primary whose replica is silent keeps waiting for it (writes block)
    /// rather than acknowledge alone.
    #[default]
    Strict,
    /// The seed's behaviour: the primary goes asynchronous by itself after
    /// `semisync_timeout_ms`, the replica promotes anyway; the window in
    /// which acknowledged writes may be lost is logged and kept in status.
    Available,
}

impl MysqlConfig {
    /// The durability in force: None without semi-sync.
    pub fn durability(&self) -> Option<Durability> {
        self.semisync.then(|| self.durability.unwrap_or_default())
    }
    pub fn semisync_timeout(&self) -> Duration {
        Duration::from_millis(self.semisync_timeout_ms)
    }
    pub fn catchup_timeout(&self) -> Duration {
        Duration::from_millis(self.catchup_timeout_ms)
    }
    pub fn down_handover(&self) -> Duration {
        Duration::from_millis(self.down_handover_ms)
    }
    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.check_interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn problems(&self, bad: &mut impl FnMut(String, &str)) {
        let f = |name: &str| format!("mysql.{name}");
        if self.address.port() == 0 {
            bad(f("address"), "must have a port (e.g. 127.0.0.1:3306)");
        }
        let peer = self.peer_address.ip();
        if peer.is_unspecified()
            || peer.is_loopback()
            || peer.is_multicast()
            || self.peer_address.port() == 0
        {
            bad(
                f("peer_address"),
                "must be the peer's own inside address with a port (e.g. 192.168.1.101:3306), not loopback or the VIP",
            );
        }
        if self.peer_address == self.address {
            bad(
                f("peer_address"),
                "must differ from address (the local server)",
            );
        }
        if self.user.is_empty() || self.user.contains('\0') {
            bad(
                f("user"),
                "must name the local admin account (not empty, no NUL)",
            );
        }
        if let Err(e) =
            crate::drivers::mysql::flavor::check_value("user", &self.replication_user, 80)
        {
            bad(f("replication_user"), &e.to_string());
        }
        for (name, path) in [
            ("password_file", &self.password_file),
            ("replication_password_file", &self.replication_password_file),
        ] {
            if path.as_os_str().is_empty() {
                bad(f(name), "must name a file holding the password (mode 0600)");
            }
        }
        if !(1..=600_000).contains(&self.catchup_timeout_ms) {
            bad(f("catchup_timeout_ms"), "must be between 1 and 600000");
        }
        if !(10..=60_000).contains(&self.check_interval_ms) {
            bad(f("check_interval_ms"), "must be between 10 and 60000");
        }
        if self.down_handover_ms < self.check_interval_ms || self.down_handover_ms > 600_000 {
            bad(
                f("down_handover_ms"),
                "must be at least check_interval_ms (one failed probe is not an outage) and at most 600000",
            );
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            bad(f("timeout_ms"), "must be between 100 and 60000");
        }
        if self.max_replica_lag_s > 86_400 {
            bad(f("max_replica_lag_s"), "must be at most 86400");
        }
        if self.durability.is_some() && !self.semisync {
            bad(
                f("durability"),
                "needs semisync = true (without semi-sync, replication is asynchronous and a failover may lose acknowledged writes)",
            );
        }
        if self.durability() == Some(Durability::Strict)
            && self.catchup_policy == CatchupPolicy::Promote
        {
            bad(
                f("catchup_policy"),
                "must be \"stay_read_only\" with durability = \"strict\" (\"promote\" gives up received, possibly acknowledged transactions); or set durability = \"available\"",
            );
        }
        if !(10..=600_000).contains(&self.semisync_timeout_ms) {
            bad(f("semisync_timeout_ms"), "must be between 10 and 600000");
        }
        if !self.state_dir().is_absolute() {
            bad(f("state_dir"), "must be an absolute directory path");
        }
    }

    /// Where the journal and the undone transactions' records go: the
    /// node's directory unless set here (parsing fills it in), and the
    /// default one for a config built by hand without either (never a
    /// path relative to wherever the agent was started).
    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_STATE_DIR))
    }
}

fn default_mysql_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3306))
}
fn default_catchup_timeout_ms() -> u64 {
    5000
}
fn default_down_handover_ms() -> u64 {
    3000
}
fn default_check_interval_ms() -> u64 {
    200
}
fn default_mysql_timeout_ms() -> u64 {
    2000
}
fn default_max_replica_lag_s() -> u64 {
    2
}
fn default_semisync_timeout_ms() -> u64 {
    1000
}
const DEFAULT_STATE_DIR: &str = "/var/lib/ha-agent";
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
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
/// Probe interval on a link unless set.
pub const DEFAULT_INTERVAL_MS: u64 = 2;
/// Probes missed in a row before the peer is down on a link, unless set.
pub const DEFAULT_MULTIPLIER: u32 = 3;

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}
/// 2 ms x 3: 6 ms of silence. A false death needs every link silent for
/// three probe slots from every sender thread (one per CPU, real-time); a
/// receiving CPU that stalls delays the verdict instead of faking it. The
/// soaks (idle, and both cores saturated with 2% loss) decide whether the
/// margin holds (bench/RESULTS.md). Raise it on hosts with worse jitter.
fn default_peer_multiplier() -> u32 {
    DEFAULT_MULTIPLIER
}
/// 16 ms x 5 = 80 ms, under the 100 ms uplink-loss target. Each exchange
/// crosses the link twice (request, reply), so it fails about twice as
/// often as one frame: at 2% frame loss 20 ms x 3 declared a healthy
/// uplink dead about twice per 10 minutes (a false failover each); five
/// misses in a row make that about once in ten days. A multiple of the
/// probe interval, so the ARP shares the probes' wake-ups.
fn default_witness_interval_ms() -> u64 {
    16
}
fn default_witness_multiplier() -> u32 {
    5
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

/// An IPv4 address with its prefix length, as `[[vip]] address` is written
/// ("10.96.153.239/24"; a bare address is /32, which validation refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct VipAddress {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl VipAddress {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32u32.saturating_sub(self.prefix_len.into()))
            .unwrap_or(0)
    }
    /// Whether `ip` is in this address's network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.ip) & self.mask()
    }
    /// The network, e.g. 10.96.153.0/24.
    pub fn network(&self) -> VipAddress {
        VipAddress {
            ip: Ipv4Addr::from(u32::from(self.ip) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }
}

impl TryFrom<String> for VipAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_cidr(&s).map(|(ip, prefix_len)| VipAddress { ip, prefix_len })
    }
}

impl fmt::Display for VipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
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
    /// Reads, parses and validates a config file (no other file is read).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_config(path)?, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text, path)?;
        invalid_unless_empty(path, config.problems())?;
        Ok(config)
    }

    /// TOML to typed fields, without the checks across fields.
    fn parse_unchecked(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.path = path.to_owned();
        if let Some(m) = config.mysql.as_mut() {
            m.state_dir
                .get_or_insert_with(|| config.node.state_dir.clone());
        }
        Ok(config)
    }

    /// The file this config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and checks every file start-up reads besides the config: the
    /// key, the password files, the status socket's path (it must not name
    /// anything but a stale socket) and the hooks' executables. Each problem
    /// names its field; the secrets only when all were read.
    fn read_files_into(&self, errors: &mut Vec<FieldError>) -> Option<Secrets> {
        let mut bad = |field: &str, reason: String| {
            errors.push(FieldError {
                field: field.to_string(),
                reason,
            })
        };
        let key = match Key::load(&self.node.key_file) {
            Ok(key) => Some(key),
            Err(e) => {
                bad("node.key_file", e.to_string());
                None
            }
        };
        let mut password = |field: &str, path: &Path| match read_password_file(path) {
            Ok(pw) => Some(pw),
            Err(e) => {
                bad(field, e.to_string());
                None
            }
        };
        // None: no [mysql]; Some(None): a password file failed.
        let mysql = self.mysql.as_ref().map(|m| {
            let admin = password("mysql.password_file", &m.password_file);
            let replication = password(
                "mysql.replication_password_file",
                &m.replication_password_file,
            );
            Some(WithSecret {
                section: m.clone(),
                secret: MysqlPasswords {
                    admin: admin?,
                    replication: replication?,
                },
            })
        });
        let atlas = self
            .atlas
            .as_ref()
            .map(|a| match Password::load(&a.password_file) {
                Ok(pw) => Some(WithSecret {
                    section: a.clone(),
                    secret: pw,
                }),
                Err(e) => {
                    bad("atlas.password_file", e.to_string());
                    None
                }
            });
        if let Err(e) = crate::drivers::boot::check_dir(&self.node.state_dir) {
            bad("node.state_dir", e.to_string());
        }
        match std::fs::symlink_metadata(&self.node.status_socket) {
            Ok(meta) if !meta.file_type().is_socket() => bad(
                "node.status_socket",
                format!(
                    "{} exists and is not a socket; the agent only replaces a stale socket of its own: choose another path (default {})",
                    self.node.status_socket.display(),
                    default_status_socket().display()
                ),
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bad(
                "node.status_socket",
                format!("cannot check {}: {e}", self.node.status_socket.display()),
            ),
        }
        for (name, cmd) in self.hooks.commands() {
            let Ok(argv) = split_command(cmd) else {
                continue; // named by problems()
            };
            let program = Path::new(&argv[0]);
            if !program.is_absolute() {
                continue; // looked up in PATH when it runs
            }
            match std::fs::metadata(program) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
                Ok(_) => bad(
                    name,
                    format!("{} is not an executable file", program.display()),
                ),
                Err(e) => bad(name, format!("cannot run {}: {e}", program.display())),
            }
        }
        Some(Secrets {
            key: key?,
            mysql: mysql.map(|m| m.ok_or(())).transpose().ok()?,
            atlas: atlas.map(|a| a.ok_or(())).transpose().ok()?,
        })
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
        } else if n.name.len() > NODE_NAME_MAX {
            bad(
                "node.name".into(),
                &format!(
                    "is {} bytes; at most {NODE_NAME_MAX} fit in a probe (the peer would see it cut)",
                    n.name.len()
                ),
            );
        }
        if n.name.chars().any(char::is_control) {
            bad(
                "node.name".into(),
                "must not hold control characters (NUL, newline, ...)",
            );
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
        check_ms(
            &mut bad,
            "node.fence_timeout_ms",
            n.fence_timeout_ms,
            FENCE_TIMEOUT_MS,
            "an isolated holder must keep its VIPs at least through a blip, and drop them within a minute",
        );
        if let Some(ms) = n.init_timeout_ms {
            check_ms(
                &mut bad,
                "node.init_timeout_ms",
                ms,
                INIT_TIMEOUT_MS,
                "how long a starting agent listens for its peer",
            );
        }
        if n.rt_priority > 99 {
            bad(
                "node.rt_priority".into(),
                "must be 0 (normal scheduling) or 1..=99 (SCHED_FIFO)",
            );
        }
        check_ms(
            &mut bad,
            "node.preempt_delay_ms",
            n.preempt_delay_ms,
            PREEMPT_DELAY_MS,
            "at most one hour",
        );
        if n.group.trim().is_empty() {
            bad("node.group".into(), "must not be empty");
        }
        if n.senders > MAX_SENDERS {
            bad(
                "node.senders".into(),
                &format!("must be 0 (one per CPU) or at most {}", MAX_SENDERS),
            );
        }
        if let Some(ms) = n.lease_ms {
            let interval = self.links.iter().map(|l| l.interval_ms).min().unwrap_or(1);
            if ms < (3 * interval).max(5) || ms > 10_000 {
                bad(
                    "node.lease_ms".into(),
                    "must be between 3 probe intervals (at least 5) and 10000: a shorter lease lapses between renewals",
                );
            }
        }
        if !n.state_dir.is_absolute() {
            bad("node.state_dir".into(), "must be an absolute path");
        }
        check_absolute(&mut bad, "node.key_file", &n.key_file);
        let socket = n.status_socket.as_os_str().len();
        if !n.status_socket.is_absolute() || socket > SOCKET_PATH_MAX {
            bad(
                "node.status_socket".into(),
                &format!("must be an absolute path of at most {SOCKET_PATH_MAX} bytes (a Unix socket's address)"),
            );
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
            check_ms(
                &mut bad,
                &f("interval_ms"),
                l.interval_ms,
                INTERVAL_MS,
                "the probe interval",
            );
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
                // A witness is reached by ARP: it must be on the link's subnet.
                for (j, v) in self.vips.iter().enumerate() {
                    if v.interface == l.interface
                        && v.address.prefix_len < 32
                        && !v.address.contains(w)
                    {
                        bad(
                            f("witness"),
                            &format!(
                                "{w} is not in the link's subnet {} (from vip[{j}]): ARP cannot reach it, so the witness would always look dead",
                                v.address.network()
                            ),
                        );
                    }
                }
            }
            check_ms(
                &mut bad,
                &f("witness_interval_ms"),
                l.witness_interval_ms,
                INTERVAL_MS,
                "the witness ARP interval",
            );
            if !(2..=100).contains(&l.witness_multiplier) {
                bad(f("witness_multiplier"), "must be between 2 and 100");
            }
        }
        if self.vips.is_empty() {
            bad("vip".into(), "at least one [[vip]] is needed");
        }
        if self.vips.len() > agent_ebpf::MAX_VIPS as usize {
            bad(
                "vip".into(),
                &format!("at most {} VIPs are supported", agent_ebpf::MAX_VIPS),
            );
        }
        let mut addrs = BTreeSet::new();
        for (i, v) in self.vips.iter().enumerate() {
            let f = |name: &str| format!("vip[{i}].{name}");
            let a = v.address;
            if !addrs.insert(a.ip) {
                bad(f("address"), "is listed twice");
            }
            if self
                .links
                .iter()
                .any(|l| l.local_ip == a.ip || l.peer_ip == a.ip)
            {
                bad(
                    f("address"),
                    "is a server's own address; a VIP must be a separate address",
                );
            }
            for (j, l) in self.links.iter().enumerate() {
                if l.witness == Some(a.ip) {
                    bad(
                        f("address"),
                        &format!("is link[{j}].witness (the gateway): the holder would take over the gateway's address"),
                    );
                }
            }
            let link = self.links.iter().find(|l| l.interface == v.interface);
            if let Some(l) = link {
                if a.prefix_len == 32 {
                    bad(
                        f("address"),
                        &format!("{a} has no prefix length (or /32): write the link's subnet prefix (e.g. {}/24), so the VIP is added like the servers' own addresses and can be checked against the link", a.ip),
                    );
                } else if !a.contains(l.local_ip) || !a.contains(l.peer_ip) {
                    bad(
                        f("address"),
                        &format!(
                            "{a} is not on link {:?}'s subnet: its local_ip {} and peer_ip {} must both be in {} (a VIP lives on its link's subnet, with the link's prefix)",
                            l.name, l.local_ip, l.peer_ip, a.network()
                        ),
                    );
                } else if a.prefix_len <= 30
                    && (a.ip == a.network().ip || (u32::from(a.ip) | !a.mask()) == u32::from(a.ip))
                {
                    bad(
                        f("address"),
                        &format!("{a} is the subnet's network or broadcast address"),
                    );
                }
            }
            check_ifname(&v.interface, &f("interface"), &mut bad);
            if !v.interface.is_empty() && link.is_none() {
                bad(
                    f("interface"),
                    "is not the interface of any [[link]]: a VIP must live on a monitored link",
                );
            }
        }
        if self.garp.count == 0 || self.garp.count > 100 {
            bad("garp.count".into(), "must be between 1 and 100");
        }
        check_ms(
            &mut bad,
            "garp.spacing_ms",
            self.garp.spacing_ms,
            GARP_SPACING_MS,
            "the spacing of a takeover's ARPs",
        );
        if self.garp.refresh_ms != 0 {
            check_ms(
                &mut bad,
                "garp.refresh_ms",
                self.garp.refresh_ms,
                GARP_REFRESH_MS,
                "0 turns the refresh off",
            );
        }
        check_ms(
            &mut bad,
            "hooks.timeout_ms",
            self.hooks.timeout_ms,
            HOOK_TIMEOUT_MS,
            "hooks run one at a time: a hung one holds back the next",
        );
        for (name, cmd) in self.hooks.commands() {
            if let Err(e) = split_command(cmd) {
                bad(name.into(), &e.to_string());
            }
        }
        if let Some(atlas) = &self.atlas {
            atlas.problems(&mut bad);
            if !atlas.password_file.as_os_str().is_empty() {
                check_absolute(&mut bad, "atlas.password_file", &atlas.password_file);
            }
            if let Err(e) = crate::decisions::proxy::ProxyAddresses::from_config(self) {
                bad("atlas.rw_backend".into(), &e.to_string());
            }
        }
        if let Some(mysql) = &self.mysql {
            mysql.problems(&mut bad);
            for (field, path) in [
                ("mysql.password_file", &mysql.password_file),
                (
                    "mysql.replication_password_file",
                    &mysql.replication_password_file,
                ),
            ] {
                if !path.as_os_str().is_empty() {
                    check_absolute(&mut bad, field, path);
                }
            }
            for (i, v) in self.vips.iter().enumerate() {
                for (field, addr) in [
                    ("mysql.peer_address", mysql.peer_address),
                    ("mysql.address", mysql.address),
                ] {
                    if addr.ip() == IpAddr::V4(v.address.ip) {
                        bad(
                            field.into(),
                            &format!("is vip[{i}]: whoever holds the VIPs answers there (this server or the peer); use the server's own address"),
                        );
                    }
                }
            }
            for (j, l) in self.links.iter().enumerate() {
                if mysql.peer_address.ip() == IpAddr::V4(l.local_ip) {
                    bad(
                        "mysql.peer_address".into(),
                        &format!("is this server's own address (link[{j}].local_ip): it must be the peer's"),
                    );
                }
            }
        }
        if self.metrics.as_ref().is_some_and(|m| m.listen.port() == 0) {
            bad(
                "metrics.listen".into(),
                "must have a port (e.g. 127.0.0.1:9405)",
            );
        }
        errs
    }

    /// The VIPs, typed (on a validated config).
    pub fn vips(&self) -> Vec<Vip> {
        self.vips
            .iter()
            .map(|v| {
                let instance = v.instance.clone().unwrap_or_else(|| {
                    self.links
                        .iter()
                        .find(|l| l.interface == v.interface)
                        .map(|l| format!("{}_network", l.name))
                        .unwrap_or_else(|| v.interface.clone())
                });
                Vip {
                    address: v.address.ip,
                    prefix_len: v.address.prefix_len,
                    interface: v.interface.clone(),
                    instance,
                }
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

    /// The slowest link's detection time.
    pub fn detect_time(&self) -> Duration {
        self.links
            .iter()
            .map(|l| l.detect_time())
            .max()
            .unwrap_or(Duration::from_millis(15))
    }

    /// The probe senders' grid: the shortest link interval.
    pub fn probe_interval(&self) -> Duration {
        self.links
            .iter()
            .map(|l| l.interval())
            .min()
            .unwrap_or(Duration::from_millis(4))
    }

    /// How long our kernel serves the VIPs without the agent (the lease).
    pub fn lease(&self) -> Duration {
        match self.node.lease_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (self.detect_time() * 4).max(Duration::from_millis(10)),
        }
    }

    pub fn witnesses_configured(&self) -> bool {
        self.links.iter().any(|l| l.witness.is_some())
    }
}

/// The secrets a config names, read and checked by [`Checked::load`].
#[derive(Debug)]
pub struct Secrets {
    pub key: Key,
    /// With `[mysql]`: the section and its passwords.
    pub mysql: Option<WithSecret<MysqlConfig, MysqlPasswords>>,
    /// With `[atlas]`: the section and its admin password.
    pub atlas: Option<WithSecret<AtlasConfig, Password>>,
}

/// A config section with the secret it names, read: a managed service
/// never starts without its password.
#[derive(Debug)]
pub struct WithSecret<S, P> {
    pub section: S,
    pub secret: P,
}

#[derive(Debug)]
pub struct MysqlPasswords {
    pub admin: Secret,
    pub replication: Secret,
}

/// A config checked as start-up checks it, short of touching the network:
/// what `check-config` reports and `run` starts from.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub secrets: Secrets,
    /// `node.status_group`'s id on this host.
    pub status_gid: Option<u32>,
}

impl Checked {
    /// [`Config::load`], the files it names and the status group, every
    /// problem reported at once.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let config = Config::parse_unchecked(&read_config(path)?, path)?;
        let mut errors = config.problems();
        let secrets = config.read_files_into(&mut errors);
        let status_gid = match config.node.status_group.as_deref() {
            Some(g) => match crate::operator::status::server::group_id(g) {
                Ok(gid) => Some(gid),
                Err(_) => {
                    errors.push(FieldError {
                        field: "node.status_group".into(),
                        reason: "is not a group on this host (check /etc/group)".into(),
                    });
                    None
                }
            },
            None => None,
        };
        invalid_unless_empty(path, errors)?;
        Ok(Checked {
            config,
            secrets: secrets.expect("every secret was read when there is no error"),
            status_gid,
        })
    }
}

impl HooksConfig {
    /// Each configured command with its field name.
    pub fn commands(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("hooks.notify_master", &self.notify_master),
            ("hooks.notify_backup", &self.notify_backup),
            ("hooks.notify_fault", &self.notify_fault),
            ("hooks.notify", &self.notify),
        ]
        .into_iter()
        .filter_map(|(name, cmd)| Some((name, cmd.as_deref()?)))
    }
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid_unless_empty(path: &Path, errors: Vec<FieldError>) -> Result<(), ConfigError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }
}

// Bounds of the `*_ms` fields: every timeout is finite and sane.
const FENCE_TIMEOUT_MS: RangeInclusive<u64> = 1..=60_000;
const INIT_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
const PREEMPT_DELAY_MS: RangeInclusive<u64> = 0..=3_600_000;
const INTERVAL_MS: RangeInclusive<u64> = 1..=10_000;
const GARP_SPACING_MS: RangeInclusive<u64> = 0..=10_000;
const GARP_REFRESH_MS: RangeInclusive<u64> = 100..=3_600_000;
const HOOK_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;

/// Refuses a duration outside `range`, saying the bound and why.
fn check_ms(
    bad: &mut impl FnMut(String, &str),
    field: &str,
    ms: u64,
    range: RangeInclusive<u64>,
    why: &str,
) {
    if !range.contains(&ms) {
        bad(
            field.to_string(),
            &format!(
                "is {ms}; must be between {} and {} ms ({why})",
                range.start(),
                range.end()
            ),
        );
    }
}

fn check_absolute(bad: &mut impl FnMut(String, &str), field: &str, path: &Path) {
    if !path.is_absolute() {
        bad(
            field.to_string(),
            "must be an absolute path (the agent's working directory is not the operator's)",
        );
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
        assert_eq!(c.links[0].detect_time(), Duration::from_millis(6));
        assert_eq!(c.lease(), Duration::from_millis(24));
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
            .replace("192.168.1.150/24", "10.96.153.110/24")
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

    const ATLAS: &str = r#"
[atlas]
user = "user"
password_file = "/etc/ha-agent/atlas-password"
cnf_path = "/usr/local/mysql-proxy/conf/my.cnf"
"#;

    #[test]
    fn atlas_section_is_optional_and_has_defaults() {
        assert!(parse(GOOD).unwrap().atlas.is_none());
        let c = parse(&format!("{GOOD}{ATLAS}")).unwrap();
        let a = c.atlas.unwrap();
        assert_eq!(a.admin_address, "127.0.0.1:2345".parse().unwrap());
        assert_eq!(a.persist, AtlasPersist::SaveConfig);
        assert_eq!(a.period(), Duration::from_millis(1000));
        assert_eq!(a.connect_timeout(), Duration::from_millis(500));
        assert_eq!(a.query_timeout(), Duration::from_millis(500));
        assert_eq!(a.rw_not_up_alarm(), Duration::from_secs(10));
        assert_eq!(a.admin_uid, 0);
        assert!(a.ro_weights.is_empty());
        assert_eq!(
            a.rw_backend_or(Ipv4Addr::new(192, 168, 1, 150)),
            "192.168.1.150:3306".parse().unwrap()
        );
    }

    #[test]
    fn atlas_fields_are_validated() {
        let text = format!(
            "{GOOD}{}",
            ATLAS.replace(
                "user = \"user\"",
                "user = \"\"\nrw_backend = \"0.0.0.0:3306\"\nperiod_ms = 5\nquery_timeout_ms = 0\nrw_not_up_alarm_ms = 10\nro_weights = { \"10.0.0.2:3306\" = 0 }"
            )
        );
        assert_eq!(
            fields(&text),
            vec![
                "atlas.user",
                "atlas.rw_backend",
                "atlas.ro_weights",
                "atlas.rw_not_up_alarm_ms",
                "atlas.period_ms",
                "atlas.query_timeout_ms"
            ]
        );
        // SAVE CONFIG (the default) needs the .cnf to put its mode back.
        let no_cnf = format!("{GOOD}{}", ATLAS.replace("cnf_path", "# cnf_path"));
        assert_eq!(fields(&no_cnf), vec!["atlas.cnf_path"]);
        let none =
            format!("{GOOD}{ATLAS}persist = \"none\"\nro_weights = {{ \"10.0.0.2:3306\" = 2 }}\n");
        assert_eq!(fields(&none), vec!["atlas.cnf_path", "atlas.ro_weights"]);
        let cnf = format!("{GOOD}{ATLAS}persist = \"cnf\"\nrw_backend = \"192.168.1.150:3307\"\nro_weights = {{ \"10.0.0.2:3306\" = 3 }}\nadmin_uid = 998\n");
        let a = parse(&cnf).unwrap().atlas.unwrap();
        assert_eq!(a.persist, AtlasPersist::Cnf);
        assert_eq!(
            a.ro_weights.get(&"10.0.0.2:3306".parse().unwrap()),
            Some(&3)
        );
        assert_eq!(a.admin_uid, 998);
        assert_eq!(
            a.rw_backend_or(Ipv4Addr::new(1, 2, 3, 4)),
            "192.168.1.150:3307".parse().unwrap()
        );
    }

    #[test]
    fn atlas_typos_are_syntax_errors_naming_the_field() {
        for (bad, name) in [
            ("persist = \"save\"", "persist"),
            ("admin_address = \"localhost:2345\"", "admin_address"),
            ("pasword_file = \"/x\"", "pasword_file"),
        ] {
            match parse(&format!("{GOOD}{ATLAS}{bad}\n")) {
                Err(ConfigError::Syntax { message, .. }) => {
                    assert!(message.contains(name), "{bad}: {message}")
                }
                other => panic!("{bad}: expected a syntax error, got {other:?}"),
            }
        }
        let missing = GOOD.to_string() + "[atlas]\nuser = \"u\"\n";
        match parse(&missing) {
            Err(ConfigError::Syntax { message, .. }) => {
                assert!(message.contains("password_file"), "{message}")
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    const MYSQL: &str = r#"
[mysql]
user = "ha_agent"
password_file = "/etc/ha-agent/mysql-password"
replication_user = "repl"
replication_password_file = "/etc/ha-agent/repl-password"
peer_address = "192.168.1.101:3306"
"#;

    #[test]
    fn mysql_section_is_optional_and_has_safe_defaults() {
        assert!(parse(GOOD).unwrap().mysql.is_none());
        let m = parse(&format!("{GOOD}{MYSQL}")).unwrap().mysql.unwrap();
        assert_eq!(m.address, "127.0.0.1:3306".parse().unwrap());
        assert_eq!(m.catchup_policy, CatchupPolicy::StayReadOnly);
        assert_eq!(m.catchup_timeout(), Duration::from_millis(5000));
        assert_eq!(m.down_handover(), Duration::from_millis(3000));
        assert_eq!(m.check_interval(), Duration::from_millis(200));
        assert_eq!(m.timeout(), Duration::from_millis(2000));
        assert!(!m.semisync);
        assert_eq!(m.durability(), None);
        assert_eq!(m.state_dir(), Path::new("/var/lib/ha-agent"));
        // One state directory unless told otherwise.
        let moved = GOOD.replace("[node]\n", "[node]\nstate_dir = \"/srv/ha\"\n");
        assert_ne!(moved, GOOD, "GOOD has a [node] line");
        let m = parse(&format!("{moved}{MYSQL}")).unwrap().mysql.unwrap();
        assert_eq!(m.state_dir(), Path::new("/srv/ha"));
        let m = parse(&format!("{moved}{MYSQL}state_dir = \"/srv/db\"\n"))
            .unwrap()
            .mysql
            .unwrap();
        assert_eq!(m.state_dir(), Path::new("/srv/db"));
        // Built by hand without one: the default, never a relative path.
        let bare = MysqlConfig {
            state_dir: None,
            ..m.clone()
        };
        assert_eq!(bare.state_dir(), Path::new("/var/lib/ha-agent"));
        // Semi-sync is strict unless told otherwise.
        let m = parse(&format!("{GOOD}{MYSQL}semisync = true\n"))
            .unwrap()
            .mysql
            .unwrap();
        assert_eq!(m.durability(), Some(Durability::Strict));
        assert_eq!(m.semisync_timeout(), Duration::from_millis(1000));
        let m = parse(&format!(
            "{GOOD}{MYSQL}catchup_policy = \"promote\"\nsemisync = true\ndurability = \"available\"\n"
        ))
        .unwrap()
        .mysql
        .unwrap();
        assert_eq!(m.catchup_policy, CatchupPolicy::Promote);
        assert_eq!(m.durability(), Some(Durability::Available));
    }

    #[test]
    fn durability_is_checked_against_semisync_and_the_catchup_policy() {
        for (extra, field) in [
            ("durability = \"strict\"\n", "mysql.durability"),
            (
                "semisync = true\ncatchup_policy = \"promote\"\n",
                "mysql.catchup_policy",
            ),
            (
                "semisync = true\nsemisync_timeout_ms = 0\n",
                "mysql.semisync_timeout_ms",
            ),
            ("state_dir = \"relative/dir\"\n", "mysql.state_dir"),
        ] {
            assert_eq!(
                fields(&format!("{GOOD}{MYSQL}{extra}")),
                vec![field],
                "{extra}"
            );
        }
        match parse(&format!(
            "{GOOD}{MYSQL}semisync = true\ndurability = \"maybe\"\n"
        )) {
            Err(ConfigError::Syntax { message, .. }) => {
                assert!(message.contains("durability"), "{message}")
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn mysql_fields_are_validated() {
        let text = format!(
            "{GOOD}{}catchup_timeout_ms = 0\ncheck_interval_ms = 500\ndown_handover_ms = 100\ntimeout_ms = 5\n",
            MYSQL
                .replace("\"repl\"", "\"re'pl\"")
                .replace("192.168.1.101:3306", "127.0.0.1:3306")
                .replace("\"ha_agent\"", "\"\"")
        );
        assert_eq!(
            fields(&text),
            vec![
                "mysql.peer_address",
                "mysql.peer_address",
                "mysql.user",
                "mysql.replication_user",
                "mysql.catchup_timeout_ms",
                "mysql.down_handover_ms",
                "mysql.timeout_ms"
            ]
        );
        for (bad, name) in [
            ("catchup_policy = \"yolo\"", "catchup_policy"),
            ("peer_address = \"server2:3306\"", "peer_address"),
            ("pasword = \"x\"", "pasword"),
        ] {
            let text = format!(
                "{GOOD}{}",
                MYSQL.replace("peer_address = \"192.168.1.101:3306\"", bad)
            );
            let text = if bad.starts_with("peer") {
                text
            } else {
                format!("{text}peer_address = \"192.168.1.101:3306\"\n")
            };
            match parse(&text) {
                Err(ConfigError::Syntax { message, .. }) => {
                    assert!(message.contains(name), "{bad}: {message}")
                }
                other => panic!("{bad}: expected a syntax error, got {other:?}"),
            }
        }
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

    /// Every section, every `*_ms` field written out.
    fn full() -> String {
        format!(
            "{}{MYSQL}{ATLAS}",
            GOOD.replace(
                "key_file = \"/etc/ha-agent/key\"",
                "key_file = \"/etc/ha-agent/key\"\npreempt_delay_ms = 0\nfence_timeout_ms = 300\ninit_timeout_ms = 100",
            )
            .replace(
                "witness = \"10.96.153.1\"",
                "witness = \"10.96.153.1\"\ninterval_ms = 4\nwitness_interval_ms = 16",
            )
            .replace(
                "instance = \"inside_network\"",
                "instance = \"inside_network\"\n\n[garp]\nspacing_ms = 10\nrefresh_ms = 1000\n\n[hooks]\nnotify = \"/usr/local/bin/notify 'a b'\"\ntimeout_ms = 10000\n\n[ebpf]\nxdp_mode = \"generic\"",
            )
        )
        .replace(
            "peer_address = \"192.168.1.101:3306\"",
            "peer_address = \"192.168.1.101:3306\"\ncatchup_timeout_ms = 5000\ndown_handover_ms = 3000\ncheck_interval_ms = 200\ntimeout_ms = 2000",
        )
        .replace(
            "password_file = \"/etc/ha-agent/atlas-password\"",
            "password_file = \"/etc/ha-agent/atlas-password\"\nperiod_ms = 1000\nconnect_timeout_ms = 500\nquery_timeout_ms = 500",
        )
    }

    #[test]
    fn typed_at_parse_time() {
        let c = parse(&full()).unwrap();
        assert_eq!(c.ebpf.xdp_mode, XdpMode::Generic);
        assert_eq!(parse(GOOD).unwrap().ebpf.xdp_mode, XdpMode::Native);
        assert_eq!(
            c.vips[0].address,
            VipAddress {
                ip: Ipv4Addr::new(10, 96, 153, 239),
                prefix_len: 24
            }
        );
        assert_eq!(c.vips[0].address.to_string(), "10.96.153.239/24");
        assert_eq!(c.vips[0].address.network().to_string(), "10.96.153.0/24");
        assert_eq!(c.path(), Path::new("test.toml"));
        // A bad VIP or XDP mode is refused by the parser, at its line.
        for (bad, says) in [
            ("192.168.1.150/40", "prefix length"),
            ("192.168.1.300/24", "not an IPv4 address"),
            ("224.0.0.1/24", "not a unicast"),
        ] {
            match parse(&GOOD.replace("192.168.1.150/24", bad)) {
                Err(ConfigError::Syntax { message, .. }) => {
                    assert!(message.contains("address = "), "{message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        match parse(&full().replace("\"generic\"", "\"turbo\"")) {
            Err(ConfigError::Syntax { message, .. }) => {
                assert!(message.contains("xdp_mode"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The dangerous configs of issue 11, each refused with its field named.
    #[test]
    fn dangerous_configs_are_refused_with_the_field_named() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "VIP outside its link's subnet",
                full().replace("10.96.153.239/24", "10.96.154.239/24"),
                "vip[0].address",
            ),
            (
                "VIP prefix that leaves the peer out",
                full().replace("10.96.153.239/24", "10.96.153.239/30"),
                "vip[0].address",
            ),
            (
                "VIP without a prefix (/32)",
                full().replace("10.96.153.239/24", "10.96.153.239"),
                "vip[0].address",
            ),
            (
                "VIP is the subnet's broadcast address",
                full().replace("10.96.153.239/24", "10.96.153.255/24"),
                "vip[0].address",
            ),
            (
                "VIP equal to the witness",
                full().replace("10.96.153.239/24", "10.96.153.1/24"),
                "vip[0].address",
            ),
            (
                "witness outside the link's subnet",
                full().replace("witness = \"10.96.153.1\"", "witness = \"10.96.154.1\""),
                "link[0].witness",
            ),
            (
                "mysql.peer_address equal to a VIP",
                full().replace("192.168.1.101:3306", "192.168.1.150:3306"),
                "mysql.peer_address",
            ),
            (
                "mysql.peer_address is this server",
                full().replace("192.168.1.101:3306", "192.168.1.100:3306"),
                "mysql.peer_address",
            ),
            (
                "mysql.address equal to a VIP",
                full().replace("[mysql]\n", "[mysql]\naddress = \"192.168.1.150:3306\"\n"),
                "mysql.address",
            ),
            (
                "hook with an unterminated quote",
                full().replace("'a b'", "'a b"),
                "hooks.notify",
            ),
            (
                "empty hook",
                full().replace("\"/usr/local/bin/notify 'a b'\"", "\"  \""),
                "hooks.notify",
            ),
            (
                "unbounded fence timeout",
                full().replace(
                    "fence_timeout_ms = 300",
                    "fence_timeout_ms = 18446744073709551615",
                ),
                "node.fence_timeout_ms",
            ),
            (
                "29-byte node name",
                full().replace(
                    "name = \"server1\"",
                    "name = \"server1.datacenter-east.lan\"",
                ),
                "node.name",
            ),
            (
                "node name with a NUL",
                full().replace("name = \"server1\"", "name = \"ser\\u0000ver1\""),
                "node.name",
            ),
            (
                "relative key file",
                full().replace("\"/etc/ha-agent/key\"", "\"key\""),
                "node.key_file",
            ),
            (
                "relative status socket",
                full().replace("[node]\n", "[node]\nstatus_socket = \"ha-agent.sock\"\n"),
                "node.status_socket",
            ),
            (
                "relative password file",
                full().replace("\"/etc/ha-agent/atlas-password\"", "\"atlas-password\""),
                "atlas.password_file",
            ),
        ];
        for (what, text, field) in cases {
            match parse(&text) {
                Err(ConfigError::Invalid { errors, .. }) => {
                    assert!(
                        errors.iter().any(|e| e.field == field),
                        "{what}: {field} not named in {errors:?}"
                    );
                }
                other => panic!("{what}: expected {field} to be refused, got {other:?}"),
            }
        }
    }

    /// Every `*_ms` field is bounded: the largest TOML integer and u64::MAX
    /// are refused, each naming its field and the bound.
    #[test]
    fn every_ms_field_is_bounded() {
        let text = full();
        parse(&text).unwrap();
        let mut section = String::new();
        let mut seen = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.trim_matches(['[', ']']).to_string();
                continue;
            }
            let Some((name, _)) = line.split_once(" = ") else {
                continue;
            };
            if !name.ends_with("_ms") {
                continue;
            }
            for huge in ["9223372036854775807", "18446744073709551615"] {
                let changed = text.replacen(line, &format!("{name} = {huge}"), 1);
                let errors = match parse(&changed) {
                    Err(ConfigError::Invalid { errors, .. }) => errors,
                    other => panic!("{section}.{name} = {huge}: accepted: {other:?}"),
                };
                let hit = errors
                    .iter()
                    .find(|e| {
                        e.field.ends_with(name)
                            && e.field.starts_with(section.split('.').next().unwrap())
                    })
                    .unwrap_or_else(|| panic!("{section}.{name}: not named in {errors:?}"));
                assert!(
                    hit.reason.contains("between") || hit.reason.contains("at most"),
                    "{section}.{name}: the bound is said: {}",
                    hit.reason
                );
            }
            seen.push(format!("{section}.{name}"));
        }
        assert_eq!(seen.len(), 15, "{seen:?}");
    }
}
