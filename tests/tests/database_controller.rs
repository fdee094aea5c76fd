//! The database controller (agent/src/database.rs) against real MariaDB
//! servers on loopback ports: the daemon's side (set a wish, read the
//! status, hear fitness and replica changes) without the election or any
//! namespace. Waits are on the controller's own status and event channels,
//! never on sleeps. Timings are printed with `--nocapture`.

use std::time::{Duration, Instant};

use ha_agent::decisions::database::{DbHandle, DbWish, LocalDb, SemisyncAdvert};
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
    assert!(refused.contains("BACKUP"), "{refused}");
}

#[tokio::test]
async fn semisync_is_enabled_after_promotion_and_rejoin_and_shown_effective() {
    let s1 = start(1);
    let s2 = start(2);
    let mk = |db: &Mariadb, peer: &Mariadb| {
        let mut cfg = db.agent_config(peer.addr());
        cfg.semisync = true;
        DbHandle::spawn(MysqlDriver::new(&cfg).expect("driver"))
    };
    let (h1, _e1) = mk(&s1, &s2);
    let (h2, _e2) = mk(&s2, &s1);
    h1.set_wish(DbWish::Primary);
    status_until(&h1, "server1 promoted", |s| s.writable).await;
    // The controllers alone make server2 a semi-sync replica of server1.
    h2.set_wish(DbWish::ReplicaOf(s1.addr()));
    let st2 = status_until(&h2, "server2 a semi-sync replica", |s| {
        s.replica_ok && s.semisync_effective == Some(true)
    })
    .await;
    assert!(st2.last_rejoin.is_some(), "{st2:?}");
    // The primary's side is effective once the replica acknowledges.
    s1.insert_rows(3, "semi-sync").unwrap();
    let st1 = status_until(&h1, "server1 semi-sync effective", |s| {
        s.semisync_effective == Some(true)
    })
    .await;
    println!(
        "semi-sync effective: primary {:?}, replica {:?}",
        st1.semisync_effective, st2.semisync_effective
    );
    s2.wait_count(3, BOUND).unwrap();
}
