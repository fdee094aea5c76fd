//! Rejoin: the local server becomes a (read-only) replica of the peer with
//! GTID auto-positioning, after comparing the two histories. Transactions
//! only this server has (errant: the returning old primary's unreplicated
//! tail, or writes made while it was cut off) are never hidden: the rejoin
//! is refused ([`Discard::Never`]), or they are undone and given up, rows
//! included, when the database controller proved them unacknowledged
//! ([`Discard::Unacknowledged`]) or the operator said so
//! ([`Discard::Forced`], `ha-agent rejoin --force`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::error::{MysqlError, RejoinError};
use super::flashback;
use super::flavor::{Flavor, ReplicationSource};
use super::gtid::{Errant, GtidSet};
use super::journal::JournalUpdate;
use super::replica::ReplicaState;
use super::report::RejoinReport;
use super::session::{Endpoint, Identity, Session};
use super::{ms, unreadable, MysqlDriver};

/// Bound on reading the binary logs and applying their undo.
const UNDO_BOUND: Duration = Duration::from_secs(120);

/// What to do with errant transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Refuse to rejoin ([`RejoinError::Errant`]).
    Never,
    /// Undo and give up exactly this errant set (proved never acknowledged
    /// to a client); any other set is refused.
    Unacknowledged { expected: GtidSet },
    /// Give up whatever is errant: the operator's decision.
    Forced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejoinRequest {
    pub peer: SocketAddr,
    pub discard: Discard,
    /// Recorded once replicating.
    pub journal: Option<JournalUpdate>,
}

/// A peer's GTID history and identity, read with the replication account.
struct PeerView {
    ident: Identity,
    read_only: bool,
    /// MySQL `gtid_executed`; MariaDB `gtid_binlog_state` merged with `gtid_slave_pos`.
    has: GtidSet,
}

impl MysqlDriver {
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
        let r = self.compare(&mut s, peer).await;
        if !r.as_ref().is_err_and(RejoinError::is_timeout) {
            self.checkin(&self.action_slot, s);
        }
        r.map(|(_, e)| e)
    }

    /// Makes the local server a replica of `req.peer`, read-only, handling
    /// errant transactions as `req.discard` says. A no-op when it already
    /// replicates from the peer with both threads running.
    pub async fn rejoin(&self, req: &RejoinRequest) -> Result<RejoinReport, RejoinError> {
        self.settle_background().await;
        let start = Instant::now();
        let mut s = self.session(&self.action_slot).await?;
        let r = self.rejoin_in(&mut s, start, req).await;
        match &r {
            Ok(rep) if rep.already_replicating => {}
            Ok(rep) => {
                info!(server = %rep.server, peer = %rep.peer, took_ms = ms(rep.took), io_running = rep.io_running, sql_running = rep.sql_running, discarded = ?rep.discarded.as_ref().map(|e| e.set.to_string()), "mysql rejoined as a replica");
            }
            Err(e) => error!(error = %e, "mysql rejoin refused or failed"),
        }
        if !r.as_ref().is_err_and(RejoinError::is_timeout) {
            self.checkin(&self.action_slot, s);
        }
        r
    }

    async fn rejoin_in(
        &self,
        s: &mut Session,
        start: Instant,
        req: &RejoinRequest,
    ) -> Result<RejoinReport, RejoinError> {
        let kind = s.kind();
        let peer = req.peer;
        let (server, peer_s) = (self.server(), peer.to_string());
        // A server that is about to replicate must not take writes.
        self.fence_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.exec("fence (read_only = ON)", &kind.fence()).await?;
        let mut report = RejoinReport::new(server.clone(), peer_s.clone());
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
            if st.source == peer_s && self.resume(s, &st).await? {
                // Replication from the peer was only interrupted: restart
                // the stopped thread and keep the relay log. Stopping both
                // threads would make MariaDB throw away what the IO thread
                // received, which it may have acknowledged (semi-sync).
                report.resumed = true;
                return self.wait_running(s, report, start, peer).await;
            }
        }
        let (view, errant) = self.compare(s, peer).await?;
        if view.read_only {
            return Err(RejoinError::PeerNotPrimary {
                server,
                peer: peer_s,
            });
        }
        if !errant.is_empty() {
            match &req.discard {
                Discard::Never => {
                    return Err(RejoinError::Errant {
                        server,
                        peer: peer_s,
                        errant,
                    })
                }
                Discard::Unacknowledged { expected } if *expected != errant.set => {
                    return Err(RejoinError::ErrantChanged {
                        server,
                        expected: expected.clone(),
                        now: errant.set.clone(),
                    })
                }
                Discard::Unacknowledged { .. } | Discard::Forced => {}
            }
        }
        s.exec("stop replication", &[kind.stop_replication()])
            .await?;
        if errant.is_empty() {
            // MariaDB: from everything it has, logged and replicated: after
            // a rejoin that discarded (binary logs reset) with nothing
            // replicated since, gtid_binlog_pos alone is empty and
            // replication would start over from the peer's first transaction.
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
            report.automatic = matches!(req.discard, Discard::Unacknowledged { .. });
            let who = if report.automatic {
                "never acknowledged to a client (semi-sync was effective until this server stopped being primary)"
            } else {
                "the operator's `rejoin --force`"
            };
            if kind.flavor == Flavor::Mariadb {
                if report.automatic {
                    // The journal stops vouching for the tail before any
                    // of it is undone: an undo that fails or is cut short
                    // half way is never repeated automatically on rows it
                    // already changed (the next attempt is refused and
                    // waits for the operator).
                    self.journal_in(s, JournalUpdate::Replica).await?;
                }
                // Their rows go too, or the first primary write reusing one
                // of their keys would stop replication (see `flashback`).
                let undone = flashback::undo_after(
                    s,
                    &self.local,
                    &errant.keep,
                    &errant.set,
                    self.cfg.state_dir(),
                    UNDO_BOUND,
                )
                .await?;
                warn!(server = %server, peer = %peer_s, discarded = %errant, %undone, why = who, "mysql: GIVING UP transactions only this server has: rows undone, GTID history and binary logs reset");
                report.undone = Some(undone);
            } else if report.automatic {
                // The controller never asks for this without an undo tool.
                return Err(unreadable(
                    &server,
                    "errant transactions' undo",
                    "MySQL has no flashback tool: the rows would stay; not discarding them automatically",
                )
                .into());
            } else {
                warn!(server = %server, peer = %peer_s, discarded = %errant, why = who, "FORCED rejoin: giving up transactions only this server has; they stay in its tables but leave its GTID history and binary logs");
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
            if let Err(e) = Self::replica_semisync_in(s).await {
                warn!(error = %e, "semi-sync could not be enabled on the replica");
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
        let mut report = self.wait_running(s, report, start, peer).await?;
        if let Some(update) = req.journal {
            self.journal_in(s, update).await?;
        }
        report.steps.append(&mut s.steps);
        report.took = start.elapsed();
        Ok(report)
    }

    /// Restarts whichever replication thread from the peer stopped without
    /// a fatal error, when the other one still runs (so the relay log is
    /// kept). Whether it did.
    async fn resume(&self, s: &mut Session, st: &ReplicaState) -> Result<bool, RejoinError> {
        let kind = s.kind();
        let io_transient = st
            .last_io_error
            .as_ref()
            .is_none_or(|e| matches!(e.code, 2003 | 2005 | 2006 | 2013));
        if st.sql_running && !st.io_running && io_transient {
            if st.io_state.eq_ignore_ascii_case("connecting") {
                // It is reconnecting by itself (MASTER_CONNECT_RETRY).
                return Ok(true);
            }
            s.exec("resume the IO thread", &[kind.start_io_thread()])
                .await?;
            return Ok(true);
        }
        if st.io_running && !st.sql_running && st.last_sql_error.is_none() {
            s.exec("resume the SQL thread", &[kind.start_sql_thread()])
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits (bounded) until both threads run, or a fatal error. A connect
    /// error (2003, 2013) is retried by the IO thread every second: keep
    /// polling.
    async fn wait_running(
        &self,
        s: &mut Session,
        mut report: RejoinReport,
        start: Instant,
        peer: SocketAddr,
    ) -> Result<RejoinReport, RejoinError> {
        let (server, peer_s) = (self.server(), peer.to_string());
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
}
