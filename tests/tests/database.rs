//! The seed's six failover checks with the real agent driving MySQL and
//! Atlas (the stack of `ha_lab::stack`). Root only: run by `cargo xtask test`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ha_lab::stack::{
    app_write, die_server1, inside, kill_server1, ms, replicating, run, vip, Stack, StackOptions,
    SETTLE, STEP,
};
use ha_lab::writer::{Writer, WriterMode};
use ha_lab::{wait_until, wait_until_ok, Link, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;

/// The web application on server2, writing (tag "a") through the inside VIP.
fn app_on_server2(st: &Stack) -> Result<Writer> {
    Writer::start(
        st.lab.server_ns(S2),
        vip(),
        "a",
        WriterMode::APP,
        Duration::from_secs(60),
    )
}

/// Waits until server2 acknowledges one of the application's writes made
/// after `since`; how long after `since` that was.
fn writing_again_on_server2(st: &Stack, app: &Writer, since: Instant) -> Result<Duration> {
    wait_until(STEP, "the application writing again, on server2", || {
        app.first_ack_from(2, since).is_some()
    })
    .with_context(|| format!("{:?}\n{}", app.last_error(), st.logs()))?;
    Ok(app.first_ack_from(2, since).context("ack")?.at - since)
}

/// After server1's death at `fault`: waits until the application writes
/// on server2, stops it, and returns every acknowledged write and those
/// missing on server2 (lost), printing the counts.
fn writes_after_the_death(
    st: &Stack,
    app: Writer,
    fault: Instant,
) -> Result<(Vec<ha_lab::writer::Ack>, Vec<String>)> {
    let again = writing_again_on_server2(st, &app, fault)?;
    let (acks, attempts) = app.finish()?;
    let lost = st.missing_writes(S2, &[("a", &acks)])?;
    let by_server1 = acks.iter().filter(|a| a.server_id == 1).count();
    println!(
        "{} writes acknowledged ({by_server1} by server1) of {attempts} attempts; the application wrote again {:.0} ms after the fault; lost: {lost:?}",
        acks.len(),
        ms(again)
    );
    Ok((acks, lost))
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn seed_checks_with_mysql_and_atlas() -> Result<()> {
    run(
        StackOptions {
            test: "seed_checks_with_mysql_and_atlas",
            ..Default::default()
        },
        |st| {
            println!(
            "started: server1 primary, server2 replicating; Atlas tables: server1 {}, server2 {}",
            st.atlas(S1).describe(),
            st.atlas(S2).describe()
        );
            let s = st.lab.agent_status(S2)?;
            ensure!(
                s["database"]["role"] == "replica" && s["database"]["replica_ok"] == true,
                "server2's status: {}",
                s["database"]
            );
            ensure!(s["atlas"]["in_sync"] == true, "{}", s["atlas"]);

            // Checks 1, 2, 4: server1 dies; server2 holds both VIPs, its MySQL is a
            // primary, its Atlas has only the rw backend.
            let fault = kill_server1(st)?;
            wait_until(STEP, "server2 holds both VIPs", || {
                Link::ALL
                    .iter()
                    .all(|l| st.lab.vip_holders(l.vip()).contains(&S2))
            })
            .with_context(|| st.logs())?;
            let vips = fault.elapsed();
            wait_until_ok(STEP, "a write on server2 succeeds", || {
                Ok(app_write(st.db(S2), "after failover")?.status.success())
            })
            .with_context(|| st.logs())?;
            let writable = fault.elapsed();
            wait_until(STEP, "server2's Atlas lists only rw", || {
                st.atlas(S2).lists() == (vec![vip()], vec![])
            })
            .with_context(|| format!("{}\n{}", st.atlas(S2).describe(), st.logs()))?;
            let rw_only = fault.elapsed();
            println!(
            "server1 died: VIPs on server2 after {:.0} ms; a write on server2 succeeded {:.0} ms after the fault; its Atlas rw-only by {:.0} ms (each measured after the previous)",
            ms(vips),
            ms(writable),
            ms(rw_only)
        );
            // The old replication is forgotten after the unfence, in the
            // background: wait for it, bounded.
            wait_until_ok(STEP, "SHOW SLAVE STATUS on server2 empty", || {
                Ok(st.db(S2).slave_status("Slave_IO_Running")?.is_none())
            })
            .with_context(|| st.logs())?;
            // The status shows the server as its latest look found it: one
            // look after the promotion (taken as the promotion ends).
            wait_until_ok(STEP, "server2's status shows a primary", || {
                Ok(st.lab.agent_status(S2)?["database"]["role"] == "primary")
            })
            .with_context(|| st.logs())?;
            let s = st.lab.agent_status(S2)?;
            let promo = &s["database"]["last_promotion"];
            println!("server2's promotion: {promo}");
            ensure!(promo["caught_up"] == true, "{}", s["database"]);
            // Rows written on the new primary while server1 is away.
            st.db(S2).insert_rows(20, "while server1 is down")?;
            let rows = st.db(S2).count()?;

            // Check 3: server1 comes back (MariaDB, agent, links) and stays BACKUP;
            // its MariaDB came back writable and is fenced.
            st.dbs[0].spawn()?;
            let back = Instant::now();
            st.start_agent(S1)?;
            let fenced = wait_until_ok(STEP, "server1's MariaDB read-only", || {
                Ok(st.db(S1).value("SELECT @@global.read_only")? == "1")
            })
            .with_context(|| st.logs())?;
            println!(
                "restarted server1's MariaDB fenced {:.0} ms after its agent started",
                ms(fenced)
            );
            let out = app_write(st.db(S1), "on the old primary")?;
            ensure!(
                !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("1290"),
                "a write on server1 must fail with 1290 (read-only): {out:?}"
            );
            st.lab.links_up(S1)?;
            st.wait_state(S1, "BACKUP")?;
            wait_until(STEP, "server2 sole holder", || st.lab.sole_holder_is(S2))
                .with_context(|| st.logs())?;

            // Check 5: server1 replicates from server2; the rows arrive.
            let repl = wait_until_ok(SETTLE, "server1 replicating from server2", || {
                replicating(st.db(S1))
            })
            .with_context(|| st.logs())?;
            ensure!(
                st.db(S1).slave_status("Master_Host")?.as_deref() == Some("203.0.113.12"),
                "server1 replicates from {:?}",
                st.db(S1).slave_status("Master_Host")?
            );
            st.db(S1).wait_count(rows, STEP)?;
            println!(
            "server1 replicating {:.0} ms after its links came back; caught up ({rows} rows) {:.0} ms after its agent started",
            ms(repl),
            ms(back.elapsed())
        );

            // Check 6: server2's Atlas lists server1 as ro again, quickly.
            let listed = st.wait_atlas(S2, &[inside(S1)], STEP)?;
            println!(
            "server2's Atlas lists server1 as ro {:.0} ms after the test saw it caught up (seed: up to 2 minutes)",
            ms(listed)
        );
            ensure!(
                listed <= Duration::from_secs(2),
                "Atlas took {listed:?} after the catch-up"
            );
            st.wait_atlas(S1, &[inside(S1)], STEP)?;
            // And server1 stays BACKUP.
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                if !st.lab.sole_holder_is(S2) {
                    bail!(
                        "server2 lost the VIPs: {}\n{}",
                        st.lab.describe_vips(),
                        st.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let s1 = st.lab.agent_status(S1)?;
            println!(
                "server1's database status: {}",
                serde_json::to_string_pretty(&s1["database"])?
            );
            println!(
                "server2's atlas status: {}",
                serde_json::to_string_pretty(&st.lab.agent_status(S2)?["atlas"])?
            );
            ensure!(
                s1["database"]["role"] == "replica" && s1["database"]["errant"].is_null(),
                "{}",
                s1["database"]
            );
            Ok(())
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn errant_write_on_the_isolated_old_primary_blocks_its_rejoin_until_forced() -> Result<()> {
    run(
        StackOptions {
            test: "errant_write_on_the_isolated_old_primary_blocks_its_rejoin_until_forced",
            ..Default::default()
        },
        |st| {
            kill_server1(st)?;
            // No write on server2 yet: after the forced rejoin below, server1's
            // (reset) binary log stays empty, and a later rejoin must start from
            // what it replicated (gtid_slave_pos), not from that empty log.
            wait_until_ok(STEP, "server2 promoted", || {
                Ok(st.lab.agent_status(S2)?["database"]["last_promotion"].is_object())
            })
            .with_context(|| st.logs())?;
            // server1's MariaDB comes back without its agent and with its links
            // down, and takes a write nobody else will ever see.
            st.dbs[0].spawn()?;
            // An auto-increment key: server2's next row takes the same id, so the
            // forced rejoin must undo this row, or replication stops on it. It
            // starts read-only (as the README advises): the errant write is an
            // administrator's, who can bypass that.
            st.db(S1)
                .sql("INSERT INTO app.t (v, origin) VALUES ('errant', @@server_id)")
                .context("errant write")?;
            let errant_pos = st.db(S1).gtid_binlog_pos()?;
            st.start_agent(S1)?;
            st.lab.links_up(S1)?;
            st.wait_state(S1, "BACKUP")?;
            let s = wait_until_ok(STEP, "server1's status shows the errant set", || {
                Ok(!st.lab.agent_status(S1)?["database"]["errant"].is_null())
            })
            .map(|_| st.lab.agent_status(S1))
            .with_context(|| st.logs())??;
            let errant = &s["database"]["errant"];
            println!("blocked rejoin, as `ha-agent status --json` shows it: {errant}");
            ensure!(
                errant["gtids"].as_str() == Some(errant_pos.as_str()),
                "errant {errant} vs server1's binlog position {errant_pos}"
            );
            ensure!(
                st.db(S1).slave_status("Slave_IO_Running")?.is_none(),
                "no replication while blocked"
            );
            ensure!(st.db(S1).value("SELECT @@global.read_only")? == "1");
            let text = st.lab.agent_cli(&[
                "status",
                "--socket",
                st.lab.status_socket(S1).to_str().context("socket path")?,
            ])?;
            let text = String::from_utf8_lossy(&text.stdout);
            ensure!(text.contains("REJOIN BLOCKED"), "{text}");
            // Atlas does not offer the blocked server for reads.
            st.wait_atlas(S2, &[], STEP)?;

            // The operator gives the errant transaction up.
            let out = st.lab.agent_cli(&[
                "rejoin",
                "--force",
                "--socket",
                st.lab.status_socket(S1).to_str().context("socket path")?,
            ])?;
            let said = String::from_utf8_lossy(&out.stdout);
            println!("ha-agent rejoin --force: {}", said.trim());
            ensure!(
                out.status.success()
                    && said.contains("DISCARDED")
                    && said.contains(&errant_pos)
                    && said.contains("row changes undone"),
                "{out:?}"
            );
            wait_until_ok(SETTLE, "server1 replicating from server2", || {
                replicating(st.db(S1))
            })
            .with_context(|| st.logs())?;
            st.wait_atlas(S2, &[inside(S1)], STEP)?;
            let s = st.lab.agent_status(S1)?;
            ensure!(
                s["database"]["errant"].is_null()
                    && s["database"]["last_rejoin"]["discarded"]
                        .as_str()
                        .is_some_and(|d| d.contains(&errant_pos)),
                "{}",
                s["database"]
            );
            ensure!(
                st.db(S1)
                    .value("SELECT COUNT(*) FROM app.t WHERE v = 'errant'")?
                    == "0",
                "the errant row must be undone"
            );
            // server1's MariaDB restarts: its agent rejoins it again, from what it
            // has (not from an empty binlog position: that would replay server2's
            // whole history and stop on a duplicate key).
            st.dbs[0].kill()?;
            st.dbs[0].spawn()?;
            ensure!(
                app_write(st.db(S2), "after the restart")?.status.success(),
                "write on server2"
            );
            let rows = st.db(S2).count()?;
            // The errant row is gone: server1 holds exactly server2's rows, including
            // the one that reused its id.
            wait_until_ok(SETTLE, "server1 replicating again with every row", || {
                Ok(replicating(st.db(S1))? && st.db(S1).count()? == rows)
            })
            .with_context(|| {
                format!("{:?}\n{}", st.db(S1).slave_status("Last_Error"), st.logs())
            })?;
            Ok(())
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn semisync_primary_death_loses_no_acknowledged_write_and_nothing_diverges_silently() -> Result<()>
{
    run(
        StackOptions {
            test:
                "semisync_primary_death_loses_no_acknowledged_write_and_nothing_diverges_silently",
            semisync: true,
            ..Default::default()
        },
        |st| {
            st.wait_semisync_effective()?;
            let app = app_on_server2(st)?;
            app.wait_acks(100, STEP)?;
            let fault = kill_server1(st)?;
            let (acks, lost) = writes_after_the_death(st, app, fault)?;
            let by_server1 = acks.iter().filter(|a| a.server_id == 1).count();
            ensure!(
                by_server1 >= 100,
                "too few writes before the fault to prove anything"
            );
            ensure!(
                lost.is_empty(),
                "acknowledged writes missing on the new primary: {lost:?}"
            );
            // After a death the IO thread was killed (no wait for MariaDB's
            // kill-connection to the dead host), and the old replication is
            // stopped and forgotten afterwards, in the background.
            let promotion = st.lab.agent_status(S2)?["database"]["last_promotion"].clone();
            ensure!(
                promotion["frozen_by"] == "io_thread_killed" && promotion["caught_up"] == true,
                "server2's promotion: {promotion}"
            );
            wait_until_ok(STEP, "server2 forgot its replication from server1", || {
                Ok(st.db(S2).slave_status("Master_Host")?.is_none())
            })
            .with_context(|| st.logs())?;
            // server1 returns. Killed with commits in its binlog that server2
            // never acknowledged, it holds errant transactions and must say so;
            // otherwise it rejoins with every row. Never silently diverged.
            st.lab.links_up(S1)?;
            st.start_agent(S1)?;
            st.wait_state(S1, "BACKUP")?;
            st.dbs[0].spawn()?;
            // server1 returns. Killed with commits in its binlog that server2
            // never received (waiting for server2's acknowledgement), it
            // holds errant transactions; semi-sync was effective until its
            // death (its journal says so), so they were never acknowledged:
            // undone and rejoined without an operator, never blocked.
            let rows = st.db(S2).count()?;
            wait_until_ok(SETTLE, "server1 rejoined with every row", || {
                let s = st.lab.agent_status(S1)?;
                ensure!(
                    s["database"]["errant"].is_null(),
                    "server1's rejoin is blocked: {}",
                    s["database"]["errant"]
                );
                Ok(replicating(st.db(S1))? && st.db(S1).count()? == rows)
            })
            .with_context(|| st.logs())?;
            let rejoin = st.lab.agent_status(S1)?["database"]["last_rejoin"].clone();
            match rejoin["discarded"].as_str() {
                Some(d) => {
                    println!(
                        "server1 undid its unacknowledged tail and rejoined: {d}; {}",
                        rejoin["undone"]
                    );
                    ensure!(rejoin["automatic"] == true, "{rejoin}");
                    let record = rejoin["undo_record"].as_str().context("undo record")?;
                    for f in ["rows.txt", "undo.sql", "summary.txt"] {
                        ensure!(
                            std::path::Path::new(record).join(f).is_file(),
                            "{f} missing in {record}"
                        );
                    }
                }
                None => println!("server1 rejoined with all {rows} rows (nothing to undo)"),
            }
            // No row server2 lacks stays on server1.
            let extra = st.rows_only_on(S1, S2)?;
            ensure!(
                extra.is_empty(),
                "rows on server1 that server2 lacks: {extra:?}"
            );
            Ok(())
        },
    )
}

/// server1's agent stalls `ms` (SIGSTOP, then SIGCONT): with `ms` above the
/// detection time and below the reclaim window, server2 takes over and
/// hands the VIPs straight back (a false takeover, as CPU starvation causes
/// on this machine).
fn stall_server1_agent(st: &mut Stack, ms: u64) -> Result<()> {
    let p = st.agents[0].as_mut().context("server1's agent")?;
    p.stop()?;
    std::thread::sleep(Duration::from_millis(ms));
    p.cont()
}

/// A semi-sync stack where the application writes on server2, until
/// `acks` are acknowledged; then `fault`, which must kill server1 (the
/// instant it returns), and the check that no acknowledged write is
/// missing on server2.
fn no_write_lost_with_semisync(
    test: &'static str,
    acks: usize,
    fault: impl FnOnce(&mut Stack, &Writer) -> Result<Instant>,
) -> Result<()> {
    run(
        StackOptions {
            test,
            semisync: true,
            ..Default::default()
        },
        |st| {
            st.wait_semisync_effective()?;
            let app = app_on_server2(st)?;
            app.wait_acks(acks, STEP)?;
            let at = fault(st, &app)?;
            let (_, lost) = writes_after_the_death(st, app, at)?;
            ensure!(
                lost.is_empty(),
                "acknowledged writes missing on the new primary: {lost:?}"
            );
            Ok(())
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn semisync_false_takeovers_then_a_death_lose_no_acknowledged_write() -> Result<()> {
    no_write_lost_with_semisync(
        "semisync_false_takeovers_then_a_death_lose_no_acknowledged_write",
        20,
        |st, app| {
            // Five false takeovers while the application writes: each makes
            // server2's database controller change its wish twice.
            for _ in 0..5 {
                stall_server1_agent(st, 30)?;
                std::thread::sleep(Duration::from_millis(120));
            }
            app.wait_acks(app.acks().len() + 100, STEP)?;
            kill_server1(st)
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn semisync_death_right_after_a_false_takeover_loses_no_acknowledged_write() -> Result<()> {
    no_write_lost_with_semisync(
        "semisync_death_right_after_a_false_takeover_loses_no_acknowledged_write",
        100,
        |st, _| {
            st.snapshot("before the false takeover");
            // server2 takes over and hands back; server1 dies while server2's
            // database controller reacts to those two changes of wish.
            stall_server1_agent(st, 30)?;
            std::thread::sleep(Duration::from_millis(60));
            die_server1(st)
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn a_replica_told_the_primary_went_asynchronous_holds_its_promotion_until_forced() -> Result<()> {
    run(
        StackOptions {
            test: "a_replica_told_the_primary_went_asynchronous_holds_its_promotion_until_forced",
            semisync: true,
            ..Default::default()
        },
        |st| {
            st.wait_semisync_effective()?;
            // server1's own application writes; the inside link between
            // the servers is cut: replication stops, the agents still hear
            // each other on the outside link.
            let local = Writer::start(
                st.lab.server_ns(S1),
                vip(),
                "b",
                WriterMode::APP,
                Duration::from_secs(60),
            )?;
            local.wait_acks(20, STEP)?;
            st.lab.cut_between_servers(Link::Inside)?;
            let cut = Instant::now();
            wait_until_ok(
                STEP,
                "server1 says it goes asynchronous, server2 heard it",
                || {
                    let s1 = st.lab.agent_status(S1)?;
                    let s2 = st.lab.agent_status(S2)?;
                    Ok(s1["database"]["semisync"]["advertised"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("asynchronous"))
                        && s2["database"]["semisync"]["advertised"]
                            .as_str()
                            .is_some_and(|a| a.contains("heard the primary go asynchronous")))
                },
            )
            .with_context(|| st.logs())?;
            // Acknowledged alone only after that: the writes go on.
            let before = local.acks().len();
            local.wait_acks(before + 50, STEP)?;
            let first_alone = local
                .acks()
                .into_iter()
                .find(|a| a.at > cut)
                .context("no write after the cut")?;
            println!(
                "after the cut, server1 acknowledged its first write alone {:.0} ms later",
                ms(first_alone.at - cut)
            );
            // server1 dies: server2 takes the VIPs but must not promote.
            let fault = kill_server1(st)?;
            let (acks, _) = local.finish()?;
            wait_until_ok(STEP, "server2 holds its promotion", || {
                Ok(st.lab.agent_status(S2)?["database"]["semisync"]["promotion_held"].is_string())
            })
            .with_context(|| st.logs())?;
            std::thread::sleep(Duration::from_millis(500));
            let s2 = st.lab.agent_status(S2)?;
            println!(
                "{:.0} ms after the death server2 is {} and says: {}",
                ms(fault.elapsed()),
                s2["state"],
                s2["database"]["semisync"]["promotion_held"]
            );
            ensure!(
                st.db(S2).value("SELECT @@global.read_only")? == "1",
                "server2 must stay read-only"
            );
            let text = st.lab.agent_cli(&[
                "status",
                "--socket",
                st.lab.status_socket(S2).to_str().context("socket path")?,
            ])?;
            ensure!(
                String::from_utf8_lossy(&text.stdout).contains("PROMOTION HELD"),
                "{text:?}"
            );
            // The operator accepts the loss.
            let out = st.lab.agent_cli(&[
                "promote",
                "--force",
                "--socket",
                st.lab.status_socket(S2).to_str().context("socket path")?,
            ])?;
            println!(
                "ha-agent promote --force: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            ensure!(out.status.success(), "{out:?}");
            wait_until_ok(STEP, "a write on server2 succeeds", || {
                Ok(app_write(st.db(S2), "after the forced promotion")?
                    .status
                    .success())
            })
            .with_context(|| st.logs())?;
            let lost = st.missing_writes(S2, &[("b", &acks)])?;
            let s2 = st.lab.agent_status(S2)?;
            println!(
                "writes server1 acknowledged alone and server2 lacks: {}; server2's status: {}",
                lost.len(),
                s2["database"]["last_promotion"]["possibly_lost"]
            );
            ensure!(
                s2["database"]["last_promotion"]["possibly_lost"]
                    .as_str()
                    .is_some_and(|l| l.contains("forced by the operator")),
                "the possible loss is kept in the status: {}",
                s2["database"]["last_promotion"]
            );
            Ok(())
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn primary_whose_mysql_died_hands_the_vips_over() -> Result<()> {
    run(
        StackOptions {
            test: "primary_whose_mysql_died_hands_the_vips_over",
            down_handover_ms: Some(600),
            ..Default::default()
        },
        |st| {
            // Only server1's MariaDB dies; its agent and links are fine.
            let fault = Instant::now();
            st.dbs[0].kill()?;
            wait_until(STEP, "server2 sole VIP holder", || {
                st.lab.sole_holder_is(S2)
            })
            .with_context(|| st.logs())?;
            let moved = fault.elapsed();
            wait_until_ok(STEP, "a write on server2 succeeds", || {
                Ok(app_write(st.db(S2), "after the handover")?.status.success())
            })
            .with_context(|| st.logs())?;
            println!(
            "server1's MariaDB died: VIPs on server2 after {:.0} ms (down_handover_ms = 600), server2 writable after {:.0} ms",
            ms(moved),
            ms(fault.elapsed())
        );
            ensure!(
                moved >= Duration::from_millis(600),
                "handed over before the threshold: {moved:?}"
            );
            st.wait_state(S1, "BACKUP")?;
            // server1's MariaDB comes back: fenced, then a replica of server2.
            st.dbs[0].spawn()?;
            wait_until_ok(SETTLE, "server1 replicating from server2", || {
                replicating(st.db(S1))
            })
            .with_context(|| st.logs())?;
            ensure!(st.db(S1).value("SELECT @@global.read_only")? == "1");
            ensure!(
                st.db(S1).slave_status("Master_Host")?.as_deref() == Some("203.0.113.12"),
                "server1 replicates from {:?}",
                st.db(S1).slave_status("Master_Host")?
            );
            // And server2 keeps the VIPs.
            ensure!(st.lab.sole_holder_is(S2), "{}", st.lab.describe_vips());
            Ok(())
        },
    )
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn planned_switchover_loses_no_acknowledged_write_and_the_old_primary_rejoins() -> Result<()> {
    // Asynchronous replication: only the handover's drain keeps the writes
    // server1 acknowledged just before the switchover.
    run(
        StackOptions {
            test: "planned_switchover_loses_no_acknowledged_write_and_the_old_primary_rejoins",
            ..Default::default()
        },
        |st| {
            let app = app_on_server2(st)?;
            app.wait_acks(200, STEP)?;
            let t = Instant::now();
            st.lab.switchover(S1)?;
            let again = writing_again_on_server2(st, &app, t)?;
            let (acks, _) = app.finish()?;
            let lost = st.missing_writes(S2, &[("a", &acks)])?;
            let s2 = st.lab.agent_status(S2)?;
            println!(
            "switchover: the application wrote again {:.0} ms later; {} writes acknowledged; server2's promotion: {}",
            ms(again),
            acks.len(),
            s2["database"]["last_promotion"]
        );
            ensure!(
                lost.is_empty(),
                "acknowledged writes missing on the new primary: {lost:?}"
            );
            ensure!(
                s2["database"]["last_promotion"]["handoff"]
                    .as_str()
                    .is_some_and(|h| h.starts_with("applied the old primary's")),
                "{}",
                s2["database"]
            );
            // The old primary still speaks: drained first, then the IO thread killed.
            ensure!(
                s2["database"]["last_promotion"]["frozen_by"] == "io_thread_killed",
                "{}",
                s2["database"]["last_promotion"]
            );
            // No divergence: the old primary rejoins (an errant GTID would block it).
            wait_until_ok(SETTLE, "server1 replicating from server2", || {
                replicating(st.db(S1))
            })
            .with_context(|| st.logs())?;
            ensure!(
                st.lab.agent_status(S1)?["database"]["errant"].is_null(),
                "server1 reports errant transactions"
            );
            Ok(())
        },
    )
}
