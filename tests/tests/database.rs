//! The seed's six failover checks with the real agent driving MySQL and
//! Atlas: one `mariadbd` and one fixture Atlas (admin port on loopback) in
//! each server's namespace, the agents configured with `[mysql]` and
//! `[atlas]`. Root only: run by `cargo xtask test`.
//!
//! Ground truth comes from the servers themselves (VIPs from the kernel,
//! read-only and replication from MariaDB, the backend table from Atlas),
//! never from the agents' word; the agents' status is checked besides.

use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ha_agent::atlas::{Backend, Kind};
use ha_lab::atlas_fixture::{AtlasFixture, FixtureConfig};
use ha_lab::mariadb::{Mariadb, MariadbOptions, AGENT_USER, REPL_USER};
use ha_lab::netns::in_netns;
use ha_lab::{wait_until, wait_until_ok, Lab, LabProcess, Link, Overrides, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;
/// Start-up (the eBPF program loads) and replication set-up.
const SETTLE: Duration = Duration::from_secs(20);
/// Bound for a failover step; the targets are far lower.
const STEP: Duration = Duration::from_secs(10);
const MYSQL_PORT: u16 = 3306;

fn inside(s: Server) -> SocketAddrV4 {
    SocketAddrV4::new(s.ip(Link::Inside), MYSQL_PORT)
}

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(Link::Inside.vip(), MYSQL_PORT)
}

/// A fixture Atlas listening inside a server's namespace. Its listener
/// belongs to that namespace, and stopping it connects to its port to wake
/// the accept loop, so it is stopped from inside the namespace too.
struct NsAtlas {
    ns: String,
    fixture: Option<AtlasFixture>,
}

impl NsAtlas {
    fn start(ns: &str, cfg: FixtureConfig) -> Result<NsAtlas> {
        let fixture = in_netns(ns, || AtlasFixture::new(cfg))?
            .with_context(|| format!("starting the fixture Atlas in {ns}"))?;
        Ok(NsAtlas {
            ns: ns.to_string(),
            fixture: Some(fixture),
        })
    }

    fn get(&self) -> &AtlasFixture {
        self.fixture.as_ref().expect("fixture present until drop")
    }

    /// (rw, ro) addresses of the table, in table order.
    fn lists(&self) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
        let t = self.get().table();
        let of = |k: Kind| {
            t.iter()
                .filter(|b: &&Backend| b.kind == k)
                .map(|b| b.address)
                .collect()
        };
        (of(Kind::Rw), of(Kind::Ro))
    }

    fn describe(&self) -> String {
        ha_agent::atlas::table::describe(&self.get().table())
    }
}

impl Drop for NsAtlas {
    fn drop(&mut self) {
        if let Some(f) = self.fixture.take() {
            let _ = in_netns(&self.ns, move || drop(f));
        }
    }
}

struct Stack {
    // Field order is drop order: agents first, then Atlas and MariaDB, then the lab.
    agents: [Option<LabProcess>; 2],
    atlas: [NsAtlas; 2],
    dbs: [Mariadb; 2],
    lab: Lab,
}

fn idx(s: Server) -> usize {
    usize::from(s.index() - 1)
}

impl Stack {
    fn db(&self, s: Server) -> &Mariadb {
        &self.dbs[idx(s)]
    }
    fn atlas(&self, s: Server) -> &NsAtlas {
        &self.atlas[idx(s)]
    }

    fn overrides(&self, s: Server) -> Result<Overrides> {
        let db = self.db(s);
        let pw = self.lab.dir().join(format!("atlas-{}.pw", s.name()));
        std::fs::write(&pw, format!("{}\n", self.atlas(s).get().password()))?;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(Overrides::new()
            .set("mysql.address", inside(s).to_string())
            .set("mysql.user", AGENT_USER)
            .set("mysql.password_file", path(db.dir().join("agent.pw")))
            .set("mysql.replication_user", REPL_USER)
            .set(
                "mysql.replication_password_file",
                path(db.dir().join("repl.pw")),
            )
            .set("mysql.peer_address", inside(s.peer()).to_string())
            .set(
                "atlas.admin_address",
                self.atlas(s).get().addr().to_string(),
            )
            .set("atlas.user", self.atlas(s).get().user())
            .set("atlas.password_file", path(pw))
            .set("atlas.persist", "none")
            .set("atlas.period_ms", 200))
    }

    fn start_agent(&mut self, s: Server) -> Result<()> {
        let o = self.overrides(s)?;
        self.agents[idx(s)] = Some(self.lab.start_agent_with(s, &o)?);
        Ok(())
    }

    fn kill_agent(&mut self, s: Server) -> Result<()> {
        if let Some(mut p) = self.agents[idx(s)].take() {
            p.kill()?;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log_tail(60)))
            .collect()
    }

    fn wait_state(&self, s: Server, state: &str) -> Result<Duration> {
        wait_until_ok(SETTLE, format!("{s} in {state}"), || {
            Ok(self.lab.agent_state(s)? == state)
        })
        .with_context(|| self.logs())
    }

    /// Waits until `s`'s Atlas table is exactly rw = the VIP, ro = `ro`.
    fn wait_atlas(&self, s: Server, ro: &[SocketAddrV4], bound: Duration) -> Result<Duration> {
        let want = (vec![vip()], ro.to_vec());
        wait_until(
            bound,
            format!("{s}'s Atlas: rw {} ro {ro:?}", vip()),
            || self.atlas(s).lists() == want,
        )
        .with_context(|| format!("table {}\n{}", self.atlas(s).describe(), self.logs()))
    }
}

/// The lab, one MariaDB and one fixture Atlas per server, no agents yet.
fn stack() -> Result<Stack> {
    let lab = Lab::new()?;
    let mut dbs = Vec::new();
    for s in Server::ALL {
        dbs.push(
            Mariadb::start(MariadbOptions {
                server_id: u32::from(s.index()),
                bind: s.ip(Link::Inside),
                port: MYSQL_PORT,
                namespace: Some(lab.server_ns(s).to_string()),
                parent: lab.dir().to_path_buf(),
            })
            .with_context(|| format!("MariaDB on {s}"))?,
        );
    }
    // server1's Atlas starts with a stale entry (its own server as ro),
    // server2's with an empty table: the agents must fix both.
    let a1 = NsAtlas::start(
        lab.server_ns(S1),
        FixtureConfig {
            rw: vec![vip()],
            ro: vec![inside(S1)],
            ..Default::default()
        },
    )?;
    let a2 = NsAtlas::start(lab.server_ns(S2), FixtureConfig::default())?;
    let [d1, d2]: [Mariadb; 2] = dbs.try_into().expect("two servers");
    Ok(Stack {
        agents: [None, None],
        atlas: [a1, a2],
        dbs: [d1, d2],
        lab,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn app_write(db: &Mariadb, tag: &str) -> Result<std::process::Output> {
    db.app_sql(&format!(
        "INSERT INTO app.t (v, origin) VALUES ('{tag}', @@server_id)"
    ))
}

fn replicating(db: &Mariadb) -> Result<bool> {
    Ok(
        db.slave_status("Slave_IO_Running")?.as_deref() == Some("Yes")
            && db.slave_status("Slave_SQL_Running")?.as_deref() == Some("Yes"),
    )
}

/// Both agents up: server1 MASTER with a writable primary, server2 BACKUP
/// replicating from it, both Atlases rw = VIP, ro = server2.
fn started() -> Result<Stack> {
    let mut st = stack()?;
    // server1 first, as in the seed: two agents starting together elect
    // whichever finishes loading its eBPF program first.
    st.start_agent(S1)?;
    wait_until(SETTLE, "server1 sole VIP holder", || {
        st.lab.sole_holder_is(S1)
    })
    .with_context(|| st.logs())?;
    st.start_agent(S2)?;
    st.wait_state(S2, "BACKUP")?;
    wait_until_ok(SETTLE, "server2 replicating from server1", || {
        replicating(st.db(S2))
    })
    .with_context(|| st.logs())?;
    ensure!(
        st.db(S2).slave_status("Master_Host")?.as_deref() == Some("203.0.113.11"),
        "server2 replicates from {:?}",
        st.db(S2).slave_status("Master_Host")?
    );
    wait_until_ok(STEP, "server1 writable", || {
        Ok(app_write(st.db(S1), "first")?.status.success())
    })
    .with_context(|| st.logs())?;
    st.db(S2).wait_count(1, STEP)?;
    let out = app_write(st.db(S2), "on the replica")?;
    ensure!(
        !out.status.success(),
        "server2 (replica) must refuse writes: {out:?}"
    );
    st.wait_atlas(S2, &[inside(S2)], STEP)?;
    st.wait_atlas(S1, &[inside(S2)], STEP)?;
    Ok(st)
}

/// Machine death of server1: its links go down, its agent and MariaDB die.
fn kill_server1(st: &mut Stack) -> Result<Instant> {
    let fault = Instant::now();
    st.lab.links_down(S1)?;
    st.kill_agent(S1)?;
    st.dbs[0].kill()?;
    Ok(fault)
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn seed_checks_with_mysql_and_atlas() -> Result<()> {
    let mut st = started()?;
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
    let fault = kill_server1(&mut st)?;
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
    ensure!(
        st.db(S2).slave_status("Slave_IO_Running")?.is_none(),
        "SHOW SLAVE STATUS on server2 must be empty"
    );
    let s = st.lab.agent_status(S2)?;
    let promo = &s["database"]["last_promotion"];
    println!("server2's promotion: {promo}");
    ensure!(
        s["database"]["role"] == "primary" && promo["caught_up"] == true,
        "{}",
        s["database"]
    );
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
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn errant_write_on_the_isolated_old_primary_blocks_its_rejoin_until_forced() -> Result<()> {
    let mut st = started()?;
    kill_server1(&mut st)?;
    wait_until_ok(STEP, "a write on server2 succeeds", || {
        Ok(app_write(st.db(S2), "after failover")?.status.success())
    })
    .with_context(|| st.logs())?;
    // server1's MariaDB comes back without its agent and with its links
    // down, and takes a write nobody else will ever see.
    st.dbs[0].spawn()?;
    // A key the new primary will not use: a forced rejoin keeps the row,
    // and the same key written on both sides would stop replication.
    let out = st
        .db(S1)
        .app_sql("INSERT INTO app.t (id, v, origin) VALUES (1000001, 'errant', @@server_id)")?;
    ensure!(out.status.success(), "errant write: {out:?}");
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
        out.status.success() && said.contains("DISCARDED") && said.contains(&errant_pos),
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
    Ok(())
}
