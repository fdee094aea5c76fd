//! The MySQL driver against real MariaDB servers (plain `mariadbd`
//! processes on loopback ports: no root or namespace needed), and against a
//! fake server that answers with malformed GTID strings.
//!
//! Needs `mariadbd`, `mariadb-install-db` and `mariadb` (Debian:
//! mariadb-server, mariadb-client). Timings are printed with `--nocapture`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_agent::drivers::mysql::{
    CatchupPolicy, Discard, MysqlDriver, MysqlError, PromoteRequest, RejoinError, RejoinRequest,
};
use ha_lab::mariadb::{Mariadb, MariadbOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn start(server_id: u32) -> Mariadb {
    Mariadb::start(MariadbOptions::loopback(server_id)).expect("starting mariadbd")
}

/// server1 primary, server2 replicating from it.
fn pair() -> (Mariadb, Mariadb) {
    let s1 = start(1);
    let s2 = start(2);
    s2.replicate_from(s1.addr()).expect("server2 replicating");
    (s1, s2)
}

fn driver(db: &Mariadb, peer: &Mariadb) -> MysqlDriver {
    MysqlDriver::new(&db.agent_config(peer.addr())).expect("driver")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A promotion after a death (nothing to drain), asynchronous replication.
fn promotion(timeout: Duration, policy: CatchupPolicy) -> PromoteRequest {
    PromoteRequest {
        timeout,
        policy,
        drain_from: None,
        drain_required: false,
        semisync: None,
        journal: None,
    }
}

fn rejoining(peer: SocketAddr, discard: Discard) -> RejoinRequest {
    RejoinRequest {
        peer,
        discard,
        journal: None,
    }
}

const SECS_20: Duration = Duration::from_secs(20);

#[test]
fn fence_blocks_application_writes_and_is_idempotent() {
    let db = start(1);
    let ok = db
        .app_sql("INSERT INTO app.t (v, origin) VALUES ('before', 1)")
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let d = driver(&db, &db);
    rt().block_on(async {
        let h = d.probe().await;
        assert!(h.up && h.writable && !h.read_only, "{h:?}");
        assert_eq!(
            h.flavor,
            Some(ha_agent::drivers::mysql::flavor::Flavor::Mariadb)
        );
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        assert!(h.replica.is_none());

        let r = d.fence().await.unwrap();
        assert!(!r.was_read_only);
        println!("fence: {:.2} ms", ms(r.took));
        let out = db
            .app_sql("INSERT INTO app.t (v, origin) VALUES ('after', 1)")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("1290"),
            "a fenced server must refuse writes with 1290: {out:?}"
        );

        let again = d.fence().await.unwrap();
        assert!(again.was_read_only, "second fence is a no-op");
        println!("fence when already fenced: {:.2} ms", ms(again.took));
        let h = d.probe().await;
        assert!(h.up && h.read_only && !h.writable, "{h:?}");
        println!("probe: {:.2} ms", ms(h.took));
    });
    assert_eq!(db.count().unwrap(), 1);
}

#[test]
fn promotion_applies_the_whole_relay_backlog_first() {
    let (s1, s2) = pair();
    s1.insert_rows(10, "warmup").unwrap();
    s2.wait_count(10, SECS_20).unwrap();
    // Hold the applier back while the primary writes: a relay-log backlog.
    s2.sql("STOP SLAVE SQL_THREAD").unwrap();
    const N: usize = 3000;
    s1.insert_rows(N, "backlog").unwrap();
    let pos = s1.gtid_binlog_pos().unwrap();
    s2.wait_received(&pos, SECS_20).unwrap();
    assert_eq!(s2.count().unwrap(), 10, "backlog not applied yet");

    let d = driver(&s2, &s1);
    let rt = rt();
    let rep = rt
        .block_on(d.promote(&promotion(
            Duration::from_secs(60),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap();
    println!(
        "promotion with a {N}-transaction backlog: {:.1} ms, of which waiting {:.1} ms",
        ms(rep.took),
        ms(rep.waited)
    );
    assert!(
        rep.was_replica && rep.caught_up && rep.skipped.is_none(),
        "{rep:?}"
    );
    assert!(rep.waited > Duration::ZERO);
    assert_eq!(rep.received.as_ref().unwrap().to_string(), pos);
    assert_eq!(
        s2.count().unwrap(),
        10 + N as u64,
        "every received row applied"
    );
    // The IO thread was killed (nothing more received or acknowledged);
    // replication is forgotten after the unfence, in the background.
    assert_eq!(rep.frozen_by, Some("io_thread_killed"), "{rep:?}");
    rt.block_on(d.settle_background());
    assert_eq!(
        s2.slave_status("Slave_IO_Running").unwrap(),
        None,
        "replication reset"
    );
    let h = rt.block_on(d.probe());
    assert!(h.writable, "{h:?}");
    let w = s2
        .app_sql("INSERT INTO app.t (v, origin) VALUES ('new primary', 2)")
        .unwrap();
    assert!(w.status.success(), "{w:?}");
}

#[test]
fn promotion_with_an_empty_backlog_is_quick() {
    let (s1, s2) = pair();
    s1.insert_rows(20, "rows").unwrap();
    s2.wait_count(20, SECS_20).unwrap();
    let d = driver(&s2, &s1);
    let rt = rt();
    // Warm the connection as the daemon's health probe would have.
    assert!(rt.block_on(d.probe()).up);
    let rep = rt
        .block_on(d.promote(&promotion(
            Duration::from_secs(5),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap();
    println!(
        "promotion with an empty backlog: {:.2} ms (waited {:.2} ms); steps: {}",
        ms(rep.took),
        ms(rep.waited),
        rep.steps
            .iter()
            .map(|s| format!("{} {:.2}", s.name, ms(s.took)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(rep.caught_up && rep.was_replica);
    assert_eq!(rep.waited, Duration::ZERO, "nothing to wait for");
    assert!(rep.took < Duration::from_secs(2), "{:?}", rep.took);
    // Promoting a primary again only unfences it.
    let again = rt
        .block_on(d.promote(&promotion(
            Duration::from_secs(5),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap();
    assert!(!again.was_replica);
}

#[test]
fn a_stuck_applier_keeps_the_server_read_only_unless_policy_promote() {
    let (s1, s2) = pair();
    // A row only the replica has (not binlogged: no errant GTID), then the
    // primary writes the same key: the replica's applier stops with 1062.
    s2.sql("SET SESSION sql_log_bin = 0; INSERT INTO app.t (id, v, origin) VALUES (100, 'replica only', 2)")
        .unwrap();
    s1.sql("INSERT INTO app.t (id, v, origin) VALUES (100, 'primary', 1)")
        .unwrap();
    let pos = s1.gtid_binlog_pos().unwrap();
    ha_lab::wait_until_ok(SECS_20, "the applier to stop with 1062", || {
        Ok(s2.slave_status("Last_SQL_Errno")?.as_deref() == Some("1062"))
    })
    .unwrap();
    let d = driver(&s2, &s1);
    let rt = rt();
    let start = Instant::now();
    let e = rt
        .block_on(d.promote(&promotion(
            Duration::from_millis(300),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap_err();
    println!("held back after {:.0} ms: {e}", ms(start.elapsed()));
    match &e {
        MysqlError::NotCaughtUp {
            missing, reason, ..
        } => {
            assert_eq!(missing.to_string(), pos);
            assert!(reason.as_deref().unwrap_or("").contains("1062"), "{e}");
        }
        other => panic!("expected NotCaughtUp, got {other}"),
    }
    assert!(
        e.to_string().contains(&pos),
        "the message names what is missing: {e}"
    );
    assert_eq!(s2.value("SELECT @@global.read_only").unwrap(), "1");
    assert!(s2.slave_status("Slave_SQL_Running").unwrap().is_some());

    // Retried (as the daemon does): both threads are stopped now. MariaDB
    // would discard the relay log if the applier restarted, and its
    // Gtid_IO_Pos would then claim nothing is missing: the retry must still
    // name the missing transaction instead of promoting.
    let again = rt
        .block_on(d.promote(&promotion(
            Duration::from_millis(300),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap_err();
    println!("retry: {again}");
    match &again {
        MysqlError::NotCaughtUp {
            missing, reason, ..
        } => {
            assert_eq!(missing.to_string(), pos);
            assert!(
                reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("discard the relay log"),
                "{again}"
            );
        }
        other => panic!("expected NotCaughtUp, got {other}"),
    }
    assert_eq!(
        s2.slave_status("Gtid_IO_Pos").unwrap().as_deref(),
        Some(pos.as_str())
    );

    let rep = rt
        .block_on(d.promote(&promotion(
            Duration::from_millis(300),
            CatchupPolicy::Promote,
        )))
        .unwrap();
    assert!(!rep.caught_up);
    assert_eq!(rep.skipped.as_ref().unwrap().to_string(), pos, "{rep:?}");
    assert_eq!(s2.value("SELECT @@global.read_only").unwrap(), "0");
}

#[test]
fn old_primary_rejoins_and_catches_up() {
    let (mut s1, s2) = pair();
    s1.insert_rows(100, "before").unwrap();
    s2.wait_count(100, SECS_20).unwrap();
    s1.kill().unwrap();
    let d2 = driver(&s2, &s1);
    let rt = rt();
    rt.block_on(async {
        d2.promote(&promotion(
            Duration::from_secs(5),
            CatchupPolicy::StayReadOnly,
        ))
        .await
        .unwrap();
        d2.settle_background().await;
    });
    s2.insert_rows(50, "on new primary").unwrap();

    s1.spawn().unwrap();
    let up = s1.started_at().unwrap();
    let d1 = driver(&s1, &s2);
    let (fence, rep, errant) = rt.block_on(async {
        let fence = d1.fence().await.unwrap();
        let errant = d1.errant_against(s2.addr()).await.unwrap();
        let rep = d1
            .rejoin(&rejoining(s2.addr(), Discard::Never))
            .await
            .unwrap();
        (fence, rep, errant)
    });
    let replicating = up.elapsed();
    println!(
        "rejoin: call {:.1} ms; mariadbd spawned -> replicating {:.0} ms (fence {:.2} ms)",
        ms(rep.took),
        ms(replicating),
        ms(fence.took)
    );
    println!(
        "rejoin steps: {}",
        rep.steps
            .iter()
            .map(|s| format!("{} {:.2}", s.name, ms(s.took)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(errant.is_empty(), "{errant}");
    assert!(rep.io_running && rep.sql_running, "{rep:?}");
    assert!(rep.discarded.is_none() && !rep.already_replicating);
    s1.wait_count(150, SECS_20).unwrap();
    assert_eq!(s1.value("SELECT @@global.read_only").unwrap(), "1");
    assert_eq!(
        s1.slave_status("Master_Port").unwrap(),
        Some(s2.addr().port().to_string())
    );
    // The daemon calls rejoin on every BACKUP tick: a no-op now.
    let again = rt
        .block_on(d1.rejoin(&rejoining(s2.addr(), Discard::Never)))
        .unwrap();
    assert!(again.already_replicating, "{again:?}");
    let h = rt.block_on(d1.probe());
    let r = h.replica.unwrap();
    assert!(
        r.io_running && r.sql_running && r.all_relay_applied,
        "{r:?}"
    );
}

#[test]
fn an_interrupted_replica_is_resumed_not_reset() {
    let (s1, s2) = pair();
    s1.insert_rows(10, "before").unwrap();
    s2.wait_count(10, SECS_20).unwrap();
    // The IO thread stops (a network blip, a restart): what was received
    // stays in the relay log; a reset would throw it away.
    s2.sql("STOP SLAVE IO_THREAD").unwrap();
    s1.insert_rows(5, "while interrupted").unwrap();
    let d2 = driver(&s2, &s1);
    let rt = rt();
    let rep = rt
        .block_on(d2.rejoin(&rejoining(s1.addr(), Discard::Never)))
        .unwrap();
    println!(
        "resumed in {:.1} ms: {}",
        ms(rep.took),
        rep.steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(rep.resumed && rep.io_running && rep.sql_running, "{rep:?}");
    assert!(
        !rep.steps.iter().any(|s| s.name == "stop replication"),
        "never both threads stopped: {:?}",
        rep.steps
    );
    s2.wait_count(15, SECS_20).unwrap();
}

#[test]
fn errant_writes_block_rejoin_and_force_records_what_it_discards() {
    let (s1, s2) = pair();
    s1.insert_rows(20, "shared").unwrap();
    s2.wait_count(20, SECS_20).unwrap();
    // server1 is cut off: the replica hears nothing more...
    s2.sql("STOP SLAVE IO_THREAD").unwrap();
    // ...while server1 still takes 5 writes (ids far from the auto-increment range).
    let mut errant_sql = String::new();
    for i in 0..5 {
        errant_sql.push_str(&format!(
            "INSERT INTO app.t (id, v, origin) VALUES ({}, 'errant', 1);\n",
            1_000_001 + i
        ));
    }
    s1.sql(&errant_sql).unwrap();
    assert_eq!(s1.gtid_binlog_pos().unwrap(), "0-1-25");
    let rt = rt();
    let d2 = driver(&s2, &s1);
    rt.block_on(d2.promote(&promotion(
        Duration::from_secs(5),
        CatchupPolicy::StayReadOnly,
    )))
    .unwrap();
    // The new primary writes MORE than server1's errant 5: by seq number alone
    // (0-2-50 > 0-1-25) server1 would look merely behind.
    s2.insert_rows(30, "new primary").unwrap();
    assert_eq!(s2.gtid_binlog_pos().unwrap(), "0-2-50");

    let d1 = driver(&s1, &s2);
    let errant = rt.block_on(d1.errant_against(s2.addr())).unwrap();
    println!("errant on the old primary: {errant}");
    assert_eq!(errant.set.to_string(), "0-1-25");
    assert_eq!(errant.transactions, 5);
    assert_eq!(errant.keep.to_string(), "0-1-20");

    let e = rt
        .block_on(d1.rejoin(&rejoining(s2.addr(), Discard::Never)))
        .unwrap_err();
    println!("refused: {e}");
    match &e {
        RejoinError::Errant { errant: got, .. } => assert_eq!(got, &errant),
        other => panic!("expected Errant, got {other}"),
    }
    assert!(e.to_string().contains("0-1-25"), "{e}");
    assert_eq!(
        s1.slave_status("Slave_IO_Running").unwrap(),
        None,
        "nothing configured"
    );
    assert_eq!(
        s1.value("SELECT @@global.read_only").unwrap(),
        "1",
        "fenced"
    );
    assert_eq!(s1.count().unwrap(), 25, "nothing touched");

    let rep = rt
        .block_on(d1.rejoin(&rejoining(s2.addr(), Discard::Forced)))
        .unwrap();
    println!("forced rejoin: {:.1} ms", ms(rep.took));
    assert_eq!(rep.discarded.as_ref(), Some(&errant));
    assert_eq!(rep.start_position.as_ref().unwrap().to_string(), "0-1-20");
    assert!(rep.io_running && rep.sql_running, "{rep:?}");
    let undone = rep.undone.as_ref().expect("MariaDB undoes the rows");
    println!("undone: {undone}");
    assert_eq!(undone.total_rows(), 5, "{undone:?}");
    assert_eq!(undone.rows["`app`.`t`"].inserted, 5);
    for f in ["rows.txt", "undo.sql", "summary.txt"] {
        assert!(
            undone.record.join(f).is_file(),
            "{f} in {:?}",
            undone.record
        );
    }
    let rows = std::fs::read_to_string(undone.record.join("rows.txt")).unwrap();
    assert_eq!(rows.matches("### INSERT INTO `app`.`t`").count(), 5);
    assert!(rows.contains("'errant'"), "the rows as written");
    assert!(!rep.automatic);
    // The 5 errant rows were undone; the new primary's 30 arrive.
    s1.wait_count(50, SECS_20).unwrap();
    assert_eq!(s2.count().unwrap(), 50);
    assert_eq!(
        s1.value("SELECT COUNT(*) FROM app.t WHERE v = 'errant'")
            .unwrap(),
        "0"
    );
    ha_lab::wait_until_ok(SECS_20, "server1 to reach server2's position", || {
        Ok(s1.value("SELECT @@global.gtid_slave_pos")? == "0-2-50")
    })
    .unwrap();
    assert!(rt
        .block_on(d1.errant_against(s2.addr()))
        .unwrap()
        .is_empty());
}

/// server1 a strict semi-sync primary, server2 its acknowledging replica.
fn semisync_pair() -> (
    Mariadb,
    Mariadb,
    MysqlDriver,
    MysqlDriver,
    tokio::runtime::Runtime,
) {
    let (s1, s2) = pair();
    let mk = |db: &Mariadb, peer: &Mariadb| {
        let mut c = db.agent_config(peer.addr());
        c.semisync = true;
        MysqlDriver::new(&c).unwrap()
    };
    let (d1, d2) = (mk(&s1, &s2), mk(&s2, &s1));
    let rt = rt();
    rt.block_on(async {
        // server1 is the primary already: promoting it sets semi-sync up.
        let mut req = promotion(Duration::from_secs(5), CatchupPolicy::StayReadOnly);
        req.semisync = Some(Duration::from_millis(1000));
        let p = d1.promote(&req).await.unwrap();
        assert!(!p.was_replica);
        let st = p.semisync.unwrap();
        assert!(st.source_enabled && !st.strict, "{st:?}");
        d2.semisync_replica().await.unwrap();
    });
    ha_lab::wait_until(SECS_20, "the replica acknowledges", || {
        rt.block_on(async {
            d1.probe()
                .await
                .semisync
                .is_some_and(|s| s.source_on && s.clients == 1)
                && d2.probe().await.semisync.is_some_and(|s| s.replica_on)
        })
    })
    .unwrap();
    let strict = rt
        .block_on(d1.semisync_strict(Duration::from_millis(1000)))
        .unwrap();
    assert!(
        matches!(
            strict,
            ha_agent::drivers::mysql::StrictOutcome::Effective(_)
        ),
        "{strict:?}"
    );
    (s1, s2, d1, d2, rt)
}

#[test]
fn semisync_is_not_effective_while_the_replica_lacks_what_was_acknowledged_alone() {
    let (s1, s2, d1, _d2, rt) = semisync_pair();
    // The primary relaxes (as after telling the replica) while the replica
    // applies nothing: it acknowledges alone what the replica lacks.
    s2.sql("STOP SLAVE SQL_THREAD").unwrap();
    rt.block_on(d1.semisync_relax(Duration::from_millis(1000)))
        .unwrap();
    s1.insert_rows(3, "alone").unwrap();
    // Back to strict: the server says on at once, but the replica has not
    // applied those three.
    let start = Instant::now();
    let r = rt
        .block_on(d1.semisync_strict(Duration::from_millis(500)))
        .unwrap();
    println!(
        "strict with a replica behind: {r:?} after {:.0} ms",
        ms(start.elapsed())
    );
    assert!(
        matches!(r, ha_agent::drivers::mysql::StrictOutcome::NotYet(_)),
        "{r:?}"
    );
    let st = rt.block_on(d1.probe()).semisync.unwrap();
    assert!(!st.strict, "back to relaxed: {st:?}");
    // Once it has them, effective.
    s2.sql("START SLAVE SQL_THREAD").unwrap();
    s2.wait_count(3, SECS_20).unwrap();
    let r = rt
        .block_on(d1.semisync_strict(Duration::from_millis(1000)))
        .unwrap();
    assert!(
        matches!(r, ha_agent::drivers::mysql::StrictOutcome::Effective(_)),
        "{r:?}"
    );
}

#[test]
fn semisync_strict_is_journaled_and_acknowledged_by_the_replica() {
    let (s1, s2, d1, _d2, rt) = semisync_pair();
    let j = rt
        .block_on(ha_agent::drivers::mysql::journal::read(
            d1.config().state_dir(),
        ))
        .unwrap()
        .expect("journaled");
    assert_eq!(
        j.semisync,
        ha_agent::drivers::mysql::journal::JournalSemisync::Effective
    );
    assert_eq!(
        j.position.as_deref(),
        Some(s1.gtid_binlog_pos().unwrap().as_str())
    );
    let start = Instant::now();
    s1.insert_rows(10, "acked").unwrap();
    println!("10 semi-sync commits: {:.1} ms", ms(start.elapsed()));
    let st = rt.block_on(d1.probe()).semisync.unwrap();
    assert!(st.strict && st.source_on, "{st:?}");
    assert_eq!(st.unacked, 0, "{st:?}");
    assert!(st.acked >= 10, "{st:?}");
    s2.wait_count(10, SECS_20).unwrap();
}

#[test]
fn a_strict_primary_without_its_replica_acknowledges_nothing_and_still_fences() {
    let (s1, s2, d1, _d2, rt) = semisync_pair();
    s1.insert_rows(3, "acked").unwrap();
    s2.wait_count(3, SECS_20).unwrap();
    // The replica's IO thread goes: the next commit waits for ever.
    s2.sql("STOP SLAVE IO_THREAD").unwrap();
    let app = std::thread::spawn({
        let out = s1.dir().join("app.cnf").to_string_lossy().into_owned();
        let port = s1.addr().port();
        move || {
            std::process::Command::new("mariadb")
                .arg(format!("--defaults-extra-file={out}"))
                .args(["--host=127.0.0.1", "--protocol=TCP", "--batch"])
                .arg(format!("--port={port}"))
                .args(["-e", "INSERT INTO app.t (v, origin) VALUES ('waits', 1)"])
                .output()
                .unwrap()
        }
    });
    ha_lab::wait_until(SECS_20, "a commit waits for the acknowledgement", || {
        rt.block_on(d1.probe())
            .semisync
            .is_some_and(|s| s.waiting == 1)
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !app.is_finished(),
        "no acknowledgement without the replica, even after 1.5 s"
    );
    // Fencing closes it: read_only would otherwise wait for that commit.
    let start = Instant::now();
    let f = rt.block_on(d1.fence()).unwrap();
    println!(
        "fenced a strict primary with a waiting commit in {:.0} ms: {f:?}",
        ms(start.elapsed())
    );
    assert_eq!(f.closed_waiting_commits, 1);
    assert_eq!(s1.value("SELECT @@global.read_only").unwrap(), "1");
    let out = app.join().unwrap();
    assert!(
        !out.status.success(),
        "the client must not get OK (that would be an acknowledgement): {out:?}"
    );
    // The row is committed on server1 only: unacknowledged, errant later.
    assert_eq!(
        s1.value("SELECT COUNT(*) FROM app.t WHERE v = 'waits'")
            .unwrap(),
        "1"
    );
    assert_eq!(s2.count().unwrap(), 3);
}

#[test]
fn promotion_freezes_what_was_received_so_the_live_old_primary_gets_no_more_acknowledgements() {
    let (s1, s2, _d1, d2, rt) = semisync_pair();
    s1.insert_rows(5, "before").unwrap();
    s2.wait_count(5, SECS_20).unwrap();
    // server1's agent hangs; its server lives on. server2 is promoted.
    let rep = rt
        .block_on(d2.promote(&promotion(
            Duration::from_secs(5),
            CatchupPolicy::StayReadOnly,
        )))
        .unwrap();
    println!("promotion: {:.1} ms, {:?}", ms(rep.took), rep.frozen_by);
    assert_eq!(rep.frozen_by, Some("io_thread_killed"));
    assert!(
        rep.took < Duration::from_millis(900),
        "no wait for the kill-connection: {:?}",
        rep.took
    );
    // A commit on the old primary now waits: nothing acknowledges it.
    let app = {
        let cnf = s1.dir().join("app.cnf").to_string_lossy().into_owned();
        let port = s1.addr().port();
        std::thread::spawn(move || {
            std::process::Command::new("mariadb")
                .arg(format!("--defaults-extra-file={cnf}"))
                .args(["--host=127.0.0.1", "--protocol=TCP", "--batch"])
                .arg(format!("--port={port}"))
                .args(["-e", "INSERT INTO app.t (v, origin) VALUES ('late', 1)"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !app.is_finished(),
        "the old primary must not be acknowledged after the freeze"
    );
    assert_eq!(
        s2.value("SELECT COUNT(*) FROM app.t WHERE v = 'late'")
            .unwrap(),
        "0"
    );
    // Release it (as its agent's fence would), unacknowledged.
    s1.sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF").ok();
    let _ = app.join();
}

// ---------------------------------------------------------------------------
// A fake server that sends malformed GTID strings.
// ---------------------------------------------------------------------------

/// Answers the MySQL protocol just enough for the driver: a MariaDB
/// handshake, any login, and canned result sets in which every GTID column
/// holds `bad`.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(bad: &'static str) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    std::thread::spawn(move || {
                        let _ = serve(c, bad);
                    });
                }
            }
        });
        FakeServer { addr, stop }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn lenenc(out: &mut Vec<u8>, n: usize) {
    if n < 251 {
        out.push(n as u8);
    } else {
        out.push(0xfc);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    }
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    lenenc(out, s.len());
    out.extend_from_slice(s);
}

fn send(s: &mut TcpStream, seq: &mut u8, payload: &[u8]) -> std::io::Result<()> {
    let len = (payload.len() as u32).to_le_bytes();
    s.write_all(&[len[0], len[1], len[2], *seq])?;
    s.write_all(payload)?;
    *seq = seq.wrapping_add(1);
    Ok(())
}

fn recv(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok(p)
}

const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];
const EOF: &[u8] = &[0xfe, 0, 0, 2, 0];

fn result_set(
    s: &mut TcpStream,
    seq: &mut u8,
    names: &[&str],
    rows: &[Vec<Option<&str>>],
) -> std::io::Result<()> {
    let mut p = Vec::new();
    lenenc(&mut p, names.len());
    send(s, seq, &p)?;
    for n in names {
        let mut c = Vec::new();
        for part in ["def", "", "", ""] {
            lenenc_str(&mut c, part.as_bytes());
        }
        lenenc_str(&mut c, n.as_bytes());
        lenenc_str(&mut c, n.as_bytes());
        c.push(0x0c);
        c.extend_from_slice(&33u16.to_le_bytes());
        c.extend_from_slice(&1024u32.to_le_bytes());
        c.push(0xfd); // VAR_STRING
        c.extend_from_slice(&[0, 0, 0, 0, 0]);
        send(s, seq, &c)?;
    }
    send(s, seq, EOF)?;
    for row in rows {
        let mut r = Vec::new();
        for v in row {
            match v {
                Some(v) => lenenc_str(&mut r, v.as_bytes()),
                None => r.push(0xfb),
            }
        }
        send(s, seq, &r)?;
    }
    send(s, seq, EOF)
}

fn serve(mut s: TcpStream, bad: &str) -> std::io::Result<()> {
    let caps: u32 = 0x1 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x10000 | 0x20000 | 0x80000;
    let mut hs = vec![0x0a];
    hs.extend_from_slice(b"10.11.99-MariaDB-fake\0");
    hs.extend_from_slice(&7u32.to_le_bytes());
    hs.extend_from_slice(b"abcdefgh\0");
    hs.extend_from_slice(&(caps as u16).to_le_bytes());
    hs.push(33);
    hs.extend_from_slice(&2u16.to_le_bytes());
    hs.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    hs.push(21);
    hs.extend_from_slice(&[0; 10]);
    hs.extend_from_slice(b"ijklmnopqrst\0");
    hs.extend_from_slice(b"mysql_native_password\0");
    let mut seq = 0;
    send(&mut s, &mut seq, &hs)?;
    let _login = recv(&mut s)?;
    seq = 2;
    send(&mut s, &mut seq, OK)?;
    loop {
        let p = recv(&mut s)?;
        let mut seq = 1;
        match p.first() {
            Some(0x01) | None => return Ok(()),
            Some(0x03) => {}
            _ => {
                send(&mut s, &mut seq, OK)?;
                continue;
            }
        }
        let q = String::from_utf8_lossy(&p[1..]).to_string();
        if q.contains("VERSION()") {
            let row = vec![
                Some("10.11.99-MariaDB-fake"),
                Some("fake"),
                Some("7"),
                Some("1"),
            ];
            result_set(&mut s, &mut seq, &["v", "c", "id", "ro"], &[row])?;
        } else if q.contains("read_only") {
            result_set(
                &mut s,
                &mut seq,
                &["ro", "sro"],
                &[vec![Some("0"), Some("0")]],
            )?;
        } else if q.starts_with("SHOW SLAVE STATUS") {
            let names = [
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Master_Host",
                "Master_Port",
                "Using_Gtid",
                "Gtid_IO_Pos",
                "Gtid_Slave_Pos",
            ];
            let row = vec![
                Some("Yes"),
                Some("Yes"),
                Some("127.0.0.1"),
                Some("3306"),
                Some("Slave_Pos"),
                Some(bad),
                Some(bad),
            ];
            result_set(&mut s, &mut seq, &names, &[row])?;
        } else if q.contains("gtid_binlog_pos") {
            result_set(
                &mut s,
                &mut seq,
                &["a", "b", "c"],
                &[vec![Some(bad), Some(bad), Some(bad)]],
            )?;
        } else if q.contains("log_bin") {
            result_set(
                &mut s,
                &mut seq,
                &["a", "b", "c"],
                &[vec![Some("1"), Some("1"), Some("1")]],
            )?;
        } else if q.starts_with("SHOW GLOBAL STATUS") {
            result_set(&mut s, &mut seq, &["Variable_name", "Value"], &[])?;
        } else if q.contains("MASTER_GTID_WAIT") {
            result_set(&mut s, &mut seq, &["w"], &[vec![Some("0")]])?;
        } else {
            send(&mut s, &mut seq, OK)?;
        }
    }
}

#[test]
fn malformed_gtid_strings_from_a_server_are_errors_not_panics() {
    let rt = rt();
    for bad in [
        "0-1",
        "0-1-2-3",
        "garbage",
        "0-1-99999999999999999999999",
        "0-1-5,0-2-6",
        "0-1-5,,",
        "\u{1}\u{2}",
        "ü-1-1",
        "-0-1-2",
        "0-1-5;DROP TABLE x",
        "4294967296-1-1",
        "0 -1- 2",
    ] {
        let fake = FakeServer::start(bad);
        let cfg = ha_agent::operator::config::MysqlConfig {
            address: fake.addr,
            user: "agent".into(),
            password_file: "/nonexistent".into(),
            replication_user: "repl".into(),
            replication_password_file: "/nonexistent".into(),
            peer_address: fake.addr,
            catchup_timeout_ms: 200,
            catchup_policy: CatchupPolicy::StayReadOnly,
            down_handover_ms: 1000,
            semisync: false,
            durability: None,
            semisync_timeout_ms: 1000,
            state_dir: Some(std::env::temp_dir().join("ha-fake-state")),
            check_interval_ms: 200,
            timeout_ms: 2000,
            max_replica_lag_s: 2,
        };
        use ha_agent::drivers::mysql::credentials::Secret;
        let d = MysqlDriver::with_passwords(&cfg, Secret::new("x"), Secret::new("y")).unwrap();
        rt.block_on(async {
            let h = d.probe().await;
            assert!(h.up, "{bad:?}: {h:?}");
            assert!(
                h.errors
                    .iter()
                    .any(|e| e.contains("malformed MariaDB GTID")),
                "{bad:?}: {:?}",
                h.errors
            );
            assert!(h.replica.is_none() && h.executed_gtids.is_none());
            let e = d
                .promote(&promotion(
                    Duration::from_millis(100),
                    CatchupPolicy::Promote,
                ))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("unreadable"), "{bad:?}: {e}");
            let e = d.errant_against(fake.addr).await;
            assert!(e.is_err(), "{bad:?}");
            assert!(
                d.rejoin(&rejoining(fake.addr, Discard::Forced))
                    .await
                    .is_err(),
                "{bad:?}"
            );
        });
    }
}
