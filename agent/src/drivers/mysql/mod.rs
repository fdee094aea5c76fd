//! The local MySQL/MariaDB server: fencing, promotion, rejoin, health.
//!
//! The daemon calls, per role (see the `MysqlDriver` methods):
//!
//! - at start, before it hears its peer, and whenever it is not MASTER:
//!   [`MysqlDriver::fence`] (read-only; idempotent, one round trip when
//!   already fenced);
//! - on becoming MASTER: [`MysqlDriver::promote`], again every
//!   `check_interval_ms` while it returns [`MysqlError::NotCaughtUp`];
//! - as BACKUP while the peer is MASTER: [`MysqlDriver::rejoin`] (a no-op
//!   once it replicates from the peer); [`RejoinError::Errant`] is for an
//!   operator, never retried with `force` automatically;
//! - every `check_interval_ms`: [`MysqlDriver::probe`], fed to a
//!   [`fitness::DownTracker`] for the election.
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
pub mod replica;
pub mod report;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use tracing::{error, info, warn};

pub use crate::operator::config::{CatchupPolicy, MysqlConfig};
pub use error::{MysqlError, RejoinError};
pub use report::{FenceReport, Health, PromotionReport, RejoinReport, SemisyncReport, Step};

use credentials::{read_password_file, Secret};
use flavor::{Flavor, ReplicationSource, ServerKind};
use gtid::{Errant, GtidSet, MariadbGtids, MysqlGtidSet};
use replica::ReplicaState;
use session::{Endpoint, Identity, Session};

type Slot = Mutex<Option<(Conn, Identity)>>;

/// Planned handover: bound on reaching the old primary's server (it is
/// alive, or its agent would not have handed over).
const HANDOFF_CONNECT: Duration = Duration::from_millis(500);
/// Planned handover: how long the old primary's agent gets to fence it.
const HANDOFF_FENCE_WAIT: Duration = Duration::from_secs(1);
const HANDOFF_POLL: Duration = Duration::from_millis(5);
/// Forced rejoin: bound on reading the binary logs and applying their undo.
const FLASHBACK_BOUND: Duration = Duration::from_secs(120);

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

/// A peer's GTID history and identity, read with the replication account.
struct PeerView {
    ident: Identity,
    read_only: bool,
    /// MySQL `gtid_executed`; MariaDB `gtid_binlog_state` merged with `gtid_slave_pos`.
    has: GtidSet,
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

    /// (what the server has, MariaDB binlog state) — see [`PeerView::has`].
    /// The replica status of a server that was a replica a moment ago.
    async fn replica_status_still(s: &mut Session, when: &str) -> Result<ReplicaState, MysqlError> {
        Self::replica_status(s)
            .await?
            .ok_or_else(|| unreadable(&s.server, "replica status", format!("vanished {when}")))
    }

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

    async fn semisync_status(
        s: &mut Session,
        as_primary: bool,
    ) -> Result<SemisyncReport, MysqlError> {
        let kind = s.kind();
        let names = kind.semisync_names();
        let status = s
            .variables("read semi-sync status", &kind.semisync_status_query())
            .await?;
        let on = |name: &str| {
            status
                .get(name)
                .is_some_and(|v| v.eq_ignore_ascii_case("ON"))
        };
        let effective = if as_primary {
            on(names.source_status)
                && status
                    .get(names.source_clients)
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        } else {
            on(names.replica_status)
        };
        Ok(SemisyncReport {
            as_primary,
            effective,
            status,
        })
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
        let mut broken = false;
        match Self::read_only(&mut s).await {
            Ok((ro, sro)) => {
                h.read_only = ro;
                h.super_read_only = sro;
                h.writable = !ro && !sro;
            }
            Err(e) => {
                // A server that answers the handshake but not a SELECT is not healthy.
                h.up = false;
                h.errors.push(e.to_string());
                broken = true;
            }
        }
        if !broken {
            match Self::replica_status(&mut s).await {
                Ok(r) => h.replica = r,
                Err(e) => h.errors.push(e.to_string()),
            }
            match Self::gtids(&mut s).await {
                Ok((has, _)) => {
                    h.executed_gtids = Some(match has {
                        GtidSet::Mariadb(m) => GtidSet::Mariadb(m.position()),
                        mysql => mysql,
                    })
                }
                Err(e) => h.errors.push(e.to_string()),
            }
            match Self::settings_problems(&mut s).await {
                Ok(p) => h.problems = p,
                Err(e) => h.errors.push(e.to_string()),
            }
            if self.cfg.semisync {
                let as_primary = h.replica.is_none();
                match Self::semisync_status(&mut s, as_primary).await {
                    Ok(r) => h.semisync_effective = Some(r.effective),
                    Err(e) => h.errors.push(e.to_string()),
                }
            }
        }
        h.took = start.elapsed();
        // Statement errors leave the connection usable; timeouts do not.
        if !h.errors.iter().any(|e| e.contains("did not finish within")) {
            self.checkin(&self.probe_slot, s);
        }
        h
    }

    // -- fencing --------------------------------------------------------

    /// Makes the local server read-only (and super_read_only on MySQL).
    /// Idempotent; one query when it already is.
    pub async fn fence(&self) -> Result<FenceReport, MysqlError> {
        let start = Instant::now();
        self.fence_generation.fetch_add(1, Ordering::SeqCst);
        let mut s = self.session(&self.fence_slot).await?;
        let kind = s.kind();
        let (ro, sro) = Self::read_only(&mut s).await?;
        let fenced = ro && (kind.flavor == Flavor::Mariadb || sro);
        if !fenced {
            s.exec("fence (read_only = ON)", &kind.fence()).await?;
        }
        let report = FenceReport {
            server: self.server(),
            was_read_only: fenced,
            took: start.elapsed(),
        };
        if fenced {
            tracing::debug!(server = %report.server, "mysql already fenced");
        } else {
            info!(server = %report.server, took_ms = ms(report.took), "mysql fenced: read_only = ON, application writes now fail");
        }
        self.checkin(&self.fence_slot, s);
        Ok(report)
    }

    // -- promotion ------------------------------------------------------

    /// Makes the local server the primary: freezes what it received from
    /// the old primary (IO thread stopped), waits up to `timeout` for the
    /// applier to apply all of it, then forgets the old primary and clears
    /// read-only. If the applier is not done in time: with
    /// [`CatchupPolicy::StayReadOnly`] returns [`MysqlError::NotCaughtUp`]
    /// (still read-only, still applying: call again); with
    /// [`CatchupPolicy::Promote`] becomes writable and reports the skipped
    /// GTIDs.
    pub async fn promote(
        &self,
        timeout: Duration,
        policy: CatchupPolicy,
    ) -> Result<PromotionReport, MysqlError> {
        self.promote_after(timeout, policy, None).await
    }

    /// [`MysqlDriver::promote`] after a planned handover from the server at
    /// `old_primary` (its agent still speaks): first let its last
    /// transactions arrive (see [`MysqlDriver::drain_old_primary`]).
    pub async fn promote_after(
        &self,
        timeout: Duration,
        policy: CatchupPolicy,
        old_primary: Option<SocketAddr>,
    ) -> Result<PromotionReport, MysqlError> {
        // A previous promotion's reset first: this one must not see its
        // half-stopped replication as a source still to drain.
        self.settle_background().await;
        let start = Instant::now();
        let generation = self.fence_generation.load(Ordering::SeqCst);
        let mut s = self.session(&self.action_slot).await?;
        let r = self
            .promote_in(&mut s, start, generation, timeout, policy, old_primary)
            .await;
        match &r {
            Ok(rep) => {
                info!(server = %rep.server, took_ms = ms(rep.took), waited_ms = ms(rep.waited), caught_up = rep.caught_up, was_replica = rep.was_replica, "mysql promoted: writable");
                self.checkin(&self.action_slot, s);
            }
            Err(e @ MysqlError::NotCaughtUp { .. }) => {
                warn!(error = %e, "mysql promotion held back");
                self.checkin(&self.action_slot, s);
            }
            Err(e) => error!(error = %e, "mysql promotion failed"),
        }
        r
    }

    async fn promote_in(
        &self,
        s: &mut Session,
        start: Instant,
        generation: u64,
        timeout: Duration,
        policy: CatchupPolicy,
        old_primary: Option<SocketAddr>,
    ) -> Result<PromotionReport, MysqlError> {
        let kind = s.kind();
        let server = self.server();
        let mut report = PromotionReport {
            server: server.clone(),
            was_replica: false,
            received: None,
            waited: Duration::ZERO,
            caught_up: true,
            skipped: None,
            semisync: None,
            handoff: None,
            frozen_by: None,
            steps: Vec::new(),
            took: Duration::ZERO,
        };
        if let Some(first) = Self::replica_status(s).await? {
            if let Some(peer) = old_primary.filter(|p| first.source == p.to_string()) {
                report.handoff = Some(self.drain_old_primary(s, peer, timeout).await);
            }
            report.was_replica = true;
            // Why the applier may not finish, for the error message.
            let mut reason = first
                .last_sql_error
                .as_ref()
                .map(|e| format!("applier error {}: {}", e.code, e.message));
            // The applier must run to drain the relay log. Start it BEFORE
            // stopping the IO thread: MariaDB (GTID mode) throws the relay
            // log away when replication restarts after BOTH threads were
            // stopped, and its Gtid_IO_Pos then forgets what was received.
            let both_stopped = first.io_state.eq_ignore_ascii_case("no") && !first.sql_running;
            let mut applier_can_run = true;
            if !first.sql_running {
                if both_stopped && kind.restart_discards_relay_log() {
                    applier_can_run = false;
                    reason = Some(format!(
                        "both replication threads were already stopped{}; restarting the applier would make {} discard the relay log, so it was not restarted",
                        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                        kind.flavor
                    ));
                } else {
                    s.exec("start SQL thread", &[kind.start_sql_thread()])
                        .await?;
                }
            }
            if self.cfg.semisync {
                // The promotion ends semi-sync as a replica. (A running IO
                // thread keeps acknowledging until it stops: MariaDB reads
                // this setting when the thread starts.)
                s.exec("semi-sync replica off", &[kind.semisync_replica_off()])
                    .await?;
            }
            let deadline = start + timeout;
            if old_primary.is_none() && applier_can_run {
                if let Some(done) = self
                    .freeze_by_applier(s, &report, timeout, generation)
                    .await?
                {
                    let r = self.finish_promotion(s, done, start, generation).await;
                    if r.is_ok() {
                        self.forget_source_in_background(kind);
                    }
                    return r;
                }
            }
            let timeout = deadline.saturating_duration_since(Instant::now());
            // Freeze "received": the old primary, if it still talks, must not
            // feed us more while we take over.
            s.exec("stop IO thread", &[kind.stop_io_thread()]).await?;
            report.frozen_by = Some("io_thread");
            let st = Self::replica_status_still(s, "after STOP IO_THREAD").await?;
            let Some(received) = st.received.clone() else {
                if policy == CatchupPolicy::StayReadOnly {
                    return Err(MysqlError::NoGtidReplication { server });
                }
                warn!(server = %server, "replication does not use GTIDs: promoting without checking what was received (catchup_policy = promote)");
                report.caught_up = false;
                return self.finish_promotion(s, report, start, generation).await;
            };
            report.received = Some(received.clone());
            let mut missing = replica::missing(&received, &st.executed);
            if !missing.is_empty() && applier_can_run {
                let wait_start = Instant::now();
                // Not reached: re-read below.
                let reached = self
                    .wait_applied(s, "wait for applier", &received, timeout)
                    .await?;
                report.waited = wait_start.elapsed();
                let st = Self::replica_status_still(s, "during the wait").await?;
                missing = replica::missing(&received, &st.executed);
                if let Some(e) = &st.last_sql_error {
                    reason = Some(format!("applier error {}: {}", e.code, e.message));
                }
                if reached && !missing.is_empty() {
                    warn!(server = %server, %missing, "the server said the wait succeeded but its replica status still misses transactions");
                }
            }
            report.caught_up = missing.is_empty();
            if !report.caught_up {
                match policy {
                    CatchupPolicy::StayReadOnly => {
                        return Err(MysqlError::NotCaughtUp {
                            server,
                            waited: report.waited,
                            missing,
                            reason,
                        })
                    }
                    CatchupPolicy::Promote => {
                        warn!(server = %server, skipped = %missing, waited_ms = ms(report.waited), "PROMOTING WITHOUT these received transactions (catchup_policy = promote): they are lost to this server");
                        report.skipped = Some(missing);
                    }
                }
            }
            if self.fence_generation.load(Ordering::SeqCst) != generation {
                return Err(MysqlError::FencedDuringPromotion { server });
            }
            s.exec(
                "stop and reset replication",
                &[kind.stop_replication(), kind.reset_replication()],
            )
            .await?;
        }
        self.finish_promotion(s, report, start, generation).await
    }

    async fn finish_promotion(
        &self,
        s: &mut Session,
        mut report: PromotionReport,
        start: Instant,
        generation: u64,
    ) -> Result<PromotionReport, MysqlError> {
        let kind = s.kind();
        if self.cfg.semisync {
            match self.semisync_in(s, true).await {
                Ok(r) => report.semisync = Some(r),
                // Asynchronous replication still works: warn, do not block the promotion.
                Err(e) => warn!(error = %e, "semi-sync could not be enabled on the new primary"),
            }
        }
        if self.fence_generation.load(Ordering::SeqCst) != generation {
            return Err(MysqlError::FencedDuringPromotion {
                server: self.server(),
            });
        }
        s.exec("unfence (read_only = OFF)", &kind.unfence()).await?;
        report.steps = std::mem::take(&mut s.steps);
        report.took = start.elapsed();
        Ok(report)
    }

    /// Promotion after a death, without stopping the IO thread first. With
    /// semi-sync, MariaDB's STOP of the IO thread first connects to the old
    /// primary to kill its dump thread, and when that host is gone the
    /// connect waits `rpl_semi_sync_slave_kill_conn_timeout` (1 s at
    /// least): a second of read-only primary for nothing. So the applier
    /// freezes the state instead: apply everything received, stop the
    /// applier, and check that "received" did not move meanwhile (a dead
    /// primary sends nothing; if it did move, the old primary still talks
    /// and `None` sends the caller down the careful path: IO thread first).
    /// What the IO thread could still receive after the check is never
    /// applied (the applier stays stopped until replication is reset). A
    /// dead primary sends nothing more. A live one (only its agent hung)
    /// could get a semi-sync ack for a commit received in the milliseconds
    /// between this check and the background STOP: MariaDB applies a change
    /// of `rpl_semi_sync_slave_enabled` only when the IO thread restarts.
    /// Such a server acknowledges its later commits anyway, after its
    /// semi-sync timeout; the errant-GTID check then blocks its rejoin.
    /// Returns the report ready to unfence, or `None`.
    async fn freeze_by_applier(
        &self,
        s: &mut Session,
        report: &PromotionReport,
        timeout: Duration,
        generation: u64,
    ) -> Result<Option<PromotionReport>, MysqlError> {
        let kind = s.kind();
        let server = self.server();
        let Some(now) = Self::replica_status(s).await? else {
            return Ok(None);
        };
        let Some(before) = now.received else {
            return Ok(None);
        };
        let wait_start = Instant::now();
        let waited = if replica::missing(&before, &now.executed).is_empty() {
            Duration::ZERO
        } else {
            if !self
                .wait_applied(s, "wait for applier", &before, timeout)
                .await?
            {
                // Not caught up in time: the careful path decides (policy).
                return Ok(None);
            }
            wait_start.elapsed()
        };
        s.exec("stop SQL thread", &[kind.stop_sql_thread()]).await?;
        let st = Self::replica_status_still(s, "after STOP SQL_THREAD").await?;
        let moved = st.received.as_ref() != Some(&before);
        let missing = replica::missing(&before, &st.executed);
        if moved || !missing.is_empty() {
            info!(server = %server, before = %before, now = ?st.received.as_ref().map(ToString::to_string), "mysql: the old primary still sent transactions during the takeover: stopping its IO thread first");
            s.exec("start SQL thread", &[kind.start_sql_thread()])
                .await?;
            return Ok(None);
        }
        if self.fence_generation.load(Ordering::SeqCst) != generation {
            return Err(MysqlError::FencedDuringPromotion { server });
        }
        let mut done = report.clone();
        done.received = Some(before);
        done.waited = waited;
        done.caught_up = true;
        done.frozen_by = Some("applier");
        Ok(Some(done))
    }

    /// Stops the old IO thread and forgets the old primary on a connection
    /// of its own, after the unfence: the STOP may wait out the semi-sync
    /// kill-connection (see [`Self::freeze_by_applier`]). A rejoin waits for
    /// it ([`Self::settle_background`]).
    fn forget_source_in_background(&self, kind: ServerKind) {
        let ep = self.local.clone();
        let timeout = self.timeout();
        let server = self.server();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let r = async {
                let mut s = Session::open(&ep, timeout).await?;
                s.exec(
                    "stop and reset replication",
                    &[kind.stop_replication(), kind.reset_replication()],
                )
                .await
            }
            .await;
            match r {
                Ok(()) => {
                    info!(server = %server, took_ms = ms(start.elapsed()), "mysql: old replication stopped and reset (after the unfence)")
                }
                Err(e) => {
                    warn!(server = %server, error = %e, "mysql: could not reset the old replication after the promotion; the applier stays stopped, and a rejoin resets it")
                }
            }
        });
        if let Some(old) = lock(&self.background).replace(task) {
            old.abort();
        }
    }

    /// Waits for [`Self::forget_source_in_background`] to finish.
    pub async fn settle_background(&self) {
        let task = lock(&self.background).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The server-side wait for the applier to reach `target`, bounded by
    /// `timeout`: whether it did. The server's own timeout is the precise
    /// one on MariaDB; ours (a statement timeout more) bounds a hung server
    /// and MySQL's whole seconds, and counts as not reached.
    async fn wait_applied(
        &self,
        s: &mut Session,
        step: &str,
        target: &GtidSet,
        timeout: Duration,
    ) -> Result<bool, MysqlError> {
        let kind = s.kind();
        let wait = kind.wait_for(target, timeout);
        match s.row_within(step, &wait, timeout + self.timeout()).await {
            Ok(row) => {
                let v = row.and_then(|r| r.into_iter().next().flatten());
                Ok(kind.wait_succeeded(v.and_then(|v| v.trim().parse().ok())))
            }
            Err(MysqlError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A planned handover leaves the old primary alive with, maybe, commits
    /// this replica has not received yet: stopping the IO thread now would
    /// lose them. So: wait (bounded) until the old primary's server is
    /// read-only (its agent fences it as it steps down), read what it has,
    /// and wait until this server has applied that. Never fails the
    /// promotion: an old primary that does not answer (it died after all)
    /// has nothing more to send. Returns what happened, for the report.
    async fn drain_old_primary(
        &self,
        s: &mut Session,
        peer: SocketAddr,
        timeout: Duration,
    ) -> String {
        let start = Instant::now();
        let ep = Endpoint {
            address: peer,
            user: self.replication_user.clone(),
            password: self.replication_password.clone(),
        };
        let mut p = match Session::open(&ep, self.timeout().min(HANDOFF_CONNECT)).await {
            Ok(p) => p,
            Err(e) => {
                info!(peer = %peer, error = %e, "mysql: the old primary's server does not answer: promoting with what was received");
                return format!("old primary {peer} not reachable: {e}");
            }
        };
        let fence_deadline = start + HANDOFF_FENCE_WAIT;
        loop {
            match Self::read_only(&mut p).await {
                Ok((ro, sro)) if ro || sro => break,
                Ok(_) if Instant::now() < fence_deadline => {
                    tokio::time::sleep(HANDOFF_POLL).await;
                }
                Ok(_) => {
                    warn!(peer = %peer, "mysql: the old primary is still writable after {HANDOFF_FENCE_WAIT:?}: promoting with what was received; writes it takes now are not on this server");
                    return format!(
                        "old primary {peer} still writable after {HANDOFF_FENCE_WAIT:?}"
                    );
                }
                Err(e) => return format!("old primary {peer}: {e}"),
            }
        }
        let last = match Self::gtids(&mut p).await {
            Ok((_, Some(state))) => GtidSet::Mariadb(state.position()),
            Ok((has, None)) => has,
            Err(e) => return format!("old primary {peer}: {e}"),
        };
        let reached = match self
            .wait_applied(
                s,
                "wait for the old primary's last transactions",
                &last,
                timeout,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return format!("waiting for the old primary's {last}: {e}"),
        };
        let took = start.elapsed();
        if reached {
            info!(peer = %peer, position = %last, took_ms = ms(took), "mysql: applied everything the old primary had");
            format!("applied the old primary's {last} in {:.0} ms", ms(took))
        } else {
            warn!(peer = %peer, position = %last, "mysql: the old primary's last transactions did not arrive in time");
            format!("the old primary's {last} not applied within {timeout:?}")
        }
    }

    // -- rejoin ---------------------------------------------------------

    async fn peer_view(&self, peer: SocketAddr) -> Result<PeerView, MysqlError> {
        let ep = Endpoint {
            address: peer,
            user: self.replication_user.clone(),
            password: self.replication_password.clone(),
        };
        let mut p = Session::open(&ep, self.timeout()).await?;
        let (ro, sro) = Self::read_only(&mut p).await?;
        let (has, _) = Self::gtids(&mut p).await?;
        Ok(PeerView {
            ident: p.ident.clone(),
            read_only: ro || sro,
            has,
        })
    }

    /// Compares GTID histories: what `s`'s server has that the peer lacks.
    async fn compare(
        &self,
        s: &mut Session,
        peer: SocketAddr,
    ) -> Result<(PeerView, Errant), RejoinError> {
        let view = self.peer_view(peer).await?;
        let (local, peer_s) = (self.server(), peer.to_string());
        if view.ident.kind.flavor != s.kind().flavor {
            return Err(RejoinError::FlavorMismatch {
                server: local,
                peer: peer_s,
                local: s.kind().flavor,
                remote: view.ident.kind.flavor,
            });
        }
        if view.ident.server_id == s.ident.server_id {
            return Err(RejoinError::SameServer {
                server: local,
                peer: peer_s,
                server_id: view.ident.server_id,
            });
        }
        let (has, state) = Self::gtids(s).await?;
        let errant = match (&has, state, &view.has) {
            (GtidSet::Mysql(l), _, GtidSet::Mysql(p)) => Errant::mysql(l, p),
            (GtidSet::Mariadb(_), Some(local_state), GtidSet::Mariadb(p)) => {
                Errant::mariadb(&local_state, p)
            }
            _ => {
                return Err(unreadable(
                    &local,
                    "GTID history",
                    "flavors of the two histories differ",
                )
                .into())
            }
        };
        Ok((view, errant))
    }

    /// The transactions the local server has that `peer` lacks (connects to
    /// the peer with the replication account). Empty: safe to replicate.
    pub async fn errant_against(&self, peer: SocketAddr) -> Result<Errant, RejoinError> {
        let mut s = self.session(&self.action_slot).await?;
        let (_, errant) = self.compare(&mut s, peer).await?;
        self.checkin(&self.action_slot, s);
        Ok(errant)
    }

    /// Makes the local server a replica of `peer` (GTID auto-positioning),
    /// read-only. Refuses with [`RejoinError::Errant`] if the local server
    /// has transactions the peer lacks, unless `force`: then they are
    /// removed from its GTID history and binary logs (their rows stay in its
    /// tables) and listed in the report and the log. A no-op when it already
    /// replicates from `peer` with both threads running.
    pub async fn rejoin(&self, peer: SocketAddr, force: bool) -> Result<RejoinReport, RejoinError> {
        self.settle_background().await;
        let start = Instant::now();
        let mut s = self.session(&self.action_slot).await?;
        let r = self.rejoin_in(&mut s, start, peer, force).await;
        match &r {
            Ok(rep) if rep.already_replicating => {}
            Ok(rep) => {
                info!(server = %rep.server, peer = %rep.peer, took_ms = ms(rep.took), io_running = rep.io_running, sql_running = rep.sql_running, forced = rep.discarded.is_some(), "mysql rejoined as a replica");
            }
            Err(e) => error!(error = %e, "mysql rejoin refused or failed"),
        }
        if !matches!(r, Err(RejoinError::Mysql(MysqlError::Timeout { .. }))) {
            self.checkin(&self.action_slot, s);
        }
        r
    }

    async fn rejoin_in(
        &self,
        s: &mut Session,
        start: Instant,
        peer: SocketAddr,
        force: bool,
    ) -> Result<RejoinReport, RejoinError> {
        let kind = s.kind();
        let (server, peer_s) = (self.server(), peer.to_string());
        // A server that is about to replicate must not take writes.
        self.fence_generation.fetch_add(1, Ordering::SeqCst);
        s.exec("fence (read_only = ON)", &kind.fence()).await?;
        let mut report = RejoinReport {
            server: server.clone(),
            peer: peer_s.clone(),
            already_replicating: false,
            discarded: None,
            undone: None,
            start_position: None,
            io_running: false,
            sql_running: false,
            replica: None,
            semisync: None,
            steps: Vec::new(),
            took: Duration::ZERO,
        };
        if let Some(st) = Self::replica_status(s).await? {
            if st.source == peer_s && st.io_running && st.sql_running {
                report.already_replicating = true;
                report.io_running = true;
                report.sql_running = true;
                report.replica = Some(st);
                report.steps = std::mem::take(&mut s.steps);
                report.took = start.elapsed();
                return Ok(report);
            }
        }
        let (view, errant) = self.compare(s, peer).await?;
        if view.read_only {
            return Err(RejoinError::PeerNotPrimary {
                server,
                peer: peer_s,
            });
        }
        if !errant.is_empty() && !force {
            return Err(RejoinError::Errant {
                server,
                peer: peer_s,
                errant,
            });
        }
        s.exec("stop replication", &[kind.stop_replication()])
            .await?;
        if errant.is_empty() {
            // MariaDB: from everything it has, logged and replicated: after
            // a forced rejoin (binary logs reset) with nothing replicated
            // since, gtid_binlog_pos alone is empty and replication would
            // start over from the peer's first transaction.
            let from = match Self::gtids(s).await? {
                (GtidSet::Mariadb(has), _) => Some(GtidSet::Mariadb(has.position())),
                _ => None,
            };
            s.exec(
                "set start position",
                &kind.set_start_position(from.as_ref()),
            )
            .await?;
            report.start_position = from;
        } else {
            if kind.flavor == Flavor::Mariadb {
                // Their rows go too, or the first primary write reusing one
                // of their keys would stop replication (see `flashback`).
                let undone =
                    flashback::undo_after(s, &self.local, &errant.keep, FLASHBACK_BOUND).await?;
                warn!(server = %server, peer = %peer_s, discarded = %errant, %undone, "FORCED rejoin: giving up transactions only this server has: rows undone, GTID history and binary logs reset");
                report.undone = Some(undone.to_string());
            } else {
                warn!(server = %server, peer = %peer_s, discarded = %errant, "FORCED rejoin: giving up transactions only this server has; they stay in its tables but leave its GTID history and binary logs");
            }
            s.exec("discard binary logs", &[kind.discard_binlogs()])
                .await?;
            s.exec(
                "set start position",
                &kind.set_start_position(Some(&errant.keep)),
            )
            .await?;
            report.start_position = Some(errant.keep.clone());
            report.discarded = Some(errant);
        }
        if self.cfg.semisync {
            // Before START: the IO thread registers as semi-sync when it connects.
            match self.semisync_in(s, false).await {
                Ok(r) => report.semisync = Some(r),
                Err(e) => warn!(error = %e, "semi-sync could not be enabled on the replica"),
            }
        }
        let change = kind
            .change_source(&ReplicationSource {
                address: peer,
                user: &self.replication_user,
                password: self.replication_password.expose(),
            })
            .map_err(RejoinError::Value)?;
        s.exec("point replication at the peer", &[change]).await?;
        s.exec("start replication", &[kind.start_replication()])
            .await?;
        // Both threads running, or a fatal error. A connect error (2003,
        // 2013) is retried by the IO thread every second: keep polling.
        let deadline = Instant::now() + self.timeout() + Duration::from_secs(1);
        let st = loop {
            let st = Self::replica_status(s).await?;
            if let Some(now) = &st {
                if let Some(e) = &now.last_sql_error {
                    return Err(RejoinError::Replication {
                        server,
                        peer: peer_s,
                        thread: "SQL",
                        code: e.code,
                        message: e.message.clone(),
                    });
                }
                if let Some(e) = now
                    .last_io_error
                    .as_ref()
                    .filter(|e| !matches!(e.code, 2003 | 2005 | 2006 | 2013))
                {
                    return Err(RejoinError::Replication {
                        server,
                        peer: peer_s,
                        thread: "IO",
                        code: e.code,
                        message: e.message.clone(),
                    });
                }
                if now.io_running && now.sql_running {
                    break now.clone();
                }
            }
            if Instant::now() >= deadline {
                warn!(server = %server, peer = %peer_s, "replication configured but not running yet (the IO thread keeps retrying)");
                break st
                    .ok_or_else(|| unreadable(&server, "replica status", "empty after START"))?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        report.io_running = st.io_running;
        report.sql_running = st.sql_running;
        report.replica = Some(st);
        report.steps = std::mem::take(&mut s.steps);
        report.took = start.elapsed();
        Ok(report)
    }

    // -- semi-sync ------------------------------------------------------

    /// Enables semi-synchronous replication for the role (and disables the
    /// other role's side); reports whether it is in effect now.
    pub async fn enable_semisync(&self, as_primary: bool) -> Result<SemisyncReport, MysqlError> {
        let mut s = self.session(&self.action_slot).await?;
        let r = self.semisync_in(&mut s, as_primary).await?;
        info!(server = %self.server(), as_primary, effective = r.effective, "mysql semi-sync enabled");
        self.checkin(&self.action_slot, s);
        Ok(r)
    }

    async fn semisync_in(
        &self,
        s: &mut Session,
        as_primary: bool,
    ) -> Result<SemisyncReport, MysqlError> {
        let kind = s.kind();
        let names = kind.semisync_names();
        // MySQL: both plugins, since a server changes roles.
        let wanted: Vec<_> = [names.source_plugin, names.replica_plugin]
            .into_iter()
            .flatten()
            .collect();
        if !wanted.is_empty() {
            let loaded: Vec<String> = s
                .rows("list semi-sync plugins", &kind.semisync_plugins_query())
                .await?
                .into_iter()
                .filter_map(|mut r| r.remove("PLUGIN_NAME").flatten())
                .collect();
            for (name, lib) in wanted {
                if !loaded.iter().any(|l| l == name) {
                    s.exec(
                        "install semi-sync plugin",
                        &[ServerKind::install_plugin(name, lib)],
                    )
                    .await?;
                }
            }
        }
        s.exec("enable semi-sync", &kind.semisync_enable(as_primary))
            .await?;
        if !as_primary {
            // The replica's setting takes effect when its IO thread reconnects.
            if let Some(st) = Self::replica_status(s).await? {
                if st.io_running {
                    s.exec(
                        "restart IO thread for semi-sync",
                        &[kind.stop_io_thread(), kind.start_io_thread()],
                    )
                    .await?;
                }
            }
        }
        Self::semisync_status(s, as_primary).await
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
