//! Semi-synchronous replication on the local server: its state as the
//! server reports it, and the setups the database controller asks for.
//!
//! - replica: acknowledges every transaction it receives (takes effect when
//!   its IO thread connects);
//! - primary, relaxed: waits for an acknowledgement, but gives up by itself
//!   (no replica connected, or the timeout): a new primary without a
//!   replica, or `durability = "available"`;
//! - primary, strict: waits for ever; only the agent relaxes it, after the
//!   replica has heard that the primary goes asynchronous.
//!
//! Every change that lets the server acknowledge without the replica is
//! written to the journal first (see [`super::journal`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::{info, warn};

use super::error::MysqlError;
use super::flavor::{SemisyncNames, ServerKind, STRICT_TIMEOUT};
use super::gtid::GtidSet;
use super::journal::{self, Journal, JournalRole, JournalSemisync, JournalUpdate};
use super::session::{Endpoint, Session};
use super::MysqlDriver;
use crate::operator::status::rfc3339;

/// The server's semi-sync state (status and settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SemisyncState {
    /// Primary side enabled (`rpl_semi_sync_master_enabled`).
    pub source_enabled: bool,
    /// Primary side operational: commits wait for an acknowledgement.
    pub source_on: bool,
    /// Never gives up waiting by itself (no-replica waiting on, timeout
    /// [`STRICT_TIMEOUT`] or more).
    pub strict: bool,
    /// Semi-sync replicas connected.
    pub clients: u64,
    /// Commits waiting for an acknowledgement now.
    pub waiting: u64,
    /// Commits acknowledged by a replica / not, since the server started.
    pub acked: u64,
    pub unacked: u64,
    /// Replica side enabled, and operational (its IO thread registered).
    pub replica_enabled: bool,
    pub replica_on: bool,
}

fn on(m: &BTreeMap<String, String>, name: &str) -> bool {
    m.get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1")
}

fn num(m: &BTreeMap<String, String>, name: &str) -> u64 {
    m.get(name).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

impl SemisyncState {
    /// From `SHOW GLOBAL STATUS` and `SHOW GLOBAL VARIABLES` rows.
    pub fn from_maps(
        n: &SemisyncNames,
        status: &BTreeMap<String, String>,
        vars: &BTreeMap<String, String>,
    ) -> SemisyncState {
        SemisyncState {
            source_enabled: on(vars, n.source_enabled),
            source_on: on(status, n.source_status),
            strict: on(vars, n.source_wait_no_replica)
                && num(vars, n.source_timeout) as u128 >= STRICT_TIMEOUT.as_millis(),
            clients: num(status, n.source_clients),
            waiting: num(status, n.source_waiting),
            acked: num(status, n.source_yes_tx),
            unacked: num(status, n.source_no_tx),
            replica_enabled: on(vars, n.replica_enabled),
            replica_on: on(status, n.replica_status),
        }
    }
}

/// The journal entry for `update` on the server `server_id`, now.
pub(crate) fn journal_entry(
    server_id: u32,
    update: JournalUpdate,
    position: Option<String>,
) -> Journal {
    let (role, semisync) = match update {
        JournalUpdate::PrimaryAsynchronous => (JournalRole::Primary, JournalSemisync::Asynchronous),
        JournalUpdate::PrimaryEffective => (JournalRole::Primary, JournalSemisync::Effective),
        JournalUpdate::PrimaryOff => (JournalRole::Primary, JournalSemisync::Off),
        JournalUpdate::Replica => (JournalRole::Replica, JournalSemisync::Off),
    };
    Journal {
        server_id,
        role,
        semisync,
        since: rfc3339(SystemTime::now()),
        position,
    }
}

/// What making the primary strict found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictOutcome {
    /// Strict, on, with exactly one acknowledging replica: effective (and
    /// journaled so).
    Effective(SemisyncState),
    /// Not (yet) on with one replica: put back to relaxed.
    NotYet(SemisyncState),
}

impl MysqlDriver {
    pub(crate) async fn semisync_state_in(s: &mut Session) -> Result<SemisyncState, MysqlError> {
        let kind = s.kind();
        let status = s
            .variables("read semi-sync status", &kind.semisync_status_query())
            .await?;
        let vars = s
            .variables("read semi-sync settings", &kind.semisync_variables_query())
            .await?;
        Ok(SemisyncState::from_maps(
            &kind.semisync_names(),
            &status,
            &vars,
        ))
    }

    /// MySQL needs both plugins (a server changes roles); MariaDB has them built in.
    pub(crate) async fn semisync_plugins_in(s: &mut Session) -> Result<(), MysqlError> {
        let kind = s.kind();
        let names = kind.semisync_names();
        let wanted: Vec<_> = [names.source_plugin, names.replica_plugin]
            .into_iter()
            .flatten()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }

    /// Records `update` in the journal (synced before this returns).
    pub(crate) async fn journal_in(
        &self,
        s: &mut Session,
        update: JournalUpdate,
    ) -> Result<Journal, MysqlError> {
        let position = if update == JournalUpdate::PrimaryEffective {
            Some(match Self::gtids(s).await? {
                (_, Some(state)) => state.position().to_string(),
                (has, None) => has.to_string(),
            })
        } else {
            None
        };
        let j = journal_entry(s.ident.server_id, update, position);
        journal::write(self.cfg.state_dir(), &j).await?;
        Ok(j)
    }

    /// A new primary: semi-sync relaxed (the replica it had is now gone).
    pub(crate) async fn primary_relaxed_in(
        s: &mut Session,
        timeout: Duration,
    ) -> Result<SemisyncState, MysqlError> {
        Self::semisync_plugins_in(s).await?;
        let kind = s.kind();
        s.exec(
            "semi-sync primary (relaxed)",
            &kind.semisync_source_relaxed(timeout),
        )
        .await?;
        Self::semisync_state_in(s).await
    }

    /// Semi-sync as a replica (before its IO thread starts).
    pub(crate) async fn replica_semisync_in(s: &mut Session) -> Result<(), MysqlError> {
        Self::semisync_plugins_in(s).await?;
        let kind = s.kind();
        s.exec("semi-sync replica", &kind.semisync_replica_on())
            .await
    }

    /// Makes the running replica acknowledge: enables semi-sync and
    /// reconnects its IO thread (the setting is read when it connects).
    pub async fn semisync_replica(&self) -> Result<SemisyncState, MysqlError> {
        let mut s = self.session(&self.action_slot).await?;
        let r = async {
            Self::replica_semisync_in(&mut s).await?;
            let kind = s.kind();
            if let Some(st) = Self::replica_status(&mut s).await? {
                if st.io_running {
                    s.exec(
                        "reconnect the IO thread for semi-sync",
                        &[kind.stop_io_thread(), kind.start_io_thread()],
                    )
                    .await?;
                }
            }
            Self::semisync_state_in(&mut s).await
        }
        .await;
        self.checkin_unless_timeout(&self.action_slot, s, r.as_ref().err());
        if let Ok(st) = &r {
            info!(server = %self.server(), operational = st.replica_on, "mysql: semi-sync enabled on the replica");
        }
        r
    }

    /// Makes the primary strict, and effective if the peer has everything
    /// committed so far: then journaled so. Otherwise back to relaxed with
    /// `timeout`.
    ///
    /// The server's own "on" is not enough: re-enabled after a relax, it
    /// is on at once, whatever the replica lacks (commits it acknowledged
    /// alone meanwhile). So, once strict (every later commit waits for the
    /// replica), the peer's server must have applied this server's
    /// position: read there with the replication account, waiting at most
    /// `timeout`. An unreachable peer (the inside link cut) is not caught up.
    ///
    /// The peer is asked first while still relaxed: strict, every commit
    /// waits, and asking an unreachable peer takes the whole `timeout`.
    /// Going strict first held every commit for `timeout` at each attempt
    /// while the inside link was cut (writes stood still for about 1 s in
    /// every 1.2 s).
    pub async fn semisync_strict(&self, timeout: Duration) -> Result<StrictOutcome, MysqlError> {
        let mut s = self.session(&self.action_slot).await?;
        let r = async {
            let kind = s.kind();
            let relaxed = Self::semisync_state_in(&mut s).await?;
            let now = Self::position_in(&mut s).await?;
            if relaxed.clients != 1 || !self.peer_reached(&now, timeout).await {
                return Ok(StrictOutcome::NotYet(relaxed));
            }
            s.exec("semi-sync primary (strict)", &kind.semisync_source_strict())
                .await?;
            let st = Self::semisync_state_in(&mut s).await?;
            let mut caught_up = false;
            if st.source_enabled && st.source_on && st.strict && st.clients == 1 {
                let position = Self::position_in(&mut s).await?;
                caught_up = self.peer_reached(&position, timeout).await;
            }
            if caught_up {
                self.journal_in(&mut s, JournalUpdate::PrimaryEffective)
                    .await?;
                Ok(StrictOutcome::Effective(st))
            } else {
                s.exec(
                    "semi-sync primary (back to relaxed)",
                    &kind.semisync_source_relaxed(timeout),
                )
                .await?;
                Ok(StrictOutcome::NotYet(st))
            }
        }
        .await;
        self.checkin_unless_timeout(&self.action_slot, s, r.as_ref().err());
        match &r {
            Ok(StrictOutcome::Effective(st)) => {
                info!(server = %self.server(), clients = st.clients, "mysql: semi-sync EFFECTIVE: the replica has everything, and every commit now waits for its acknowledgement")
            }
            Ok(StrictOutcome::NotYet(st)) => {
                info!(server = %self.server(), on = st.source_on, clients = st.clients, "mysql: semi-sync not effective yet (the replica has not caught up): relaxed again")
            }
            Err(_) => {}
        }
        r
    }

    /// What this server has committed: the GTID position (MariaDB) or set.
    async fn position_in(s: &mut Session) -> Result<GtidSet, MysqlError> {
        Ok(match Self::gtids(s).await? {
            (_, Some(state)) => GtidSet::Mariadb(state.position()),
            (has, None) => has,
        })
    }

    /// Whether the peer's server has applied `position` within `timeout`
    /// (the replication account; any failure is "no").
    async fn peer_reached(&self, position: &GtidSet, timeout: Duration) -> bool {
        let ep = Endpoint {
            address: self.cfg.peer_address,
            user: self.replication_user.clone(),
            password: self.replication_password.clone(),
        };
        let r = async {
            let mut p = Session::open(
                &ep,
                self.timeout().min(timeout.max(Duration::from_millis(100))),
            )
            .await?;
            self.wait_applied(&mut p, "the replica has this position", position, timeout)
                .await
        }
        .await;
        match r {
            Ok(reached) => reached,
            Err(e) => {
                tracing::debug!(error = %e, "mysql: cannot check the replica's position");
                false
            }
        }
    }

    /// Lets the primary acknowledge without its replica: journaled first,
    /// then semi-sync off (the waiting commits complete) and on again,
    /// relaxed with `timeout`.
    pub async fn semisync_relax(&self, timeout: Duration) -> Result<SemisyncState, MysqlError> {
        let mut s = self.session(&self.action_slot).await?;
        let r = async {
            self.journal_in(&mut s, JournalUpdate::PrimaryAsynchronous)
                .await?;
            let kind = s.kind();
            s.exec(
                "semi-sync off (release the waiting commits)",
                &[kind.semisync_source_off()],
            )
            .await?;
            s.exec(
                "semi-sync primary (relaxed)",
                &kind.semisync_source_relaxed(timeout),
            )
            .await?;
            Self::semisync_state_in(&mut s).await
        }
        .await;
        self.checkin_unless_timeout(&self.action_slot, s, r.as_ref().err());
        if r.is_ok() {
            warn!(server = %self.server(), "mysql: semi-sync RELAXED: commits may now be acknowledged without the replica (the replica was told first)");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn state_from_mariadb_status_and_settings() {
        let kind = ServerKind::detect("10.11.6-MariaDB-log", "").unwrap();
        let n = kind.semisync_names();
        let status = maps(&[
            ("Rpl_semi_sync_master_status", "ON"),
            ("Rpl_semi_sync_master_clients", "1"),
            ("Rpl_semi_sync_master_wait_sessions", "2"),
            ("Rpl_semi_sync_master_yes_tx", "120"),
            ("Rpl_semi_sync_master_no_tx", "3"),
            ("Rpl_semi_sync_slave_status", "OFF"),
        ]);
        let strict = maps(&[
            ("rpl_semi_sync_master_enabled", "ON"),
            ("rpl_semi_sync_master_wait_no_slave", "ON"),
            ("rpl_semi_sync_master_timeout", "2592000000"),
            ("rpl_semi_sync_slave_enabled", "OFF"),
        ]);
        let st = SemisyncState::from_maps(&n, &status, &strict);
        assert_eq!(
            st,
            SemisyncState {
                source_enabled: true,
                source_on: true,
                strict: true,
                clients: 1,
                waiting: 2,
                acked: 120,
                unacked: 3,
                replica_enabled: false,
                replica_on: false,
            }
        );
        // The server's own fallbacks make it relaxed: no waiting without a
        // replica, or a finite timeout.
        for (k, v) in [
            ("rpl_semi_sync_master_wait_no_slave", "OFF"),
            ("rpl_semi_sync_master_timeout", "10000"),
        ] {
            let mut vars = strict.clone();
            vars.insert(k.into(), v.into());
            assert!(!SemisyncState::from_maps(&n, &status, &vars).strict, "{k}");
        }
        // Unknown or missing values read as off / zero.
        let empty = SemisyncState::from_maps(&n, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(empty, SemisyncState::default());
    }
}
