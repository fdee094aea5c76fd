//! The seed's whole stack in the lab, for the database tests and the
//! database benchmark: one `mariadbd` and one fixture Atlas in each
//! server's namespace (admin port and the seed's proxy port 127.0.0.1:1234
//! on loopback, its `.cnf` in the lab directory, its checker thread every
//! [`StackOptions::atlas_checker`]), and the agents configured with
//! `[mysql]` and `[atlas]` (`persist = "save_config"`).
//!
//! Ground truth comes from the servers themselves (VIPs from the kernel,
//! read-only and replication from MariaDB, the backend table from Atlas),
//! never from the agents' word.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ha_agent::drivers::atlas::{Backend, Kind, State};

use crate::atlas_fixture::{wire, AtlasFixture, FixtureConfig};
use crate::mariadb::{Mariadb, MariadbOptions, AGENT_USER, APP_PASSWORD, APP_USER, REPL_USER};
use crate::netns::in_netns;
use crate::writer::Ack;
use crate::{wait_until, wait_until_ok, Lab, LabProcess, Link, Overrides, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;

/// How the stack is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct StackOptions {
    /// `mysql.semisync = true` in both agents.
    pub semisync: bool,
    /// Lab prefix base ("" for the default).
    pub lab_base: &'static str,
    /// `mysql.down_handover_ms` (None: the agent's default).
    pub down_handover_ms: Option<u64>,
    /// The fixture Atlases' checker period (None: [`TEST_ATLAS_CHECKER`];
    /// the benchmark uses Atlas's own 4 s).
    pub atlas_checker: Option<Duration>,
    /// Their checker's first pass after start (None: Atlas's 1 s).
    pub atlas_checker_first_pass: Option<Duration>,
    /// `mysql.durability` ("strict" or "available"; None: the default).
    pub durability: Option<&'static str>,
    /// The test's name: a stack that is dropped before [`Stack::pass`] (an
    /// error or a panic) keeps its evidence under this name (see
    /// [`crate::evidence`]). Empty: nothing is kept.
    pub test: &'static str,
}
/// The fixture Atlases' checker period in tests: fast, so that tests do not
/// wait Atlas's 4 s for every backend to be marked up.
pub const TEST_ATLAS_CHECKER: Duration = Duration::from_millis(250);
/// Atlas's proxy port, as in the seed (in each server's namespace).
pub const ATLAS_PROXY: &str = "127.0.0.1:1234";
/// Start-up (the eBPF program loads) and replication set-up.
pub const SETTLE: Duration = Duration::from_secs(20);
/// Bound for a failover step; the targets are far lower.
pub const STEP: Duration = Duration::from_secs(10);
pub const MYSQL_PORT: u16 = 3306;
/// The agents' `[metrics] listen`, inside each server's namespace.
pub const METRICS_LISTEN: &str = "127.0.0.1:9405";

pub fn inside(s: Server) -> SocketAddrV4 {
    SocketAddrV4::new(s.ip(Link::Inside), MYSQL_PORT)
}

pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(Link::Inside.vip(), MYSQL_PORT)
}

/// A fixture Atlas listening inside a server's namespace. Its listener
/// belongs to that namespace, and stopping it connects to its port to wake
/// the accept loop, so it is stopped from inside the namespace too.
pub struct NsAtlas {
    ns: String,
    fixture: Option<AtlasFixture>,
}

impl NsAtlas {
    pub fn start(ns: &str, cfg: FixtureConfig) -> Result<NsAtlas> {
        let fixture = in_netns(ns, || AtlasFixture::new(cfg))?
            .with_context(|| format!("starting the fixture Atlas in {ns}"))?;
        Ok(NsAtlas {
            ns: ns.to_string(),
            fixture: Some(fixture),
        })
    }

    pub fn get(&self) -> &AtlasFixture {
        self.fixture.as_ref().expect("fixture present until drop")
    }

    /// (rw, ro) addresses of the table, in table order.
    pub fn lists(&self) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
        let t = self.get().table();
        let of = |k: Kind| {
            t.iter()
                .filter(|b: &&Backend| b.kind == k)
                .map(|b| b.address)
                .collect()
        };
        (of(Kind::Rw), of(Kind::Ro))
    }

    pub fn describe(&self) -> String {
        ha_agent::drivers::atlas::table::describe(&self.get().table())
    }

    /// True if the table lists `addr` as `kind` in state `up`.
    pub fn is_up(&self, addr: SocketAddrV4, kind: Kind) -> bool {
        self.get()
            .table()
            .iter()
            .any(|b| b.address == addr && b.kind == kind && b.state == State::Up)
    }

    /// True if the VIP is listed as rw and `up` (writes are served).
    pub fn rw_up(&self) -> bool {
        self.is_up(vip(), Kind::Rw)
    }

    /// Which server answers a read sent through this Atlas's proxy port
    /// (`SELECT @@server_id` on a fresh connection, as an application
    /// does); None if the read failed (no backend up, or lost connection).
    pub fn read_server_id(&self) -> Result<Option<u32>> {
        let proxy = match self.get().proxy_addr() {
            Some(std::net::SocketAddr::V4(a)) => a,
            other => anyhow::bail!("no IPv4 proxy port: {other:?}"),
        };
        in_netns(&self.ns, move || {
            let Ok(wire::Login::Ok(s)) =
                wire::client_login(proxy, APP_USER, APP_PASSWORD, None, Duration::from_secs(1))
            else {
                return None;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let reply = wire::command(&s, b"\x03SELECT @@server_id").ok()?;
            let _ = wire::write_packet(&s, 0, &[wire::COM_QUIT]);
            wire::first_value(&reply)?.parse().ok()
        })
    }
}

impl Drop for NsAtlas {
    fn drop(&mut self) {
        if let Some(f) = self.fixture.take() {
            let _ = in_netns(&self.ns, move || drop(f));
        }
    }
}

pub struct Stack {
    // Field order is drop order: agents first, then Atlas and MariaDB, then the lab.
    pub agents: [Option<LabProcess>; 2],
    pub atlas: [NsAtlas; 2],
    pub dbs: [Mariadb; 2],
    pub lab: Lab,
    pub opts: StackOptions,
    /// State snapshots taken during the test ("before the fault", ...).
    snapshots: Vec<(String, String)>,
    /// The test passed: nothing to keep.
    passed: bool,
}

pub fn idx(s: Server) -> usize {
    usize::from(s.index() - 1)
}

impl Stack {
    pub fn db(&self, s: Server) -> &Mariadb {
        &self.dbs[idx(s)]
    }
    pub fn atlas(&self, s: Server) -> &NsAtlas {
        &self.atlas[idx(s)]
    }

    pub fn overrides(&self, s: Server) -> Result<Overrides> {
        let db = self.db(s);
        let pw = self.lab.dir().join(format!("atlas-{}.pw", s.name()));
        std::fs::write(&pw, format!("{}\n", self.atlas(s).get().password()))?;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let cnf = self
            .atlas(s)
            .get()
            .cnf_path()
            .context("the fixture Atlas has a .cnf")?
            .to_path_buf();
        let mut o = Overrides::new();
        if let Some(ms) = self.opts.down_handover_ms {
            o = o.set("mysql.down_handover_ms", ms as i64);
        }
        if let Some(d) = self.opts.durability {
            o = o.set("mysql.durability", d);
        }
        Ok(o.set("mysql.address", inside(s).to_string())
            .set("mysql.user", AGENT_USER)
            .set("mysql.password_file", path(&db.dir().join("agent.pw")))
            .set("mysql.replication_user", REPL_USER)
            .set(
                "mysql.replication_password_file",
                path(&db.dir().join("repl.pw")),
            )
            .set("mysql.peer_address", inside(s.peer()).to_string())
            .set(
                "atlas.admin_address",
                self.atlas(s).get().addr().to_string(),
            )
            .set("atlas.user", self.atlas(s).get().user())
            .set("atlas.password_file", path(&pw))
            .set("atlas.persist", "save_config")
            .set("atlas.cnf_path", path(&cnf))
            .set("atlas.period_ms", 200)
            .set("mysql.semisync", self.opts.semisync)
            .set("metrics.listen", METRICS_LISTEN)
            .set(
                "mysql.state_dir",
                path(&self.lab.dir().join(format!("{}-state", s.name()))),
            ))
    }

    pub fn start_agent(&mut self, s: Server) -> Result<()> {
        let o = self.overrides(s)?;
        self.agents[idx(s)] = Some(self.lab.start_agent_with(s, &o)?);
        Ok(())
    }

    pub fn kill_agent(&mut self, s: Server) -> Result<()> {
        if let Some(mut p) = self.agents[idx(s)].take() {
            p.kill()?;
        }
        Ok(())
    }

    /// Records both servers' replication state and both agents' status
    /// now, for the evidence of a failure (a few tens of ms).
    pub fn snapshot(&mut self, label: &str) {
        let mut text = String::new();
        for s in Server::ALL {
            text.push_str(&self.db(s).state_report());
            match self.lab.agent_status(s) {
                Ok(j) => text.push_str(&format!(
                    "== {s}'s agent status ==\n{}\n",
                    serde_json::to_string_pretty(&j).unwrap_or_default()
                )),
                Err(e) => text.push_str(&format!("== {s}'s agent status ==\n{e:#}\n")),
            }
        }
        self.snapshots.push((label.to_string(), text));
    }

    /// The test passed: the evidence is not kept.
    pub fn pass(&mut self) {
        self.passed = true;
    }

    /// Copies the evidence of a failure (see [`crate::evidence`]): both
    /// agents' logs and configs, both MariaDB error logs, the snapshots
    /// taken during the test and one taken now; returns the directory.
    pub fn keep_evidence(&mut self, why: &str) -> Result<PathBuf> {
        let name = if self.opts.test.is_empty() {
            "stack"
        } else {
            self.opts.test
        };
        let b = crate::evidence::Bundle::new(name)?;
        b.note("failure.txt", &format!("{why}\n"));
        b.copy_dir(self.lab.dir(), "");
        for db in &self.dbs {
            b.copy_file(
                &format!("mariadb{}-error.log", db.server_id()),
                &db.error_log_path(),
            );
        }
        self.snapshot("at the failure");
        for (label, text) in &self.snapshots {
            b.note("state.txt", &format!("##### {label}\n{text}\n"));
        }
        Ok(b.dir().to_path_buf())
    }

    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log_tail(60)))
            .collect()
    }

    /// Waits until both agents say semi-sync is in effect for their role
    /// (the primary effective with its peer, the replica acknowledging).
    pub fn wait_semisync_effective(&self) -> Result<Duration> {
        wait_until_ok(STEP, "semi-sync effective on both servers", || {
            Ok(Server::ALL.iter().all(|&s| {
                self.lab
                    .agent_status(s)
                    .is_ok_and(|j| j["database"]["semisync_effective"] == true)
            }))
        })
        .with_context(|| self.logs())
    }

    pub fn wait_state(&self, s: Server, state: &str) -> Result<Duration> {
        wait_until_ok(SETTLE, format!("{s} in {state}"), || {
            Ok(self.lab.agent_state(s)? == state)
        })
        .with_context(|| self.logs())
    }

    /// The acknowledged writes that `s`'s server does not hold (lost
    /// writes), as "<prefix><tag>", for each ([`crate::writer::Writer`]
    /// prefix, its acknowledgements): one read of the table for all.
    pub fn missing_writes(&self, s: Server, writes: &[(&str, &[Ack])]) -> Result<Vec<String>> {
        let rows: HashSet<String> = self
            .db(s)
            .sql("SELECT v FROM app.t")?
            .lines()
            .map(str::to_string)
            .collect();
        Ok(writes
            .iter()
            .flat_map(|(prefix, acks)| acks.iter().map(move |a| format!("{prefix}{}", a.tag)))
            .filter(|tag| !rows.contains(tag))
            .collect())
    }

    /// The fixture Atlases' checker period.
    pub fn atlas_checker(&self) -> Duration {
        self.opts.atlas_checker.unwrap_or(TEST_ATLAS_CHECKER)
    }

    /// The rows (`app.t.v`) `s`'s server holds that `other`'s lacks: after
    /// a rejoin, what would have diverged silently.
    pub fn rows_only_on(&self, s: Server, other: Server) -> Result<Vec<String>> {
        let rows = |s: Server| -> Result<std::collections::BTreeSet<String>> {
            Ok(self
                .db(s)
                .sql("SELECT v FROM app.t")?
                .lines()
                .map(str::to_string)
                .collect())
        };
        let (mine, theirs) = (rows(s)?, rows(other)?);
        Ok(mine.difference(&theirs).cloned().collect())
    }

    /// Waits until `s`'s Atlas table is exactly rw = the VIP, ro = `ro`.
    pub fn wait_atlas(&self, s: Server, ro: &[SocketAddrV4], bound: Duration) -> Result<Duration> {
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
pub fn stack(opts: StackOptions) -> Result<Stack> {
    let lab = if opts.lab_base.is_empty() {
        Lab::new()?
    } else {
        Lab::with_base(opts.lab_base)?
    };
    let mut dbs = Vec::new();
    for s in Server::ALL {
        dbs.push(
            Mariadb::start(MariadbOptions {
                server_id: u32::from(s.index()),
                bind: s.ip(Link::Inside),
                port: MYSQL_PORT,
                namespace: Some(lab.server_ns(s).to_string()),
                parent: lab.dir().to_path_buf(),
                read_only: true,
            })
            .with_context(|| format!("MariaDB on {s}"))?,
        );
    }
    // server1's Atlas starts with a stale entry (its own server as ro),
    // server2's with an empty table: the agents must fix both.
    let atlas = |s: Server, rw: Vec<SocketAddrV4>, ro: Vec<SocketAddrV4>| {
        NsAtlas::start(
            lab.server_ns(s),
            FixtureConfig {
                rw,
                ro,
                cnf_path: Some(lab.dir().join(format!("atlas-{}.cnf", s.name()))),
                checker: Some(opts.atlas_checker.unwrap_or(TEST_ATLAS_CHECKER)),
                checker_first_pass: opts.atlas_checker_first_pass,
                proxy_address: Some(ATLAS_PROXY.parse().expect("a socket address")),
                proxy_users: vec![(APP_USER.into(), APP_PASSWORD.into())],
                ..Default::default()
            },
        )
    };
    let a1 = atlas(S1, vec![vip()], vec![inside(S1)])?;
    let a2 = atlas(S2, vec![], vec![])?;
    let [d1, d2]: [Mariadb; 2] = dbs.try_into().expect("two servers");
    Ok(Stack {
        agents: [None, None],
        atlas: [a1, a2],
        dbs: [d1, d2],
        lab,
        opts,
        snapshots: Vec::new(),
        passed: false,
    })
}

impl Drop for Stack {
    /// A stack dropped before [`Stack::pass`] belongs to a failed test:
    /// keep its evidence (while the servers and the lab still exist).
    fn drop(&mut self) {
        if self.passed || self.opts.test.is_empty() {
            return;
        }
        let why = if std::thread::panicking() {
            "the test panicked"
        } else {
            "the test failed (see its error)"
        };
        match self.keep_evidence(why) {
            Ok(dir) => eprintln!("ha-lab: evidence of the failure kept in {}", dir.display()),
            Err(e) => eprintln!("ha-lab: could not keep the evidence: {e:#}"),
        }
        // Kept once: the error path of [`run`] may have done it already.
        self.passed = true;
    }
}

/// Runs a test on a started stack: on failure its evidence is kept and the
/// error names the directory.
pub fn run(opts: StackOptions, test: impl FnOnce(&mut Stack) -> Result<()>) -> Result<()> {
    let mut st = started(opts)?;
    match test(&mut st) {
        Ok(()) => {
            st.pass();
            Ok(())
        }
        Err(e) => {
            let kept = st.keep_evidence(&format!("{e:#}"));
            st.pass();
            match kept {
                Ok(dir) => Err(e.context(format!("evidence kept in {}", dir.display()))),
                Err(k) => Err(e.context(format!("(evidence not kept: {k:#})"))),
            }
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn app_write(db: &Mariadb, tag: &str) -> Result<std::process::Output> {
    db.app_sql(&format!(
        "INSERT INTO app.t (v, origin) VALUES ('{tag}', @@server_id)"
    ))
}

pub fn replicating(db: &Mariadb) -> Result<bool> {
    Ok(
        db.slave_status("Slave_IO_Running")?.as_deref() == Some("Yes")
            && db.slave_status("Slave_SQL_Running")?.as_deref() == Some("Yes"),
    )
}

/// Both agents up: server1 MASTER with a writable primary, server2 BACKUP
/// replicating from it, both Atlases rw = VIP, ro = server2.
pub fn started(opts: StackOptions) -> Result<Stack> {
    let mut st = stack(opts)?;
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
    // In sync means serving: the rw backend is up in each Atlas.
    for s in Server::ALL {
        wait_until_ok(
            STEP + st.atlas_checker(),
            format!("{s}'s agent: Atlas in sync"),
            || Ok(st.lab.agent_status(s)?["atlas"]["in_sync"] == true),
        )
        .with_context(|| format!("{}\n{}", st.atlas(s).describe(), st.logs()))?;
    }
    Ok(st)
}

/// Machine death of server1: its links go down, its agent and MariaDB die.
/// The replication state is recorded first (for the evidence).
pub fn kill_server1(st: &mut Stack) -> Result<Instant> {
    st.snapshot("just before the fault (server1 dies)");
    die_server1(st)
}

/// [`kill_server1`] at once, without the snapshot (tens of ms): for faults
/// timed against another event.
pub fn die_server1(st: &mut Stack) -> Result<Instant> {
    let fault = Instant::now();
    st.lab.links_down(S1)?;
    st.kill_agent(S1)?;
    st.dbs[0].kill()?;
    Ok(fault)
}
