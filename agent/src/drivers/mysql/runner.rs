//! The database controller's runner: one task that owns the
//! [`MysqlDriver`], feeds the sans-IO [`DbController`] what happens (the
//! wish, the peer, probes, outcomes, the time) and runs what it asks for.
//! Thin on purpose: every decision is in `decisions::database`.
//!
//! The daemon only sets the wish and the peer's view (`watch`es, never
//! blocking) and hears back, through a channel, every change of
//! [`LocalDb`]; the election loop never waits for MySQL.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{journal, FenceReport, Health, MysqlDriver, MysqlError};
use crate::decisions::database::{
    Action, Answer, DbController, DbWish, Done, ForceError, Input, Job, LocalDb, PeerView, Settings,
};
use crate::drivers::mysql::{PromotionReport, RejoinReport};
use crate::operator::status::database::DatabaseStatus;

/// An operator's request and where its answer goes.
enum Force {
    Rejoin(oneshot::Sender<Result<RejoinReport, ForceError>>),
    Promote(oneshot::Sender<Result<PromotionReport, ForceError>>),
}

/// The daemon's side of the controller. Dropping it stops the task.
pub struct DbHandle {
    wish: watch::Sender<DbWish>,
    peer: watch::Sender<PeerView>,
    status: watch::Receiver<DatabaseStatus>,
    force: mpsc::Sender<Force>,
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
        let settings = Settings::from_config(driver.config());
        let ctl = DbController::new(settings, Instant::now().into_std());
        let (wish_tx, wish_rx) = watch::channel(DbWish::Fenced);
        let (peer_tx, peer_rx) = watch::channel(PeerView::default());
        let (status_tx, status_rx) =
            watch::channel(ctl.status(Instant::now().into_std(), SystemTime::now()));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (force_tx, force_rx) = mpsc::channel(4);
        let runner = Runner {
            driver: driver.clone(),
            ctl,
            events: events_tx,
            status: status_tx,
            pending: None,
        };
        let task = tokio::spawn(runner.run(wish_rx, peer_rx, force_rx)).abort_handle();
        (
            DbHandle {
                wish: wish_tx,
                peer: peer_tx,
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

    /// What the peer's agent says (heard or not, primary, semi-sync). A
    /// promotion that starts while it is heard (a planned handover, not a
    /// death) first drains the old primary; its semi-sync advertisement is
    /// what a promotion after its death relies on.
    pub fn set_peer(&self, peer: PeerView) {
        self.peer.send_if_modified(|cur| {
            if *cur == peer {
                false
            } else {
                *cur = peer;
                true
            }
        });
    }

    /// The peer's server (`mysql.peer_address`).
    pub fn peer(&self) -> std::net::SocketAddr {
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
    pub fn rejoin_force(&self) -> oneshot::Receiver<Result<RejoinReport, ForceError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.force.try_send(Force::Rejoin(tx)) {
            if let Force::Rejoin(tx) = e.into_inner() {
                let _ = tx.send(Err(ForceError::Busy));
            }
        }
        rx
    }

    /// `ha-agent promote --force`: promote although the semi-sync gate
    /// holds the promotion (acknowledged writes may be lost). Only MASTER.
    pub fn promote_force(&self) -> oneshot::Receiver<Result<PromotionReport, ForceError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.force.try_send(Force::Promote(tx)) {
            if let Force::Promote(tx) = e.into_inner() {
                let _ = tx.send(Err(ForceError::Busy));
            }
        }
        rx
    }

    /// Fences the server now, within `bound` (the controller fences too, on
    /// its own schedule; fencing is idempotent).
    pub async fn fence_now(&self, bound: Duration) -> Result<FenceReport, FenceNowError> {
        match tokio::time::timeout(bound, self.driver.fence()).await {
            Ok(r) => r.map_err(FenceNowError::Mysql),
            Err(_) => Err(FenceNowError::Timeout {
                server: self.driver.config().address.to_string(),
                bound,
            }),
        }
    }

    /// Stops the controller (dropping whatever it was doing) and fences the
    /// server, within `bound`: a stopping agent must not leave a writable
    /// primary behind the peer's back.
    pub async fn stop_fenced(&self, bound: Duration) -> Result<FenceReport, FenceNowError> {
        self.task.abort();
        self.fence_now(bound).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FenceNowError {
    #[error(transparent)]
    Mysql(MysqlError),
    #[error("MySQL at {server} was not fenced within {bound:?}; check that it is read-only")]
    Timeout { server: String, bound: Duration },
}

struct Runner {
    driver: Arc<MysqlDriver>,
    ctl: DbController,
    events: mpsc::UnboundedSender<LocalDb>,
    status: watch::Sender<DatabaseStatus>,
    /// The operator's request in flight.
    pending: Option<Force>,
}

async fn finish<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<std::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Runner {
    async fn run(
        mut self,
        mut wish_rx: watch::Receiver<DbWish>,
        mut peer_rx: watch::Receiver<PeerView>,
        mut force_rx: mpsc::Receiver<Force>,
    ) {
        let mut probe: Option<BoxFuture<'static, (std::time::Instant, Health)>> = None;
        let mut fence: Option<BoxFuture<'static, Result<FenceReport, MysqlError>>> = None;
        let mut job: Option<BoxFuture<'static, (Done, Option<JournalRead>)>> = None;
        {
            let dir = self.driver.config().state_dir().to_path_buf();
            let j = journal::read(&dir).await;
            self.ctl.handle_input(Input::Journal(j), now());
        }
        loop {
            while let Some(a) = self.ctl.poll_action() {
                match a {
                    Action::Probe => probe = Some(self.start_probe()),
                    Action::Fence => fence = Some(self.start_fence()),
                    Action::Start(j) => job = Some(self.start_job(j)),
                    Action::Cancel => job = None,
                    Action::Report(db) => {
                        let _ = self.events.send(db);
                    }
                    Action::Answer(a) => self.answer(a),
                }
            }
            self.publish();
            tokio::select! {
                changed = wish_rx.changed() => {
                    if changed.is_err() {
                        return; // the handle is gone
                    }
                    // The services set the peer's view before the wish: a
                    // wish must never be acted on with an older view (a
                    // promotion after a death would wait to drain a dead
                    // primary).
                    if peer_rx.has_changed().unwrap_or(false) {
                        let p = *peer_rx.borrow_and_update();
                        self.ctl.handle_input(Input::Peer(p), now());
                    }
                    let w = *wish_rx.borrow_and_update();
                    self.ctl.handle_input(Input::Wish(w), now());
                }
                changed = peer_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let p = *peer_rx.borrow_and_update();
                    self.ctl.handle_input(Input::Peer(p), now());
                }
                (started, health) = finish(&mut probe) => {
                    probe = None;
                    self.ctl.handle_input(Input::Probed { started, health: Box::new(health) }, now());
                }
                r = finish(&mut fence) => {
                    fence = None;
                    self.ctl.handle_input(Input::Fenced(r), now());
                }
                (done, journal) = finish(&mut job) => {
                    job = None;
                    if let Some(j) = journal {
                        self.ctl.handle_input(Input::Journal(j), now());
                    }
                    self.ctl.handle_input(Input::Done(done), now());
                }
                Some(f) = force_rx.recv() => {
                    let input = match &f {
                        Force::Rejoin(_) => Input::ForceRejoin,
                        Force::Promote(_) => Input::ForcePromote,
                    };
                    if self.pending.is_some() {
                        match f {
                            Force::Rejoin(tx) => { let _ = tx.send(Err(ForceError::Busy)); }
                            Force::Promote(tx) => { let _ = tx.send(Err(ForceError::Busy)); }
                        }
                    } else {
                        self.pending = Some(f);
                        self.ctl.handle_input(input, now());
                    }
                }
                _ = sleep_until_opt(self.ctl.poll_timeout()) => self.ctl.handle_timeout(now()),
            }
        }
    }

    fn answer(&mut self, a: Answer) {
        match (self.pending.take(), a) {
            (Some(Force::Rejoin(tx)), Answer::Rejoin(r)) => {
                let _ = tx.send(*r);
            }
            (Some(Force::Promote(tx)), Answer::Promote(r)) => {
                let _ = tx.send(*r);
            }
            // An answer for another request (cannot happen): keep waiting.
            (other, _) => self.pending = other,
        }
    }

    fn publish(&self) {
        let s = self.ctl.status(now(), SystemTime::now());
        self.status.send_if_modified(|cur| {
            if *cur == s {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    fn start_probe(&self) -> BoxFuture<'static, (std::time::Instant, Health)> {
        let d = self.driver.clone();
        Box::pin(async move { (now(), d.probe().await) })
    }

    fn start_fence(&self) -> BoxFuture<'static, Result<FenceReport, MysqlError>> {
        let d = self.driver.clone();
        Box::pin(async move { d.fence().await })
    }

    /// Runs a job; jobs that may write the journal also read it back, so
    /// the controller always decides on what is on disk.
    fn start_job(&self, job: Job) -> BoxFuture<'static, (Done, Option<JournalRead>)> {
        let d = self.driver.clone();
        Box::pin(async move {
            let done = match job {
                Job::Promote(req) => Done::Promoted(d.promote(&req).await),
                Job::Rejoin(req) => Done::Rejoined(Box::new(d.rejoin(&req).await)),
                Job::ReplicaSemisync => {
                    return (Done::ReplicaSemisync(d.semisync_replica().await), None)
                }
                Job::Strict { relaxed_timeout } => {
                    Done::Strict(d.semisync_strict(relaxed_timeout).await)
                }
                Job::Relax { timeout } => Done::Relaxed(d.semisync_relax(timeout).await),
            };
            let j = journal::read(d.config().state_dir()).await;
            (done, Some(j))
        })
    }
}

type JournalRead = Result<Option<journal::Journal>, MysqlError>;
