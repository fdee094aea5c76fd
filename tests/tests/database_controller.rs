//! The database controller (`decisions::database`, run by
//! `drivers::mysql::runner`) against real MariaDB
//! servers on loopback ports: the daemon's side (set a wish, read the
//! status, hear fitness and replica changes) without the election or any
//! namespace. Waits are on the controller's own status and event channels,
//! never on sleeps. Timings are printed with `--nocapture`.

use std::time::{Duration, Instant};

use std::sync::Arc;

use ha_agent::decisions::database::{DbWish, LocalDb, PeerView, SemisyncAdvert};
use ha_agent::drivers::mysql::runner::DbHandle;
use ha_agent::drivers::mysql::MysqlDriver;
use ha_agent::operator::status::DatabaseStatus;
use ha_lab::mariadb::{Mariadb, MariadbOptions};
use tokio::sync::mpsc::UnboundedReceiver;

const BOUND: Duration = Duration::from_secs(20);

fn start(server_id: u32) -> Mariadb {
    Mariadb::start(MariadbOptions::loopback(server_id)).expect("starting mariadbd")
}

fn controller(db: &Mariadb, peer: &Mariadb) -> (DbHandle, UnboundedReceiver<LocalDb>) {
    let mut cfg = db.agent_config(peer.addr());
    cfg.down_handover_ms = 600;
    DbHandle::spawn(MysqlDriver::new(&cfg).expect("driver"))
}

/// Waits (bounded) until the controller's status satisfies `cond`.
async fn status_until(
    h: &DbHandle,
    what: &str,
    cond: impl Fn(&DatabaseStatus) -> bool,
) -> DatabaseStatus {
    let mut w = h.watch();
    let got = match tokio::time::timeout(BOUND, w.wait_for(|s| cond(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("{what}: not within {BOUND:?}; status: {:#?}", h.status()),
    };
    got
}

async fn event_until(rx: &mut UnboundedReceiver<LocalDb>, what: &str, want: LocalDb) {
    let wait = async {
        while let Some(e) = rx.recv().await {
            if e == want {
                return;
            }
        }
        panic!("event channel closed");
    };
    if tokio::time::timeout(BOUND, wait).await.is_err() {
        panic!("{what}: no {want:?} event within {BOUND:?}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn read_only(db: &Mariadb) -> bool {
    db.value("SELECT @@global.read_only").unwrap() == "1"
}

#[tokio::test]
async fn fences_at_start_and_again_after_a_restart_and_tracks_fitness() {
    let mut db = start(1);
    let other = start(2);
    assert!(!read_only(&db), "a fresh server is writable");
    let t = Instant::now();
    let (h, mut events) = controller(&db, &other);
    assert_eq!(h.wish(), DbWish::Fenced);
    status_until(&h, "fenced at start", |s| s.up && s.read_only).await;
    println!(
        "fenced {:.1} ms after the controller started",
        ms(t.elapsed())
    );
    assert!(read_only(&db));
    assert!(
        !db.app_sql("INSERT INTO app.t (v, origin) VALUES ('x', 1)")
            .unwrap()
            .status
            .success(),
        "application writes fail"
    );

    // Down long enough: unfit, then fit again once it answers. A restarted
    // MariaDB comes back writable: it is fenced again.
    db.kill().unwrap();
    let down = Instant::now();
    event_until(
        &mut events,
        "unfit",
        LocalDb {
            fit: false,
            replica_ok: false,
            semisync: SemisyncAdvert::None,
        },
    )
    .await;
    println!("unfit {:.0} ms after the kill", ms(down.elapsed()));
    assert!(down.elapsed() >= Duration::from_millis(600));
    let s = h.status();
    assert!(!s.fit && s.fitness.starts_with("UNFIT"), "{s:?}");
    db.spawn().unwrap();
    let up = Instant::now();
    event_until(&mut events, "fit again", LocalDb::default()).await;
    status_until(&h, "re-fenced after the restart", |s| {
        s.up && s.read_only && s.role == "fenced"
    })
    .await;
    println!(
        "restarted server fit and fenced again {:.0} ms after it answered",
        ms(up.elapsed())
    );
    assert!(read_only(&db));
}

#[tokio::test]
async fn replica_then_primary_then_errant_rejoin_and_force() {
    let s1 = start(1);
    let s2 = start(2);
    s2.replicate_from(s1.addr()).unwrap();
    s1.insert_rows(10, "shared").unwrap();
    s2.wait_count(10, BOUND).unwrap();

    // server2: a replica of server1, caught up: offered for reads.
    let (h2, mut ev2) = controller(&s2, &s1);
    h2.set_wish(DbWish::ReplicaOf(s1.addr()));
    event_until(
        &mut ev2,
        "replica_ok",
        LocalDb {
            fit: true,
            replica_ok: true,
            semisync: SemisyncAdvert::None,
        },
    )
    .await;
    let st = status_until(&h2, "replicating", |s| s.replication.is_some()).await;
    assert_eq!(st.role, "replica");
    assert!(st.replica_ok);

    // server1 is cut off (server2's agent no longer hears a MASTER: it
    // only keeps its database fenced) and takes 5 transactions server2
    // never gets.
    h2.set_wish(DbWish::Fenced);
    event_until(&mut ev2, "replica_ok cleared", LocalDb::default()).await;
    s2.sql("STOP SLAVE IO_THREAD").unwrap();
    let mut errant_sql = String::new();
    for i in 0..5 {
        errant_sql.push_str(&format!(
            "INSERT INTO app.t (id, v, origin) VALUES ({}, 'errant', 1);\n",
            1_000_001 + i
        ));
    }
    s1.sql(&errant_sql).unwrap();
    // server2 takes over: promoted, replication gone, no longer a replica to offer.
    let t = Instant::now();
    h2.set_wish(DbWish::Primary);
    let st = status_until(&h2, "promoted", |s| {
        s.last_promotion.is_some() && s.writable && s.replication.is_none()
    })
    .await;
    println!(
        "promoted: status shows it writable {:.1} ms after the wish (promotion took {:.1} ms)",
        ms(t.elapsed()),
        st.last_promotion.as_ref().unwrap().took_ms
    );
    assert_eq!(st.role, "primary");
    assert!(!st.replica_ok);
    assert_eq!(s2.slave_status("Slave_IO_Running").unwrap(), None);
    s2.insert_rows(30, "new primary").unwrap();

    // server1 comes back as a backup: fenced, and its rejoin is blocked.
    let (h1, _ev1) = controller(&s1, &s2);
    h1.set_wish(DbWish::ReplicaOf(s2.addr()));
    let st = status_until(&h1, "rejoin blocked", |s| s.errant.is_some()).await;
    let errant = st.errant.as_ref().unwrap();
    println!("blocked: {errant:?}");
    assert_eq!(errant.gtids, "0-1-15");
    assert_eq!(errant.transactions, 5);
    assert!(read_only(&s1), "fenced while blocked");
    assert_eq!(s1.slave_status("Slave_IO_Running").unwrap(), None);
    assert!(
        st.last_error.as_deref().unwrap().contains("errant"),
        "{st:?}"
    );

    // A forced rejoin (the CLI's path) gives them up and replicates.
    let t = Instant::now();
    let rep = h1.rejoin_force().await.unwrap().expect("forced rejoin");
    println!(
        "forced rejoin: {:.1} ms; steps: {}",
        ms(t.elapsed()),
        rep.steps
            .iter()
            .map(|s| format!("{} {:.1}", s.name, ms(s.took)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        rep.discarded.as_ref().map(|e| e.set.to_string()).as_deref(),
        Some("0-1-15")
    );
    let st = status_until(&h1, "replicating after force", |s| {
        s.errant.is_none()
            && s.replication
                .as_ref()
                .is_some_and(|r| r.io_running == "Yes" && r.sql_running)
    })
    .await;
    assert!(st
        .last_rejoin
        .as_ref()
        .and_then(|r| r.discarded.as_deref())
        .is_some_and(|d| d.contains("0-1-15")));
    assert!(
        rep.undone.is_some(),
        "MariaDB: the errant rows are undone: {rep:?}"
    );
    // The 5 errant rows are gone: server1 holds server2's 40.
    s1.wait_count(40, BOUND).unwrap();

    // Only a BACKUP may force: as primary it is refused, nothing changes.
    let refused = h2.rejoin_force().await.unwrap().unwrap_err();
    assert!(
        matches!(
            refused,
            ha_agent::decisions::database::ForceError::NotReplica(_)
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("BACKUP"), "{refused}");
}

/// Carries each controller's semi-sync advertisement to the other, as the
/// election does in its probes (server1 the MASTER, server2 BACKUP).
fn carry_adverts(
    h1: Arc<DbHandle>,
    mut e1: UnboundedReceiver<LocalDb>,
    h2: Arc<DbHandle>,
    mut e2: UnboundedReceiver<LocalDb>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(d) = e1.recv() => h2.set_peer(PeerView { heard: true, primary: true, semisync: d.semisync }),
                Some(d) = e2.recv() => h1.set_peer(PeerView { heard: true, primary: false, semisync: d.semisync }),
                else => return,
            }
        }
    })
}

#[tokio::test]
async fn semisync_goes_effective_and_asynchronous_only_with_the_replica_told() {
    let s1 = start(1);
    let s2 = start(2);
    let mk = |db: &Mariadb, peer: &Mariadb| {
        let mut cfg = db.agent_config(peer.addr());
        cfg.semisync = true;
        let (h, e) = DbHandle::spawn(MysqlDriver::new(&cfg).expect("driver"));
        (Arc::new(h), e)
    };
    let (h1, e1) = mk(&s1, &s2);
    let (h2, e2) = mk(&s2, &s1);
    let carrier = carry_adverts(h1.clone(), e1, h2.clone(), e2);
    h1.set_wish(DbWish::Primary);
    status_until(&h1, "server1 promoted", |s| {
        s.writable && s.last_promotion.is_some()
    })
    .await;
    // A new primary without its replica acknowledges alone, and says so.
    let st = h1.status();
    assert!(
        st.semisync
            .as_ref()
            .unwrap()
            .advertised
            .starts_with("asynchronous"),
        "{st:?}"
    );
    // The controllers alone make server2 a semi-sync replica of server1,
    // and server1 strict once server2 acknowledges.
    h2.set_wish(DbWish::ReplicaOf(s1.addr()));
    let t = Instant::now();
    status_until(&h2, "server2 acknowledging", |s| {
        s.replica_ok && s.semisync_effective == Some(true)
    })
    .await;
    let st1 = status_until(&h1, "server1 effective", |s| {
        s.semisync
            .as_ref()
            .is_some_and(|x| x.advertised == "effective")
    })
    .await;
    println!(
        "semi-sync effective {:.0} ms after the replica's wish",
        ms(t.elapsed())
    );
    assert!(st1.semisync.unwrap().effective_since.is_some());
    s1.insert_rows(3, "semi-sync").unwrap();
    s2.wait_count(3, BOUND).unwrap();

    // server2's agent stops replicating (fenced), its IO thread goes: the
    // primary's commits wait; it announces asynchronous, server2 echoes,
    // and only then does server1 acknowledge alone.
    h2.set_wish(DbWish::Fenced);
    s2.sql("STOP SLAVE IO_THREAD").unwrap();
    let t = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let socket = s1.socket();
    std::thread::spawn(move || {
        let out = std::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args([
                "-uroot",
                "-e",
                "INSERT INTO app.t (v, origin) VALUES ('after the replica left', 1)",
            ])
            .output();
        let _ = done_tx.send(out);
    });
    let out = loop {
        tokio::select! {
            r = &mut done_rx => break r.unwrap().unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                assert!(t.elapsed() < BOUND, "the commit still waits after {BOUND:?}:\nprimary {:#?}\nreplica {:#?}", h1.status().semisync, h2.status().semisync);
            }
        }
    };
    assert!(out.status.success(), "{out:?}");
    let waited = t.elapsed();
    let st1 = h1.status();
    let st2 = h2.status();
    println!(
        "commits waited {:.0} ms; primary: {:?}; replica: {:?}",
        ms(waited),
        st1.semisync,
        st2.semisync
    );
    assert!(
        waited >= Duration::from_millis(1000),
        "acknowledged alone before semisync_timeout_ms: {waited:?}"
    );
    let ss1 = st1.semisync.unwrap();
    assert!(ss1.advertised.starts_with("asynchronous"), "{ss1:?}");
    status_until(&h1, "the commit counted as not acknowledged", |s| {
        s.semisync
            .as_ref()
            .is_some_and(|x| x.commits_without_ack.unwrap_or(0) >= 1)
    })
    .await;
    assert!(st2
        .semisync
        .unwrap()
        .advertised
        .contains("heard the primary go asynchronous"),);
    let j = ha_agent::drivers::mysql::journal::read(&h1_state(&s1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        j.semisync,
        ha_agent::drivers::mysql::journal::JournalSemisync::Asynchronous,
        "journaled before acknowledging alone"
    );
    carrier.abort();
}

fn h1_state(db: &Mariadb) -> std::path::PathBuf {
    db.dir().join("agent-state")
}
