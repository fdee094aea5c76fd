//! The local database's controller: a sans-IO state machine that makes the
//! server what the election's role asks for ([`DbWish`]) and keeps the
//! promise of semi-synchronous replication. Inputs are the wish, what the
//! peer's agent says, health probes, the outcome of each statement batch
//! and the time; outputs are [`Action`]s (probe, fence, start or cancel a
//! [`Job`], report to the election, answer the operator) and the next
//! deadline. No sockets, clocks or sleeps: `drivers::mysql::runner` runs
//! the actions, and every story is a deterministic test (`database/tests.rs`).
//!
//! - [`DbWish::Fenced`] (INIT, FAULT, BACKUP without a MASTER peer, and at
//!   start): read-only at once, and again whenever a probe finds the
//!   server writable (a restarted MariaDB comes back writable).
//! - [`DbWish::Primary`] (MASTER): promote; while it is not caught up, or
//!   fails, again every `check_interval_ms`. A change of wish cancels a
//!   running promotion (the next probe re-fences what a cancelled
//!   statement may still have changed).
//! - [`DbWish::ReplicaOf`] (BACKUP while the peer is MASTER): rejoin until
//!   both replication threads run, backing off on repeated failures.
//!   Errant GTIDs are undone automatically only when provably never
//!   acknowledged (below); otherwise the rejoin waits for an operator.
//!
//! Semi-sync (`semisync = true`), with `durability = "strict"`:
//!
//! - A primary advertises [`SemisyncAdvert::Effective`] only while its
//!   server cannot acknowledge a commit without this peer (strict setup,
//!   verified on with exactly one acknowledging replica that says it is
//!   acking). When the replica stops acknowledging for `semisync_timeout`,
//!   the primary advertises `Asynchronous { episode }` and keeps waiting;
//!   it relaxes (acknowledges alone) only once the replica echoes that
//!   announcement (`noted` in its advertisement). A silent replica is never
//!   assumed to have heard: writes wait for it.
//! - A replica promotes itself after the primary's death only if the last
//!   thing the primary said was `Effective`; otherwise the promotion is
//!   held (status and log say why) until the operator runs
//!   `ha-agent promote --force`. A planned handover that drained the old
//!   primary is always safe.
//! - A returning old primary whose journal says it was effective until it
//!   stopped being primary holds only commits no client saw acknowledged:
//!   on MariaDB they are undone (flashback) and given up automatically.
//!
//! With `durability = "available"` (the seed's behaviour) the primary
//! relaxes by itself and the replica promotes anyway; the window in which
//! acknowledged writes may be lost is logged and kept in the status.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use crate::decisions::election::{Control, Role};
use crate::drivers::mysql::fitness::{DownTracker, Fitness};
use crate::drivers::mysql::flavor::Flavor;
use crate::drivers::mysql::gtid::{Errant, GtidSet};
use crate::drivers::mysql::journal::{Journal, JournalRole, JournalSemisync, JournalUpdate};
use crate::drivers::mysql::{
    CatchupPolicy, Discard, Durability, FenceReport, Health, MysqlConfig, MysqlError,
    PromoteRequest, PromotionReport, RejoinError, RejoinReport, RejoinRequest, SemisyncState,
    StrictOutcome,
};
use crate::operator::status::database::{
    DatabaseStatus, ErrantStatus, PromotionStatus, RejoinStatus, ReplicationStatus, SemisyncStatus,
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

/// What the peer's agent says, from its latest control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerView {
    /// Heard right now (not silent on every link).
    pub heard: bool,
    /// It holds the VIPs (MASTER).
    pub primary: bool,
    pub semisync: SemisyncAdvert,
}

impl PeerView {
    /// From the election's view of the peer (None: silent).
    pub fn from_control(c: Option<&Control>) -> PeerView {
        match c {
            Some(c) => PeerView {
                heard: true,
                primary: c.role == Role::Master,
                semisync: c.semisync,
            },
            None => PeerView::default(),
        }
    }
}

/// Semi-sync settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemisyncSettings {
    pub durability: Durability,
    /// How long a commit may wait for the replica before the primary asks
    /// to go asynchronous (relaxed: the server's own timeout).
    pub timeout: Duration,
}

/// The controller's settings, from `[mysql]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The local server (for the status).
    pub server: String,
    pub peer: SocketAddr,
    pub check_interval: Duration,
    pub down_handover: Duration,
    pub max_lag_s: u64,
    pub catchup_timeout: Duration,
    pub catchup_policy: CatchupPolicy,
    pub semisync: Option<SemisyncSettings>,
}

impl Settings {
    pub fn from_config(c: &MysqlConfig) -> Settings {
        Settings {
            server: c.address.to_string(),
            peer: c.peer_address,
            check_interval: c.check_interval(),
            down_handover: c.down_handover(),
            max_lag_s: c.max_replica_lag_s,
            catchup_timeout: c.catchup_timeout(),
            catchup_policy: c.catchup_policy,
            semisync: c.durability().map(|durability| SemisyncSettings {
                durability,
                timeout: c.semisync_timeout(),
            }),
        }
    }

    fn strict(&self) -> bool {
        self.semisync
            .is_some_and(|s| s.durability == Durability::Strict)
    }
}

/// A batch of statements the runner executes, one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Promote(PromoteRequest),
    Rejoin(RejoinRequest),
    /// Make the running replica acknowledge (reconnects its IO thread).
    ReplicaSemisync,
    /// Make the primary strict; back to relaxed with this timeout if it is
    /// not effective.
    Strict {
        relaxed_timeout: Duration,
    },
    /// Let the primary acknowledge alone (journaled first), relaxed with
    /// this timeout.
    Relax {
        timeout: Duration,
    },
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Promote(_) => "promote",
            Job::Rejoin(r) => match r.discard {
                Discard::Never => "rejoin",
                Discard::Unacknowledged { .. } => "rejoin (undoing unacknowledged transactions)",
                Discard::Forced => "forced rejoin",
            },
            Job::ReplicaSemisync => "semi-sync on the replica",
            Job::Strict { .. } => "semi-sync strict",
            Job::Relax { .. } => "semi-sync relaxed",
        }
    }
}

/// A job's outcome.
#[derive(Debug)]
pub enum Done {
    Promoted(Result<PromotionReport, MysqlError>),
    // Boxed: a rejoin report is several times the size of the others.
    Rejoined(Box<Result<RejoinReport, RejoinError>>),
    ReplicaSemisync(Result<SemisyncState, MysqlError>),
    Strict(Result<StrictOutcome, MysqlError>),
    Relaxed(Result<SemisyncState, MysqlError>),
}

/// Why an operator's request was not done.
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    #[error("a forced rejoin needs this node to be BACKUP with the peer MASTER (the database is wanted {0} now)")]
    NotReplica(DbWish),
    #[error("a forced promotion needs this node to be MASTER (the database is wanted {0} now)")]
    NotPrimary(DbWish),
    #[error("the database is already promoted: nothing to force")]
    AlreadyPrimary,
    #[error("cancelled: this node's role changed")]
    Cancelled,
    #[error("another forced request is in progress")]
    Busy,
    #[error("the database controller stopped")]
    Stopped,
    #[error(transparent)]
    Rejoin(RejoinError),
    #[error(transparent)]
    Promote(MysqlError),
}

/// The answer to the operator's request in flight.
#[derive(Debug)]
pub enum Answer {
    Rejoin(Box<Result<RejoinReport, ForceError>>),
    Promote(Box<Result<PromotionReport, ForceError>>),
}

/// What the runner must do.
#[derive(Debug)]
pub enum Action {
    /// Probe the server's health (answer with [`Input::Probed`]).
    Probe,
    /// Make it read-only (answer with [`Input::Fenced`]).
    Fence,
    /// Run a job (answer with [`Input::Done`]).
    Start(Job),
    /// Drop the job in flight; its outcome never comes.
    Cancel,
    /// Tell the election (`Input::LocalDb`).
    Report(LocalDb),
    Answer(Answer),
}

/// What happened.
#[derive(Debug)]
pub enum Input {
    Wish(DbWish),
    Peer(PeerView),
    /// A probe started at `started`.
    Probed {
        started: Instant,
        health: Box<Health>,
    },
    Fenced(Result<FenceReport, MysqlError>),
    Done(Done),
    /// The journal, read at start.
    Journal(Result<Option<Journal>, MysqlError>),
    /// `ha-agent rejoin --force`.
    ForceRejoin,
    /// `ha-agent promote --force`.
    ForcePromote,
}

/// Whether a replica may promote itself without a drained handover.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    Open,
    /// Allowed, but acknowledged writes may be lost (durability =
    /// "available", or forced): why, kept in the status.
    OpenWithLoss(String),
    /// Not automatically (strict): why.
    Held(String),
}

/// The primary's semi-sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primary {
    /// Not a promoted primary.
    None,
    /// May acknowledge alone (a new primary, or after relaxing).
    Relaxed { episode: u8, since: Instant },
    /// Strict and effective: nothing is acknowledged without the peer.
    Effective { since: Instant },
    /// Strict, but the peer stopped acknowledging: announcing
    /// `Asynchronous { episode }` until the peer echoes it.
    Degrading { episode: u8, since: Instant },
}

struct Running {
    job: &'static str,
    since: Instant,
    /// An undo must not be cut in the middle: the wish waits for it.
    cancellable: bool,
}

/// The rejoin refused because of errant transactions.
struct Blocked {
    peer: SocketAddr,
    errant: Errant,
    since: Instant,
    /// Why they were not undone automatically.
    why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forcing {
    Rejoin,
    Promote,
}

pub struct DbController {
    s: Settings,
    now: Instant,
    wish: DbWish,
    peer: PeerView,
    /// What the peer last said while it was the primary (kept after it
    /// falls silent: that is what a promotion after its death relies on),
    /// and since when it has said it.
    primary_said: Option<(SemisyncAdvert, Instant)>,
    health: Option<Health>,
    /// When the probe behind `health` started.
    health_started: Option<Instant>,
    tracker: DownTracker,
    fitness: Fitness,
    replica_ok: bool,
    /// The wish is met: set by a successful job, cleared by a change of
    /// wish or a probe that contradicts it.
    met: bool,
    job: Option<Running>,
    fencing: bool,
    probing: bool,
    next_probe: Instant,
    failures: u32,
    next_attempt: Option<Instant>,
    /// When the last job finished: a probe started before shows the old state.
    acted_at: Option<Instant>,
    errant: Option<Blocked>,
    forcing: Option<Forcing>,
    /// The operator accepted a promotion the semi-sync gate held.
    promote_forced: bool,
    /// The promotion is held by the semi-sync gate: why.
    held: Option<String>,
    /// The gate the promotion in flight was started under.
    promote_gate: Option<Gate>,
    journal: Option<Journal>,
    primary: Primary,
    next_episode: u8,
    /// The replica stopped acknowledging at (primary, strict).
    not_acking_since: Option<Instant>,
    /// Acknowledged commits at the previous probe (to see progress).
    last_acked: Option<u64>,
    /// Unacknowledged commits when this server became primary.
    unacked_base: Option<u64>,
    last_promotion: Option<(Instant, PromotionReport, Option<String>)>,
    last_rejoin: Option<(Instant, RejoinReport)>,
    last_error: Option<(Instant, String)>,
    /// Logged once per episode: the peer is silent while commits wait.
    warned_waiting: bool,
    reported: LocalDb,
    outputs: VecDeque<Action>,
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

/// Whether `errant` (what this server has that the new primary lacks) was
/// provably never acknowledged to a client, so that undoing it loses
/// nothing anyone was promised: `Err` says why not.
///
/// It was, if the journal says this server's last time as primary ended
/// with semi-sync effective, the transactions are this server's own, and
/// MariaDB's flashback can undo their rows. Why that suffices: the server
/// turns semi-sync on only once the replica has received everything
/// committed so far (so whatever it acknowledged alone before is on the
/// replica), and the agent declares it effective only once it is strict
/// and on: from then on every commit waited for the replica, and only the
/// agent could relax it, after journaling so. A replica promotes itself
/// only after hearing "effective", applying all it received first. What
/// the new primary lacks was therefore never acknowledged.
pub fn undo_verdict(
    s: &Settings,
    journal: Option<&Journal>,
    h: Option<&Health>,
    errant: &Errant,
) -> Result<(), String> {
    if !s.strict() {
        return Err("semi-sync with durability = \"strict\" is not configured".into());
    }
    let Some(h) = h.filter(|h| h.up) else {
        return Err("the server's state is not known yet".into());
    };
    if h.flavor != Some(Flavor::Mariadb) {
        return Err("only MariaDB can undo their rows (mariadb-binlog --flashback)".into());
    }
    let Some(j) = journal else {
        return Err("no semi-sync journal: nothing proves they were not acknowledged".into());
    };
    if Some(j.server_id) != h.server_id {
        return Err(format!(
            "the journal was written for server_id {}, this server is {:?}",
            j.server_id, h.server_id
        ));
    }
    if j.role != JournalRole::Primary || j.semisync != JournalSemisync::Effective {
        return Err(format!(
            "the journal says this server was last {} with semi-sync {} (since {}): commits may have been acknowledged without the replica",
            match j.role {
                JournalRole::Primary => "primary",
                JournalRole::Replica => "a replica",
            },
            match j.semisync {
                JournalSemisync::Effective => "effective",
                JournalSemisync::Asynchronous => "asynchronous",
                JournalSemisync::Off => "off",
            },
            j.since
        ));
    }
    let GtidSet::Mariadb(set) = &errant.set else {
        return Err("not a MariaDB GTID history".into());
    };
    if let Some(g) = set.gtids().find(|g| Some(g.server_id) != h.server_id) {
        return Err(format!(
            "{g} was not written by this server (server_id {:?})",
            h.server_id
        ));
    }
    Ok(())
}

impl DbController {
    /// A new controller: it fences the server and probes it at once.
    pub fn new(s: Settings, now: Instant) -> DbController {
        let mut c = DbController {
            tracker: DownTracker::new(s.down_handover),
            s,
            now,
            wish: DbWish::Fenced,
            peer: PeerView::default(),
            primary_said: None,
            health: None,
            health_started: None,
            fitness: Fitness::Fit,
            replica_ok: false,
            met: false,
            job: None,
            fencing: false,
            probing: false,
            next_probe: now,
            failures: 0,
            next_attempt: None,
            acted_at: None,
            errant: None,
            forcing: None,
            promote_forced: false,
            held: None,
            promote_gate: None,
            journal: None,
            primary: Primary::None,
            next_episode: 1,
            not_acking_since: None,
            last_acked: None,
            unacked_base: None,
            last_promotion: None,
            last_rejoin: None,
            last_error: None,
            warned_waiting: false,
            reported: LocalDb::default(),
            outputs: VecDeque::new(),
        };
        // Before the agent has heard its peer.
        c.start_fence();
        c.start_probe();
        c
    }

    pub fn wish(&self) -> DbWish {
        self.wish
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.outputs.pop_front()
    }

    /// The next time [`DbController::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = (!self.probing).then_some(self.next_probe);
        let retry = self.next_attempt.filter(|_| self.job.is_none());
        [probe, retry].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if !self.probing && now >= self.next_probe {
            self.start_probe();
        }
        if self.next_attempt.is_some_and(|t| now >= t) {
            self.next_attempt = None;
        }
        self.step();
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.now = now;
        match input {
            Input::Wish(w) => self.on_wish(w),
            Input::Peer(p) => self.on_peer(p),
            Input::Probed { started, health } => self.on_health(started, *health),
            Input::Fenced(r) => {
                self.fencing = false;
                if let Err(e) = r {
                    self.failed("fence", e.to_string());
                }
                // Show (and advertise) the new state now, not a tick later.
                self.start_probe();
            }
            Input::Done(d) => {
                self.job = None;
                self.acted_at = Some(now);
                self.on_done(d);
                self.start_probe();
            }
            Input::Journal(r) => match r {
                Ok(j) => self.journal = j,
                Err(e) => {
                    warn!(error = %e, "mysql: the semi-sync journal cannot be read: no errant transaction will be undone automatically");
                    self.failed("journal", e.to_string());
                }
            },
            Input::ForceRejoin => self.on_force_rejoin(),
            Input::ForcePromote => self.on_force_promote(),
        }
        self.step();
    }

    // -- inputs -------------------------------------------------------------

    fn on_wish(&mut self, wish: DbWish) {
        if wish == self.wish {
            return;
        }
        info!(from = %self.wish, to = %wish, "mysql: wanted state changed");
        if self.job.as_ref().is_some_and(|j| j.cancellable) {
            self.cancel();
        }
        if let Some(f) = self.forcing.take() {
            self.answer_cancelled(f);
        }
        self.wish = wish;
        self.met = false;
        self.failures = 0;
        self.next_attempt = None;
        self.promote_forced = false;
        self.held = None;
        // A new role, a new attempt: a still-errant history blocks again at once.
        self.errant = None;
        if wish != DbWish::Primary {
            self.primary = Primary::None;
            self.not_acking_since = None;
            self.start_fence();
        }
        self.replica_ok = match &self.health {
            Some(h) => replica_caught_up(self.replica_ok, wish, h, self.s.max_lag_s),
            None => false,
        };
    }

    fn on_peer(&mut self, p: PeerView) {
        if p.heard && p.primary {
            let same = self.primary_said.is_some_and(|(a, _)| a == p.semisync);
            if !same {
                if let Some((before, _)) = self.primary_said {
                    info!(from = %before, to = %p.semisync, "mysql: the primary's semi-sync changed");
                }
                self.primary_said = Some((p.semisync, self.now));
            }
        }
        // Kept while the peer is not the primary: its last words as
        // primary still describe the commits it acknowledged then.
        self.peer = p;
    }

    /// Takes in a probe started at `started`.
    fn on_health(&mut self, started: Instant, h: Health) {
        self.probing = false;
        self.next_probe = (started + self.s.check_interval).max(self.now);
        let was = self.fitness;
        self.fitness = self.tracker.observe(h.up, self.now);
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
        if self.wish != DbWish::Primary && h.up && h.writable && !self.fencing {
            warn!(wanted = %self.wish, "mysql: the local server is WRITABLE although this node is not MASTER (restarted?): fencing it");
            self.start_fence();
        }
        // A probe that began before the last job ended may show the old
        // state: neither acted on nor shown (the status said "replica" for
        // a moment after a promotion). The fresh look the job's end asked
        // for waited behind it: take it now.
        let current = self.acted_at.is_none_or(|t| started > t);
        if !current {
            self.start_probe();
            return;
        }
        if h.up && self.met {
            let contradicted = match self.wish {
                DbWish::Primary => !h.writable,
                DbWish::ReplicaOf(peer) => !replicating_from(&h, peer),
                DbWish::Fenced => false,
            };
            if contradicted {
                info!(wanted = %self.wish, "mysql: the local server is no longer as wanted: acting again");
                self.met = false;
                self.primary = Primary::None;
            }
        }
        self.replica_ok = replica_caught_up(self.replica_ok, self.wish, &h, self.s.max_lag_s);
        self.watch_primary_semisync(&h);
        self.health_started = Some(started);
        self.health = Some(h);
    }

    /// The last probe began after the last job ended: it shows its effect.
    fn health_is_fresh(&self) -> bool {
        self.health_started
            .is_some_and(|s| self.acted_at.is_none_or(|a| s > a))
    }

    fn on_done(&mut self, d: Done) {
        match d {
            Done::Promoted(r) => self.on_promoted(r),
            Done::Rejoined(r) => self.on_rejoined(*r),
            Done::ReplicaSemisync(r) => {
                if let Err(e) = r {
                    self.failures += 1;
                    self.next_attempt =
                        Some(self.now + backoff(self.s.check_interval, self.failures));
                    self.failed("semi-sync on the replica", e.to_string());
                }
            }
            Done::Strict(r) => match r {
                Ok(StrictOutcome::Effective(_)) => {
                    info!("mysql: semi-sync EFFECTIVE: advertising it to the peer");
                    self.primary = Primary::Effective { since: self.now };
                    self.not_acking_since = None;
                    self.warned_waiting = false;
                }
                Ok(StrictOutcome::NotYet(_)) => {
                    self.next_attempt = Some(self.now + self.s.check_interval);
                }
                Err(e) => {
                    self.failures += 1;
                    self.next_attempt =
                        Some(self.now + backoff(self.s.check_interval, self.failures));
                    self.failed("semi-sync strict", e.to_string());
                }
            },
            Done::Relaxed(r) => match r {
                Ok(_) => {
                    let episode = match self.primary {
                        Primary::Degrading { episode, .. } | Primary::Relaxed { episode, .. } => {
                            episode
                        }
                        _ => self.new_episode(),
                    };
                    self.primary = Primary::Relaxed {
                        episode,
                        since: self.now,
                    };
                    self.not_acking_since = None;
                }
                Err(e) => {
                    self.failures += 1;
                    self.next_attempt =
                        Some(self.now + backoff(self.s.check_interval, self.failures));
                    self.failed("semi-sync relax", e.to_string());
                }
            },
        }
    }

    fn on_promoted(&mut self, r: Result<PromotionReport, MysqlError>) {
        let forced = self.forcing == Some(Forcing::Promote);
        match r {
            Ok(rep) => {
                self.met = true;
                self.failures = 0;
                self.held = None;
                let loss = match self.promote_gate.take() {
                    Some(Gate::OpenWithLoss(why)) if rep.was_replica && !rep.drained => {
                        error!(why = %why, "mysql: PROMOTED although acknowledged writes may be missing: {why}");
                        Some(why)
                    }
                    _ => None,
                };
                if self.s.semisync.is_some() {
                    self.primary = Primary::Relaxed {
                        episode: self.new_episode(),
                        since: self.now,
                    };
                    self.unacked_base = rep.semisync.as_ref().map(|s| s.unacked);
                }
                if forced {
                    self.forcing = None;
                    self.outputs
                        .push_back(Action::Answer(Answer::Promote(Box::new(Ok(rep.clone())))));
                }
                self.last_promotion = Some((self.now, rep, loss));
            }
            Err(e) => {
                self.failures += 1;
                // Retried every interval while MASTER: a stuck applier needs
                // an operator, a slow one finishes on a later attempt.
                self.next_attempt = Some(self.now + self.s.check_interval);
                if let MysqlError::NotDrained { .. } = &e {
                    self.held = Some(e.to_string());
                }
                self.failed("promote", e.to_string());
                if forced {
                    self.forcing = None;
                    self.outputs
                        .push_back(Action::Answer(Answer::Promote(Box::new(Err(
                            ForceError::Promote(e),
                        )))));
                }
            }
        }
    }

    fn on_rejoined(&mut self, r: Result<RejoinReport, RejoinError>) {
        let forced = self.forcing == Some(Forcing::Rejoin);
        let DbWish::ReplicaOf(peer) = self.wish else {
            return;
        };
        match r {
            Ok(rep) => {
                if rep.io_running && rep.sql_running {
                    self.met = true;
                    self.failures = 0;
                } else {
                    self.failures += 1;
                    self.next_attempt =
                        Some(self.now + backoff(self.s.check_interval, self.failures));
                    self.failed(
                        "rejoin",
                        format!("replication from {peer} configured but its threads are not running yet (IO {}, SQL {})", rep.io_running, rep.sql_running),
                    );
                }
                self.errant = None;
                if forced {
                    self.forcing = None;
                    self.outputs
                        .push_back(Action::Answer(Answer::Rejoin(Box::new(Ok(rep.clone())))));
                }
                // A no-op rejoin (already replicating) says nothing new.
                if !rep.already_replicating || self.last_rejoin.is_none() {
                    self.last_rejoin = Some((self.now, rep));
                }
            }
            Err(RejoinError::Errant { errant, .. }) if !forced => {
                let known = self
                    .health
                    .as_ref()
                    .is_some_and(|h| h.up && h.server_id.is_some());
                if !known {
                    // The server restarted a moment ago: decide once a probe
                    // says what it is (flavor, server id).
                    self.next_attempt = Some(self.now + self.s.check_interval);
                    return;
                }
                match undo_verdict(
                    &self.s,
                    self.journal.as_ref(),
                    self.health.as_ref(),
                    &errant,
                ) {
                    Ok(()) => {
                        warn!(peer = %peer, errant = %errant, "mysql: this server holds transactions the new primary lacks, all committed while semi-sync was effective and so never acknowledged to a client: undoing them and rejoining");
                        self.start(Job::Rejoin(RejoinRequest {
                            peer,
                            discard: Discard::Unacknowledged {
                                expected: errant.set.clone(),
                            },
                            journal: Some(JournalUpdate::Replica),
                        }));
                    }
                    Err(why) => {
                        error!(peer = %peer, errant = %errant, why = %why, "mysql: REJOIN BLOCKED: this server has transactions the new primary lacks, and they may have been acknowledged ({why}); not retrying. Save them (mysqlbinlog), then run `ha-agent rejoin --force` to give them up, or re-clone this server");
                        self.last_error = Some((
                            self.now,
                            format!("rejoin blocked by errant transactions: {errant}"),
                        ));
                        self.errant = Some(Blocked {
                            peer,
                            errant,
                            since: self.now,
                            why,
                        });
                    }
                }
            }
            Err(e) => {
                self.failures += 1;
                self.next_attempt = Some(self.now + backoff(self.s.check_interval, self.failures));
                self.failed(
                    if forced { "forced rejoin" } else { "rejoin" },
                    e.to_string(),
                );
                if forced {
                    self.forcing = None;
                    self.outputs
                        .push_back(Action::Answer(Answer::Rejoin(Box::new(Err(
                            ForceError::Rejoin(e),
                        )))));
                }
            }
        }
    }

    fn on_force_rejoin(&mut self) {
        if self.forcing.is_some() {
            self.outputs
                .push_back(Action::Answer(Answer::Rejoin(Box::new(Err(
                    ForceError::Busy,
                )))));
            return;
        }
        let DbWish::ReplicaOf(peer) = self.wish else {
            self.outputs
                .push_back(Action::Answer(Answer::Rejoin(Box::new(Err(
                    ForceError::NotReplica(self.wish),
                )))));
            return;
        };
        warn!("mysql: forced rejoin requested by the operator");
        if self.job.as_ref().is_some_and(|j| j.cancellable) {
            self.cancel();
        } else if self.job.is_some() {
            self.outputs
                .push_back(Action::Answer(Answer::Rejoin(Box::new(Err(
                    ForceError::Busy,
                )))));
            return;
        }
        self.forcing = Some(Forcing::Rejoin);
        self.errant = None;
        self.start(Job::Rejoin(RejoinRequest {
            peer,
            discard: Discard::Forced,
            journal: Some(JournalUpdate::Replica),
        }));
    }

    fn on_force_promote(&mut self) {
        if self.forcing.is_some() {
            self.outputs
                .push_back(Action::Answer(Answer::Promote(Box::new(Err(
                    ForceError::Busy,
                )))));
            return;
        }
        if self.wish != DbWish::Primary {
            self.outputs
                .push_back(Action::Answer(Answer::Promote(Box::new(Err(
                    ForceError::NotPrimary(self.wish),
                )))));
            return;
        }
        if self.met {
            self.outputs
                .push_back(Action::Answer(Answer::Promote(Box::new(Err(
                    ForceError::AlreadyPrimary,
                )))));
            return;
        }
        warn!("mysql: forced promotion requested by the operator: acknowledged writes the old primary did not replicate may be lost");
        self.forcing = Some(Forcing::Promote);
        self.promote_forced = true;
        self.held = None;
        self.next_attempt = None;
    }

    // -- decisions ----------------------------------------------------------

    /// What to start now, if anything is due.
    fn step(&mut self) {
        self.next_job();
        self.report();
    }

    fn next_job(&mut self) {
        if self.job.is_some() {
            return;
        }
        let due = self.next_attempt.is_none_or(|t| self.now >= t);
        match self.wish {
            DbWish::Fenced => {}
            DbWish::Primary if self.met => self.primary_semisync_job(due),
            // A fence in flight could land after the unfence: let it finish.
            DbWish::Primary if self.fencing || !due => {}
            DbWish::Primary => self.promote(),
            DbWish::ReplicaOf(_) if self.errant.is_some() => {}
            DbWish::ReplicaOf(_) if self.met => {
                let wants = self.s.semisync.is_some()
                    && self.health_is_fresh()
                    && self.health.as_ref().is_some_and(|h| {
                        h.up && replicating_from(h, self.s.peer)
                            && h.semisync.as_ref().is_some_and(|s| !s.replica_on)
                    });
                if wants && due {
                    self.start(Job::ReplicaSemisync);
                }
            }
            DbWish::ReplicaOf(_) if !due => {}
            DbWish::ReplicaOf(peer) => {
                if let Some(stopped) = self.health.as_ref().and_then(|h| applier_stopped(h, peer)) {
                    // A rejoin cannot fix a conflict in the data, and would
                    // restart replication from a recomputed position.
                    self.failed("rejoin", stopped);
                    self.next_attempt = Some(self.now + self.s.check_interval);
                    return;
                }
                self.start(Job::Rejoin(RejoinRequest {
                    peer,
                    discard: Discard::Never,
                    journal: Some(JournalUpdate::Replica),
                }));
            }
        }
    }

    /// The local server replicates from the peer (its last probe says so).
    fn is_peers_replica(&self) -> bool {
        self.health.as_ref().is_some_and(|h| {
            h.replica
                .as_ref()
                .is_some_and(|r| r.source == self.s.peer.to_string())
        })
    }

    fn gate(&self) -> Gate {
        let Some(ss) = self.s.semisync else {
            return Gate::Open;
        };
        let said = self.primary_said.map(|(a, _)| a);
        if said == Some(SemisyncAdvert::Effective) {
            return Gate::Open;
        }
        let why = match self.primary_said {
            Some((SemisyncAdvert::Asynchronous { episode }, _)) => format!(
                "the old primary last said it acknowledges without this replica (announcement {episode})"
            ),
            _ => "the old primary was never heard say that semi-sync was effective".into(),
        };
        if self.promote_forced {
            return Gate::OpenWithLoss(format!("forced by the operator: {why}"));
        }
        match ss.durability {
            Durability::Strict => Gate::Held(why),
            Durability::Available => {
                Gate::OpenWithLoss(format!("durability = \"available\": {why}"))
            }
        }
    }

    fn promote(&mut self) {
        let Some(h) = self.health.as_ref() else {
            // Not blind: the first probe says whether this is a replica.
            return;
        };
        if self.s.semisync.is_some() && (!h.up || h.replica_unknown) {
            // Whether this server replicates from the peer decides the
            // semi-sync gate below: wait for a probe that can tell (the
            // promotion would read its replication status itself, later,
            // past the gate).
            return;
        }
        let planned = self.peer.heard;
        let gate = if self.is_peers_replica() {
            self.gate()
        } else {
            Gate::Open
        };
        if let (Gate::Held(why), false) = (&gate, planned) {
            if self.held.as_deref() != Some(why.as_str()) {
                error!(why = %why, "mysql: PROMOTION HELD (durability = \"strict\"): this server may lack writes the old primary acknowledged; it stays read-only. Bring the old primary back, or run `ha-agent promote --force` to accept the loss");
                self.held = Some(why.clone());
            }
            return;
        }
        let drain_required = matches!(gate, Gate::Held(_));
        self.promote_gate = Some(gate);
        self.start(Job::Promote(PromoteRequest {
            timeout: self.s.catchup_timeout,
            policy: self.s.catchup_policy,
            drain_from: planned.then_some(self.s.peer),
            drain_required,
            semisync: self.s.semisync.map(|s| s.timeout),
            journal: self.s.semisync.map(|_| JournalUpdate::PrimaryAsynchronous),
        }));
    }

    /// The primary's side of semi-sync, from a probe.
    fn watch_primary_semisync(&mut self, h: &Health) {
        if self.wish != DbWish::Primary || !self.met || self.s.semisync.is_none() {
            return;
        }
        let Some(st) = h.semisync.as_ref().filter(|_| h.up) else {
            return;
        };
        let progress = self.last_acked.is_some_and(|a| st.acked > a);
        self.last_acked = Some(st.acked);
        let acking = st.clients >= 1 && (st.waiting == 0 || progress);
        match self.primary {
            Primary::Effective { .. } | Primary::Degrading { .. }
                if !(st.source_enabled && st.source_on && st.strict) =>
            {
                // Cannot happen through the agent: someone changed the
                // server's settings. Say so at once.
                error!(state = ?st, "mysql: semi-sync is NO LONGER STRICT on this primary although the agent did not relax it (changed by hand?): commits may have been acknowledged without the replica; advertising asynchronous");
                self.primary = Primary::Relaxed {
                    episode: self.new_episode(),
                    since: self.now,
                };
                self.failed(
                    "semi-sync",
                    "switched off behind the agent's back: acknowledged writes may be missing on the replica".into(),
                );
            }
            Primary::Effective { .. } => {
                if st.clients > 1 {
                    warn!(clients = st.clients, "mysql: more than one semi-sync replica acknowledges: the peer may lack a write another replica acknowledged");
                }
                // Only the peer may acknowledge: another semi-sync replica's
                // acknowledgement does not put a commit on the peer.
                if acking && st.clients == 1 {
                    self.not_acking_since = None;
                    return;
                }
                let since = *self.not_acking_since.get_or_insert(self.now);
                let timeout = self.s.semisync.map_or(Duration::ZERO, |s| s.timeout);
                if self.now.saturating_duration_since(since) >= timeout {
                    let episode = self.new_episode();
                    warn!(episode, clients = st.clients, waiting = st.waiting, "mysql: the replica stopped acknowledging: announcing that this primary goes asynchronous; it keeps waiting until the replica has heard it");
                    self.primary = Primary::Degrading {
                        episode,
                        since: self.now,
                    };
                    self.warned_waiting = false;
                }
            }
            Primary::Degrading { .. } if acking && st.clients == 1 && st.waiting == 0 => {
                // Never relaxed: every commit was acknowledged by the replica.
                info!("mysql: the replica acknowledges again: semi-sync effective again");
                self.primary = Primary::Effective { since: self.now };
                self.not_acking_since = None;
            }
            Primary::Degrading { .. }
                if !self.peer.heard && st.waiting > 0 && !self.warned_waiting =>
            {
                self.warned_waiting = true;
                error!(waiting = st.waiting, "mysql: COMMITS WAIT for the replica's acknowledgement and the peer is silent: with durability = \"strict\" this primary does not acknowledge alone unless the replica heard it will (it may have been promoted). Writes wait until the peer returns; set durability = \"available\" to prefer availability");
            }
            _ => {}
        }
    }

    /// The next semi-sync job of a promoted primary.
    fn primary_semisync_job(&mut self, due: bool) {
        let Some(ss) = self.s.semisync else {
            return;
        };
        if !due || ss.durability != Durability::Strict {
            return;
        }
        match self.primary {
            Primary::Relaxed { .. } if self.journal_says_effective() => {
                // Relaxed behind the agent's back (a restarted mysqld, a
                // hand edit): the record must stop vouching for commits at
                // once, or a later undo would take acknowledged ones for
                // unacknowledged.
                warn!("mysql: semi-sync is relaxed but the journal still says effective: journaling asynchronous");
                self.start(Job::Relax {
                    timeout: ss.timeout,
                });
            }
            Primary::Relaxed { .. } => {
                let ready = self.health_is_fresh()
                    && self.health.as_ref().is_some_and(|h| {
                        h.up && h
                            .semisync
                            .as_ref()
                            .is_some_and(|s| s.source_enabled && s.source_on && s.clients == 1)
                    });
                if ready && self.peer.heard && self.peer.semisync.is_acking() {
                    self.start(Job::Strict {
                        relaxed_timeout: ss.timeout,
                    });
                }
            }
            Primary::Degrading { episode, .. } => {
                if self.peer.heard && self.peer.semisync.noted(episode) {
                    warn!(episode, "mysql: the replica heard this primary go asynchronous: relaxing semi-sync (the journal first)");
                    self.start(Job::Relax {
                        timeout: ss.timeout,
                    });
                }
            }
            Primary::Effective { .. } | Primary::None => {}
        }
    }

    fn journal_says_effective(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| {
            j.role == JournalRole::Primary && j.semisync == JournalSemisync::Effective
        })
    }

    /// The next announcement number: 1 to 255, then 1 again (0 is "none").
    fn new_episode(&mut self) -> u8 {
        let e = self.next_episode;
        self.next_episode = self.next_episode.checked_add(1).unwrap_or(1);
        e
    }

    /// What this node advertises about semi-sync now.
    fn advert(&self) -> SemisyncAdvert {
        let Some(ss) = self.s.semisync else {
            return SemisyncAdvert::None;
        };
        if self.wish == DbWish::Primary {
            return match self.primary {
                Primary::None => SemisyncAdvert::None,
                Primary::Effective { .. } => SemisyncAdvert::Effective,
                Primary::Degrading { episode, .. } => SemisyncAdvert::Asynchronous { episode },
                Primary::Relaxed { episode, .. } => {
                    // Available: say what the server does now, after the fact.
                    let effective = ss.durability == Durability::Available
                        && self.peer.semisync.is_acking()
                        && self.health.as_ref().is_some_and(|h| {
                            h.semisync
                                .as_ref()
                                .is_some_and(|s| s.source_on && s.clients == 1)
                        });
                    if effective {
                        SemisyncAdvert::Effective
                    } else {
                        SemisyncAdvert::Asynchronous { episode }
                    }
                }
            };
        }
        // The echo: heard, and no automatic promotion after a death.
        let noted = match self.primary_said {
            Some((SemisyncAdvert::Asynchronous { episode }, _)) => episode,
            _ => 0,
        };
        let acking = self.health.as_ref().is_some_and(|h| {
            h.up && replicating_from(h, self.s.peer)
                && h.semisync.as_ref().is_some_and(|s| s.replica_on)
        });
        match (acking, noted) {
            (true, noted) => SemisyncAdvert::Acking { noted },
            (false, 0) => SemisyncAdvert::None,
            (false, episode) => SemisyncAdvert::AsyncNoted { episode },
        }
    }

    // -- outputs ------------------------------------------------------------

    fn start(&mut self, job: Job) {
        let cancellable = !matches!(
            &job,
            Job::Rejoin(RejoinRequest {
                discard: Discard::Unacknowledged { .. } | Discard::Forced,
                ..
            })
        );
        self.job = Some(Running {
            job: job.name(),
            since: self.now,
            cancellable,
        });
        self.outputs.push_back(Action::Start(job));
    }

    fn cancel(&mut self) {
        if let Some(j) = self.job.take() {
            info!(
                job = j.job,
                "mysql: {} cancelled: this node's role changed", j.job
            );
            self.outputs.push_back(Action::Cancel);
        }
    }

    fn answer_cancelled(&mut self, f: Forcing) {
        let a = match f {
            Forcing::Rejoin => Answer::Rejoin(Box::new(Err(ForceError::Cancelled))),
            Forcing::Promote => Answer::Promote(Box::new(Err(ForceError::Cancelled))),
        };
        self.outputs.push_back(Action::Answer(a));
    }

    fn start_fence(&mut self) {
        if !self.fencing {
            self.fencing = true;
            self.outputs.push_back(Action::Fence);
        }
    }

    fn start_probe(&mut self) {
        if !self.probing {
            self.probing = true;
            self.outputs.push_back(Action::Probe);
        }
    }

    /// Records a failure; logs it when it differs from the previous one
    /// (the same failure every interval would flood the log).
    fn failed(&mut self, what: &str, message: String) {
        let text = format!("{what}: {message}");
        if self.last_error.as_ref().map(|(_, m)| m) != Some(&text) {
            warn!(wanted = %self.wish, "mysql: {text}");
        }
        self.last_error = Some((self.now, text));
    }

    fn report(&mut self) {
        let now = LocalDb {
            fit: !self.fitness.is_unfit(),
            replica_ok: self.replica_ok,
            semisync: self.advert(),
        };
        if now != self.reported {
            info!(
                fit = now.fit,
                replica_ok = now.replica_ok,
                semisync = %now.semisync,
                "mysql: local database state changed"
            );
            self.reported = now;
            self.outputs.push_back(Action::Report(now));
        }
    }

    // -- status -------------------------------------------------------------

    /// The status section, with times as wall-clock (`wall` is the clock at `now`).
    pub fn status(&self, now: Instant, wall: SystemTime) -> DatabaseStatus {
        let at = |t: Instant| rfc3339(wall - now.saturating_duration_since(t));
        let h = self.health.as_ref();
        let role = match h {
            None => "unknown",
            Some(h) if !h.up => "down",
            Some(h) if h.writable => "primary",
            Some(h) if h.replica.is_some() => "replica",
            Some(_) => "fenced",
        };
        let ms = crate::operator::status::millis;
        let advert = self.reported.semisync;
        DatabaseStatus {
            server: self.s.server.clone(),
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
            semisync_effective: self
                .s
                .semisync
                .map(|_| advert == SemisyncAdvert::Effective || advert.is_acking()),
            semisync: self.s.semisync.map(|ss| {
                let st = h.and_then(|h| h.semisync.as_ref());
                SemisyncStatus {
                    durability: match ss.durability {
                        Durability::Strict => "strict".into(),
                        Durability::Available => "available".into(),
                    },
                    advertised: advert.to_string(),
                    effective_since: match self.primary {
                        Primary::Effective { since } if self.wish == DbWish::Primary => {
                            Some(at(since))
                        }
                        _ => None,
                    },
                    asynchronous_since: match self.primary {
                        Primary::Relaxed { since, .. } | Primary::Degrading { since, .. }
                            if self.wish == DbWish::Primary =>
                        {
                            Some(at(since))
                        }
                        _ => None,
                    },
                    commits_without_ack: match (self.wish, st, self.unacked_base) {
                        (DbWish::Primary, Some(st), Some(base)) => {
                            Some(st.unacked.saturating_sub(base))
                        }
                        _ => None,
                    },
                    waiting_commits: st
                        .filter(|_| self.wish == DbWish::Primary)
                        .map(|s| s.waiting),
                    peer_said: self
                        .primary_said
                        .map(|(a, since)| format!("{a} (since {})", at(since))),
                    promotion_held: self.held.clone(),
                }
            }),
            action: self.job.as_ref().map(|j| j.job.to_string()),
            action_since: self.job.as_ref().map(|j| at(j.since)),
            last_promotion: self
                .last_promotion
                .as_ref()
                .map(|(t, p, loss)| PromotionStatus {
                    time: at(*t),
                    took_ms: ms(p.took),
                    waited_ms: ms(p.waited),
                    was_replica: p.was_replica,
                    caught_up: p.caught_up,
                    skipped_gtids: p.skipped.as_ref().map(|g| g.to_string()),
                    handoff: p.handoff.clone(),
                    frozen_by: p.frozen_by.map(str::to_string),
                    possibly_lost: loss.clone(),
                }),
            last_rejoin: self.last_rejoin.as_ref().map(|(t, r)| RejoinStatus {
                time: at(*t),
                peer: r.peer.clone(),
                took_ms: ms(r.took),
                io_running: r.io_running,
                sql_running: r.sql_running,
                discarded: r.discarded.as_ref().map(|e| e.to_string()),
                undone: r.undone.as_ref().map(|u| u.to_string()),
                undone_rows: r.undone.as_ref().map(|u| u.total_rows()),
                undo_record: r.undone.as_ref().map(|u| u.record.display().to_string()),
                automatic: r.automatic,
            }),
            errant: self.errant.as_ref().map(|b| ErrantStatus {
                peer: b.peer.to_string(),
                gtids: b.errant.set.to_string(),
                transactions: b.errant.transactions,
                details: b.errant.details.clone(),
                since: at(b.since),
                not_undone_because: Some(b.why.clone()),
            }),
            last_error: self.last_error.as_ref().map(|(_, m)| m.clone()),
            last_error_at: self.last_error.as_ref().map(|(t, _)| at(*t)),
            problems: h.map(|h| h.problems.clone()).unwrap_or_default(),
            probe_errors: h.map(|h| h.errors.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
