//! The local MySQL/MariaDB server: health, fencing, promotion, rejoin and
//! semi-synchronous replication. One driver owns one thing: the statements
//! and the order they run in. What to do and when is decided by the
//! database controller (`decisions::database`); its thin async runner
//! (`drivers::mysql::runner`) calls these methods:
//!
//! - [`MysqlDriver::probe`] every `check_interval_ms` (never fails);
//! - [`MysqlDriver::fence`]: read-only (idempotent; closes the connections
//!   whose commit waits for a semi-sync acknowledgement, which would
//!   otherwise keep `read_only` from ever being set);
//! - [`MysqlDriver::promote`] (`promotion.rs`): freeze what was received,
//!   apply all of it, then writable;
//! - [`MysqlDriver::rejoin`] (`rejoin.rs`): replica of the peer, after the
//!   errant-GTID check; errant transactions are refused, or undone when the
//!   controller proved them unacknowledged, or given up on the operator's
//!   word;
//! - `semisync.rs`: semi-sync per role, and the journal of what a primary
//!   promised (`journal.rs`).
//!
//! Data safety, as measured on the seed stack: a promotion waits until
//! everything the replica received is applied (`MASTER_GTID_WAIT` /
//! `WAIT_FOR_EXECUTED_GTID_SET` on a frozen received set) and by default
//! stays read-only rather than skip any of it; a rejoin first compares GTID
//! histories with the peer (`MASTER_GTID_WAIT` cannot see divergence) and
//! refuses to hide transactions only the old primary has.

pub mod credentials;
mod error;
pub mod fitness;
pub mod flashback;
pub mod flavor;
pub mod gtid;
pub mod journal;
mod promotion;
mod rejoin;
pub mod replica;
pub mod report;
pub mod runner;
mod semisync;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use tracing::info;

pub use crate::operator::config::{CatchupPolicy, Durability, MysqlConfig};
pub use error::{MysqlError, RejoinError};
pub use promotion::PromoteRequest;
pub use rejoin::{Discard, RejoinRequest};
pub use report::{FenceReport, Health, PromotionReport, RejoinReport, Step};
pub use semisync::{SemisyncState, StrictOutcome};

use credentials::{read_password_file, Secret};
// Durations in logs and reports, here and in the submodules.
use crate::operator::status::millis as ms;
use flavor::{Flavor, ServerKind};
use gtid::{GtidSet, MariadbGtids, MysqlGtidSet};
use replica::ReplicaState;
use session::{Endpoint, Identity, Session};

type Slot = Mutex<Option<(Conn, Identity)>>;

/// A fence waits this long before it looks for commits stuck waiting for a
/// semi-sync acknowledgement (a normal fence takes a millisecond).
const FENCE_WAITERS_AFTER: Duration = Duration::from_millis(20);
const FENCE_WAITERS_EVERY: Duration = Duration::from_millis(20);

/// The driver of the local server. Cheap to share (`Arc`); calls may run
/// concurrently: health probes, fencing and the other actions each keep
/// their own connection, so a probe or a fence never waits behind a
/// promotion's catch-up wait.
pub struct MysqlDriver {
    cfg: MysqlConfig,
    local: Endpoint,
    replication_user: String,
    replication_password: Secret,
    probe_slot: Slot,
    fence_slot: Slot,
    action_slot: Slot,
    /// Bumped by every fence: a promotion that sees it change gives up
    /// instead of unfencing after the daemon fenced.
    fence_generation: AtomicU64,
    /// The post-promotion replication reset, while it runs.
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for MysqlDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlDriver")
            .field("address", &self.cfg.address)
            .field("user", &self.cfg.user)
            .field("peer", &self.cfg.peer_address)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock still holds a usable value (a connection or a task handle).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unreadable(server: &str, what: &'static str, message: impl ToString) -> MysqlError {
    MysqlError::Unreadable {
        server: server.to_string(),
        what,
        message: message.to_string(),
    }
}

fn is_on(v: Option<&Option<String>>) -> bool {
    matches!(
        v.and_then(|v| v.as_deref()),
        Some("1" | "ON" | "on" | "Yes")
    )
}

impl MysqlDriver {
    /// Reads both password files (mode 0600/0400) and prepares the driver;
    /// nothing connects yet.
    pub fn new(cfg: &MysqlConfig) -> Result<Self, MysqlError> {
        let admin = read_password_file(&cfg.password_file)?;
        let repl = read_password_file(&cfg.replication_password_file)?;
        Self::with_passwords(cfg, admin, repl)
    }

    /// Like [`MysqlDriver::new`] with the passwords given.
    pub fn with_passwords(
        cfg: &MysqlConfig,
        password: Secret,
        replication_password: Secret,
    ) -> Result<Self, MysqlError> {
        // Refuse a password that could not go into CHANGE MASTER now, not at failover.
        flavor::check_value("password", replication_password.expose(), 32)
            .map_err(MysqlError::ReplicationPassword)?;
        Ok(MysqlDriver {
            local: Endpoint {
                address: cfg.address,
                user: cfg.user.clone(),
                password,
            },
            replication_user: cfg.replication_user.clone(),
            replication_password,
            cfg: cfg.clone(),
            probe_slot: Mutex::new(None),
            fence_slot: Mutex::new(None),
            action_slot: Mutex::new(None),
            fence_generation: AtomicU64::new(0),
            background: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &MysqlConfig {
        &self.cfg
    }

    /// The peer's server (`peer_address`).
    pub fn peer(&self) -> SocketAddr {
        self.cfg.peer_address
    }

    fn server(&self) -> String {
        self.cfg.address.to_string()
    }

    fn timeout(&self) -> Duration {
        self.cfg.timeout()
    }

    async fn session(&self, slot: &Slot) -> Result<Session, MysqlError> {
        let cached = lock(slot).take();
        if let Some((conn, ident)) = cached {
            if let Some(s) = Session::resume(conn, ident, self.server(), self.timeout()).await {
                return Ok(s);
            }
        }
        Session::open(&self.local, self.timeout()).await
    }

    fn checkin(&self, slot: &Slot, s: Session) {
        let mut g = lock(slot);
        if g.is_none() {
            *g = Some(s.into_parts());
        }
    }

    /// Keeps the connection for the next call unless a statement timed out
    /// on it (statement errors leave a connection usable; timeouts do not).
    fn checkin_unless_timeout(&self, slot: &Slot, s: Session, err: Option<&MysqlError>) {
        if !err.is_some_and(MysqlError::is_timeout) {
            self.checkin(slot, s);
        }
    }

    // -- reading --------------------------------------------------------

    async fn read_only(s: &mut Session) -> Result<(bool, bool), MysqlError> {
        let sql = s.kind().read_only_query();
        let row = s.row("read read_only", &sql).await?.unwrap_or_default();
        Ok((is_on(row.first()), is_on(row.get(1))))
    }

    async fn replica_status(s: &mut Session) -> Result<Option<ReplicaState>, MysqlError> {
        let kind = s.kind();
        let mut rows = s
            .rows("read replica status", &kind.replica_status())
            .await?;
        let Some(mut cols) = rows.pop() else {
            return Ok(None);
        };
        if kind.flavor == Flavor::Mariadb {
            // MariaDB's SHOW SLAVE STATUS has no applied position; read after
            // the row, so "received - applied" can only be overstated.
            let row = s
                .row(
                    "read gtid_slave_pos",
                    &ServerKind::mariadb_slave_pos_query(),
                )
                .await?
                .unwrap_or_default();
            cols.insert("Gtid_Slave_Pos".into(), row.into_iter().next().flatten());
        }
        ReplicaState::from_columns(&kind, &cols)
            .map(Some)
            .map_err(|e| unreadable(&s.server, "replica status", e))
    }

    /// The replica status of a server that was a replica a moment ago.
    async fn replica_status_still(s: &mut Session, when: &str) -> Result<ReplicaState, MysqlError> {
        Self::replica_status(s)
            .await?
            .ok_or_else(|| unreadable(&s.server, "replica status", format!("vanished {when}")))
    }

    /// (what the server has, MariaDB binlog state): MySQL `gtid_executed`;
    /// MariaDB `gtid_binlog_state` merged with `gtid_slave_pos`.
    async fn gtids(s: &mut Session) -> Result<(GtidSet, Option<MariadbGtids>), MysqlError> {
        let kind = s.kind();
        let row = s
            .row("read GTID history", &kind.gtid_query())
            .await?
            .unwrap_or_default();
        let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        match kind.flavor {
            Flavor::Mysql => MysqlGtidSet::parse(&get(0))
                .map(|s| (GtidSet::Mysql(s), None))
                .map_err(|e| unreadable(&s.server, "gtid_executed", e)),
            Flavor::Mariadb => {
                let state = MariadbGtids::parse_state(&get(1))
                    .map_err(|e| unreadable(&s.server, "gtid_binlog_state", e))?;
                let slave = MariadbGtids::parse_position(&get(2))
                    .map_err(|e| unreadable(&s.server, "gtid_slave_pos", e))?;
                Ok((GtidSet::Mariadb(state.merged(&slave)), Some(state)))
            }
        }
    }

    async fn settings_problems(s: &mut Session) -> Result<Vec<String>, MysqlError> {
        let kind = s.kind();
        let row = s
            .row("read settings", &kind.settings_query())
            .await?
            .unwrap_or_default();
        let mut problems = Vec::new();
        if !is_on(row.first()) {
            problems.push("log_bin is OFF: a promoted server could not feed a replica".into());
        }
        if !is_on(row.get(1)) {
            problems.push(
                "log_slave_updates is OFF: replicated transactions are missing from the binary log, so after a failover the other server cannot fetch them from here".into(),
            );
        }
        if !is_on(row.get(2)) {
            problems.push(match kind.flavor {
                Flavor::Mariadb => "gtid_strict_mode is OFF: divergent histories may be accepted silently".into(),
                Flavor::Mysql => "gtid_mode is not ON: GTID auto-positioning and errant-transaction checks are impossible".into(),
            });
        }
        Ok(problems)
    }

    /// The local server's health. Never fails: a server that cannot be
    /// reached is `up: false` with the reason in `errors`; what cannot be
    /// read (a malformed GTID string, say) is listed in `errors` too.
    pub async fn probe(&self) -> Health {
        let start = Instant::now();
        let mut s = match self.session(&self.probe_slot).await {
            Ok(s) => s,
            Err(e) => return Health::down(self.server(), e.to_string(), start.elapsed()),
        };
        let kind = s.kind();
        let mut h = Health::down(self.server(), String::new(), Duration::ZERO);
        h.errors.clear();
        h.up = true;
        h.flavor = Some(kind.flavor);
        h.version = Some(kind.version);
        h.version_text = Some(s.ident.version_text.clone());
        h.server_id = Some(s.ident.server_id);
        let mut failed: Vec<MysqlError> = Vec::new();
        match Self::read_only(&mut s).await {
            Ok((ro, sro)) => {
                h.read_only = ro;
                h.super_read_only = sro;
                h.writable = !ro && !sro;
            }
            // A server that answers the handshake but not a SELECT is not healthy.
            Err(e) => {
                h.up = false;
                failed.push(e);
            }
        }
        if h.up {
            match Self::replica_status(&mut s).await {
                Ok(r) => h.replica = r,
                Err(e) => {
                    h.replica_unknown = true;
                    failed.push(e);
                }
            }
            match Self::gtids(&mut s).await {
                Ok((has, _)) => {
                    h.executed_gtids = Some(match has {
                        GtidSet::Mariadb(m) => GtidSet::Mariadb(m.position()),
                        mysql => mysql,
                    })
                }
                Err(e) => failed.push(e),
            }
            match Self::settings_problems(&mut s).await {
                Ok(p) => h.problems = p,
                Err(e) => failed.push(e),
            }
            if self.cfg.semisync {
                match Self::semisync_state_in(&mut s).await {
                    Ok(st) => h.semisync = Some(st),
                    Err(e) => failed.push(e),
                }
            }
        }
        h.took = start.elapsed();
        h.errors = failed.iter().map(ToString::to_string).collect();
        let timed_out = failed.iter().find(|e| e.is_timeout());
        self.checkin_unless_timeout(&self.probe_slot, s, timed_out);
        h
    }

    // -- fencing --------------------------------------------------------

    /// Makes the local server read-only (and super_read_only on MySQL).
    /// Idempotent; one query when it already is.
    ///
    /// `SET GLOBAL read_only = ON` waits for the commits in progress, and a
    /// commit waiting for a semi-sync acknowledgement that will never come
    /// (a strict primary without its replica) would make it wait for ever.
    /// So while the fence waits, the connections of such commits are closed
    /// (never `KILL QUERY`: its client would get OK, an acknowledgement
    /// without the replica). Their transactions stay in this server's
    /// history, unacknowledged: a later rejoin finds them errant.
    pub async fn fence(&self) -> Result<FenceReport, MysqlError> {
        let start = Instant::now();
        self.fence_generation.fetch_add(1, Ordering::SeqCst);
        let mut s = self.session(&self.fence_slot).await?;
        let kind = s.kind();
        let killed = AtomicU32::new(0);
        let r = async {
            let (ro, sro) = Self::read_only(&mut s).await?;
            let fenced = ro && (kind.flavor == Flavor::Mariadb || sro);
            if !fenced {
                let sql = kind.fence();
                let set = s.exec("fence (read_only = ON)", &sql);
                tokio::pin!(set);
                tokio::select! {
                    r = &mut set => r?,
                    () = self.close_semisync_waiters(&killed) => {}
                }
            }
            Ok(fenced)
        }
        .await;
        self.checkin_unless_timeout(&self.fence_slot, s, r.as_ref().err());
        let report = FenceReport {
            server: self.server(),
            was_read_only: r?,
            closed_waiting_commits: killed.load(Ordering::Relaxed),
            took: start.elapsed(),
        };
        if report.was_read_only {
            tracing::debug!(server = %report.server, "mysql already fenced");
        } else {
            info!(server = %report.server, took_ms = ms(report.took), closed_waiting_commits = report.closed_waiting_commits, "mysql fenced: read_only = ON, application writes now fail");
        }
        Ok(report)
    }

    /// Never returns: after [`FENCE_WAITERS_AFTER`], closes the connections
    /// whose commit waits for a semi-sync acknowledgement, again and again,
    /// until the caller (the fence) finishes. Counts them in `killed`.
    async fn close_semisync_waiters(&self, killed: &AtomicU32) {
        tokio::time::sleep(FENCE_WAITERS_AFTER).await;
        let mut k: Option<Session> = None;
        loop {
            if k.is_none() {
                k = Session::open(&self.local, self.timeout()).await.ok();
            }
            if let Some(s) = k.as_mut() {
                let kind = s.kind();
                match s
                    .rows(
                        "find commits waiting for semi-sync",
                        &kind.semisync_waiters_query(),
                    )
                    .await
                {
                    Ok(rows) => {
                        for id in rows
                            .into_iter()
                            .filter_map(|mut r| r.remove("ID").flatten())
                            .filter_map(|v| v.parse::<u64>().ok())
                        {
                            // Counted first: the fence may finish (and drop
                            // this loop) before the KILL's own answer arrives.
                            killed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(server = %self.server(), connection = id, "mysql: closing a connection whose commit waits for a semi-sync acknowledgement (not acknowledged; fencing)");
                            let kill = [ServerKind::kill_connection(id)];
                            let r = s
                                .exec("close a connection waiting for semi-sync", &kill)
                                .await;
                            if r.is_err() {
                                killed.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => k = None,
                }
            }
            tokio::time::sleep(FENCE_WAITERS_EVERY).await;
        }
    }
}
