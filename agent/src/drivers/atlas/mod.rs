//! Keeps the local Atlas proxy's backend table right, continuously.
//!
//! The seed removed the replica from Atlas in a notify script (after a blind
//! `sleep 10`) and added it back from cron every 2 minutes. Here one task
//! owns Atlas: the daemon says what the table should be ([`Desired`]: the rw
//! backend, usually the inside VIP, and the healthy replicas as ro), and the
//! task makes it so at once, then checks it every `period` (an operator's
//! hand edit or an Atlas restart is repaired within a period).
//!
//! Each reconciliation is one short-lived admin connection: read the table,
//! apply the single next step ([`reconcile::next_step`]), read it back, and
//! so on, at most [`MAX_STEPS_PER_ROUND`] steps. Only when the table matches
//! is it persisted (`SAVE CONFIG`, or the agent's own `.cnf` rewrite), so a
//! restarted Atlas never starts from a half-applied table.
//!
//! The election never waits for Atlas: [`AtlasHandle::set_desired`] only
//! stores the wish, and every admin operation has a timeout. Failures are
//! logged with the command and Atlas's answer, shown in [`AtlasStatus`], and
//! retried with exponential backoff capped at the period.

pub mod client;
pub mod cnf;
pub mod reconcile;
pub mod secret;
pub mod table;

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::watch;

pub use client::{AdminConnection, ClientError, Timeouts};
pub use reconcile::{in_sync, next_step, Desired, Step};
pub use secret::{Password, PasswordError};
pub use table::{Backend, Kind, State};

use crate::operator::config::{AtlasConfig, AtlasPersist};
use cnf::CnfError;

/// Steps per reconciliation before giving up until the next one (a table
/// needs at most 1 + stale entries + missing ro entries steps).
pub const MAX_STEPS_PER_ROUND: usize = 16;
/// The first retry after a failure; doubled per failure up to the period.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Commands kept in [`AtlasStatus::recent`].
const RECENT_COMMANDS: usize = 16;

/// How run-time changes are made to survive an Atlas restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    SaveConfig,
    Cnf(PathBuf),
    None,
}

/// What the reconciler needs, with the password loaded.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin_address: SocketAddr,
    pub user: String,
    pub password: Password,
    pub persist: Persist,
    pub period: Duration,
    pub timeouts: Timeouts,
}

impl Settings {
    /// From a validated `[atlas]` section; reads the password file.
    pub fn from_config(c: &AtlasConfig) -> Result<Settings, PasswordError> {
        Ok(Settings {
            admin_address: c.admin_address,
            user: c.user.clone(),
            password: Password::load(&c.password_file)?,
            persist: match (c.persist, &c.cnf_path) {
                (AtlasPersist::SaveConfig, _) => Persist::SaveConfig,
                (AtlasPersist::Cnf, Some(p)) => Persist::Cnf(p.clone()),
                // Validation requires cnf_path with "cnf"; be safe anyway.
                (AtlasPersist::Cnf, None) | (AtlasPersist::None, _) => Persist::None,
            },
            period: c.period(),
            timeouts: Timeouts {
                connect: c.connect_timeout(),
                query: c.query_timeout(),
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AtlasError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("Atlas admin port {addr} answered `{command}` with success, but its backend table did not change (now {table}); will re-read and retry")]
    Ignored {
        addr: SocketAddr,
        command: String,
        table: String,
    },
    #[error("Atlas admin port {addr}: the backend table still differs from the wanted one after {steps} steps (now {table}); continuing at the next reconciliation")]
    NotConverged {
        addr: SocketAddr,
        steps: usize,
        table: String,
    },
    #[error("persisting Atlas's backends: {0}")]
    Cnf(#[from] CnfError),
    #[error("persisting Atlas's backends: the rewrite task failed: {0}")]
    Task(String),
}

/// One command the reconciler sent to change or persist the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentCommand {
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
    pub command: String,
    /// `None` when it succeeded; otherwise Atlas's answer or the failure.
    pub error: Option<String>,
}

/// What `ha-agent status` shows about Atlas.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AtlasStatus {
    /// The last reconciliation logged in to the admin port.
    pub reachable: bool,
    /// The table is as wanted (and persisted): set when a reconciliation
    /// ends so, cleared as soon as one finds or makes a difference.
    pub in_sync: bool,
    pub desired: Option<Desired>,
    /// The table as last read.
    pub table: Vec<Backend>,
    /// The most recent failure (kept after recovery; see consecutive_failures).
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_error_at: Option<SystemTime>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_ok_at: Option<SystemTime>,
    /// Changes applied since start (ADD/REMOVE commands that Atlas accepted).
    pub steps_applied: u64,
    pub consecutive_failures: u32,
    /// Reconciliations finished (ok or not) since start.
    pub rounds: u64,
    /// The last few commands sent to change or persist the table, oldest first.
    pub recent: VecDeque<SentCommand>,
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::operator::status::rfc3339(*t))
}

fn ser_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// The daemon's side of the reconciler. Cheap to clone; the task stops when
/// the last handle is dropped.
#[derive(Clone)]
pub struct AtlasHandle {
    inner: Arc<Inner>,
}

struct Inner {
    desired: watch::Sender<Option<Desired>>,
    status: watch::Receiver<AtlasStatus>,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AtlasHandle {
    /// Sets the wanted table; a change starts a reconciliation at once.
    /// Never blocks and never fails: Atlas is dealt with by the task.
    /// Returns whether the wanted table changed.
    pub fn set_desired(&self, mut desired: Desired) -> bool {
        // Order and repeats of ro backends do not matter: normalise so that
        // an equal wish does not trigger a reconciliation.
        desired.ro.sort();
        desired.ro.dedup();
        self.inner.desired.send_if_modified(|cur| {
            if cur.as_ref() == Some(&desired) {
                false
            } else {
                *cur = Some(desired);
                true
            }
        })
    }

    /// Stops changing Atlas (the table is still read every period for status).
    pub fn clear_desired(&self) {
        self.inner
            .desired
            .send_if_modified(|cur| cur.take().is_some());
    }

    pub fn status(&self) -> AtlasStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that is notified on every status change (for tests and
    /// the status socket; waiting on it never involves sleeping).
    pub fn watch(&self) -> watch::Receiver<AtlasStatus> {
        self.inner.status.clone()
    }
}

/// The task that owns the admin connection.
pub struct AtlasReconciler {
    settings: Settings,
    status: watch::Sender<AtlasStatus>,
    /// The rw and ro lists last persisted (None: not yet since start).
    persisted: Option<(Vec<SocketAddrV4>, Vec<SocketAddrV4>)>,
}

impl AtlasReconciler {
    /// Starts the task on the current tokio runtime (like `tokio::spawn`, it
    /// must be called from within one). Nothing is changed in
    /// Atlas until [`AtlasHandle::set_desired`]; until then the table is only
    /// read, every period.
    pub fn spawn(settings: Settings) -> AtlasHandle {
        let (desired_tx, desired_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(AtlasStatus::default());
        let reconciler = AtlasReconciler {
            settings,
            status: status_tx,
            persisted: None,
        };
        let task = tokio::spawn(reconciler.run(desired_rx)).abort_handle();
        AtlasHandle {
            inner: Arc::new(Inner {
                desired: desired_tx,
                status: status_rx,
                task,
            }),
        }
    }

    async fn run(mut self, mut desired_rx: watch::Receiver<Option<Desired>>) {
        loop {
            let desired = desired_rx.borrow_and_update().clone();
            let result = self.round(desired.as_ref(), &desired_rx).await;
            let delay = self.finish(desired, result);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = desired_rx.changed() => {
                    if changed.is_err() {
                        return; // every handle is gone
                    }
                }
            }
        }
    }

    /// One reconciliation on one connection.
    async fn round(
        &mut self,
        desired: Option<&Desired>,
        desired_rx: &watch::Receiver<Option<Desired>>,
    ) -> Result<(), AtlasError> {
        let s = &self.settings;
        let mut conn =
            match AdminConnection::connect(s.admin_address, &s.user, &s.password, s.timeouts).await
            {
                Ok(c) => c,
                Err(e) => {
                    self.status.send_modify(|st| st.reachable = false);
                    return Err(e.into());
                }
            };
        self.status.send_modify(|st| st.reachable = true);
        let result = self.reconcile_on(&mut conn, desired, desired_rx).await;
        conn.quit().await;
        result
    }

    async fn reconcile_on(
        &mut self,
        conn: &mut AdminConnection,
        desired: Option<&Desired>,
        desired_rx: &watch::Receiver<Option<Desired>>,
    ) -> Result<(), AtlasError> {
        let addr = conn.addr();
        let mut table = conn.backends().await?;
        self.status.send_modify(|st| {
            // in_sync stays true through a round that changes nothing, and
            // turns false as soon as the wish or the table differs.
            st.in_sync = st.in_sync
                && st.desired.as_ref() == desired
                && desired.is_some_and(|d| in_sync(&table, d));
            st.desired = desired.cloned();
            st.table = table.clone();
        });
        let Some(desired) = desired else {
            return Ok(());
        };
        for _ in 0..MAX_STEPS_PER_ROUND {
            let step = next_step(&table, desired);
            let Some(command) = step.command() else {
                return self.persist(conn, &table).await;
            };
            // A new wish (a failover mid-round) ends this round before its
            // next step: the next round starts at once, towards the new one.
            if desired_rx.has_changed().unwrap_or(true) {
                return Ok(());
            }
            let why = reason(step, &table);
            let sent = conn.query(&command).await.map(drop);
            self.record(&command, sent.as_ref().err().map(|e| e.to_string()));
            sent?;
            let after = conn.backends().await?;
            tracing::info!(
                "atlas: {command} ({why}); table now {}",
                table::describe(&after)
            );
            let unchanged = same_entries(&table, &after);
            self.status.send_modify(|st| {
                st.steps_applied += 1;
                st.table = after.clone();
                // Not before the round ends (and the table is persisted).
                st.in_sync = false;
            });
            if unchanged {
                return Err(AtlasError::Ignored {
                    addr,
                    command,
                    table: table::describe(&after),
                });
            }
            table = after;
        }
        if in_sync(&table, desired) {
            return self.persist(conn, &table).await;
        }
        Err(AtlasError::NotConverged {
            addr,
            steps: MAX_STEPS_PER_ROUND,
            table: table::describe(&table),
        })
    }

    /// Persists a table that matches, once per distinct table.
    async fn persist(
        &mut self,
        conn: &mut AdminConnection,
        table: &[Backend],
    ) -> Result<(), AtlasError> {
        let lists = table::addresses(table);
        if self.persisted.as_ref() == Some(&lists) {
            return Ok(());
        }
        match self.settings.persist.clone() {
            Persist::None => {}
            Persist::SaveConfig => {
                // Atlas answers SAVE CONFIG with success even when it cannot
                // write its file (it only logs that): persist = "cnf" is the
                // mode whose failures the agent can see.
                let r = conn.query("SAVE CONFIG").await.map(drop);
                self.record("SAVE CONFIG", r.as_ref().err().map(|e| e.to_string()));
                r?;
            }
            Persist::Cnf(path) => {
                let (rw, ro) = lists.clone();
                let p = path.clone();
                let r = tokio::task::spawn_blocking(move || cnf::rewrite(&p, &rw, &ro))
                    .await
                    .map_err(|e| AtlasError::Task(e.to_string()))
                    .and_then(|r| r.map_err(AtlasError::from));
                let what = format!("rewrite {}", path.display());
                self.record(&what, r.as_ref().err().map(|e| e.to_string()));
                if let Ok(true) = r {
                    tracing::info!("atlas: rewrote the backend lines of {}", path.display());
                }
                r?;
            }
        }
        self.persisted = Some(lists);
        Ok(())
    }

    fn record(&self, command: &str, error: Option<String>) {
        self.status.send_modify(|st| {
            if st.recent.len() == RECENT_COMMANDS {
                st.recent.pop_front();
            }
            st.recent.push_back(SentCommand {
                at: SystemTime::now(),
                command: command.to_string(),
                error,
            });
        });
    }

    /// Updates the status after a reconciliation; returns the delay until the next.
    fn finish(&mut self, desired: Option<Desired>, result: Result<(), AtlasError>) -> Duration {
        let period = self.settings.period;
        let addr = self.settings.admin_address;
        let mut delay = period;
        self.status.send_modify(|st| {
            st.rounds += 1;
            match &result {
                Ok(()) => {
                    if st.consecutive_failures > 0 {
                        tracing::info!(
                            "atlas: admin port {addr} works again after {} failed attempts",
                            st.consecutive_failures
                        );
                    }
                    st.consecutive_failures = 0;
                    st.last_ok_at = Some(SystemTime::now());
                    st.in_sync = desired.as_ref().is_some_and(|d| in_sync(&st.table, d));
                }
                Err(e) => {
                    let msg = e.to_string();
                    // The same failure every period is logged once, not forever.
                    if st.last_error.as_deref() != Some(msg.as_str())
                        || st.consecutive_failures == 0
                    {
                        tracing::warn!("atlas: {msg}");
                    } else {
                        tracing::debug!("atlas: {msg}");
                    }
                    st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                    st.last_error = Some(msg);
                    st.last_error_at = Some(SystemTime::now());
                    st.in_sync = false;
                    delay = retry_delay(period, st.consecutive_failures);
                }
            }
            st.desired = desired;
        });
        delay
    }
}

/// Exponential backoff from [`FIRST_RETRY`], capped at the period.
pub fn retry_delay(period: Duration, consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(20);
    (FIRST_RETRY * (1u32 << doublings)).min(period)
}

fn same_entries(a: &[Backend], b: &[Backend]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.address == y.address && x.kind == y.kind)
}

/// Why a step is taken, for the log.
fn reason(step: Step, table: &[Backend]) -> String {
    match step {
        Step::AddMaster(a) => format!("the rw backend {a} is missing"),
        Step::AddSlave(a) => format!("the ro backend {a} is missing"),
        Step::Remove(n) => match table.iter().find(|b| b.ndx == n) {
            Some(b) => format!("{} {} ({}) is not wanted", b.kind, b.address, b.state),
            None => format!("backend {n} is not wanted"),
        },
        Step::Done => "nothing to do".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_50ms_up_to_the_period() {
        let p = Duration::from_millis(1000);
        let got: Vec<u128> = (1..=7).map(|n| retry_delay(p, n).as_millis()).collect();
        assert_eq!(got, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry_delay(p, u32::MAX), p);
        assert_eq!(
            retry_delay(Duration::from_millis(30), 1),
            Duration::from_millis(30)
        );
    }

    #[test]
    fn status_serialises_times_as_rfc3339() {
        let st = AtlasStatus {
            last_ok_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["last_ok_at"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["last_error_at"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn set_desired_reports_only_real_changes() {
        // A port nobody listens on: the task fails and retries in the
        // background; set_desired must not care.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let h = AtlasReconciler::spawn(Settings {
            admin_address: addr,
            user: "u".into(),
            password: Password::new("p"),
            persist: Persist::None,
            period: Duration::from_millis(100),
            timeouts: Timeouts {
                connect: Duration::from_millis(100),
                query: Duration::from_millis(100),
            },
        });
        let a = |s: &str| -> SocketAddrV4 { s.parse().unwrap() };
        let d = Desired {
            rw: a("10.0.0.1:3306"),
            ro: vec![a("10.0.0.3:3306"), a("10.0.0.2:3306")],
        };
        assert!(h.set_desired(d.clone()));
        let reordered = Desired {
            ro: vec![a("10.0.0.2:3306"), a("10.0.0.3:3306"), a("10.0.0.2:3306")],
            ..d.clone()
        };
        assert!(!h.set_desired(reordered));
        assert!(h.set_desired(Desired { ro: vec![], ..d }));
        let mut w = h.watch();
        let st = tokio::time::timeout(
            Duration::from_secs(10),
            w.wait_for(|s| s.consecutive_failures >= 1),
        )
        .await
        .expect("a failed round within 10 s")
        .unwrap()
        .clone();
        assert!(!st.reachable);
        assert!(
            st.last_error.as_deref().unwrap().contains("cannot connect"),
            "{st:?}"
        );
    }
}
