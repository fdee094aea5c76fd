//! Promotion: the replica becomes the writable primary without losing a
//! transaction it received.
//!
//! 1. A planned handover (the old primary's agent still speaks): wait until
//!    the old primary is read-only and apply up to its last position, so
//!    even asynchronous replication loses nothing (`drain`).
//! 2. Freeze what was received: MariaDB's IO thread is killed (its
//!    connection closed at once: it neither receives nor acknowledges any
//!    more; `STOP SLAVE IO_THREAD` would first wait up to the semi-sync
//!    kill-connection timeout, a second, to reach a dead primary); MySQL's
//!    is stopped. Nothing the old primary commits afterwards can be
//!    acknowledged by this server, so every commit it did acknowledge is
//!    in the frozen set.
//! 3. Apply all of it (bounded by `catchup_timeout_ms`), stop the applier,
//!    check nothing arrived late, and only then: semi-sync for the new
//!    role, the journal, read-only off. The old replication is forgotten
//!    afterwards, on a connection of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::error::MysqlError;
use super::flavor::ServerKind;
use super::gtid::GtidSet;
use super::journal::{self, JournalUpdate};
use super::semisync::journal_entry;

/// The journal write a promotion started early.
type JournalWrite = tokio::task::JoinHandle<Result<(), MysqlError>>;
use super::replica::{self, ReplicaState};
use super::report::PromotionReport;
use super::session::{Endpoint, Session};
use super::{lock, ms, CatchupPolicy, MysqlDriver};

/// Planned handover: bound on reaching the old primary's server (it is
/// alive, or its agent would not have handed over).
const HANDOFF_CONNECT: Duration = Duration::from_millis(500);
/// Planned handover: how long the old primary's agent gets to fence it.
const HANDOFF_FENCE_WAIT: Duration = Duration::from_secs(1);
const HANDOFF_POLL: Duration = Duration::from_millis(5);
/// After the applier stopped, an event the killed IO thread was still
/// writing may show up: apply it, at most this many times more.
const LATE_ROUNDS: usize = 3;

/// How to promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteRequest {
    /// Bound on the applier's catch-up.
    pub timeout: Duration,
    pub policy: CatchupPolicy,
    /// Planned handover from the server at this address (its agent still
    /// speaks): drain it first.
    pub drain_from: Option<SocketAddr>,
    /// The promotion is safe only if that drain succeeds (semi-sync said it
    /// was not effective): otherwise [`MysqlError::NotDrained`].
    pub drain_required: bool,
    /// Semi-sync on the new primary, relaxed with this acknowledgement
    /// timeout until its replica rejoins.
    pub semisync: Option<Duration>,
    /// Recorded before the server becomes writable.
    pub journal: Option<JournalUpdate>,
}

impl MysqlDriver {
    /// Makes the local server the primary (see the module's steps). If the
    /// applier is not done in time: with [`CatchupPolicy::StayReadOnly`]
    /// returns [`MysqlError::NotCaughtUp`] (still read-only, still applying:
    /// call again); with [`CatchupPolicy::Promote`] becomes writable and
    /// reports the skipped GTIDs.
    pub async fn promote(&self, req: &PromoteRequest) -> Result<PromotionReport, MysqlError> {
        // A previous promotion's reset first: this one must not see its
        // half-stopped replication as a source still to drain.
        self.settle_background().await;
        let start = Instant::now();
        let generation = self.fence_generation.load(Ordering::SeqCst);
        let mut s = self.session(&self.action_slot).await?;
        // The journal is written (and synced) while the statements run; the
        // unfence waits for it. Written for a promotion that then fails, it
        // only says more cautiously what this server may have promised.
        let journal = req
            .journal
            .filter(|u| *u != JournalUpdate::PrimaryEffective)
            .map(|u| {
                let j = journal_entry(s.ident.server_id, u, None);
                let dir = self.cfg.state_dir().to_path_buf();
                tokio::spawn(async move { journal::write(&dir, &j).await })
            });
        let r = self
            .promote_in(&mut s, start, generation, req, journal)
            .await;
        match &r {
            Ok(rep) => {
                info!(server = %rep.server, took_ms = ms(rep.took), waited_ms = ms(rep.waited), caught_up = rep.caught_up, was_replica = rep.was_replica, frozen_by = rep.frozen_by, "mysql promoted: writable");
            }
            Err(e @ (MysqlError::NotCaughtUp { .. } | MysqlError::NotDrained { .. })) => {
                warn!(error = %e, "mysql promotion held back")
            }
            Err(e) => error!(error = %e, "mysql promotion failed"),
        }
        self.checkin_unless_timeout(&self.action_slot, s, r.as_ref().err());
        r
    }

    async fn promote_in(
        &self,
        s: &mut Session,
        start: Instant,
        generation: u64,
        req: &PromoteRequest,
        journal: Option<JournalWrite>,
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
            drained: false,
            frozen_by: None,
            steps: Vec::new(),
            took: Duration::ZERO,
        };
        let Some(first) = Self::replica_status(s).await? else {
            return self
                .finish_promotion(s, report, start, generation, req, journal)
                .await;
        };
        report.was_replica = true;
        if let Some(peer) = req.drain_from.filter(|p| first.source == p.to_string()) {
            let (drained, text) = self.drain_old_primary(s, peer, req.timeout).await;
            report.handoff = Some(text.clone());
            report.drained = drained;
            if !drained && req.drain_required {
                return Err(MysqlError::NotDrained {
                    server,
                    peer: peer.to_string(),
                    handoff: text,
                });
            }
        }
        // Why the applier may not finish, for the error message.
        let mut reason = first
            .last_sql_error
            .as_ref()
            .map(|e| format!("applier error {}: {}", e.code, e.message));
        // The applier must run to drain the relay log. Start it BEFORE
        // freezing the IO thread: MariaDB (GTID mode) throws the relay log
        // away when replication restarts after BOTH threads were stopped,
        // and its Gtid_IO_Pos then forgets what was received.
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
            // No longer a semi-sync replica once the IO thread is gone.
            s.exec("semi-sync replica off", &[kind.semisync_replica_off()])
                .await?;
        }
        report.frozen_by = Some(self.freeze_received(s, &first).await?);
        let st = Self::replica_status_still(s, "after freezing the IO thread").await?;
        let Some(mut received) = st.received.clone() else {
            if req.policy == CatchupPolicy::StayReadOnly {
                return Err(MysqlError::NoGtidReplication { server });
            }
            warn!(server = %server, "replication does not use GTIDs: promoting without checking what was received (catchup_policy = promote)");
            report.caught_up = false;
            s.exec(
                "stop and reset replication",
                &[kind.stop_replication(), kind.reset_replication()],
            )
            .await?;
            return self
                .finish_promotion(s, report, start, generation, req, journal)
                .await;
        };
        let deadline = start + req.timeout;
        let mut missing = replica::missing(&received, &st.executed);
        // Wait for the applier, then look again: an event the killed IO
        // thread was still writing when "received" was read may be there
        // now. The applier keeps running throughout: MariaDB discards the
        // relay log (and forgets what was received) when the applier
        // restarts with the IO thread stopped, so it is stopped only once
        // everything is applied, right before the unfence.
        for _ in 0..=LATE_ROUNDS {
            if !missing.is_empty() && applier_can_run {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait_start = Instant::now();
                self.wait_applied(s, "wait for applier", &received, left)
                    .await?;
                report.waited += wait_start.elapsed();
            }
            let st = Self::replica_status_still(s, "after the wait").await?;
            if let Some(e) = st.last_sql_error.as_ref().filter(|_| applier_can_run) {
                reason = Some(format!("applier error {}: {}", e.code, e.message));
            }
            let now = st.received.clone().unwrap_or_else(|| received.clone());
            missing = replica::missing(&now, &st.executed);
            let late = now != received;
            received = now;
            if !late || !applier_can_run || Instant::now() >= deadline {
                break;
            }
            info!(server = %server, received = %received, "mysql: one more transaction arrived while the IO thread was being killed: applying it too");
        }
        report.received = Some(received);
        report.caught_up = missing.is_empty();
        if !report.caught_up {
            match req.policy {
                // Still applying (the applier runs on) for the next attempt.
                CatchupPolicy::StayReadOnly => {
                    return Err(MysqlError::NotCaughtUp {
                        server,
                        waited: report.waited,
                        missing,
                        reason,
                    });
                }
                CatchupPolicy::Promote => {
                    warn!(server = %server, skipped = %missing, waited_ms = ms(report.waited), "PROMOTING WITHOUT these received transactions (catchup_policy = promote): they are lost to this server");
                    report.skipped = Some(missing);
                }
            }
        }
        if applier_can_run {
            s.exec("stop SQL thread", &[kind.stop_sql_thread()]).await?;
        }
        if self.fence_generation.load(Ordering::SeqCst) != generation {
            return Err(MysqlError::FencedDuringPromotion { server });
        }
        let r = self
            .finish_promotion(s, report, start, generation, req, journal)
            .await;
        if r.is_ok() {
            self.forget_source_in_background(kind);
        }
        r
    }

    /// Stops the IO thread from receiving and acknowledging, at once.
    /// Returns how (for the report).
    async fn freeze_received(
        &self,
        s: &mut Session,
        first: &ReplicaState,
    ) -> Result<&'static str, MysqlError> {
        let kind = s.kind();
        if !kind.freezes_by_kill() {
            s.exec("stop IO thread", &[kind.stop_io_thread()]).await?;
            return Ok("io_thread_stopped");
        }
        let ids: Vec<u64> = s
            .rows("find the IO thread", &kind.io_thread_id_query())
            .await?
            .into_iter()
            .filter_map(|r| r.into_values().next().flatten())
            .filter_map(|v| v.parse().ok())
            .collect();
        if ids.is_empty() {
            if first.io_state.eq_ignore_ascii_case("no") {
                return Ok("io_thread_already_stopped");
            }
            // Not visible (the account lacks PROCESS?) or it ended between
            // two reads: stop it the slow way, but stop it.
            warn!(server = %self.server(), "mysql: the replica's IO thread is not in the process list (does the agent's account have PROCESS and CONNECTION ADMIN?): stopping it with STOP SLAVE IO_THREAD, which may wait for the semi-sync kill-connection timeout");
            s.exec("stop IO thread", &[kind.stop_io_thread()]).await?;
            return Ok("io_thread_stopped");
        }
        for id in ids {
            match s
                .exec("kill the IO thread", &[ServerKind::kill_connection(id)])
                .await
            {
                Ok(()) => {}
                // 1094: unknown thread id: it ended meanwhile.
                Err(e) if e.code() == Some(1094) => {}
                Err(e) => return Err(e),
            }
        }
        Ok("io_thread_killed")
    }

    async fn finish_promotion(
        &self,
        s: &mut Session,
        mut report: PromotionReport,
        start: Instant,
        generation: u64,
        req: &PromoteRequest,
        journal: Option<JournalWrite>,
    ) -> Result<PromotionReport, MysqlError> {
        let kind = s.kind();
        // Before any write can be acknowledged.
        match journal {
            Some(task) => task.await.map_err(|e| MysqlError::Journal {
                path: journal::path(self.cfg.state_dir()),
                message: e.to_string(),
            })??,
            None => {
                if let Some(update) = req.journal {
                    self.journal_in(s, update).await?;
                }
            }
        }
        if self.fence_generation.load(Ordering::SeqCst) != generation {
            return Err(MysqlError::FencedDuringPromotion {
                server: self.server(),
            });
        }
        s.exec("unfence (read_only = OFF)", &kind.unfence()).await?;
        report.took = start.elapsed();
        // After the unfence: until this is done the new primary, which has
        // no replica, acknowledges alone, which is what relaxed semi-sync
        // does too (and the journal says).
        if let Some(timeout) = req.semisync {
            match Self::primary_relaxed_in(s, timeout).await {
                Ok(st) => report.semisync = Some(st),
                // Asynchronous replication still works: warn, do not fail
                // the promotion (the controller advertises asynchronous).
                Err(e) => warn!(error = %e, "semi-sync could not be enabled on the new primary"),
            }
        }
        report.steps = std::mem::take(&mut s.steps);
        Ok(report)
    }

    /// Stops the old replication and forgets the old primary on a
    /// connection of its own, after the unfence. A rejoin waits for it
    /// ([`Self::settle_background`]).
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
    pub(crate) async fn wait_applied(
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
    /// this replica has not received yet: freezing now would lose them.
    /// So: wait (bounded) until the old primary's server is read-only (its
    /// agent fences it as it steps down), read what it has, and wait until
    /// this server has applied that. Never fails: an old primary that does
    /// not answer (it died after all) has nothing more to send. Returns
    /// whether its last position was applied, and what happened.
    async fn drain_old_primary(
        &self,
        s: &mut Session,
        peer: SocketAddr,
        timeout: Duration,
    ) -> (bool, String) {
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
                return (false, format!("old primary {peer} not reachable: {e}"));
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
                    return (
                        false,
                        format!("old primary {peer} still writable after {HANDOFF_FENCE_WAIT:?}"),
                    );
                }
                Err(e) => return (false, format!("old primary {peer}: {e}")),
            }
        }
        let last = match Self::gtids(&mut p).await {
            Ok((_, Some(state))) => GtidSet::Mariadb(state.position()),
            Ok((has, None)) => has,
            Err(e) => return (false, format!("old primary {peer}: {e}")),
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
            Err(e) => return (false, format!("waiting for the old primary's {last}: {e}")),
        };
        let took = start.elapsed();
        if reached {
            info!(peer = %peer, position = %last, took_ms = ms(took), "mysql: applied everything the old primary had");
            (
                true,
                format!("applied the old primary's {last} in {:.0} ms", ms(took)),
            )
        } else {
            warn!(peer = %peer, position = %last, "mysql: the old primary's last transactions did not arrive in time");
            (
                false,
                format!("the old primary's {last} not applied within {timeout:?}"),
            )
        }
    }
}
