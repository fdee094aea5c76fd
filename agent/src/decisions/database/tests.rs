//! The database controller's stories, in simulated time: a scripted
//! runner answers the controller's actions the way the driver would.

use super::*;
use crate::drivers::mysql::flavor::ServerKind;
use crate::drivers::mysql::replica::{Columns, ReplicaState};

const PEER: &str = "203.0.113.12:3306";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn control(role: Role) -> Control {
    Control::for_tests(role)
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

// -- stories, in simulated time ---------------------------------------------

use crate::drivers::mysql::gtid::{MariadbGtids, MysqlGtidSet};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn settings(semisync: Option<Durability>) -> Settings {
    Settings {
        server: "203.0.113.11:3306".into(),
        peer: peer(),
        check_interval: MS(200),
        down_handover: MS(600),
        max_lag_s: 2,
        catchup_timeout: MS(5000),
        catchup_policy: CatchupPolicy::StayReadOnly,
        semisync: semisync.map(|durability| SemisyncSettings {
            durability,
            timeout: MS(1000),
        }),
    }
}

/// The server as the probes describe it.
#[derive(Clone)]
struct Server {
    up: bool,
    writable: bool,
    replica: Option<ReplicaState>,
    semisync: Option<SemisyncState>,
}

impl Server {
    fn fenced() -> Server {
        Server {
            up: true,
            writable: false,
            replica: None,
            semisync: None,
        }
    }
    fn health(&self) -> Health {
        let mut h = health(self.replica.clone());
        h.up = self.up;
        h.writable = self.up && self.writable;
        h.read_only = !self.writable;
        h.flavor = Some(Flavor::Mariadb);
        h.server_id = Some(1);
        h.semisync = self.semisync.clone();
        h
    }
}

/// A replica of the peer, both threads running, caught up.
fn replicating() -> Option<ReplicaState> {
    Some(replica(PEER, "Yes", "Yes", Some(0), "0-2-10", "0-2-10"))
}

fn acking_replica() -> Option<SemisyncState> {
    Some(SemisyncState {
        replica_enabled: true,
        replica_on: true,
        ..Default::default()
    })
}

/// A primary's semi-sync: strict or not, clients, waiting, acked, unacked.
fn primary_ss(strict: bool, clients: u64, waiting: u64, acked: u64) -> Option<SemisyncState> {
    Some(SemisyncState {
        source_enabled: true,
        source_on: true,
        strict,
        clients,
        waiting,
        acked,
        unacked: 0,
        ..Default::default()
    })
}

/// A scripted runner: it answers probes with `server`, records every
/// action, and lets the story answer fences and jobs.
struct Sim {
    c: DbController,
    now: Instant,
    server: Server,
    /// Actions since the story last looked.
    seen: Vec<Action>,
    job: Option<Job>,
    fence_pending: bool,
    probe_pending: bool,
    reports: Vec<LocalDb>,
}

impl Sim {
    fn new(s: Settings) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            c: DbController::new(s, now),
            now,
            server: Server::fenced(),
            seen: Vec::new(),
            job: None,
            fence_pending: false,
            probe_pending: false,
            reports: Vec::new(),
        };
        sim.drain();
        sim
    }

    fn drain(&mut self) {
        while let Some(a) = self.c.poll_action() {
            match &a {
                Action::Probe => self.probe_pending = true,
                Action::Fence => self.fence_pending = true,
                Action::Start(j) => {
                    assert!(self.job.is_none(), "two jobs at once: {j:?}");
                    self.job = Some(j.clone());
                }
                Action::Cancel => self.job = None,
                Action::Report(r) => self.reports.push(*r),
                Action::Answer(_) => {}
            }
            self.seen.push(a);
        }
    }

    fn input(&mut self, i: Input) {
        self.c.handle_input(i, self.now);
        self.drain();
    }

    /// Moves the clock, answering probes (with the server) and fences (ok)
    /// as they come, every 10 ms.
    fn run(&mut self, ms: u64) {
        let end = self.now + MS(ms);
        while self.now < end {
            self.now += MS(10);
            if self.fence_pending {
                self.fence_pending = false;
                self.server.writable = false;
                let r = FenceReport {
                    server: "s".into(),
                    was_read_only: true,
                    closed_waiting_commits: 0,
                    took: MS(1),
                };
                self.input(Input::Fenced(Ok(r)));
            }
            if self.probe_pending {
                self.probe_pending = false;
                let h = self.server.health();
                let started = self.now - MS(5);
                self.input(Input::Probed {
                    started,
                    health: Box::new(h),
                });
            }
            if self.c.poll_timeout().is_some_and(|t| t <= self.now) {
                self.c.handle_timeout(self.now);
                self.drain();
            }
        }
    }

    fn take_job(&mut self) -> Job {
        self.job.take().expect("a job was started")
    }

    fn done(&mut self, d: Done) {
        self.input(Input::Done(d));
    }

    fn advert(&self) -> SemisyncAdvert {
        self.c.reported.semisync
    }

    fn wish(&mut self, w: DbWish) {
        self.input(Input::Wish(w));
    }

    fn peer(&mut self, heard: bool, primary: bool, semisync: SemisyncAdvert) {
        self.input(Input::Peer(PeerView {
            heard,
            primary,
            semisync,
        }));
    }

    fn status(&self) -> DatabaseStatus {
        self.c.status(self.now, SystemTime::now())
    }

    fn saw(&self, f: impl Fn(&Action) -> bool) -> bool {
        self.seen.iter().any(f)
    }
}

fn promoted(was_replica: bool) -> PromotionReport {
    PromotionReport {
        server: "s".into(),
        was_replica,
        received: None,
        waited: MS(0),
        caught_up: true,
        skipped: None,
        semisync: None,
        handoff: None,
        drained: false,
        frozen_by: Some("io_thread_killed"),
        steps: vec![],
        took: MS(30),
    }
}

/// A caught-up replica told to become primary: the promotion job started.
fn promoting(s: Settings) -> Sim {
    let mut sim = Sim::new(s);
    sim.server.replica = replicating();
    sim.run(50);
    sim.wish(DbWish::Primary);
    sim
}

impl Sim {
    /// The promotion job succeeded: the server is a writable primary now.
    fn promotion_succeeded(&mut self) {
        self.done(Done::Promoted(Ok(promoted(true))));
        self.server.writable = true;
        self.server.replica = None;
    }
}

fn rejoined() -> RejoinReport {
    RejoinReport {
        io_running: true,
        sql_running: true,
        took: MS(40),
        ..RejoinReport::new("s".into(), PEER.into())
    }
}

/// What a server holding `local` (a binlog state) has that one holding
/// `peer` lacks.
fn errant_tail(peer: &str, local: &str) -> Errant {
    let local = MariadbGtids::parse_state(local).unwrap();
    let peer = MariadbGtids::parse_state(peer).unwrap();
    Errant::mariadb(&local, &peer)
}

/// The next job undoes exactly `errant` and rejoins.
fn expect_undo(sim: &mut Sim, errant: &Errant) {
    let Job::Rejoin(r) = sim.take_job() else {
        panic!("undo and rejoin")
    };
    assert_eq!(
        r.discard,
        Discard::Unacknowledged {
            expected: errant.set.clone()
        }
    );
}

/// A rejoin refused because of `errant`.
fn refused_for(errant: &Errant) -> Done {
    Done::Rejoined(Box::new(Err(RejoinError::Errant {
        server: "s".into(),
        peer: PEER.into(),
        errant: errant.clone(),
    })))
}

fn journal(semisync: JournalSemisync, position: Option<&str>) -> Journal {
    Journal {
        server_id: 1,
        role: JournalRole::Primary,
        semisync,
        since: "2026-01-01T00:00:00.000Z".into(),
        position: position.map(str::to_string),
    }
}

#[test]
fn fences_at_start_and_again_when_a_restarted_server_comes_back_writable() {
    let mut sim = Sim::new(settings(None));
    assert!(sim.fence_pending, "fenced before anything else");
    assert!(sim.probe_pending);
    sim.run(50);
    assert!(!sim.fence_pending);
    // The server restarts writable (no read_only in its my.cnf).
    sim.server.writable = true;
    sim.seen.clear();
    sim.run(250);
    assert!(sim.saw(|a| matches!(a, Action::Fence)), "re-fenced");
    assert!(!sim.server.writable);
    assert_eq!(sim.c.wish(), DbWish::Fenced);
}

#[test]
fn a_database_down_for_the_threshold_makes_the_node_unfit_then_fit_again() {
    let mut sim = Sim::new(settings(None));
    sim.run(50);
    sim.server.up = false;
    sim.run(500);
    assert!(sim.reports.iter().all(|r| r.fit), "not unfit before 600 ms");
    sim.run(400);
    assert_eq!(sim.reports.last().map(|r| r.fit), Some(false));
    assert!(sim.status().fitness.starts_with("UNFIT"));
    sim.server.up = true;
    sim.run(250);
    assert_eq!(sim.reports.last().map(|r| r.fit), Some(true));
}

#[test]
fn promotion_after_catch_up_then_retried_while_the_applier_is_behind() {
    let mut sim = promoting(settings(None));
    let Job::Promote(req) = sim.take_job() else {
        panic!("a promotion")
    };
    assert_eq!(req.drain_from, None, "a death: nothing to drain");
    assert_eq!(req.policy, CatchupPolicy::StayReadOnly);
    // Not caught up within the bound: read-only, retried a check interval later.
    sim.done(Done::Promoted(Err(MysqlError::NotCaughtUp {
        server: "s".into(),
        waited: MS(5000),
        missing: GtidSet::Mariadb(MariadbGtids::parse_position("0-2-11").unwrap()),
        reason: None,
    })));
    assert!(sim.job.is_none());
    sim.run(150);
    assert!(sim.job.is_none(), "not before the interval");
    sim.run(100);
    assert!(matches!(sim.take_job(), Job::Promote(_)));
    sim.promotion_succeeded();
    sim.run(300);
    assert!(sim.job.is_none(), "met: nothing more to do");
    let st = sim.status();
    assert_eq!(st.role, "primary");
    assert!(st.last_promotion.unwrap().caught_up);
    assert!(st.last_error.unwrap().contains("NOT promoted"));
}

#[test]
fn a_probe_older_than_the_promotion_is_neither_shown_nor_acted_on() {
    let mut sim = promoting(settings(None));
    assert!(matches!(sim.take_job(), Job::Promote(_)));
    // A probe is in flight while the promotion runs: it reads the replica.
    sim.c.handle_timeout(sim.now + MS(300));
    sim.drain();
    let stale = sim.server.health();
    let probe_started = sim.now;
    sim.now += MS(20);
    sim.promotion_succeeded();
    sim.seen.clear();
    sim.now += MS(5);
    sim.input(Input::Probed {
        started: probe_started,
        health: Box::new(stale),
    });
    assert!(sim.job.is_none(), "the old state is not acted on");
    // The look the promotion's end asked for waited behind the old probe:
    // it is taken now, not a check interval later.
    assert!(
        sim.saw(|a| matches!(a, Action::Probe)),
        "a fresh look is taken at once"
    );
    sim.run(10);
    assert_eq!(sim.status().role, "primary");
}

#[test]
fn catch_up_policy_and_timeout_go_to_the_driver_as_configured() {
    for policy in [CatchupPolicy::StayReadOnly, CatchupPolicy::Promote] {
        let mut s = settings(None);
        s.catchup_policy = policy;
        s.catchup_timeout = MS(1234);
        let mut sim = promoting(s);
        let Job::Promote(req) = sim.take_job() else {
            panic!()
        };
        assert_eq!((req.policy, req.timeout), (policy, MS(1234)));
        // With "promote", the driver promotes and reports what it skipped.
        let mut rep = promoted(true);
        if policy == CatchupPolicy::Promote {
            rep.caught_up = false;
            rep.skipped = Some(GtidSet::Mariadb(
                MariadbGtids::parse_position("0-2-11").unwrap(),
            ));
        }
        sim.done(Done::Promoted(Ok(rep)));
        let st = sim.status().last_promotion.unwrap();
        assert_eq!(st.skipped_gtids.is_some(), policy == CatchupPolicy::Promote);
    }
}

#[test]
fn a_wish_that_changes_mid_promotion_cancels_it_fences_and_rejoins() {
    let mut sim = promoting(settings(None));
    assert!(matches!(sim.job, Some(Job::Promote(_))));
    sim.seen.clear();
    // The silent holder spoke again after all: BACKUP under it.
    sim.wish(DbWish::ReplicaOf(peer()));
    assert!(sim.saw(|a| matches!(a, Action::Cancel)));
    assert!(sim.saw(|a| matches!(a, Action::Fence)));
    let Job::Rejoin(r) = sim.take_job() else {
        panic!("a rejoin")
    };
    assert_eq!(r.discard, Discard::Never);
    assert_eq!(r.peer, peer());
}

#[test]
fn rejoin_refused_for_errant_transactions_waits_for_the_operator() {
    let mut sim = Sim::new(settings(None));
    sim.run(50);
    sim.wish(DbWish::ReplicaOf(peer()));
    assert!(matches!(sim.take_job(), Job::Rejoin(_)));
    let errant = errant_tail("0-2-20", "0-1-25");
    sim.done(refused_for(&errant));
    sim.run(3000);
    assert!(sim.job.is_none(), "never retried alone");
    let st = sim.status();
    let e = st.errant.expect("shown");
    assert_eq!(e.gtids, errant.set.to_string());
    assert!(e.not_undone_because.unwrap().contains("strict"));
    // The operator gives them up.
    sim.input(Input::ForceRejoin);
    let Job::Rejoin(r) = sim.take_job() else {
        panic!()
    };
    assert_eq!(r.discard, Discard::Forced);
    sim.done(Done::Rejoined(Box::new(Ok(rejoined()))));
    assert!(sim.saw(|a| matches!(a, Action::Answer(Answer::Rejoin(r)) if r.is_ok())));
    assert!(sim.status().errant.is_none());
}

#[test]
fn force_is_refused_in_the_wrong_role() {
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.run(50);
    sim.input(Input::ForceRejoin);
    assert!(sim.saw(|a| matches!(
        a,
        Action::Answer(Answer::Rejoin(r)) if matches!(**r, Err(ForceError::NotReplica(DbWish::Fenced)))
    )));
    sim.input(Input::ForcePromote);
    assert!(sim.saw(|a| matches!(
        a,
        Action::Answer(Answer::Promote(r)) if matches!(**r, Err(ForceError::NotPrimary(DbWish::Fenced)))
    )));
    assert!(sim.job.is_none());
}

// -- semi-sync ----------------------------------------------------------------

/// A strict replica that heard the primary say `said`, then lost it.
fn replica_that_heard(said: SemisyncAdvert, d: Durability) -> Sim {
    let mut sim = Sim::new(settings(Some(d)));
    sim.server.replica = replicating();
    sim.server.semisync = acking_replica();
    sim.peer(true, true, said);
    sim.wish(DbWish::ReplicaOf(peer()));
    sim.take_job();
    sim.done(Done::Rejoined(Box::new(Ok(rejoined()))));
    sim.run(300);
    // The primary dies: silent, takeover, reclaim window over.
    sim.peer(false, false, SemisyncAdvert::None);
    sim.wish(DbWish::Primary);
    sim
}

#[test]
fn a_replica_that_last_heard_effective_promotes_after_a_death() {
    let mut sim = replica_that_heard(SemisyncAdvert::Effective, Durability::Strict);
    let Job::Promote(req) = sim.take_job() else {
        panic!("promoted")
    };
    assert_eq!(req.semisync, Some(MS(1000)), "relaxed on the new primary");
    assert_eq!(req.journal, Some(JournalUpdate::PrimaryAsynchronous));
    sim.done(Done::Promoted(Ok(promoted(true))));
    // A new primary without a replica acknowledges alone, and says so.
    assert!(matches!(sim.advert(), SemisyncAdvert::Asynchronous { .. }));
    assert_eq!(sim.status().last_promotion.unwrap().possibly_lost, None);
}

#[test]
fn a_strict_replica_that_heard_asynchronous_or_never_effective_does_not_promote() {
    for said in [
        SemisyncAdvert::Asynchronous { episode: 4 },
        SemisyncAdvert::None,
    ] {
        let mut sim = replica_that_heard(said, Durability::Strict);
        sim.run(2000);
        assert!(sim.job.is_none(), "{said}: held");
        let st = sim.status();
        assert_eq!(st.role, "replica", "still read-only");
        let held = st.semisync.unwrap().promotion_held.expect("why");
        assert!(held.contains("old primary"), "{held}");
        // The operator accepts the loss.
        sim.input(Input::ForcePromote);
        assert!(matches!(sim.take_job(), Job::Promote(_)));
        sim.done(Done::Promoted(Ok(promoted(true))));
        assert!(sim.saw(|a| matches!(a, Action::Answer(Answer::Promote(r)) if r.is_ok())));
        let lost = sim.status().last_promotion.unwrap().possibly_lost.unwrap();
        assert!(lost.contains("forced by the operator"), "{lost}");
    }
}

#[test]
fn an_available_replica_promotes_anyway_and_keeps_the_window_in_status() {
    let mut sim = replica_that_heard(
        SemisyncAdvert::Asynchronous { episode: 2 },
        Durability::Available,
    );
    assert!(matches!(sim.take_job(), Job::Promote(_)));
    sim.done(Done::Promoted(Ok(promoted(true))));
    let lost = sim.status().last_promotion.unwrap().possibly_lost.unwrap();
    assert!(
        lost.contains("available") && lost.contains("announcement 2"),
        "{lost}"
    );
}

#[test]
fn a_planned_handover_drains_the_old_primary_and_must_when_it_was_asynchronous() {
    for (semisync, said, required) in [
        (
            Some(Durability::Strict),
            SemisyncAdvert::Asynchronous { episode: 1 },
            true,
        ),
        (Some(Durability::Strict), SemisyncAdvert::Effective, false),
        // Asynchronous replication: the drain is best effort.
        (None, SemisyncAdvert::None, false),
    ] {
        let mut sim = Sim::new(settings(semisync));
        sim.server.replica = replicating();
        sim.peer(true, true, said);
        sim.run(50);
        // The primary hands over (switchover): BACKUP, fenced.
        sim.peer(true, false, SemisyncAdvert::None);
        sim.wish(DbWish::Primary);
        let Job::Promote(req) = sim.take_job() else {
            panic!()
        };
        assert_eq!(req.drain_from, Some(peer()));
        assert_eq!(req.drain_required, required, "{said}");
        // Not drained: held, retried.
        if required {
            sim.done(Done::Promoted(Err(MysqlError::NotDrained {
                server: "s".into(),
                peer: PEER.into(),
                handoff: "old primary not reachable".into(),
            })));
            let held = sim.status().semisync.unwrap().promotion_held;
            assert!(held.is_some());
        }
    }
}

#[test]
fn the_replica_echoes_the_primarys_asynchronous_announcement() {
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.server.replica = replicating();
    sim.server.semisync = acking_replica();
    sim.peer(true, true, SemisyncAdvert::Effective);
    sim.wish(DbWish::ReplicaOf(peer()));
    sim.take_job();
    sim.done(Done::Rejoined(Box::new(Ok(rejoined()))));
    sim.run(300);
    assert_eq!(sim.advert(), SemisyncAdvert::Acking { noted: 0 });
    sim.peer(true, true, SemisyncAdvert::Asynchronous { episode: 7 });
    assert_eq!(sim.advert(), SemisyncAdvert::Acking { noted: 7 });
    // Even with its IO thread gone (the usual reason for the announcement).
    sim.server.semisync = Some(SemisyncState::default());
    sim.run(300);
    assert_eq!(sim.advert(), SemisyncAdvert::AsyncNoted { episode: 7 });
    sim.peer(true, true, SemisyncAdvert::Effective);
    sim.server.semisync = acking_replica();
    sim.run(300);
    assert_eq!(sim.advert(), SemisyncAdvert::Acking { noted: 0 });
}

#[test]
fn a_replica_not_acknowledging_is_reconnected_as_semisync_once() {
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.server.replica = replicating();
    sim.server.semisync = Some(SemisyncState::default());
    sim.peer(true, true, SemisyncAdvert::Effective);
    sim.wish(DbWish::ReplicaOf(peer()));
    sim.take_job();
    sim.done(Done::Rejoined(Box::new(Ok(rejoined()))));
    sim.run(250);
    assert_eq!(sim.take_job(), Job::ReplicaSemisync);
    sim.server.semisync = acking_replica();
    sim.done(Done::ReplicaSemisync(Ok(acking_replica().unwrap())));
    sim.run(1000);
    assert!(sim.job.is_none(), "acking: nothing more");
}

/// A promoted strict primary whose replica acknowledges (effective).
fn effective_primary() -> Sim {
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.run(50);
    sim.wish(DbWish::Primary);
    assert!(matches!(sim.take_job(), Job::Promote(_)));
    sim.done(Done::Promoted(Ok(promoted(false))));
    sim.server.writable = true;
    assert_eq!(sim.advert(), SemisyncAdvert::Asynchronous { episode: 1 });
    // The peer rejoins and acknowledges; the server reports it on.
    sim.peer(true, false, SemisyncAdvert::Acking { noted: 0 });
    sim.server.semisync = primary_ss(false, 1, 0, 5);
    sim.run(250);
    assert_eq!(
        sim.take_job(),
        Job::Strict {
            relaxed_timeout: MS(1000)
        }
    );
    assert_eq!(
        sim.advert(),
        SemisyncAdvert::Asynchronous { episode: 1 },
        "not before it is strict"
    );
    sim.server.semisync = primary_ss(true, 1, 0, 5);
    sim.done(Done::Strict(Ok(StrictOutcome::Effective(
        sim.server.semisync.clone().unwrap(),
    ))));
    assert_eq!(sim.advert(), SemisyncAdvert::Effective);
    sim
}

#[test]
fn a_primary_goes_asynchronous_only_after_the_replica_heard_it() {
    let mut sim = effective_primary();
    assert!(sim.status().semisync.unwrap().effective_since.is_some());
    // The replica stops acknowledging (inside link cut): a commit waits.
    sim.server.semisync = primary_ss(true, 1, 1, 5);
    sim.run(900);
    assert_eq!(
        sim.advert(),
        SemisyncAdvert::Effective,
        "within the timeout"
    );
    sim.run(400);
    assert_eq!(sim.advert(), SemisyncAdvert::Asynchronous { episode: 2 });
    assert!(sim.job.is_none(), "announced, still waiting");
    // A stale echo of an older announcement is not enough.
    sim.peer(true, false, SemisyncAdvert::AsyncNoted { episode: 1 });
    sim.run(300);
    assert!(sim.job.is_none());
    // The replica's IO thread may still believe it is connected (the
    // inside link cut, not closed): it says it acks, and heard 2.
    sim.peer(true, false, SemisyncAdvert::Acking { noted: 2 });
    assert_eq!(sim.take_job(), Job::Relax { timeout: MS(1000) });
    sim.server.semisync = primary_ss(false, 1, 0, 5);
    sim.done(Done::Relaxed(Ok(sim.server.semisync.clone().unwrap())));
    assert_eq!(sim.advert(), SemisyncAdvert::Asynchronous { episode: 2 });
    assert!(sim.status().semisync.unwrap().asynchronous_since.is_some());
}

#[test]
fn a_primary_whose_replica_is_silent_keeps_waiting() {
    let mut sim = effective_primary();
    sim.server.semisync = primary_ss(true, 1, 3, 5);
    sim.peer(false, false, SemisyncAdvert::None);
    sim.run(10_000);
    assert_eq!(sim.advert(), SemisyncAdvert::Asynchronous { episode: 2 });
    assert!(sim.job.is_none(), "never relaxed without the echo");
    assert_eq!(sim.status().semisync.unwrap().waiting_commits, Some(3));
}

#[test]
fn a_degrading_primary_whose_replica_acknowledges_again_is_effective_again() {
    let mut sim = effective_primary();
    sim.server.semisync = primary_ss(true, 0, 1, 5);
    sim.run(1300);
    assert_eq!(sim.advert(), SemisyncAdvert::Asynchronous { episode: 2 });
    sim.server.semisync = primary_ss(true, 1, 0, 9);
    sim.run(250);
    assert_eq!(sim.advert(), SemisyncAdvert::Effective);
}

#[test]
fn a_server_that_relaxed_behind_the_agents_back_is_announced_at_once() {
    let mut sim = effective_primary();
    let mut ss = primary_ss(false, 1, 0, 5).unwrap();
    ss.source_on = false;
    sim.server.semisync = Some(ss);
    sim.run(250);
    assert!(matches!(sim.advert(), SemisyncAdvert::Asynchronous { .. }));
    assert!(sim
        .status()
        .last_error
        .unwrap()
        .contains("behind the agent's back"));
}

#[test]
fn a_server_that_relaxed_behind_the_agents_back_stops_the_journal_vouching() {
    let mut sim = effective_primary();
    // What the Strict job wrote, read back by the runner.
    let effective = journal(JournalSemisync::Effective, Some("0-1-100"));
    sim.input(Input::Journal(Ok(Some(effective))));
    // A restarted mysqld comes back with the semi-sync of its my.cnf.
    let mut ss = primary_ss(false, 1, 0, 5).unwrap();
    ss.source_on = false;
    sim.server.semisync = Some(ss);
    sim.run(250);
    // The journal first: an undo later must not count on it.
    assert_eq!(sim.take_job(), Job::Relax { timeout: MS(1000) });
    // The runner hands the journal read back before the outcome.
    let relaxed = journal(JournalSemisync::Asynchronous, None);
    sim.input(Input::Journal(Ok(Some(relaxed))));
    sim.done(Done::Relaxed(Ok(sim.server.semisync.clone().unwrap())));
    sim.run(250);
    assert!(sim.job.is_none(), "journaled once: {:?}", sim.job);
}

#[test]
fn a_strict_replica_whose_replication_status_is_unknown_waits_to_promote() {
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.server.replica = replicating();
    sim.server.semisync = acking_replica();
    sim.peer(true, true, SemisyncAdvert::None);
    sim.wish(DbWish::ReplicaOf(peer()));
    sim.take_job();
    sim.done(Done::Rejoined(Box::new(Ok(rejoined()))));
    sim.run(300);
    // Its server stops answering, then the primary dies: whether it was
    // the peer's replica (and so whether the gate applies) is unknown.
    sim.server.up = false;
    sim.run(300);
    sim.peer(false, false, SemisyncAdvert::None);
    sim.wish(DbWish::Primary);
    sim.run(2000);
    assert!(sim.job.is_none(), "no promotion while unknown");
    sim.server.up = true;
    sim.run(300);
    assert!(sim.job.is_none(), "held by the gate once known");
    assert!(sim.status().semisync.unwrap().promotion_held.is_some());
}

#[test]
fn available_primary_says_effective_after_the_fact_and_never_goes_strict() {
    let mut sim = Sim::new(settings(Some(Durability::Available)));
    sim.run(50);
    sim.wish(DbWish::Primary);
    sim.take_job();
    sim.done(Done::Promoted(Ok(promoted(false))));
    sim.server.writable = true;
    sim.peer(true, false, SemisyncAdvert::Acking { noted: 0 });
    sim.server.semisync = primary_ss(false, 1, 0, 5);
    sim.run(500);
    assert!(sim.job.is_none(), "no strict setup");
    assert_eq!(sim.advert(), SemisyncAdvert::Effective);
    let mut off = primary_ss(false, 0, 0, 5).unwrap();
    off.source_on = false;
    sim.server.semisync = Some(off);
    sim.run(250);
    assert!(matches!(sim.advert(), SemisyncAdvert::Asynchronous { .. }));
}

// -- the returning old primary -------------------------------------------------

fn returning_old_primary(j: Option<Journal>, d: Option<Durability>) -> (Sim, Errant) {
    let mut sim = Sim::new(settings(d));
    sim.input(Input::Journal(Ok(j)));
    sim.run(50);
    sim.wish(DbWish::ReplicaOf(peer()));
    assert!(matches!(sim.take_job(), Job::Rejoin(_)));
    // Effective from 0-1-100; it died at 0-1-130, the new primary has 0-1-120.
    let errant = errant_tail("0-1-120", "0-1-130");
    sim.done(refused_for(&errant));
    (sim, errant)
}

#[test]
fn an_unacknowledged_tail_is_undone_and_rejoined_without_an_operator() {
    let j = journal(JournalSemisync::Effective, Some("0-1-100"));
    let (mut sim, errant) = returning_old_primary(Some(j), Some(Durability::Strict));
    expect_undo(&mut sim, &errant);
    // An undo is not cut in the middle by a change of wish.
    sim.wish(DbWish::Fenced);
    assert!(!sim.saw(|a| matches!(a, Action::Cancel)));
    let mut rep = rejoined();
    rep.discarded = Some(errant);
    rep.automatic = true;
    sim.wish(DbWish::ReplicaOf(peer()));
    sim.done(Done::Rejoined(Box::new(Ok(rep))));
    let st = sim.status();
    assert!(st.errant.is_none());
    assert!(st.last_rejoin.unwrap().automatic);
}

#[test]
fn a_tail_that_may_have_been_acknowledged_is_refused() {
    for (j, d, why) in [
        (None, Some(Durability::Strict), "no semi-sync journal"),
        (
            Some(journal(JournalSemisync::Asynchronous, None)),
            Some(Durability::Strict),
            "asynchronous",
        ),
        // A journal of the time it was a replica: nothing about its tail.
        (
            Some(Journal {
                role: JournalRole::Replica,
                ..journal(JournalSemisync::Off, None)
            }),
            Some(Durability::Strict),
            "a replica",
        ),
        (
            Some(journal(JournalSemisync::Effective, Some("0-1-100"))),
            Some(Durability::Available),
            "strict",
        ),
        (
            Some(journal(JournalSemisync::Effective, Some("0-1-100"))),
            None,
            "strict",
        ),
    ] {
        let (mut sim, _) = returning_old_primary(j, d);
        sim.run(1000);
        assert!(sim.job.is_none(), "{why}: refused");
        let because = sim.status().errant.unwrap().not_undone_because.unwrap();
        assert!(because.contains(why), "{why}: {because}");
    }
}

#[test]
fn undo_verdict_refuses_other_servers_transactions_and_foreign_journals() {
    let s = settings(Some(Durability::Strict));
    let mut h = Server::fenced().health();
    let j = journal(JournalSemisync::Effective, Some("0-1-100"));
    // Someone else's transactions in the tail.
    let theirs = errant_tail("0-1-120", "0-1-120,0-3-130");
    assert!(undo_verdict(&s, Some(&j), Some(&h), &theirs)
        .unwrap_err()
        .contains("not written by this server"));
    let mine = errant_tail("0-1-120", "0-1-130");
    assert_eq!(undo_verdict(&s, Some(&j), Some(&h), &mine), Ok(()));
    // A journal of another data directory.
    let other = Journal {
        server_id: 7,
        ..j.clone()
    };
    assert!(undo_verdict(&s, Some(&other), Some(&h), &mine).is_err());
    // MySQL: no flashback.
    h.flavor = Some(Flavor::Mysql);
    assert!(undo_verdict(&s, Some(&j), Some(&h), &mine)
        .unwrap_err()
        .contains("MariaDB"));
    let _ = MysqlGtidSet::parse("").unwrap();
}

#[test]
fn an_echo_counts_whether_the_replica_acks_or_not() {
    assert!(SemisyncAdvert::Acking { noted: 2 }.noted(2));
    assert!(SemisyncAdvert::AsyncNoted { episode: 2 }.noted(2));
    assert!(!SemisyncAdvert::Acking { noted: 1 }.noted(2));
    assert!(
        !SemisyncAdvert::Acking { noted: 0 }.noted(0),
        "0 is no announcement"
    );
    assert!(!SemisyncAdvert::Effective.noted(2));
}

#[test]
fn an_errant_tail_found_before_the_first_probe_is_judged_once_the_server_is_known() {
    let j = journal(JournalSemisync::Effective, Some("0-1-100"));
    let mut sim = Sim::new(settings(Some(Durability::Strict)));
    sim.input(Input::Journal(Ok(Some(j))));
    // The MariaDB restarted a moment ago: not answering yet.
    sim.server.up = false;
    sim.run(50);
    sim.wish(DbWish::ReplicaOf(peer()));
    assert!(matches!(sim.take_job(), Job::Rejoin(_)));
    let errant = errant_tail("0-1-120", "0-1-130");
    sim.done(refused_for(&errant));
    assert!(
        sim.status().errant.is_none(),
        "not blocked for lack of a probe"
    );
    sim.server.up = true;
    sim.run(250);
    // Asked again once known: refused again, now judged.
    let Job::Rejoin(r) = sim.take_job() else {
        panic!()
    };
    assert_eq!(r.discard, Discard::Never);
    sim.done(refused_for(&errant));
    expect_undo(&mut sim, &errant);
}
