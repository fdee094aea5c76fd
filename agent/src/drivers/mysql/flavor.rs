//! Which server we talk to (MariaDB, or MySQL 5.7 / 8.0 / 8.4) and the SQL
//! for every failover step in its dialect.
//!
//! Statements are built here and nowhere else, so each dialect difference is
//! one `match` with a unit test. Values that must be spliced into SQL (the
//! replication user, password and host, GTID sets) are either produced by
//! our own printers (GTID sets, IP addresses) or validated against a strict
//! character set; a value that does not pass is refused, never escaped.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::gtid::GtidSet;

/// The semi-sync timeout of a strict primary: in practice never (30 days),
/// while small enough for every server's arithmetic on it.
pub const STRICT_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Mariadb,
    Mysql,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Mariadb => "MariaDB",
            Flavor::Mysql => "MySQL",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The dialect families whose replication SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Generation {
    /// MariaDB 10.3+: `SLAVE`/`MASTER` words, `MASTER_USE_GTID`, built-in semi-sync.
    Mariadb,
    /// MySQL 5.7.8+: `SLAVE`/`MASTER`, `MASTER_AUTO_POSITION`.
    Mysql57,
    /// MySQL 8.0.0 - 8.0.22 (`SHOW REPLICA STATUS` and `START REPLICA` from 8.0.22).
    Mysql80Legacy,
    /// MySQL 8.0.23 - 8.3: `CHANGE REPLICATION SOURCE TO`.
    Mysql80,
    /// MySQL 8.4 and later: the `SLAVE`/`MASTER` statements are gone.
    Mysql84,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlavorError {
    #[error("cannot read a version number from VERSION() = {0:?}")]
    Unparsable(String),
    #[error("{flavor} {version} is not supported: ha-agent needs MariaDB 10.3+ or MySQL 5.7.8+ (GTID replication, read_only fencing); upgrade the server")]
    TooOld { flavor: Flavor, version: Version },
}

/// The server's flavor and version, from `SELECT VERSION(), @@version_comment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServerKind {
    pub flavor: Flavor,
    pub version: Version,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.flavor, self.version)
    }
}

/// Why a value cannot go into a replication statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replication {what} {reason}; choose one of printable ASCII without ' or \\ (it is sent inside an SQL string, which ha-agent refuses to escape)")]
pub struct SqlValueError {
    pub what: &'static str,
    pub reason: String,
}

/// An SQL statement. Its `Display`/`Debug` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Sql {
    text: String,
    /// The same statement with secrets replaced, when it holds any.
    redacted: Option<String>,
}

impl Sql {
    fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            redacted: None,
        }
    }
    /// The statement to send to the server.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Sql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted.as_deref().unwrap_or(&self.text))
    }
}

impl fmt::Debug for Sql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sql({self})")
    }
}

/// Where and as whom a replica connects.
#[derive(Clone)]
pub struct ReplicationSource<'a> {
    pub address: SocketAddr,
    pub user: &'a str,
    pub password: &'a str,
}

/// Semi-synchronous replication names of one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemisyncNames {
    /// (plugin name, library) pairs to INSTALL if missing (none on MariaDB).
    pub source_plugin: Option<(&'static str, &'static str)>,
    pub replica_plugin: Option<(&'static str, &'static str)>,
    pub source_enabled: &'static str,
    pub replica_enabled: &'static str,
    pub source_wait_point: &'static str,
    /// Whether a primary with no semi-sync replica connected still waits
    /// for an acknowledgement (up to the semi-sync timeout) on each commit.
    pub source_wait_no_replica: &'static str,
    /// How long a commit waits for an acknowledgement before the primary
    /// gives up on semi-sync by itself (ms).
    pub source_timeout: &'static str,
    /// Status variables: is it operational, how many replicas acknowledge.
    pub source_status: &'static str,
    pub source_clients: &'static str,
    /// Commits waiting for an acknowledgement now.
    pub source_waiting: &'static str,
    /// Commits acknowledged by a replica, and commits that were not.
    pub source_yes_tx: &'static str,
    pub source_no_tx: &'static str,
    pub replica_status: &'static str,
}

fn leading_number(s: &str) -> Option<u16> {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl ServerKind {
    /// Detects the flavor from `VERSION()` ("10.11.19-MariaDB-0+deb12u1-log",
    /// "8.0.36", "5.7.44-log") and `@@version_comment` ("mariadb.org binary
    /// distribution", "MySQL Community Server - GPL").
    pub fn detect(version: &str, comment: &str) -> Result<ServerKind, FlavorError> {
        let v = version.trim();
        let is_mariadb = v.to_ascii_lowercase().contains("mariadb")
            || comment.to_ascii_lowercase().contains("mariadb");
        // MariaDB's old replication-handshake prefix, in case a proxy passes it on.
        let v = v.strip_prefix("5.5.5-").filter(|_| is_mariadb).unwrap_or(v);
        let mut nums = v.split(['.', '-']).map(leading_number);
        let (Some(Some(major)), Some(Some(minor))) = (nums.next(), nums.next()) else {
            return Err(FlavorError::Unparsable(version.to_string()));
        };
        let patch = nums.next().flatten().unwrap_or(0);
        let kind = ServerKind {
            flavor: if is_mariadb {
                Flavor::Mariadb
            } else {
                Flavor::Mysql
            },
            version: Version::new(major, minor, patch),
        };
        let oldest = match kind.flavor {
            Flavor::Mariadb => Version::new(10, 3, 0),
            Flavor::Mysql => Version::new(5, 7, 8),
        };
        if kind.version < oldest {
            return Err(FlavorError::TooOld {
                flavor: kind.flavor,
                version: kind.version,
            });
        }
        Ok(kind)
    }

    pub fn generation(&self) -> Generation {
        let v = self.version;
        match self.flavor {
            Flavor::Mariadb => Generation::Mariadb,
            Flavor::Mysql if v < Version::new(8, 0, 0) => Generation::Mysql57,
            Flavor::Mysql if v < Version::new(8, 0, 23) => Generation::Mysql80Legacy,
            Flavor::Mysql if v < Version::new(8, 4, 0) => Generation::Mysql80,
            Flavor::Mysql => Generation::Mysql84,
        }
    }

    fn mysql_at_least(&self, major: u16, minor: u16, patch: u16) -> bool {
        self.flavor == Flavor::Mysql && self.version >= Version::new(major, minor, patch)
    }

    /// MySQL 8.0.22+ has REPLICA statements (and 8.4 only those).
    fn replica_words(&self) -> bool {
        self.mysql_at_least(8, 0, 22)
    }

    fn replica(&self) -> &'static str {
        if self.replica_words() {
            "REPLICA"
        } else {
            "SLAVE"
        }
    }

    /// Makes the server refuse writes from applications. On MySQL
    /// `super_read_only` also stops accounts with SUPER (MariaDB has no
    /// equivalent: its application accounts must lack READ_ONLY ADMIN).
    pub fn fence(&self) -> Vec<Sql> {
        let mut v = vec![Sql::new("SET GLOBAL read_only = ON")];
        if self.flavor == Flavor::Mysql {
            v.push(Sql::new("SET GLOBAL super_read_only = ON"));
        }
        v
    }

    pub fn unfence(&self) -> Vec<Sql> {
        let mut v = Vec::new();
        if self.flavor == Flavor::Mysql {
            v.push(Sql::new("SET GLOBAL super_read_only = OFF"));
        }
        v.push(Sql::new("SET GLOBAL read_only = OFF"));
        v
    }

    /// One row: VERSION(), version_comment, server_id, read_only, super_read_only.
    pub fn identity_query() -> Sql {
        Sql::new(
            "SELECT VERSION(), @@global.version_comment, @@global.server_id, @@global.read_only",
        )
    }

    /// One row: read_only, super_read_only (0 on MariaDB).
    pub fn read_only_query(&self) -> Sql {
        match self.flavor {
            Flavor::Mariadb => Sql::new("SELECT @@global.read_only, 0"),
            Flavor::Mysql => Sql::new("SELECT @@global.read_only, @@global.super_read_only"),
        }
    }

    /// One row of the server's GTID history: MySQL `gtid_executed`; MariaDB
    /// `gtid_binlog_pos`, `gtid_binlog_state`, `gtid_slave_pos` (the state is
    /// what errant detection needs, the slave position covers transactions
    /// applied without log_slave_updates).
    pub fn gtid_query(&self) -> Sql {
        match self.flavor {
            Flavor::Mariadb => Sql::new(
                "SELECT @@global.gtid_binlog_pos, @@global.gtid_binlog_state, @@global.gtid_slave_pos",
            ),
            Flavor::Mysql => Sql::new("SELECT @@global.gtid_executed, '', ''"),
        }
    }

    /// MariaDB's applied replication position (not in SHOW SLAVE STATUS).
    pub fn mariadb_slave_pos_query() -> Sql {
        Sql::new("SELECT @@global.gtid_slave_pos")
    }

    /// One row of settings the failover depends on, as (name, value) text:
    /// each wrong one is reported by the health probe.
    pub fn settings_query(&self) -> Sql {
        match self.flavor {
            Flavor::Mariadb => Sql::new(
                "SELECT @@global.log_bin, @@global.log_slave_updates, @@global.gtid_strict_mode",
            ),
            Flavor::Mysql => Sql::new(
                "SELECT @@global.log_bin, @@global.log_slave_updates, @@global.gtid_mode = 'ON'",
            ),
        }
    }

    pub fn replica_status(&self) -> Sql {
        Sql::new(format!("SHOW {} STATUS", self.replica()))
    }

    /// Freezes what the replica has received (the IO thread stops).
    pub fn stop_io_thread(&self) -> Sql {
        Sql::new(format!("STOP {} IO_THREAD", self.replica()))
    }

    pub fn start_io_thread(&self) -> Sql {
        Sql::new(format!("START {} IO_THREAD", self.replica()))
    }

    pub fn start_sql_thread(&self) -> Sql {
        Sql::new(format!("START {} SQL_THREAD", self.replica()))
    }

    /// The binary log index file and the data directory it is relative to.
    pub fn binlog_location(&self) -> Sql {
        Sql::new("SELECT @@global.log_bin_index, @@global.datadir")
    }

    pub fn stop_sql_thread(&self) -> Sql {
        Sql::new(format!("STOP {} SQL_THREAD", self.replica()))
    }

    pub fn stop_replication(&self) -> Sql {
        Sql::new(format!("STOP {}", self.replica()))
    }

    pub fn start_replication(&self) -> Sql {
        Sql::new(format!("START {}", self.replica()))
    }

    /// Forgets the replication source entirely (`SHOW ... STATUS` becomes empty).
    pub fn reset_replication(&self) -> Sql {
        Sql::new(format!("RESET {} ALL", self.replica()))
    }

    /// The server-side wait for the applier to reach `received`, returning
    /// one integer: see [`ServerKind::wait_succeeded`]. MariaDB waits on
    /// `gtid_slave_pos`, MySQL on `gtid_executed`.
    pub fn wait_for(&self, received: &GtidSet, timeout: Duration) -> Sql {
        // The set text comes from our own printer: digits, hex, '-', ':', ',', tags.
        match self.flavor {
            Flavor::Mariadb => Sql::new(format!(
                "SELECT MASTER_GTID_WAIT('{received}', {}.{:03})",
                timeout.as_secs(),
                timeout.subsec_millis()
            )),
            // MySQL takes whole seconds in 5.7; the caller enforces the exact
            // deadline on its side.
            Flavor::Mysql => Sql::new(format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET('{received}', {})",
                timeout.as_millis().div_ceil(1000)
            )),
        }
    }

    /// MASTER_GTID_WAIT returns 0 (reached) or -1 (timeout);
    /// WAIT_FOR_EXECUTED_GTID_SET returns 0 (reached) or 1 (timeout).
    pub fn wait_succeeded(&self, value: Option<i64>) -> bool {
        value == Some(0)
    }

    /// MariaDB in GTID mode discards the relay log (and resets
    /// `Gtid_IO_Pos` to `gtid_slave_pos`) when replication starts after both
    /// threads were stopped: a received backlog is then lost unless the
    /// source is still there to send it again. MySQL keeps it.
    pub fn restart_discards_relay_log(&self) -> bool {
        self.flavor == Flavor::Mariadb
    }

    /// Throws away this server's binary logs and GTID history (forced rejoin only).
    pub fn discard_binlogs(&self) -> Sql {
        if self.mysql_at_least(8, 2, 0) {
            Sql::new("RESET BINARY LOGS AND GTIDS")
        } else {
            Sql::new("RESET MASTER")
        }
    }

    /// Where replication starts. MariaDB: `gtid_slave_pos` = `keep`, or this
    /// server's own binlog position (an old primary asks for what follows its
    /// last transaction). MySQL: auto-position needs nothing unless `keep`
    /// replaces the history (after [`ServerKind::discard_binlogs`]).
    pub fn set_start_position(&self, keep: Option<&GtidSet>) -> Vec<Sql> {
        match (self.flavor, keep) {
            (Flavor::Mariadb, None) => {
                vec![Sql::new(
                    "SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos",
                )]
            }
            (Flavor::Mariadb, Some(k)) => {
                vec![Sql::new(format!("SET GLOBAL gtid_slave_pos = '{k}'"))]
            }
            (Flavor::Mysql, None) => vec![],
            (Flavor::Mysql, Some(k)) => vec![Sql::new(format!("SET GLOBAL gtid_purged = '{k}'"))],
        }
    }

    /// Points replication at `source` with GTID auto-positioning. Retries
    /// every second (the default 60 s would leave a replica idle for a
    /// minute after one failed connect, e.g. a stale ARP entry).
    pub fn change_source(&self, source: &ReplicationSource<'_>) -> Result<Sql, SqlValueError> {
        let user = check_value("user", source.user, 80)?;
        let password = check_value("password", source.password, 32)?;
        let host = source.address.ip().to_string();
        let port = source.address.port();
        let build = |pw: &str| match self.generation() {
            Generation::Mariadb => format!(
                "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, MASTER_USER='{user}', \
                 MASTER_PASSWORD='{pw}', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos"
            ),
            Generation::Mysql57 => format!(
                "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, MASTER_USER='{user}', \
                 MASTER_PASSWORD='{pw}', MASTER_CONNECT_RETRY=1, MASTER_AUTO_POSITION=1"
            ),
            // 8.0's default caching_sha2_password needs the source's RSA key
            // when the link is not TLS.
            Generation::Mysql80Legacy => format!(
                "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, MASTER_USER='{user}', \
                 MASTER_PASSWORD='{pw}', MASTER_CONNECT_RETRY=1, MASTER_AUTO_POSITION=1, \
                 GET_MASTER_PUBLIC_KEY=1"
            ),
            Generation::Mysql80 | Generation::Mysql84 => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{host}', SOURCE_PORT={port}, \
                 SOURCE_USER='{user}', SOURCE_PASSWORD='{pw}', SOURCE_CONNECT_RETRY=1, \
                 SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"
            ),
        };
        Ok(Sql {
            text: build(password),
            redacted: Some(build("<redacted>")),
        })
    }

    pub fn semisync_names(&self) -> SemisyncNames {
        if self.mysql_at_least(8, 0, 26) {
            SemisyncNames {
                source_plugin: Some(("rpl_semi_sync_source", "semisync_source.so")),
                replica_plugin: Some(("rpl_semi_sync_replica", "semisync_replica.so")),
                source_enabled: "rpl_semi_sync_source_enabled",
                replica_enabled: "rpl_semi_sync_replica_enabled",
                source_wait_point: "rpl_semi_sync_source_wait_point",
                source_wait_no_replica: "rpl_semi_sync_source_wait_no_replica",
                source_timeout: "rpl_semi_sync_source_timeout",
                source_status: "Rpl_semi_sync_source_status",
                source_clients: "Rpl_semi_sync_source_clients",
                source_waiting: "Rpl_semi_sync_source_wait_sessions",
                source_yes_tx: "Rpl_semi_sync_source_yes_tx",
                source_no_tx: "Rpl_semi_sync_source_no_tx",
                replica_status: "Rpl_semi_sync_replica_status",
            }
        } else {
            let plugins = self.flavor == Flavor::Mysql;
            SemisyncNames {
                source_plugin: plugins.then_some(("rpl_semi_sync_master", "semisync_master.so")),
                replica_plugin: plugins.then_some(("rpl_semi_sync_slave", "semisync_slave.so")),
                source_enabled: "rpl_semi_sync_master_enabled",
                replica_enabled: "rpl_semi_sync_slave_enabled",
                source_wait_point: "rpl_semi_sync_master_wait_point",
                source_wait_no_replica: "rpl_semi_sync_master_wait_no_slave",
                source_timeout: "rpl_semi_sync_master_timeout",
                source_status: "Rpl_semi_sync_master_status",
                source_clients: "Rpl_semi_sync_master_clients",
                source_waiting: "Rpl_semi_sync_master_wait_sessions",
                source_yes_tx: "Rpl_semi_sync_master_yes_tx",
                source_no_tx: "Rpl_semi_sync_master_no_tx",
                replica_status: "Rpl_semi_sync_slave_status",
            }
        }
    }

    /// Which semi-sync plugins are loaded (MySQL): lists their names.
    pub fn semisync_plugins_query(&self) -> Sql {
        Sql::new(
            "SELECT PLUGIN_NAME FROM information_schema.PLUGINS \
             WHERE PLUGIN_NAME LIKE 'rpl\\_semi\\_sync\\_%' AND PLUGIN_STATUS = 'ACTIVE'",
        )
    }

    pub fn install_plugin(name: &str, library: &str) -> Sql {
        Sql::new(format!("INSTALL PLUGIN {name} SONAME '{library}'"))
    }

    /// A primary that may acknowledge without its replica ("relaxed"):
    /// commits wait AFTER_SYNC (no client sees a commit the replica has not
    /// received) for at most `timeout`, and not at all while no semi-sync
    /// replica is connected. The server falls back to asynchronous by
    /// itself: only right for a new primary without a replica, or with
    /// `durability = "available"`. Also stops being a semi-sync replica.
    pub fn semisync_source_relaxed(&self, timeout: Duration) -> Vec<Sql> {
        let n = self.semisync_names();
        vec![
            Sql::new(format!("SET GLOBAL {} = 'AFTER_SYNC'", n.source_wait_point)),
            Sql::new(format!("SET GLOBAL {} = OFF", n.source_wait_no_replica)),
            Sql::new(format!(
                "SET GLOBAL {} = {}",
                n.source_timeout,
                timeout.as_millis().max(1)
            )),
            Sql::new(format!("SET GLOBAL {} = ON", n.source_enabled)),
            Sql::new(format!("SET GLOBAL {} = OFF", n.replica_enabled)),
        ]
    }

    /// A primary that never acknowledges without its replica by itself
    /// ("strict"): commits wait for an acknowledgement even with no replica
    /// connected, for [`STRICT_TIMEOUT`] (in practice for ever). Only the
    /// agent relaxes it, after telling the replica (see the database
    /// controller).
    pub fn semisync_source_strict(&self) -> Vec<Sql> {
        let n = self.semisync_names();
        vec![
            Sql::new(format!("SET GLOBAL {} = ON", n.source_wait_no_replica)),
            Sql::new(format!(
                "SET GLOBAL {} = {}",
                n.source_timeout,
                STRICT_TIMEOUT.as_millis()
            )),
        ]
    }

    /// Switches the primary's semi-sync off: the commits waiting for an
    /// acknowledgement complete at once, without one.
    pub fn semisync_source_off(&self) -> Sql {
        Sql::new(format!(
            "SET GLOBAL {} = OFF",
            self.semisync_names().source_enabled
        ))
    }

    /// A semi-sync replica (and no longer a semi-sync primary). It takes
    /// effect when the IO thread (re)connects.
    pub fn semisync_replica_on(&self) -> Vec<Sql> {
        let n = self.semisync_names();
        let mut v = Vec::new();
        if self.flavor == Flavor::Mariadb {
            // Stopping a semi-sync replica's IO thread first connects to
            // the primary to kill its dump thread, bounded by this many
            // seconds (default 5); 1 s is the shortest that still lets a
            // live primary on the LAN answer.
            v.push(Sql::new(
                "SET GLOBAL rpl_semi_sync_slave_kill_conn_timeout = 1",
            ));
        }
        v.push(Sql::new(format!("SET GLOBAL {} = ON", n.replica_enabled)));
        v.push(Sql::new(format!("SET GLOBAL {} = OFF", n.source_enabled)));
        v
    }

    /// Stops being a semi-sync replica (before a promotion).
    pub fn semisync_replica_off(&self) -> Sql {
        Sql::new(format!(
            "SET GLOBAL {} = OFF",
            self.semisync_names().replica_enabled
        ))
    }

    pub fn semisync_status_query(&self) -> Sql {
        Sql::new("SHOW GLOBAL STATUS LIKE 'Rpl\\_semi\\_sync\\_%'")
    }

    pub fn semisync_variables_query(&self) -> Sql {
        Sql::new("SHOW GLOBAL VARIABLES LIKE 'rpl\\_semi\\_sync\\_%'")
    }

    /// The connection id of the replica's IO thread (no row: not running).
    /// Killing it stops the thread's reading and acknowledging at once;
    /// `STOP ... IO_THREAD` first waits to kill the primary's dump thread,
    /// which costs the semi-sync kill-connection timeout when the primary
    /// is gone.
    pub fn io_thread_id_query(&self) -> Sql {
        match self.flavor {
            Flavor::Mariadb => {
                Sql::new("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'")
            }
            Flavor::Mysql => Sql::new(
                "SELECT PROCESSLIST_ID FROM performance_schema.threads \
                 WHERE NAME IN ('thread/sql/slave_io', 'thread/sql/replica_io')",
            ),
        }
    }

    /// Whether the replica's IO thread is frozen by killing its connection
    /// (MariaDB, tested here) rather than by `STOP ... IO_THREAD`.
    pub fn freezes_by_kill(&self) -> bool {
        self.flavor == Flavor::Mariadb
    }

    /// The sessions whose commit waits for a semi-sync acknowledgement.
    pub fn semisync_waiters_query(&self) -> Sql {
        Sql::new(
            "SELECT ID FROM information_schema.PROCESSLIST \
             WHERE STATE LIKE 'Waiting for semi-sync ACK%'",
        )
    }

    /// Closes a connection. `KILL QUERY` would be wrong for a commit that
    /// waits for a semi-sync acknowledgement: its client would get OK, an
    /// acknowledgement without the replica; a closed connection is no
    /// acknowledgement.
    pub fn kill_connection(id: u64) -> Sql {
        Sql::new(format!("KILL CONNECTION {id}"))
    }
}

/// Accepts printable ASCII without `'` and `\` (and not empty, not too long).
pub fn check_value<'v>(
    what: &'static str,
    v: &'v str,
    max: usize,
) -> Result<&'v str, SqlValueError> {
    let fail = |reason: String| Err(SqlValueError { what, reason });
    if v.is_empty() {
        return fail("is empty".into());
    }
    if v.len() > max {
        return fail(format!(
            "is {} characters long; the server accepts at most {max}",
            v.len()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|&c| !(' '..='~').contains(&c) || c == '\'' || c == '\\')
    {
        return fail(format!("contains the character {c:?}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mysql::gtid::{MariadbGtids, MysqlGtidSet};

    fn kind(v: &str, c: &str) -> ServerKind {
        ServerKind::detect(v, c).unwrap()
    }
    fn mariadb() -> ServerKind {
        kind("10.11.19-MariaDB-0+deb12u1-log", "Debian 12")
    }
    fn mysql57() -> ServerKind {
        kind("5.7.44-log", "MySQL Community Server (GPL)")
    }
    fn mysql8021() -> ServerKind {
        kind("8.0.21", "MySQL Community Server - GPL")
    }
    fn mysql8022() -> ServerKind {
        kind("8.0.22", "MySQL Community Server - GPL")
    }
    fn mysql8036() -> ServerKind {
        kind("8.0.36", "MySQL Community Server - GPL")
    }
    fn mysql84() -> ServerKind {
        kind("8.4.3", "MySQL Community Server - GPL")
    }
    fn texts(v: Vec<Sql>) -> Vec<String> {
        v.into_iter().map(|s| s.text().to_string()).collect()
    }
    fn source<'a>(user: &'a str, password: &'a str) -> ReplicationSource<'a> {
        ReplicationSource {
            address: "192.168.1.101:3306".parse().unwrap(),
            user,
            password,
        }
    }

    #[test]
    fn detects_flavor_version_and_generation() {
        assert_eq!(mariadb().flavor, Flavor::Mariadb);
        assert_eq!(mariadb().version, Version::new(10, 11, 19));
        assert_eq!(mariadb().generation(), Generation::Mariadb);
        let m = kind("5.5.5-10.6.16-MariaDB", "mariadb.org binary distribution");
        assert_eq!(m.version, Version::new(10, 6, 16));
        // A distribution build whose VERSION() does not say MariaDB.
        assert_eq!(kind("10.5.23", "MariaDB Server").flavor, Flavor::Mariadb);
        assert_eq!(mysql57().generation(), Generation::Mysql57);
        assert_eq!(mysql8021().generation(), Generation::Mysql80Legacy);
        assert_eq!(mysql8022().generation(), Generation::Mysql80Legacy);
        assert_eq!(
            kind("8.0.23", "MySQL Community Server - GPL").generation(),
            Generation::Mysql80
        );
        assert_eq!(mysql84().generation(), Generation::Mysql84);
        assert_eq!(kind("9.1.0", "").generation(), Generation::Mysql84);
        assert_eq!(
            kind("8.0.36-28", "Percona Server (GPL), Release 28").flavor,
            Flavor::Mysql
        );
    }

    #[test]
    fn refuses_unparsable_and_old_versions() {
        for v in ["", "garbage", "-1", "8", "x.y.z"] {
            assert!(
                matches!(ServerKind::detect(v, ""), Err(FlavorError::Unparsable(_))),
                "{v}"
            );
        }
        let e = ServerKind::detect("5.6.51-log", "MySQL Community Server (GPL)").unwrap_err();
        assert!(e.to_string().contains("5.7.8+"), "{e}");
        assert!(ServerKind::detect("5.7.7", "").is_err());
        assert!(ServerKind::detect("10.1.48-MariaDB", "").is_err());
    }

    #[test]
    fn fence_and_unfence() {
        assert_eq!(texts(mariadb().fence()), ["SET GLOBAL read_only = ON"]);
        assert_eq!(texts(mariadb().unfence()), ["SET GLOBAL read_only = OFF"]);
        for k in [mysql57(), mysql8036(), mysql84()] {
            assert_eq!(
                texts(k.fence()),
                [
                    "SET GLOBAL read_only = ON",
                    "SET GLOBAL super_read_only = ON"
                ]
            );
            // super_read_only first: read_only=OFF would refuse while it is ON
            // on some versions, and it must never be left half-open.
            assert_eq!(
                texts(k.unfence()),
                [
                    "SET GLOBAL super_read_only = OFF",
                    "SET GLOBAL read_only = OFF"
                ]
            );
        }
        assert_eq!(
            mariadb().read_only_query().text(),
            "SELECT @@global.read_only, 0"
        );
        assert!(mysql57()
            .read_only_query()
            .text()
            .contains("super_read_only"));
    }

    #[test]
    fn replication_statements_per_dialect() {
        for (k, word) in [
            (mariadb(), "SLAVE"),
            (mysql57(), "SLAVE"),
            (mysql8021(), "SLAVE"),
            (mysql8022(), "REPLICA"),
            (mysql8036(), "REPLICA"),
            (mysql84(), "REPLICA"),
        ] {
            assert_eq!(k.replica_status().text(), format!("SHOW {word} STATUS"));
            assert_eq!(k.stop_io_thread().text(), format!("STOP {word} IO_THREAD"));
            assert_eq!(
                k.start_io_thread().text(),
                format!("START {word} IO_THREAD")
            );
            assert_eq!(
                k.start_sql_thread().text(),
                format!("START {word} SQL_THREAD")
            );
            assert_eq!(
                k.stop_sql_thread().text(),
                format!("STOP {word} SQL_THREAD")
            );
            assert_eq!(k.stop_replication().text(), format!("STOP {word}"));
            assert_eq!(k.start_replication().text(), format!("START {word}"));
            assert_eq!(k.reset_replication().text(), format!("RESET {word} ALL"));
        }
        assert_eq!(mariadb().discard_binlogs().text(), "RESET MASTER");
        assert_eq!(mysql8036().discard_binlogs().text(), "RESET MASTER");
        assert_eq!(
            mysql84().discard_binlogs().text(),
            "RESET BINARY LOGS AND GTIDS"
        );
        assert!(mariadb().gtid_query().text().contains("gtid_binlog_state"));
        assert!(mysql84().gtid_query().text().contains("gtid_executed"));
        assert!(mariadb()
            .settings_query()
            .text()
            .contains("gtid_strict_mode"));
        assert!(mysql57().settings_query().text().contains("gtid_mode"));
    }

    #[test]
    fn catch_up_waits() {
        let pos = GtidSet::Mariadb(MariadbGtids::parse_position("0-1-42").unwrap());
        assert_eq!(
            mariadb().wait_for(&pos, Duration::from_millis(5250)).text(),
            "SELECT MASTER_GTID_WAIT('0-1-42', 5.250)"
        );
        let set = GtidSet::Mysql(
            MysqlGtidSet::parse("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5").unwrap(),
        );
        assert_eq!(
            mysql8036()
                .wait_for(&set, Duration::from_millis(5250))
                .text(),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5', 6)"
        );
        assert!(mariadb().wait_succeeded(Some(0)));
        assert!(!mariadb().wait_succeeded(Some(-1)));
        assert!(!mysql57().wait_succeeded(Some(1)));
        assert!(!mysql57().wait_succeeded(None));
    }

    #[test]
    fn start_position() {
        assert_eq!(
            texts(mariadb().set_start_position(None)),
            ["SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos"]
        );
        let keep = GtidSet::Mariadb(MariadbGtids::parse_position("0-1-90").unwrap());
        assert_eq!(
            texts(mariadb().set_start_position(Some(&keep))),
            ["SET GLOBAL gtid_slave_pos = '0-1-90'"]
        );
        assert!(mysql8036().set_start_position(None).is_empty());
        let keep = GtidSet::Mysql(
            MysqlGtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-90").unwrap(),
        );
        assert_eq!(
            texts(mysql84().set_start_position(Some(&keep))),
            ["SET GLOBAL gtid_purged = '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-90'"]
        );
    }

    #[test]
    fn change_source_per_dialect_and_password_redacted() {
        let s = source("repl", "s3cret-pw");
        let m = mariadb().change_source(&s).unwrap();
        assert_eq!(
            m.text(),
            "CHANGE MASTER TO MASTER_HOST='192.168.1.101', MASTER_PORT=3306, MASTER_USER='repl', \
             MASTER_PASSWORD='s3cret-pw', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos"
        );
        assert!(!m.to_string().contains("s3cret"), "{m}");
        assert!(!format!("{m:?}").contains("s3cret"));
        assert!(m.to_string().contains("MASTER_PASSWORD='<redacted>'"));
        let t = mysql57().change_source(&s).unwrap();
        assert!(t
            .text()
            .starts_with("CHANGE MASTER TO MASTER_HOST='192.168.1.101'"));
        assert!(t.text().ends_with("MASTER_AUTO_POSITION=1"));
        let t = mysql8022().change_source(&s).unwrap();
        assert!(t.text().starts_with("CHANGE MASTER TO"));
        assert!(t
            .text()
            .ends_with("MASTER_AUTO_POSITION=1, GET_MASTER_PUBLIC_KEY=1"));
        for k in [kind("8.0.23", ""), mysql84()] {
            let t = k.change_source(&s).unwrap();
            assert_eq!(
                t.text(),
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='192.168.1.101', SOURCE_PORT=3306, \
                 SOURCE_USER='repl', SOURCE_PASSWORD='s3cret-pw', SOURCE_CONNECT_RETRY=1, \
                 SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"
            );
            assert!(!t.to_string().contains("s3cret"));
        }
        let v6 = ReplicationSource {
            address: "[fd00::2]:3307".parse().unwrap(),
            ..source("repl", "pw")
        };
        assert!(mariadb()
            .change_source(&v6)
            .unwrap()
            .text()
            .contains("MASTER_HOST='fd00::2', MASTER_PORT=3307"));
    }

    #[test]
    fn injectable_values_are_refused() {
        for (user, pw) in [
            ("repl", "pw' , MASTER_HOST='evil"),
            ("re'pl", "pw"),
            ("repl", "back\\slash"),
            ("repl", "new\nline"),
            ("repl", "nul\0"),
            ("", "pw"),
            ("repl", ""),
            ("repl", "ünïcode"),
            ("repl", &"x".repeat(33)),
        ] {
            let e = mariadb().change_source(&source(user, pw)).unwrap_err();
            assert!(e.to_string().contains("replication"), "{e}");
            assert!(
                !e.to_string().contains("evil"),
                "the password must not leak: {e}"
            );
            assert!(mysql84().change_source(&source(user, pw)).is_err());
        }
        // Everything else printable is fine, spaces and double quotes included.
        assert!(mariadb()
            .change_source(&source("repl", "a \"b\" ;-- c%_"))
            .is_ok());
    }

    #[test]
    fn semisync_per_dialect() {
        let m = mariadb().semisync_names();
        assert_eq!(m.source_plugin, None);
        assert_eq!(m.source_status, "Rpl_semi_sync_master_status");
        assert_eq!(
            texts(mariadb().semisync_source_relaxed(Duration::from_millis(1500))),
            [
                "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'",
                "SET GLOBAL rpl_semi_sync_master_wait_no_slave = OFF",
                "SET GLOBAL rpl_semi_sync_master_timeout = 1500",
                "SET GLOBAL rpl_semi_sync_master_enabled = ON",
                "SET GLOBAL rpl_semi_sync_slave_enabled = OFF"
            ]
        );
        assert_eq!(
            texts(mariadb().semisync_source_strict()),
            [
                "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON",
                "SET GLOBAL rpl_semi_sync_master_timeout = 2592000000"
            ]
        );
        assert_eq!(
            mariadb().semisync_source_off().text(),
            "SET GLOBAL rpl_semi_sync_master_enabled = OFF"
        );
        assert_eq!(
            texts(mariadb().semisync_replica_on()),
            [
                "SET GLOBAL rpl_semi_sync_slave_kill_conn_timeout = 1",
                "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF"
            ]
        );
        assert!(mariadb().io_thread_id_query().text().contains("'Slave_IO'"));
        assert!(mysql84().io_thread_id_query().text().contains("replica_io"));
        assert!(mariadb().freezes_by_kill() && !mysql84().freezes_by_kill());
        assert_eq!(ServerKind::kill_connection(42).text(), "KILL CONNECTION 42");
        let old = kind("8.0.25", "").semisync_names();
        assert_eq!(
            old.source_plugin,
            Some(("rpl_semi_sync_master", "semisync_master.so"))
        );
        assert_eq!(old.replica_enabled, "rpl_semi_sync_slave_enabled");
        assert_eq!(mysql57().semisync_names(), old);
        for k in [kind("8.0.26", ""), mysql84()] {
            let n = k.semisync_names();
            assert_eq!(
                n.replica_plugin,
                Some(("rpl_semi_sync_replica", "semisync_replica.so"))
            );
            assert_eq!(n.source_status, "Rpl_semi_sync_source_status");
            assert_eq!(
                texts(k.semisync_replica_on()),
                [
                    "SET GLOBAL rpl_semi_sync_replica_enabled = ON",
                    "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
                ]
            );
            assert_eq!(
                texts(k.semisync_source_strict()),
                [
                    "SET GLOBAL rpl_semi_sync_source_wait_no_replica = ON",
                    "SET GLOBAL rpl_semi_sync_source_timeout = 2592000000"
                ]
            );
        }
        assert_eq!(
            ServerKind::install_plugin("rpl_semi_sync_source", "semisync_source.so").text(),
            "INSTALL PLUGIN rpl_semi_sync_source SONAME 'semisync_source.so'"
        );
    }
}
