//! The local database's controller: one task owns the [`MysqlDriver`] and
//! makes the server what the election's role asks for ([`DbWish`]), so the
//! election loop never waits for MySQL. The daemon only sets the wish
//! (a `watch`, never blocking) and hears back, through a channel, when the
//! server's fitness or the replica's caught-up state changes.
//!
//! - [`DbWish::Fenced`] (INIT, FAULT, BACKUP without a MASTER peer, and at
//!   start, before the peer is heard): read-only at once, and again whenever
//!   a probe finds the server writable (a restarted MariaDB comes back
//!   writable).
//! - [`DbWish::Primary`] (MASTER): promote; while it is not caught up, or
//!   fails, again every `check_interval_ms`. A change of wish drops a
//!   running promotion at once (the next probe re-fences what a dropped
//!   statement may still have changed).
//! - [`DbWish::ReplicaOf`] (BACKUP while the peer is MASTER): rejoin until
//!   both replication threads run, backing off on repeated failures. Errant
//!   GTIDs stop the retries and are kept for the status until an operator
//!   runs `ha-agent rejoin --force` (or the wish changes).
//!
//! Every `check_interval_ms` a probe feeds the [`DownTracker`] and the
//! status.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tracing::{error, info, warn};

use crate::decisions::election::{Control, Role};
use crate::drivers::mysql::fitness::{DownTracker, Fitness};
use crate::drivers::mysql::gtid::Errant;
use crate::drivers::mysql::{
    FenceReport, Health, MysqlDriver, MysqlError, PromotionReport, RejoinError, RejoinReport,
    SemisyncReport,
};
use crate::operator::status::database::{
    DatabaseStatus, ErrantStatus, PromotionStatus, RejoinStatus, ReplicationStatus,
};
use crate::operator::status::rfc3339;

/// Rejoin retries back off up to this many check intervals.
const MAX_BACKOFF_INTERVALS: u32 = 10;

/// What a node says about semi-synchronous replication in every signed
/// probe (`Control::semisync`). The election only carries it; the database
/// controllers on both sides decide with it.
///
/// A primary says whether a commit it acknowledges is surely on this peer
/// (`Effective`), or may not be (`Asynchronous`, said before it ever
/// acknowledges a commit without the peer). A replica says whether it
/// acknowledges, and echoes the primary's latest `Asynchronous`
/// announcement (`noted`): from then on it does not promote itself
/// automatically after the primary's death (with `durability = "strict"`),
/// and the primary may stop waiting for it. Announcements are numbered
/// from 1 (wrapping, never 0); 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SemisyncAdvert {
    /// Nothing to say: no semi-sync configured, not a primary or replica
    /// of the peer, or not known yet.
    #[default]
    None,
    /// Primary: every commit waits for this peer's acknowledgement, and
    /// has since the peer caught up.
    Effective,
    /// Primary: commits may be, or are about to be, acknowledged without
    /// the peer. `episode` numbers the announcement.
    Asynchronous { episode: u8 },
    /// Replica of the peer: its IO thread acknowledges the peer's commits;
    /// `noted`: the primary's latest `Asynchronous` announcement heard
    /// since it last said `Effective` (0: none).
    Acking { noted: u8 },
    /// Replica, not acknowledging: heard the primary's
    /// `Asynchronous { episode }`.
    AsyncNoted { episode: u8 },
}

impl SemisyncAdvert {
    /// Two bytes on the wire: the kind, then the announcement number (0
    /// when none).
    pub fn to_wire(self) -> [u8; 2] {
        match self {
            SemisyncAdvert::None => [0, 0],
            SemisyncAdvert::Effective => [1, 0],
            SemisyncAdvert::Asynchronous { episode } => [2, episode],
            SemisyncAdvert::Acking { noted } => [3, noted],
            SemisyncAdvert::AsyncNoted { episode } => [4, episode],
        }
    }

    /// None for an unknown kind (the probe is then refused).
    pub fn from_wire(b: [u8; 2]) -> Option<SemisyncAdvert> {
        Some(match b[0] {
            0 => SemisyncAdvert::None,
            1 => SemisyncAdvert::Effective,
            2 => SemisyncAdvert::Asynchronous { episode: b[1] },
            3 => SemisyncAdvert::Acking { noted: b[1] },
            4 => SemisyncAdvert::AsyncNoted { episode: b[1] },
            _ => return None,
        })
    }

    /// A replica that acknowledges.
    pub fn is_acking(self) -> bool {
        matches!(self, SemisyncAdvert::Acking { .. })
    }

    /// A replica that heard announcement `episode`.
    pub fn noted(self, episode: u8) -> bool {
        episode != 0
            && matches!(self, SemisyncAdvert::Acking { noted } | SemisyncAdvert::AsyncNoted { episode: noted } if noted == episode)
    }
}

impl fmt::Display for SemisyncAdvert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SemisyncAdvert::None => f.write_str("none"),
            SemisyncAdvert::Effective => f.write_str("effective"),
            SemisyncAdvert::Asynchronous { episode } => {
                write!(f, "asynchronous (announcement {episode})")
            }
            SemisyncAdvert::Acking { noted: 0 } => f.write_str("acking"),
            SemisyncAdvert::Acking { noted } => write!(
                f,
                "acking; heard the primary go asynchronous (announcement {noted})"
            ),
            SemisyncAdvert::AsyncNoted { episode } => write!(
                f,
                "not acking; heard the primary go asynchronous (announcement {episode})"
            ),
        }
    }
}

/// What the local server should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbWish {
    /// Read-only, whatever else it does.
    Fenced,
    /// Writable primary.
    Primary,
    /// Read-only replica of the peer's server at this address.
    ReplicaOf(SocketAddr),
}

impl fmt::Display for DbWish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbWish::Fenced => f.write_str("fenced"),
            DbWish::Primary => f.write_str("primary"),
            DbWish::ReplicaOf(a) => write!(f, "replica of {a}"),
        }
    }
}

/// The wish for a role. `peer` is the peer's control while it is heard
/// (None when silent); `peer_db` its server's address. `fresh_takeover`:
/// we hold the VIPs because the holder fell silent moments ago, and hand
/// them back if it speaks again within the election's reclaim window. Until
/// that window closes the server stays fenced (its replica keeps
/// receiving): a holder that was only stalled must never meet a second
/// writable primary. The promotion waits one reclaim window (tens of ms).
pub fn wish_for(
    role: Role,
    fresh_takeover: bool,
    peer: Option<&Control>,
    peer_db: SocketAddr,
) -> DbWish {
    match role {
        Role::Master if fresh_takeover => DbWish::Fenced,
        Role::Master => DbWish::Primary,
        Role::Backup if peer.is_some_and(|p| p.role == Role::Master) => DbWish::ReplicaOf(peer_db),
        Role::Backup | Role::Init | Role::Fault => DbWish::Fenced,
    }
}

/// What the daemon tells the election about the local database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDb {
    /// Not down for `down_handover_ms` (see [`DownTracker`]).
    pub fit: bool,
    /// Replicating from the MASTER peer and caught up: may serve reads.
    pub replica_ok: bool,
    /// Advertised to the peer (see [`SemisyncAdvert`]).
    pub semisync: SemisyncAdvert,
}

impl Default for LocalDb {
    /// Without a managed database: fit, and no replica to offer.
    fn default() -> Self {
        LocalDb {
            fit: true,
            replica_ok: false,
            semisync: SemisyncAdvert::None,
        }
    }
}

/// Whether a replica may serve reads, with hysteresis so a busy replica does
/// not flap in and out of Atlas: it enters once it has applied everything it
/// received (the seed's "Slave has read all relay log", checked by GTID)
/// with both threads running and lag at most `max_lag_s`; it stays while
/// both threads run from the peer and the lag stays within `max_lag_s`.
pub fn replica_caught_up(was_ok: bool, wish: DbWish, h: &Health, max_lag_s: u64) -> bool {
    let DbWish::ReplicaOf(peer) = wish else {
        return false;
    };
    let Some(r) = h.replica.as_ref().filter(|_| h.up) else {
        return false;
    };
    let running = r.source == peer.to_string() && r.io_running && r.sql_running;
    let lag_ok = r.seconds_behind.is_some_and(|s| s <= max_lag_s);
    running && lag_ok && (was_ok || r.all_relay_applied)
}

fn replicating_from(h: &Health, peer: SocketAddr) -> bool {
    h.replica
        .as_ref()
        .is_some_and(|r| r.source == peer.to_string() && r.io_running && r.sql_running)
}

/// Why replication from `peer` is configured but its applier stopped on an
/// error: that needs an operator, not another rejoin.
fn applier_stopped(h: &Health, peer: SocketAddr) -> Option<String> {
    let r = h
        .replica
        .as_ref()
        .filter(|r| r.source == peer.to_string())?;
    let e = r.last_sql_error.as_ref().filter(|_| !r.sql_running)?;
    Some(format!(
        "replication from {peer} is stopped by SQL error {}: {}; not rejoining: resolve it by hand (SHOW SLAVE STATUS), then START SLAVE",
        e.code, e.message
    ))
}

/// Delay before the next rejoin after `failures` failures in a row.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (interval * (1u32 << doublings)).min(interval * MAX_BACKOFF_INTERVALS)
}

/// The answer to `ha-agent rejoin --force`.
pub type ForceResult = Result<RejoinReport, String>;

/// The daemon's side of the controller. Dropping it stops the task.
pub struct DbHandle {
    wish: watch::Sender<DbWish>,
    /// The peer's agent is heard right now (see [`DbHandle::set_peer_heard`]).
    peer_heard: Arc<AtomicBool>,
    status: watch::Receiver<DatabaseStatus>,
    force: mpsc::Sender<oneshot::Sender<ForceResult>>,
    driver: Arc<MysqlDriver>,
    task: tokio::task::AbortHandle,
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DbHandle {
    /// Starts the controller on the current runtime. It fences the server
    /// at once; the receiver gets every change of [`LocalDb`].
    pub fn spawn(driver: MysqlDriver) -> (DbHandle, mpsc::UnboundedReceiver<LocalDb>) {
        let driver = Arc::new(driver);
        let (wish_tx, wish_rx) = watch::channel(DbWish::Fenced);
        let (status_tx, status_rx) = watch::channel(DatabaseStatus {
            server: driver.config().address.to_string(),
            wanted: DbWish::Fenced.to_string(),
            role: "unknown".into(),
            fit: true,
            fitness: "fit".into(),
            ..Default::default()
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (force_tx, force_rx) = mpsc::channel(4);
        let cfg = driver.config();
        let peer_heard = Arc::new(AtomicBool::new(false));
        let controller = Controller {
            peer_heard: peer_heard.clone(),
            interval: cfg.check_interval(),
            tracker: DownTracker::new(cfg.down_handover()),
            max_lag_s: cfg.max_replica_lag_s,
            semisync: cfg.semisync,
            driver: driver.clone(),
            wish: DbWish::Fenced,
            fitness: Fitness::Fit,
            health: None,
            replica_ok: false,
            reported: LocalDb::default(),
            met: false,
            semisync_done: false,
            failures: 0,
            next_attempt: None,
            acted_at: None,
            errant: None,
            force_reply: None,
            running: None,
            last_promotion: None,
            last_rejoin: None,
            last_error: None,
            events: events_tx,
            status: status_tx,
        };
        let task = tokio::spawn(controller.run(wish_rx, force_rx)).abort_handle();
        (
            DbHandle {
                wish: wish_tx,
                peer_heard,
                status: status_rx,
                force: force_tx,
                driver,
                task,
            },
            events_rx,
        )
    }

    /// Sets what the server should be; returns whether it changed.
    pub fn set_wish(&self, wish: DbWish) -> bool {
        self.wish.send_if_modified(|cur| {
            if *cur == wish {
                false
            } else {
                *cur = wish;
                true
            }
        })
    }

    /// Whether the peer's agent is heard. A promotion that starts while it
    /// is (a planned handover, not a death) first drains the old primary.
    /// Not part of the wish: the old agent going quiet (it exits after
    /// handing over) must not restart a promotion under way.
    pub fn set_peer_heard(&self, heard: bool) {
        self.peer_heard.store(heard, Ordering::Relaxed);
    }

    /// The peer's server (`mysql.peer_address`).
    pub fn peer(&self) -> SocketAddr {
        self.driver.peer()
    }

    pub fn wish(&self) -> DbWish {
        *self.wish.borrow()
    }

    pub fn status(&self) -> DatabaseStatus {
        self.status.borrow().clone()
    }

    /// Notified on every status change (for tests; no sleeping needed).
    pub fn watch(&self) -> watch::Receiver<DatabaseStatus> {
        self.status.clone()
    }

    /// `ha-agent rejoin --force`: rejoin the peer giving up errant
    /// transactions. Only while the wish is to replicate from the peer.
    pub fn rejoin_force(&self) -> oneshot::Receiver<ForceResult> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.force.try_send(tx) {
            let tx = match e {
                mpsc::error::TrySendError::Full(tx) | mpsc::error::TrySendError::Closed(tx) => tx,
            };
            let _ = tx.send(Err(
                "another forced rejoin is already queued, or the database controller stopped"
                    .into(),
            ));
        }
        rx
    }

    /// Fences the server now, within `bound` (the controller fences too, on
    /// its own schedule; fencing is idempotent).
    pub async fn fence_now(&self, bound: Duration) -> Result<FenceReport, String> {
        match tokio::time::timeout(bound, self.driver.fence()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "MySQL at {} was not fenced within {bound:?}; check that it is read-only",
                self.driver.config().address
            )),
        }
    }

    /// Stops the controller (dropping whatever it was doing) and fences the
    /// server, within `bound`: a stopping agent must not leave a writable
    /// primary behind the peer's back.
    pub async fn stop_fenced(&self, bound: Duration) -> Result<FenceReport, String> {
        self.task.abort();
        self.fence_now(bound).await
    }
}

enum Action {
    Promote,
    Rejoin { peer: SocketAddr, force: bool },
    Semisync { as_primary: bool },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Rejoin { force: false, .. } => "rejoin",
            Action::Rejoin { force: true, .. } => "forced rejoin",
            Action::Semisync { .. } => "enable semi-sync",
        }
    }
}

enum Outcome {
    Promoted(Result<PromotionReport, MysqlError>),
    Rejoined {
        peer: SocketAddr,
        force: bool,
        // Boxed: a rejoin report is several times the size of the others.
        result: Box<Result<RejoinReport, RejoinError>>,
    },
    Semisync(Result<SemisyncReport, MysqlError>),
}

/// The rejoin refused because of errant transactions.
struct Blocked {
    peer: SocketAddr,
    errant: Errant,
    since: SystemTime,
}

struct Controller {
    driver: Arc<MysqlDriver>,
    peer_heard: Arc<AtomicBool>,
    interval: Duration,
    tracker: DownTracker,
    max_lag_s: u64,
    semisync: bool,
    wish: DbWish,
    fitness: Fitness,
    health: Option<Health>,
    replica_ok: bool,
    /// What the daemon last heard.
    reported: LocalDb,
    /// The wish is met: set by a successful action, cleared by a change of
    /// wish or a probe that contradicts it.
    met: bool,
    semisync_done: bool,
    failures: u32,
    next_attempt: Option<Instant>,
    /// When the last action finished.
    acted_at: Option<Instant>,
    errant: Option<Blocked>,
    force_reply: Option<oneshot::Sender<ForceResult>>,
    /// The action in flight (for the status).
    running: Option<(&'static str, SystemTime)>,
    last_promotion: Option<(SystemTime, PromotionReport)>,
    last_rejoin: Option<(SystemTime, RejoinReport)>,
    last_error: Option<(SystemTime, String)>,
    events: mpsc::UnboundedSender<LocalDb>,
    status: watch::Sender<DatabaseStatus>,
}

async fn finish<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    async fn run(
        mut self,
        mut wish_rx: watch::Receiver<DbWish>,
        mut force_rx: mpsc::Receiver<oneshot::Sender<ForceResult>>,
    ) {
        let mut probe: Option<BoxFuture<'static, (Instant, Health)>> = None;
        // Fence at once: before the agent has heard its peer.
        let mut fence = Some(self.start_fence());
        let mut action: Option<BoxFuture<'static, Outcome>> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if action.is_none() {
                action = self.next_action(fence.is_some());
            }
            self.publish();
            let retry = self.next_attempt.filter(|_| action.is_none());
            tokio::select! {
                changed = wish_rx.changed() => {
                    if changed.is_err() {
                        return; // the handle is gone
                    }
                    let wish = *wish_rx.borrow_and_update();
                    if wish != self.wish {
                        if action.take().is_some() {
                            self.cancelled();
                        }
                        self.on_wish(wish);
                        if wish != DbWish::Primary && fence.is_none() {
                            fence = Some(self.start_fence());
                        }
                    }
                }
                _ = tick.tick(), if probe.is_none() => probe = Some(self.start_probe()),
                (started, h) = finish(&mut probe) => {
                    probe = None;
                    if self.on_health(started, h) && fence.is_none() {
                        fence = Some(self.start_fence());
                    }
                }
                r = finish(&mut fence) => {
                    fence = None;
                    if let Err(e) = r {
                        self.failed("fence", e.to_string());
                    }
                    // Show (and advertise) the new state now, not a tick later.
                    probe.get_or_insert_with(|| self.start_probe());
                }
                o = finish(&mut action) => {
                    action = None;
                    self.running = None;
                    self.acted_at = Some(Instant::now());
                    self.on_outcome(o);
                    probe.get_or_insert_with(|| self.start_probe());
                }
                Some(reply) = force_rx.recv() => {
                    match self.wish {
                        DbWish::ReplicaOf(peer) => {
                            if action.take().is_some() {
                                self.cancelled();
                            }
                            self.force_reply = Some(reply);
                            action = Some(self.start(Action::Rejoin { peer, force: true }));
                        }
                        other => {
                            let _ = reply.send(Err(format!(
                                "a forced rejoin needs this node to be BACKUP with the peer MASTER (the database is wanted {other} now)"
                            )));
                        }
                    }
                }
                _ = sleep_until_opt(retry) => self.next_attempt = None,
            }
        }
    }

    fn start_probe(&self) -> BoxFuture<'static, (Instant, Health)> {
        let d = self.driver.clone();
        Box::pin(async move { (Instant::now(), d.probe().await) })
    }

    fn start_fence(&self) -> BoxFuture<'static, Result<FenceReport, MysqlError>> {
        let d = self.driver.clone();
        Box::pin(async move { d.fence().await })
    }

    fn start(&mut self, a: Action) -> BoxFuture<'static, Outcome> {
        self.running = Some((a.name(), SystemTime::now()));
        let d = self.driver.clone();
        let cfg = d.config();
        let (timeout, policy) = (cfg.catchup_timeout(), cfg.catchup_policy);
        match a {
            Action::Promote => {
                let old_primary = self.peer_heard.load(Ordering::Relaxed).then(|| d.peer());
                Box::pin(async move {
                    Outcome::Promoted(d.promote_after(timeout, policy, old_primary).await)
                })
            }
            Action::Rejoin { peer, force } => Box::pin(async move {
                let result = Box::new(d.rejoin(peer, force).await);
                Outcome::Rejoined {
                    peer,
                    force,
                    result,
                }
            }),
            Action::Semisync { as_primary } => {
                Box::pin(async move { Outcome::Semisync(d.enable_semisync(as_primary).await) })
            }
        }
    }

    /// What to do next for the wish, if anything is due.
    fn next_action(&mut self, fencing: bool) -> Option<BoxFuture<'static, Outcome>> {
        let due = self.next_attempt.is_none_or(|t| Instant::now() >= t);
        let action = match self.wish {
            DbWish::Fenced => return None,
            DbWish::Primary if self.met => Action::Semisync { as_primary: true },
            // A fence in flight could land after the unfence: let it finish.
            DbWish::Primary if fencing || !due => return None,
            DbWish::Primary => Action::Promote,
            DbWish::ReplicaOf(_) if self.errant.is_some() => return None,
            DbWish::ReplicaOf(_) if self.met => Action::Semisync { as_primary: false },
            DbWish::ReplicaOf(_) if !due => return None,
            DbWish::ReplicaOf(peer) => {
                if let Some(stopped) = self.health.as_ref().and_then(|h| applier_stopped(h, peer)) {
                    // A rejoin cannot fix a conflict in the data, and would
                    // restart replication from a recomputed position.
                    self.failed("rejoin", stopped);
                    self.next_attempt = Some(Instant::now() + self.interval);
                    return None;
                }
                Action::Rejoin { peer, force: false }
            }
        };
        if matches!(action, Action::Semisync { .. }) && (!self.semisync || self.semisync_done) {
            return None;
        }
        Some(self.start(action))
    }

    fn cancelled(&mut self) {
        if let Some((name, _)) = self.running.take() {
            info!(
                action = name,
                "mysql: {name} cancelled: this node's role changed"
            );
        }
        if let Some(reply) = self.force_reply.take() {
            let _ = reply.send(Err(
                "cancelled: this node's role changed while rejoining".into()
            ));
        }
    }

    fn on_wish(&mut self, wish: DbWish) {
        info!(from = %self.wish, to = %wish, "mysql: wanted state changed");
        self.wish = wish;
        self.met = false;
        self.semisync_done = false;
        self.failures = 0;
        self.next_attempt = None;
        // A new role, a new attempt: a still-errant history blocks again at once.
        self.errant = None;
        self.replica_ok = match &self.health {
            Some(h) => replica_caught_up(self.replica_ok, wish, h, self.max_lag_s),
            None => false,
        };
        self.report();
    }

    /// Takes in a probe started at `started`; returns whether the server
    /// must be fenced.
    fn on_health(&mut self, started: Instant, h: Health) -> bool {
        let now = Instant::now();
        let was = self.fitness;
        self.fitness = self.tracker.observe(h.up, now);
        match (was.is_unfit(), self.fitness) {
            (false, Fitness::Unfit { down_for }) => {
                error!(down_ms = down_for.as_millis() as u64, errors = ?h.errors, "mysql: the local server has been down for the handover threshold: this node is now UNFIT to hold the VIPs")
            }
            (true, Fitness::Fit) => info!("mysql: the local server answers again: fit"),
            (false, Fitness::Failing { down_for }) if down_for.is_zero() => {
                warn!(errors = ?h.errors, "mysql: the local server does not answer")
            }
            _ => {}
        }
        let fence = self.wish != DbWish::Primary && h.up && h.writable;
        if fence {
            warn!(wanted = %self.wish, "mysql: the local server is WRITABLE although this node is not MASTER (restarted?): fencing it");
        }
        // A probe that began before the last action ended may show the old state.
        let current = self.acted_at.is_none_or(|t| started > t);
        if h.up && self.met && current {
            let contradicted = match self.wish {
                DbWish::Primary => !h.writable,
                DbWish::ReplicaOf(peer) => !replicating_from(&h, peer),
                DbWish::Fenced => false,
            };
            if contradicted {
                info!(wanted = %self.wish, "mysql: the local server is no longer as wanted: acting again");
                self.met = false;
            }
        }
        self.replica_ok = replica_caught_up(self.replica_ok, self.wish, &h, self.max_lag_s);
        self.health = Some(h);
        self.report();
        fence
    }

    fn on_outcome(&mut self, o: Outcome) {
        let now = SystemTime::now();
        match o {
            Outcome::Promoted(Ok(rep)) => {
                self.met = true;
                self.failures = 0;
                self.semisync_done = rep.semisync.is_some();
                self.last_promotion = Some((now, rep));
            }
            Outcome::Promoted(Err(e)) => {
                self.failures += 1;
                // Retried every interval while MASTER: a stuck applier needs
                // an operator, a slow one finishes on a later attempt.
                self.next_attempt = Some(Instant::now() + self.interval);
                self.failed("promote", e.to_string());
            }
            Outcome::Rejoined {
                peer,
                force,
                result,
            } => self.on_rejoin(peer, force, *result, now),
            Outcome::Semisync(r) => {
                self.semisync_done = true;
                if let Err(e) = r {
                    self.failed("enable semi-sync", e.to_string());
                }
            }
        }
    }

    fn on_rejoin(
        &mut self,
        peer: SocketAddr,
        force: bool,
        result: Result<RejoinReport, RejoinError>,
        now: SystemTime,
    ) {
        let reply = self.force_reply.take();
        match result {
            Ok(rep) => {
                let running = rep.io_running && rep.sql_running;
                if running {
                    self.met = true;
                    self.failures = 0;
                    self.semisync_done = rep.semisync.is_some();
                } else {
                    self.failures += 1;
                    self.next_attempt =
                        Some(Instant::now() + backoff(self.interval, self.failures));
                    self.failed(
                        "rejoin",
                        format!("replication from {peer} configured but its threads are not running yet (IO {}, SQL {})", rep.io_running, rep.sql_running),
                    );
                }
                if force {
                    self.errant = None;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(rep.clone()));
                }
                // A no-op rejoin (already replicating) says nothing new.
                if !rep.already_replicating || self.last_rejoin.is_none() {
                    self.last_rejoin = Some((now, rep));
                }
            }
            Err(RejoinError::Errant { errant, .. }) if !force => {
                error!(peer = %peer, errant = %errant, "mysql: REJOIN BLOCKED: this server has transactions the new primary lacks; not retrying. Save them (mysqlbinlog), then run `ha-agent rejoin --force` to give them up, or re-clone this server");
                self.last_error = Some((
                    now,
                    format!("rejoin blocked by errant transactions: {errant}"),
                ));
                self.errant = Some(Blocked {
                    peer,
                    errant,
                    since: now,
                });
            }
            Err(e) => {
                self.failures += 1;
                self.next_attempt = Some(Instant::now() + backoff(self.interval, self.failures));
                let msg = e.to_string();
                if let Some(reply) = reply {
                    let _ = reply.send(Err(msg.clone()));
                }
                self.failed(if force { "forced rejoin" } else { "rejoin" }, msg);
            }
        }
    }

    /// Records a failure; logs it when it differs from the previous one
    /// (the same failure every interval would flood the log).
    fn failed(&mut self, what: &str, message: String) {
        let text = format!("{what}: {message}");
        if self.last_error.as_ref().map(|(_, m)| m) != Some(&text) {
            warn!(wanted = %self.wish, "mysql: {text}");
        }
        self.last_error = Some((SystemTime::now(), text));
    }

    fn report(&mut self) {
        let now = LocalDb {
            fit: !self.fitness.is_unfit(),
            replica_ok: self.replica_ok,
            // Filled in by the semi-sync work that follows.
            semisync: SemisyncAdvert::None,
        };
        if now != self.reported {
            info!(
                fit = now.fit,
                replica_ok = now.replica_ok,
                "mysql: local database state changed"
            );
            self.reported = now;
            let _ = self.events.send(now);
        }
    }

    fn publish(&self) {
        let s = self.snapshot();
        self.status.send_if_modified(|cur| {
            if *cur == s {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    fn snapshot(&self) -> DatabaseStatus {
        let h = self.health.as_ref();
        let role = match h {
            None => "unknown",
            Some(h) if !h.up => "down",
            Some(h) if h.writable => "primary",
            Some(h) if h.replica.is_some() => "replica",
            Some(_) => "fenced",
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        DatabaseStatus {
            server: self.driver.config().address.to_string(),
            wanted: self.wish.to_string(),
            role: role.into(),
            up: h.is_some_and(|h| h.up),
            read_only: h.is_some_and(|h| h.read_only || h.super_read_only),
            writable: h.is_some_and(|h| h.writable),
            version: h.and_then(|h| {
                Some(format!(
                    "{} {}",
                    h.flavor?,
                    h.version_text
                        .clone()
                        .or_else(|| h.version.map(|v| v.to_string()))?
                ))
            }),
            fit: !self.fitness.is_unfit(),
            fitness: match self.fitness {
                Fitness::Fit => "fit".into(),
                Fitness::Failing { down_for } => {
                    format!("failing: down for {} ms", down_for.as_millis())
                }
                Fitness::Unfit { down_for } => {
                    format!("UNFIT: down for {} ms", down_for.as_millis())
                }
            },
            replica_ok: self.replica_ok,
            replication: h
                .and_then(|h| h.replica.as_ref())
                .map(|r| ReplicationStatus {
                    source: r.source.clone(),
                    io_running: r.io_state.clone(),
                    sql_running: r.sql_running,
                    sql_state: r.sql_state.clone(),
                    seconds_behind: r.seconds_behind,
                    all_relay_applied: r.all_relay_applied,
                    received_gtids: r.received.as_ref().map(|g| g.to_string()),
                    last_io_error: r
                        .last_io_error
                        .as_ref()
                        .map(|e| format!("IO error {}: {}", e.code, e.message)),
                    last_sql_error: r
                        .last_sql_error
                        .as_ref()
                        .map(|e| format!("SQL error {}: {}", e.code, e.message)),
                }),
            executed_gtids: h
                .and_then(|h| h.executed_gtids.as_ref())
                .map(|g| g.to_string()),
            semisync_effective: h.and_then(|h| h.semisync_effective),
            action: self.running.map(|(name, _)| name.to_string()),
            action_since: self.running.map(|(_, at)| rfc3339(at)),
            last_promotion: self.last_promotion.as_ref().map(|(at, p)| PromotionStatus {
                time: rfc3339(*at),
                took_ms: ms(p.took),
                waited_ms: ms(p.waited),
                was_replica: p.was_replica,
                caught_up: p.caught_up,
                skipped_gtids: p.skipped.as_ref().map(|g| g.to_string()),
                handoff: p.handoff.clone(),
                frozen_by: p.frozen_by.map(str::to_string),
            }),
            last_rejoin: self.last_rejoin.as_ref().map(|(at, r)| RejoinStatus {
                time: rfc3339(*at),
                peer: r.peer.clone(),
                took_ms: ms(r.took),
                io_running: r.io_running,
                sql_running: r.sql_running,
                discarded: r.discarded.as_ref().map(|e| e.to_string()),
                undone: r.undone.clone(),
            }),
            errant: self.errant.as_ref().map(|b| ErrantStatus {
                peer: b.peer.to_string(),
                gtids: b.errant.set.to_string(),
                transactions: b.errant.transactions,
                details: b.errant.details.clone(),
                since: rfc3339(b.since),
            }),
            last_error: self.last_error.as_ref().map(|(_, m)| m.clone()),
            last_error_at: self.last_error.as_ref().map(|(at, _)| rfc3339(*at)),
            problems: h.map(|h| h.problems.clone()).unwrap_or_default(),
            probe_errors: h.map(|h| h.errors.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mysql::flavor::ServerKind;
    use crate::drivers::mysql::replica::{Columns, ReplicaState};
    use std::net::Ipv4Addr;

    const PEER: &str = "203.0.113.12:3306";

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn control(role: Role) -> Control {
        Control {
            role,
            priority: 100,
            epoch: 1,
            eligible: true,
            want_takeover: false,
            witness_reach: 1,
            witness_count: 1,
            links_up: 3,
            router_id: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
            replica_ok: false,
            fresh_takeover: false,
            semisync: SemisyncAdvert::None,
        }
    }

    #[test]
    fn wish_follows_the_role() {
        let master = control(Role::Master);
        let backup = control(Role::Backup);
        assert_eq!(wish_for(Role::Master, false, None, peer()), DbWish::Primary);
        assert_eq!(
            wish_for(Role::Master, false, Some(&master), peer()),
            DbWish::Primary
        );
        assert_eq!(
            wish_for(Role::Backup, false, Some(&master), peer()),
            DbWish::ReplicaOf(peer())
        );
        // A backup whose peer is silent or holds nothing only stays read-only.
        assert_eq!(wish_for(Role::Backup, false, None, peer()), DbWish::Fenced);
        assert_eq!(
            wish_for(Role::Backup, false, Some(&backup), peer()),
            DbWish::Fenced
        );
        for role in [Role::Init, Role::Fault] {
            assert_eq!(wish_for(role, false, Some(&master), peer()), DbWish::Fenced);
            assert_eq!(wish_for(role, false, None, peer()), DbWish::Fenced);
        }
        // A takeover the silent holder may still reclaim: not yet a primary.
        assert_eq!(wish_for(Role::Master, true, None, peer()), DbWish::Fenced);
        assert_eq!(
            DbWish::ReplicaOf(peer()).to_string(),
            "replica of 203.0.113.12:3306"
        );
    }

    fn health(replica: Option<ReplicaState>) -> Health {
        let mut h = Health::down("203.0.113.11:3306".into(), String::new(), Duration::ZERO);
        h.errors.clear();
        h.up = true;
        h.read_only = true;
        h.replica = replica;
        h
    }

    /// A MariaDB replica row: (source, IO, SQL, lag, received, applied).
    fn replica(
        source: &str,
        io: &str,
        sql: &str,
        lag: Option<u64>,
        recv: &str,
        applied: &str,
    ) -> ReplicaState {
        let kind = ServerKind::detect("10.11.6-MariaDB-log", "").unwrap();
        let (host, port) = source.split_once(':').unwrap();
        let lag = lag.map(|l| l.to_string());
        let cols: Columns = [
            ("Slave_IO_Running", Some(io)),
            ("Slave_SQL_Running", Some(sql)),
            ("Master_Host", Some(host)),
            ("Master_Port", Some(port)),
            ("Seconds_Behind_Master", lag.as_deref()),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some(recv)),
            ("Gtid_Slave_Pos", Some(applied)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        ReplicaState::from_columns(&kind, &cols).unwrap()
    }

    #[test]
    fn replica_is_offered_once_caught_up_and_kept_while_it_keeps_up() {
        let w = DbWish::ReplicaOf(peer());
        let applied = health(Some(replica(
            PEER,
            "Yes",
            "Yes",
            Some(0),
            "0-1-10",
            "0-1-10",
        )));
        let behind = health(Some(replica(
            PEER,
            "Yes",
            "Yes",
            Some(1),
            "0-1-12",
            "0-1-10",
        )));
        // Enter only with everything applied.
        assert!(!replica_caught_up(false, w, &behind, 2));
        assert!(replica_caught_up(false, w, &applied, 2));
        // Stay through a busy moment within the lag bound...
        assert!(replica_caught_up(true, w, &behind, 2));
        // ...but not beyond it.
        let slow = health(Some(replica(
            PEER,
            "Yes",
            "Yes",
            Some(3),
            "0-1-90",
            "0-1-10",
        )));
        assert!(!replica_caught_up(true, w, &slow, 2));
        // Threads stopped, another source, no lag known, not wanted, down: out.
        for h in [
            health(Some(replica(
                PEER,
                "Connecting",
                "Yes",
                Some(0),
                "0-1-10",
                "0-1-10",
            ))),
            health(Some(replica(PEER, "Yes", "No", None, "0-1-10", "0-1-10"))),
            health(Some(replica(
                "203.0.113.100:3306",
                "Yes",
                "Yes",
                Some(0),
                "0-1-10",
                "0-1-10",
            ))),
            health(Some(replica(PEER, "Yes", "Yes", None, "0-1-10", "0-1-10"))),
            health(None),
        ] {
            assert!(!replica_caught_up(true, w, &h, 2), "{:?}", h.replica);
        }
        for other in [DbWish::Fenced, DbWish::Primary] {
            assert!(!replica_caught_up(true, other, &applied, 2));
        }
        let mut down = applied.clone();
        down.up = false;
        assert!(!replica_caught_up(true, w, &down, 2));
    }

    #[test]
    fn an_applier_stopped_by_an_error_is_left_to_the_operator() {
        let kind = ServerKind::detect("10.11.6-MariaDB-log", "").unwrap();
        let cols = |sql: &str, errno: &str| -> Columns {
            [
                ("Slave_IO_Running", "Yes"),
                ("Slave_SQL_Running", sql),
                ("Master_Host", "203.0.113.12"),
                ("Master_Port", "3306"),
                ("Using_Gtid", "Slave_Pos"),
                ("Gtid_IO_Pos", "0-2-5"),
                ("Gtid_Slave_Pos", "0-2-4"),
                ("Last_SQL_Errno", errno),
                ("Last_SQL_Error", "Duplicate entry '2' for key 'PRIMARY'"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
        };
        let with = |sql: &str, errno: &str| {
            health(Some(
                ReplicaState::from_columns(&kind, &cols(sql, errno)).unwrap(),
            ))
        };
        let why = applier_stopped(&with("No", "1062"), peer()).unwrap();
        assert!(
            why.contains("SQL error 1062") && why.contains("Duplicate"),
            "{why}"
        );
        // Running, no error, or replicating from elsewhere: a rejoin may help.
        assert_eq!(applier_stopped(&with("Yes", "0"), peer()), None);
        assert_eq!(applier_stopped(&with("No", "0"), peer()), None);
        let other: SocketAddr = "203.0.113.100:3306".parse().unwrap();
        assert_eq!(applier_stopped(&with("No", "1062"), other), None);
        assert_eq!(applier_stopped(&health(None), peer()), None);
    }

    #[test]
    fn rejoin_backoff_doubles_up_to_ten_intervals() {
        let i = Duration::from_millis(200);
        let got: Vec<u128> = (1..=7).map(|n| backoff(i, n).as_millis()).collect();
        assert_eq!(got, vec![200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff(i, u32::MAX), Duration::from_millis(2000));
    }

    #[test]
    fn no_database_means_fit_and_no_replica() {
        assert_eq!(
            LocalDb::default(),
            LocalDb {
                fit: true,
                replica_ok: false,
                semisync: SemisyncAdvert::None,
            }
        );
    }
}
