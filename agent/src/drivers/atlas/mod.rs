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
//! so on, at most [`MAX_STEPS_PER_ROUND`] steps. Once the table matches, it
//! is compared with Atlas's `.cnf` itself and persisted only if the file is
//! out of date (a change of the agent's, a repair of a hand edit, an Atlas
//! restarted from an old file): `SAVE CONFIG`, after which the agent puts
//! back the file's mode and owner (Atlas leaves it 0644, exposing the admin
//! password), the ro weights and host names Atlas dropped; or the agent's
//! own rewrite of the two backend lines (`persist = "cnf"`). See [`cnf`].
//!
//! Listed is not serving: a backend Atlas just got is `unknown` until its
//! checker marks it `up`, every 4 s, and nothing makes that sooner. The
//! agent reports in sync only when the table matches and the rw backend is
//! `up`, reads the table every [`serving::SERVING_POLL`] while a wanted
//! backend waits to serve (measuring its time to serving), and alarms when
//! the rw backend has not been up for `rw_not_up_alarm`.
//!
//! The election never waits for Atlas: [`AtlasHandle::set_desired`] only
//! stores the wish, and every admin operation has a timeout. Failures are
//! logged with the command and Atlas's answer, shown in [`AtlasStatus`], and
//! retried with exponential backoff capped at the period.

pub mod client;
pub mod cnf;
pub mod owner;
pub mod reconcile;
pub mod secret;
pub mod serving;
pub mod table;

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::watch;

pub use client::{AdminConnection, ClientError, Timeouts};
pub use reconcile::{in_sync, next_step, Desired, Step};
pub use secret::{Password, PasswordError};
pub use table::{Backend, Kind, State};

use crate::operator::config::{AtlasConfig, AtlasPersist};
use cnf::{Access, CnfError, Item, Remembered};
use serving::Serving;

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
    /// `SAVE CONFIG`, then the `.cnf`'s mode, owner, weights and host names
    /// put back by the agent.
    SaveConfig(PathBuf),
    /// The agent rewrites the two backend lines of the `.cnf`.
    Cnf(PathBuf),
    None,
}

impl Persist {
    pub fn cnf_path(&self) -> Option<&Path> {
        match self {
            Persist::SaveConfig(p) | Persist::Cnf(p) => Some(p),
            Persist::None => None,
        }
    }
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
    /// Only log in to an admin port served by this uid.
    pub admin_uid: u32,
    /// Weights of ro backends written into the `.cnf` (`[atlas] ro_weights`).
    pub ro_weights: BTreeMap<SocketAddrV4, u32>,
    /// Alarm when the rw backend has not been `up` for this long.
    pub rw_not_up_alarm: Duration,
}

impl Settings {
    /// From a validated `[atlas]` section; reads the password file.
    pub fn from_config(c: &AtlasConfig) -> Result<Settings, PasswordError> {
        Ok(Self::with_password(c, Password::load(&c.password_file)?))
    }

    /// From a validated `[atlas]` section and its password, already read.
    pub fn with_password(c: &AtlasConfig, password: Password) -> Settings {
        Settings {
            admin_address: c.admin_address,
            user: c.user.clone(),
            password,
            persist: match (c.persist, &c.cnf_path) {
                (AtlasPersist::SaveConfig, Some(p)) => Persist::SaveConfig(p.clone()),
                (AtlasPersist::Cnf, Some(p)) => Persist::Cnf(p.clone()),
                // Validation requires cnf_path for both; be safe anyway.
                (_, None) | (AtlasPersist::None, _) => Persist::None,
            },
            period: c.period(),
            timeouts: Timeouts {
                connect: c.connect_timeout(),
                query: c.query_timeout(),
            },
            admin_uid: c.admin_uid,
            ro_weights: c.ro_weights.clone(),
            rw_not_up_alarm: c.rw_not_up_alarm(),
        }
    }

    /// What is wrong with the `.cnf`'s exposure, checked at start.
    pub fn cnf_warnings(&self) -> Vec<String> {
        let Some(path) = self.persist.cnf_path() else {
            return vec![];
        };
        let mut w = Vec::new();
        match Access::of(path) {
            Ok(a) if a.readable_by_others() => w.push(format!(
                "Atlas's config {} is readable by group/other (mode {:o}): it holds admin-password and pwds; run chmod 600 {} (the agent keeps the mode it finds)",
                path.display(),
                a.mode,
                path.display()
            )),
            Ok(_) => {}
            Err(e) => w.push(format!(
                "cannot read Atlas's config {}: {e} (check [atlas] cnf_path)",
                path.display()
            )),
        }
        if let Persist::SaveConfig(_) = self.persist {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if let Ok(m) = std::fs::metadata(dir) {
                if m.mode() & 0o001 != 0 {
                    w.push(format!(
                        "with persist = \"save_config\", Atlas's SAVE CONFIG leaves {} readable by every user (0644) until the agent restores its mode a few milliseconds later, and {} lets every user in (mode {:o}): make the directory 0750 or 0700, or use persist = \"cnf\"",
                        path.display(),
                        dir.display(),
                        m.mode() & 0o7777
                    ));
                }
            }
        }
        w
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
    #[error("refusing SAVE CONFIG: Atlas would make {path} readable by every user (0644) and the agent could not put its mode and owner back: {source}; fix that, or set [atlas] persist = \"cnf\"")]
    CannotRestore { path: PathBuf, source: CnfError },
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

/// A wanted backend: listed or not, serving (state `up`) or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServingStatus {
    pub address: SocketAddrV4,
    pub kind: Kind,
    /// Its state in the table as last read; None: not listed.
    pub state: Option<State>,
    pub serving: bool,
    #[serde(serialize_with = "ser_opt_time")]
    pub listed_since: Option<SystemTime>,
    #[serde(serialize_with = "ser_opt_time")]
    pub serving_since: Option<SystemTime>,
    /// From listed to `up`, the last time the agent saw it happen.
    pub time_to_serving_ms: Option<f64>,
}

/// What `ha-agent status` shows about Atlas.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AtlasStatus {
    /// The last reconciliation logged in to the admin port.
    pub reachable: bool,
    /// The table is as wanted, persisted, and its rw backend is `up`: set
    /// when a reconciliation ends so, cleared as soon as one finds or makes
    /// a difference.
    pub in_sync: bool,
    /// The table as last read lists exactly the wanted backends (whatever
    /// their state).
    pub listed: bool,
    pub desired: Option<Desired>,
    /// The table as last read.
    pub table: Vec<Backend>,
    /// Each wanted backend, rw first: listed, serving, time to serving.
    pub serving: Vec<ServingStatus>,
    /// Since when the wanted rw backend has not been `up` (None: it is).
    #[serde(serialize_with = "ser_opt_time")]
    pub rw_not_up_since: Option<SystemTime>,
    /// Set while the rw backend has not been up for longer than the bound.
    pub rw_alarm: Option<String>,
    /// About the `.cnf`'s exposure, found at start.
    pub cnf_warnings: Vec<String>,
    /// The most recent failure (kept after recovery; see consecutive_failures).
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_error_at: Option<SystemTime>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_ok_at: Option<SystemTime>,
    /// Changes applied since start (ADD/REMOVE commands that Atlas accepted).
    pub steps_applied: u64,
    /// Times the `.cnf` was brought up to date since start.
    pub persists: u64,
    pub consecutive_failures: u32,
    /// Reconciliations finished (ok or not) since start.
    pub rounds: u64,
    /// Rounds that failed since start.
    pub failures_total: u64,
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

/// What a `.cnf` check found, from the blocking task.
struct CnfPlan {
    text: String,
    access: Access,
    /// The backend lines the file should have (None: it has them).
    wanted: Option<(Vec<Item>, Vec<Item>)>,
    remembered: Remembered,
}

/// Reads the `.cnf` and compares its backend lines with the table.
fn plan_cnf(
    path: &Path,
    rw: &[SocketAddrV4],
    ro: &[SocketAddrV4],
    mut mem: Remembered,
) -> Result<CnfPlan, CnfError> {
    let (text, access) = cnf::read(path)?;
    let current = cnf::backend_items(&text).ok_or_else(|| CnfError::NoSection {
        path: path.to_owned(),
    })?;
    let mut resolve = cnf::system_resolve;
    mem.learn(&current.0, &current.1, &mut resolve);
    let wanted = cnf::wanted_items(&current, rw, ro, &mut mem, &mut resolve);
    Ok(CnfPlan {
        text,
        access,
        wanted,
        remembered: mem,
    })
}

/// Writes the backend lines the table needs into the file as it is now,
/// with mode and owner `access` (after `SAVE CONFIG`: what the file had).
fn restore_cnf(
    path: &Path,
    rw: &[SocketAddrV4],
    ro: &[SocketAddrV4],
    access: Access,
    mem: Remembered,
) -> Result<Remembered, CnfError> {
    let plan = plan_cnf(path, rw, ro, mem)?;
    let text = match &plan.wanted {
        Some((w_rw, w_ro)) => {
            cnf::render(&plan.text, w_rw, w_ro).ok_or_else(|| CnfError::NoSection {
                path: path.to_owned(),
            })?
        }
        None => plan.text.clone(),
    };
    cnf::write_as(path, &text, access)?;
    Ok(plan.remembered)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CnfError> + Send + 'static,
) -> Result<T, AtlasError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AtlasError::Task(e.to_string()))?
        .map_err(AtlasError::from)
}

/// The task that owns the admin connection.
pub struct AtlasReconciler {
    settings: Settings,
    status: watch::Sender<AtlasStatus>,
    /// Weights and host names the operator wrote, by address.
    remembered: Remembered,
    /// The `.cnf`'s mode and owner as the operator keeps them: first seen
    /// at start; a later change is adopted unless it exposes the file to
    /// group/other (what `SAVE CONFIG` does, ours or an operator's), which
    /// is put back.
    reference: Option<Access>,
    serving: Serving,
}

impl AtlasReconciler {
    /// Starts the task on the current tokio runtime (like `tokio::spawn`, it
    /// must be called from within one). Nothing is changed in
    /// Atlas until [`AtlasHandle::set_desired`]; until then the table is only
    /// read, every period.
    pub fn spawn(settings: Settings) -> AtlasHandle {
        let (desired_tx, desired_rx) = watch::channel(None);
        let warnings = settings.cnf_warnings();
        for w in &warnings {
            tracing::warn!("atlas: {w}");
        }
        let (status_tx, status_rx) = watch::channel(AtlasStatus {
            cnf_warnings: warnings,
            ..Default::default()
        });
        let reconciler = AtlasReconciler {
            remembered: Remembered::new(settings.ro_weights.clone()),
            serving: Serving::new(settings.rw_not_up_alarm),
            settings,
            status: status_tx,
            reference: None,
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
        let mut conn = match AdminConnection::connect(
            s.admin_address,
            &s.user,
            &s.password,
            s.admin_uid,
            s.timeouts,
        )
        .await
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
        self.observe(&table, desired);
        self.status.send_modify(|st| {
            // in_sync stays true through a round that changes nothing, and
            // turns false as soon as the wish or the table differs.
            st.in_sync = st.in_sync
                && st.desired.as_ref() == desired
                && desired.is_some_and(|d| serving_sync(&table, d));
            st.desired = desired.cloned();
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
            self.observe(&after, Some(desired));
            self.status.send_modify(|st| {
                st.steps_applied += 1;
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

    /// Feeds a table read to the serving tracker; logs what changed and
    /// updates the status.
    fn observe(&mut self, table: &[Backend], desired: Option<&Desired>) {
        let now = Instant::now();
        for e in self.serving.observe(now, table, desired) {
            match e {
                serving::Event::Serving { address, kind, after } => match after {
                    Some(d) => tracing::info!(
                        "atlas: {kind} {address} is serving (state up), {:.2} s after it was listed",
                        d.as_secs_f64()
                    ),
                    None => tracing::debug!("atlas: {kind} {address} is serving (state up)"),
                },
                serving::Event::RwAlarm { address, state, for_ } => tracing::warn!(
                    "atlas: ALARM: the rw backend {address} has not been up for {:.1} s ({}): writes through Atlas fail",
                    for_.as_secs_f64(),
                    state.map_or("not listed".to_string(), |s| format!("state {s}"))
                ),
                serving::Event::RwRecovered { address, after } => tracing::info!(
                    "atlas: the rw backend {address} is up again after {:.1} s",
                    after.as_secs_f64()
                ),
            }
        }
        let to_system =
            |i: Instant| SystemTime::now().checked_sub(now.saturating_duration_since(i));
        let serving: Vec<ServingStatus> = self
            .serving
            .entries()
            .into_iter()
            .map(|e| ServingStatus {
                address: e.address,
                kind: e.kind,
                state: e.state,
                serving: e.serving(),
                listed_since: e.listed_since.and_then(to_system),
                serving_since: e.up_since.and_then(to_system),
                time_to_serving_ms: e.time_to_serving.map(crate::operator::status::millis),
            })
            .collect();
        let bound = self.serving.bound();
        let rw_not_up = self.serving.rw_not_up();
        let listed = desired.is_some_and(|d| in_sync(table, d));
        self.status.send_modify(|st| {
            st.table = table.to_vec();
            st.listed = listed;
            st.serving = serving;
            st.rw_not_up_since = rw_not_up.and_then(|(s, _)| to_system(s));
            st.rw_alarm = match (rw_not_up, desired) {
                (Some((since, true)), Some(d)) => Some(format!(
                    "the rw backend {} has not been up in Atlas for {:.1} s (bound {:.1} s): writes through Atlas fail",
                    d.rw,
                    now.saturating_duration_since(since).as_secs_f64(),
                    bound.as_secs_f64()
                )),
                _ => None,
            };
        });
    }

    /// Brings the `.cnf` up to date with a table that matches, if it is not.
    async fn persist(
        &mut self,
        conn: &mut AdminConnection,
        table: &[Backend],
    ) -> Result<(), AtlasError> {
        let (rw, ro) = table::addresses(table);
        match self.settings.persist.clone() {
            Persist::None => Ok(()),
            Persist::Cnf(path) => {
                let (plan, exposed) = self.check_cnf(&path, &rw, &ro).await?;
                let access = exposed.unwrap_or(plan.access);
                if plan.wanted.is_none() && exposed.is_none() {
                    return Ok(());
                }
                let (w_rw, w_ro) = plan
                    .wanted
                    .unwrap_or_else(|| cnf::backend_items(&plan.text).unwrap_or_default());
                let p = path.clone();
                let what = format!("rewrite {}", path.display());
                let r = blocking(move || {
                    let text = cnf::render(&plan.text, &w_rw, &w_ro)
                        .ok_or(CnfError::NoSection { path: p.clone() })?;
                    cnf::write_as(&p, &text, access)
                })
                .await;
                self.record(&what, r.as_ref().err().map(|e| e.to_string()));
                r?;
                tracing::info!("atlas: rewrote the backend lines of {}", path.display());
                self.status.send_modify(|st| st.persists += 1);
                Ok(())
            }
            Persist::SaveConfig(path) => self.save_config(conn, &path, rw, ro).await,
        }
    }

    /// Reads the `.cnf` (learning its weights and host names) and compares
    /// it with the table; also returns the mode and owner to put back if
    /// it was exposed (see [`Self::settle`]).
    async fn check_cnf(
        &mut self,
        path: &Path,
        rw: &[SocketAddrV4],
        ro: &[SocketAddrV4],
    ) -> Result<(CnfPlan, Option<Access>), AtlasError> {
        let (p, r, o, mem) = (
            path.to_owned(),
            rw.to_vec(),
            ro.to_vec(),
            self.remembered.clone(),
        );
        let plan = blocking(move || plan_cnf(&p, &r, &o, mem)).await?;
        self.remembered = plan.remembered.clone();
        let exposed = self.settle(path, plan.access);
        Ok((plan, exposed))
    }

    /// `SAVE CONFIG` when the file is out of date, then the file's mode,
    /// owner, weights and host names put back.
    async fn save_config(
        &mut self,
        conn: &mut AdminConnection,
        path: &Path,
        rw: Vec<SocketAddrV4>,
        ro: Vec<SocketAddrV4>,
    ) -> Result<(), AtlasError> {
        // The mode and owner to keep: the operator's, also when an earlier
        // SAVE CONFIG (whose restore failed, or an operator's) exposed it.
        let (plan, exposed) = self.check_cnf(path, &rw, &ro).await?;
        let access = exposed.unwrap_or(plan.access);
        let restore_what = format!(
            "restore {} (mode {:o}, owner {}:{}, weights and host names)",
            path.display(),
            access.mode,
            access.uid,
            access.gid
        );
        if plan.wanted.is_none() {
            if exposed.is_some() {
                let (p, r, o, mem) = (path.to_owned(), rw, ro, self.remembered.clone());
                let res = blocking(move || restore_cnf(&p, &r, &o, access, mem)).await;
                self.record(&restore_what, res.as_ref().err().map(|e| e.to_string()));
                self.remembered = res?;
            }
            return Ok(());
        }
        // Refuse before Atlas makes the file world-readable if the agent
        // could not put it back.
        let p = path.to_owned();
        blocking(move || cnf::check_writable(&p, access))
            .await
            .map_err(|e| match e {
                AtlasError::Cnf(source) => AtlasError::CannotRestore {
                    path: path.to_owned(),
                    source,
                },
                other => other,
            })?;
        let r = conn.query("SAVE CONFIG").await.map(drop);
        self.record("SAVE CONFIG", r.as_ref().err().map(|e| e.to_string()));
        r?;
        let (p, mem) = (path.to_owned(), self.remembered.clone());
        let res = blocking(move || restore_cnf(&p, &rw, &ro, access, mem)).await;
        self.record(&restore_what, res.as_ref().err().map(|e| e.to_string()));
        self.remembered = res?;
        tracing::info!(
            "atlas: SAVE CONFIG, then {} given back mode {:o} and owner {}:{} (Atlas leaves it 0644) and its weights and host names",
            path.display(),
            access.mode,
            access.uid,
            access.gid
        );
        self.status.send_modify(|st| st.persists += 1);
        Ok(())
    }

    /// Compares the `.cnf`'s mode and owner with the operator's; returns
    /// them when the file must get them back (group or other may now read
    /// what they could not, which only a `SAVE CONFIG` does unasked).
    fn settle(&mut self, path: &Path, found: Access) -> Option<Access> {
        let Some(r) = self.reference else {
            self.reference = Some(found);
            return None;
        };
        if found == r {
            None
        } else if found.exposes_more_than(&r) {
            tracing::warn!(
                "atlas: {} is mode {:o} owner {}:{} (a SAVE CONFIG?), putting back mode {:o} owner {}:{}",
                path.display(),
                found.mode,
                found.uid,
                found.gid,
                r.mode,
                r.uid,
                r.gid
            );
            Some(r)
        } else {
            // The operator's own change.
            self.reference = Some(found);
            None
        }
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
                    st.in_sync = desired.as_ref().is_some_and(|d| serving_sync(&st.table, d));
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
                    st.failures_total = st.failures_total.saturating_add(1);
                    st.last_error = Some(msg);
                    st.last_error_at = Some(SystemTime::now());
                    st.in_sync = false;
                    delay = retry_delay(period, st.consecutive_failures);
                }
            }
            st.desired = desired;
        });
        // Sooner while a wanted backend waits for Atlas's checker, or when
        // the rw alarm is due.
        let now = Instant::now();
        if let Some(at) = self.serving.next_read(now) {
            delay = delay.min(at.saturating_duration_since(now));
        }
        delay
    }
}

/// The table lists what is wanted and the rw backend serves (state `up`):
/// what "in sync" means (with the `.cnf` persisted).
pub fn serving_sync(table: &[Backend], desired: &Desired) -> bool {
    in_sync(table, desired)
        && table
            .iter()
            .any(|b| b.kind == Kind::Rw && b.address == desired.rw && b.state == State::Up)
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
            admin_uid: 0,
            ro_weights: BTreeMap::new(),
            rw_not_up_alarm: Duration::from_secs(10),
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
