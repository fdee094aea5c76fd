//! `cargo xtask bench database`: the MySQL and Atlas side of a failover,
//! measured on the seed's whole stack (two agents, two MariaDB 10.11 with
//! semi-synchronous replication, two fixture Atlas admin servers).
//!
//! Each trial, on a fresh stack with server1 primary and server2 its
//! replica: an application on server2 writes continuously through the
//! inside VIP (one long-lived connection) and a prober writes through it
//! with a fresh connection per write; server1 dies (links down, agent and
//! mariadbd killed). Measured: the VIPs on server2, the first write the
//! prober gets acknowledged by server2, the stale `ro` entry leaving
//! server2's Atlas, and every acknowledged write missing from server2 (a
//! lost write). Then server1 returns: links up, agent started (BACKUP),
//! then its mariadbd; measured: writes it accepts (it must accept none),
//! the time until it replicates and has caught up, and the time from that
//! catch-up until server2's Atlas lists it `ro` again.
//!
//! `--fault` picks what happens to server1 (the primary), with a third
//! writer, server1's own application, writing through the VIP from
//! server1's namespace: `death` (above), `isolate` (every frame to and from
//! server1 dropped; healed once server2 is writable), `hang` (server1's
//! agent SIGSTOPped for 2 s, its MariaDB alive), `inside-cut` (the inside
//! link between the servers cut for 3 s: no failover; replication stops,
//! the primary must tell the replica before it acknowledges alone), and
//! `inside-cut-death` (the same cut, then server1 dies: with durability =
//! "strict" server2 must not promote itself; with "available" it does and
//! reports the window). Every acknowledged write is looked for on the
//! primary at the end.
//!
//! After the catch-up, the time until server2's Atlas lists the replica
//! `ro` again, and until reads sent through server2's Atlas proxy port
//! (127.0.0.1:1234, a fresh connection each, `SELECT @@server_id`) are
//! served by it. The fixture Atlases run their checker at Atlas's 4 s: a
//! backend Atlas just got is `unknown` until the checker's next pass marks
//! it `up` (nothing makes that sooner), so "served" is "listed" plus 0-4 s.
//! When the returning server's rejoin is blocked (it holds transactions
//! server2 lacks that it may not undo itself), the bench gives them up with
//! `ha-agent rejoin --force`, as an operator would, so that the Atlas
//! measurements cover every trial; the rejoin times of such trials are not
//! counted.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ha_lab::atlas_fixture::ATLAS_CHECKER_PERIOD;
use ha_lab::stack::{inside, replicating, started, vip, Stack, StackOptions};
use ha_lab::writer::{Writer, WriterMode};
use ha_lab::{Link, Server};
use serde_json::{json, Value};

use super::report::stats;
use super::trial::ms;
use super::LAB_BASE;

const S1: Server = Server::S1;
const S2: Server = Server::S2;
/// Bound on each phase of a trial; the targets are far lower.
const PHASE: Duration = Duration::from_secs(15);
/// How long server1's agent stays stopped (`hang`).
const HANG: Duration = Duration::from_secs(2);
/// How long the inside link stays cut (`inside-cut`).
const CUT: Duration = Duration::from_secs(3);
/// Trials spread the Atlases' checker phase over this many steps.
const PHASES: usize = 20;

/// What happens to server1, the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbFault {
    Death,
    Isolate,
    Hang,
    InsideCut,
    InsideCutDeath,
}

impl DbFault {
    pub fn name(self) -> &'static str {
        match self {
            DbFault::Death => "death",
            DbFault::Isolate => "isolate",
            DbFault::Hang => "hang",
            DbFault::InsideCut => "inside-cut",
            DbFault::InsideCutDeath => "inside-cut-death",
        }
    }
    /// server2 is expected to take over.
    fn fails_over(self) -> bool {
        self != DbFault::InsideCut
    }
    /// server1's machine dies (its agent and MariaDB come back later).
    fn dies(self) -> bool {
        matches!(self, DbFault::Death | DbFault::InsideCutDeath)
    }
}

#[derive(Debug, Default, Clone)]
pub struct DbTrial {
    pub index: usize,
    pub vips_ms: Option<f64>,
    pub writable_ms: Option<f64>,
    pub app_writes_again_ms: Option<f64>,
    /// From the VIPs on server2 to server2's Atlas without its own `ro` entry.
    pub stale_ro_gone_ms: Option<f64>,
    pub acked_before_fault: usize,
    pub acked_total: usize,
    pub lost: Option<usize>,
    pub lost_tags: Vec<String>,
    pub old_primary_writes_accepted: Option<usize>,
    pub old_primary_write_attempts: usize,
    pub rejoin_replicating_ms: Option<f64>,
    pub rejoin_caught_up_ms: Option<f64>,
    pub atlas_ro_after_catchup_ms: Option<f64>,
    /// From the catch-up to the first read through server2's Atlas proxy
    /// port that the returning replica (server1) served.
    pub atlas_reads_after_catchup_ms: Option<f64>,
    /// When the Atlases' checker first ran after their start (its phase).
    pub atlas_checker_first_pass_ms: f64,
    /// Polls of server2's Atlas that saw no rw backend (must stay 0).
    pub atlas_without_rw: usize,
    /// Samples of server2's agent status that said "in sync" while its
    /// Atlas had no `up` rw backend (must stay 0), and samples taken.
    pub in_sync_without_up_rw: usize,
    pub in_sync_samples: usize,
    /// The returning old primary held transactions server2 lacks (written
    /// to its binlog, never acknowledged, when it died): its agent refused
    /// to rejoin, as it must. The errant set.
    pub rejoin_blocked: Option<String>,
    /// Why its agent did not undo them (its status).
    pub rejoin_blocked_because: Option<String>,
    /// server2's own account of its promotion (`last_promotion.took_ms`).
    pub promotion_ms: Option<f64>,
    /// How it froze what it had received (`io_thread_killed`, ...).
    pub frozen_by: Option<String>,
    /// server2 held its promotion (durability = "strict" and the primary
    /// had said it went asynchronous): why.
    pub promotion_held: Option<String>,
    /// server2 promoted although writes may be missing (available): why.
    pub possibly_lost: Option<String>,
    /// The primary's commits acknowledged without the replica (status).
    pub commits_without_ack: Option<u64>,
    /// The returning old primary undid an unacknowledged tail by itself.
    pub rejoin_automatic: bool,
    /// Rows on the rejoined old primary that the new primary lacks.
    pub extra_rows: Option<usize>,
    pub failure: Option<String>,
}

pub fn run(
    index: usize,
    semisync: bool,
    durability: Option<&'static str>,
    fault: DbFault,
) -> Result<DbTrial> {
    // The checker's phase against the failover, spread evenly over the
    // trials (1 s..5 s after Atlas's start): a real Atlas that has run for
    // a while is at any phase of its 4 s checker when a server fails.
    let phase = ATLAS_CHECKER_PERIOD.mul_f64((index % PHASES) as f64 / PHASES as f64);
    let first_pass = Duration::from_secs(1) + phase;
    let mut t = DbTrial {
        index,
        atlas_checker_first_pass_ms: ms(first_pass),
        ..Default::default()
    };
    let st = match started(StackOptions {
        semisync,
        lab_base: LAB_BASE,
        down_handover_ms: None,
        atlas_checker: Some(ATLAS_CHECKER_PERIOD),
        atlas_checker_first_pass: Some(first_pass),
        test: "bench-database",
        durability,
    }) {
        Ok(st) => st,
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            t.failure = Some(format!("stack start: {e:#}"));
            return Ok(t);
        }
    };
    let mut st = st;
    match trial(&mut st, &mut t, fault) {
        Ok(()) => st.pass(),
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            let kept = st
                .keep_evidence(&format!("{e:#}"))
                .map(|d| format!("evidence kept in {}", d.display()))
                .unwrap_or_else(|k| format!("evidence not kept: {k:#}"));
            st.pass();
            t.failure = Some(format!("{e:#}\n{kept}\n{}", st.logs()));
        }
    }
    Ok(t)
}

/// Injects `fault` on server1; returns when it happened.
fn inject(st: &mut Stack, fault: DbFault) -> Result<Instant> {
    match fault {
        DbFault::Death => {
            let at = Instant::now();
            st.lab.links_down(S1)?;
            st.kill_agent(S1)?;
            st.dbs[0].kill()?;
            Ok(at)
        }
        DbFault::Isolate => {
            let at = Instant::now();
            st.lab.isolate(S1)?;
            Ok(at)
        }
        DbFault::Hang => {
            let at = Instant::now();
            st.agents[0].as_mut().context("server1's agent")?.stop()?;
            Ok(at)
        }
        DbFault::InsideCut => {
            let at = Instant::now();
            st.lab.cut_between_servers(Link::Inside)?;
            Ok(at)
        }
        DbFault::InsideCutDeath => {
            st.lab.cut_between_servers(Link::Inside)?;
            // The primary announces that it goes asynchronous (its commits
            // wait for a replica that cannot answer); then it dies.
            ha_lab::wait_until_ok(PHASE, "server1 announces asynchronous", || {
                Ok(
                    st.lab.agent_status(S1)?["database"]["semisync"]["advertised"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("asynchronous")),
                )
            })?;
            std::thread::sleep(Duration::from_millis(300));
            inject(st, DbFault::Death)
        }
    }
}

fn trial(st: &mut Stack, t: &mut DbTrial, fault: DbFault) -> Result<()> {
    if st.opts.semisync {
        // A primary dying before semi-sync is effective legitimately holds
        // the promotion (strict): measure from the effective steady state.
        st.wait_semisync_effective()?;
    }
    let ns1 = st.lab.server_ns(S1).to_string();
    let ns2 = st.lab.server_ns(S2).to_string();
    let bound = PHASE * 4;
    let app = Writer::start(&ns2, vip(), "a", WriterMode::APP, bound)?;
    let probe = Writer::start(&ns2, vip(), "p", WriterMode::PROBE, bound)?;
    // server1's own application (the seed's web app on each server).
    let local = Writer::start(&ns1, vip(), "b", WriterMode::APP, bound)?;
    // All writing to server1 before the fault.
    app.wait_acks(50, PHASE)?;
    probe.wait_acks(20, PHASE)?;
    local.wait_acks(20, PHASE)?;
    if app.acks().iter().any(|a| a.server_id != 1) {
        bail!("a write was acknowledged by server2 before the fault");
    }

    let fault_at = inject(st, fault)?;
    let acked_before = |w: &Writer| w.acks().iter().filter(|a| a.at < fault_at).count();
    t.acked_before_fault = acked_before(&app) + acked_before(&probe) + acked_before(&local);

    let mut vips_at = None;
    let mut stale_gone_at = None;
    let end = fault_at + if fault.fails_over() { PHASE } else { CUT };
    while Instant::now() < end {
        ha_lab::check_interrupt()?;
        let now = Instant::now();
        if vips_at.is_none()
            && Link::ALL
                .iter()
                // A killed or hung server1 keeps its addresses.
                .all(|l| st.lab.vip_holders(l.vip()).contains(&S2))
        {
            vips_at = Some(now);
        }
        let (rw, ro) = st.atlas(S2).lists();
        if rw.is_empty() {
            t.atlas_without_rw += 1;
        }
        if stale_gone_at.is_none() && vips_at.is_some() && !ro.contains(&inside(S2)) {
            stale_gone_at = Some(now);
        }
        if fault.fails_over()
            && vips_at.is_some()
            && stale_gone_at.is_some()
            && probe.first_ack_from(2, fault_at).is_some()
            && app.first_ack_from(2, fault_at).is_some()
        {
            break;
        }
        if fault == DbFault::InsideCutDeath && vips_at.is_some() {
            if let Ok(s) = st.lab.agent_status(S2) {
                if let Some(h) = s["database"]["semisync"]["promotion_held"].as_str() {
                    t.promotion_held = Some(h.to_string());
                    break;
                }
            }
        }
        if fault == DbFault::Hang && now >= fault_at + HANG {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    t.vips_ms = vips_at.map(|v| ms(v - fault_at));
    t.writable_ms = probe
        .first_ack_from(2, fault_at)
        .map(|a| ms(a.at - fault_at));
    t.app_writes_again_ms = app.first_ack_from(2, fault_at).map(|a| ms(a.at - fault_at));
    t.stale_ro_gone_ms = match (vips_at, stale_gone_at) {
        (Some(v), Some(g)) => Some(ms(g.saturating_duration_since(v))),
        _ => None,
    };
    // The fault ends for a server that stays alive.
    match fault {
        DbFault::Hang => {
            let left = (fault_at + HANG).saturating_duration_since(Instant::now());
            std::thread::sleep(left);
            st.agents[0].as_mut().context("server1's agent")?.cont()?;
        }
        DbFault::Isolate | DbFault::InsideCut => st.lab.heal()?,
        DbFault::Death | DbFault::InsideCutDeath => {}
    }
    // A few more writes on the primary, then count.
    let more = Instant::now() + Duration::from_millis(300);
    while Instant::now() < more {
        ha_lab::check_interrupt()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let primary = if fault.fails_over() { S2 } else { S1 };
    if let Ok(s) = st.lab.agent_status(S2) {
        let p = &s["database"]["last_promotion"];
        t.promotion_ms = p["took_ms"].as_f64();
        t.frozen_by = p["frozen_by"].as_str().map(str::to_string);
        t.possibly_lost = p["possibly_lost"].as_str().map(str::to_string);
    }
    if let Ok(s) = st.lab.agent_status(primary) {
        t.commits_without_ack = s["database"]["semisync"]["commits_without_ack"].as_u64();
    }
    let (app_acks, _) = app.finish()?;
    let (probe_acks, _) = probe.finish()?;
    let (local_acks, _) = local.finish()?;
    t.acked_total = app_acks.len() + probe_acks.len() + local_acks.len();
    if t.promotion_held.is_none() {
        // Held (strict): nothing is lost, the acknowledged writes are on
        // the old primary's disk; otherwise every one must be here.
        let lost = st.missing_writes(
            primary,
            &[("a", &app_acks), ("p", &probe_acks), ("b", &local_acks)],
        )?;
        t.lost = Some(lost.len());
        t.lost_tags = lost.into_iter().take(20).collect();
    }
    if fault.fails_over() && t.promotion_held.is_none() {
        for (what, v) in [
            ("VIPs", t.vips_ms),
            ("writable", t.writable_ms),
            ("stale ro gone", t.stale_ro_gone_ms),
        ] {
            if v.is_none() {
                bail!(
                    "failover: {what} never happened within {PHASE:?}; VIPs {}, Atlas {}",
                    st.lab.describe_vips(),
                    st.atlas(S2).describe()
                );
            }
        }
    }
    if t.promotion_held.is_some() || fault == DbFault::InsideCut {
        // No rejoin to measure: the replica catches up (inside-cut), or
        // the operator decides (a held promotion).
        if fault == DbFault::InsideCut {
            // server1's own application may still be writing: what it
            // held then must arrive, more may follow.
            let rows = st.db(S1).count()?;
            st.db(S2).wait_count_at_least(rows, PHASE)?;
        }
        if std::env::var_os("HA_BENCH_LOGS").is_some() {
            println!("{}", st.logs());
        }
        return Ok(());
    }

    // server1 returns: links, agent (BACKUP), then its MariaDB; or, alive,
    // it steps down and rejoins by itself.
    if fault.dies() {
        if fault == DbFault::InsideCutDeath {
            st.lab.heal()?;
        }
        st.lab.links_up(S1)?;
        st.start_agent(S1)?;
        st.wait_state(S1, "BACKUP")?;
        st.dbs[0].spawn()?;
    } else {
        st.wait_state(S1, "BACKUP")?;
    }
    let up = Instant::now();
    let target_rows = st.db(S2).count()?;
    let (mut accepted, mut attempts) = (0, 0);
    let (mut repl_at, mut caught_at, mut listed_at, mut served_at) = (None, None, None, None);
    let mut next_sample = Instant::now();
    let end = up + PHASE;
    while Instant::now() < end && (listed_at.is_none() || served_at.is_none()) {
        ha_lab::check_interrupt()?;
        if caught_at.is_none() {
            attempts += 1;
            let out = st
                .db(S1)
                .app_sql("INSERT INTO app.t (v, origin) VALUES ('old-primary', @@server_id)")?;
            if out.status.success() {
                accepted += 1;
            }
        }
        if repl_at.is_none() && replicating(st.db(S1)).unwrap_or(false) {
            repl_at = Some(Instant::now());
        }
        if repl_at.is_some() && caught_at.is_none() && st.db(S1).count().ok() == Some(target_rows) {
            caught_at = Some(Instant::now());
        }
        let (rw, ro) = st.atlas(S2).lists();
        if rw.is_empty() {
            t.atlas_without_rw += 1;
        }
        if caught_at.is_some() && listed_at.is_none() && rw == [vip()] && ro == [inside(S1)] {
            listed_at = Some(Instant::now());
        }
        if caught_at.is_some() && served_at.is_none() && st.atlas(S2).read_server_id()? == Some(1) {
            served_at = Some(Instant::now());
        }
        // The agent's "in sync" must mean the rw backend serves.
        if Instant::now() >= next_sample {
            // Each sample runs the status command: not too often, on 2 cores.
            next_sample = Instant::now() + Duration::from_millis(500);
            if let Ok(s) = st.lab.agent_status(S2) {
                t.in_sync_samples += 1;
                if s["atlas"]["in_sync"] == true && !st.atlas(S2).rw_up() {
                    t.in_sync_without_up_rw += 1;
                }
            }
        }
        if repl_at.is_none() && t.rejoin_blocked.is_none() {
            if let Ok(s) = st.lab.agent_status(S1) {
                if let Some(g) = s["database"]["errant"]["gtids"].as_str() {
                    t.rejoin_blocked = Some(g.to_string());
                    t.rejoin_blocked_because = s["database"]["errant"]["not_undone_because"]
                        .as_str()
                        .map(str::to_string);
                    // As an operator would: give them up, so that the
                    // replica's return to Atlas is measured in every trial.
                    force_rejoin(st)?;
                }
            }
        }
    }
    if let Ok(s) = st.lab.agent_status(S1) {
        t.rejoin_automatic = s["database"]["last_rejoin"]["automatic"] == true;
    }
    if caught_at.is_some() {
        // No row the new primary lacks stays on the rejoined server.
        t.extra_rows = Some(st.rows_only_on(S1, S2)?.len());
    }
    t.old_primary_writes_accepted = Some(accepted);
    t.old_primary_write_attempts = attempts;
    // After a forced rejoin these times include the operator's step: kept
    // out of the rejoin metrics, used for the Atlas ones only.
    if t.rejoin_blocked.is_none() {
        t.rejoin_replicating_ms = repl_at.map(|r| ms(r - up));
        t.rejoin_caught_up_ms = caught_at.map(|c| ms(c - up));
    }
    t.atlas_ro_after_catchup_ms = match (caught_at, listed_at) {
        (Some(c), Some(l)) => Some(ms(l - c)),
        _ => None,
    };
    t.atlas_reads_after_catchup_ms = match (caught_at, served_at) {
        (Some(c), Some(r)) => Some(ms(r - c)),
        _ => None,
    };
    if std::env::var_os("HA_BENCH_LOGS").is_some() {
        println!("{}", st.logs());
    }
    if listed_at.is_none() || served_at.is_none() {
        bail!(
            "rejoin: replicating {:?}, caught up {:?}, listed ro {:?}, reads served by it {:?} (not both within {PHASE:?}); Atlas {}",
            t.rejoin_replicating_ms,
            t.rejoin_caught_up_ms,
            t.atlas_ro_after_catchup_ms,
            t.atlas_reads_after_catchup_ms,
            st.atlas(S2).describe()
        );
    }
    Ok(())
}

/// `ha-agent rejoin --force` on the returning old primary.
fn force_rejoin(st: &Stack) -> Result<()> {
    let sock = st.lab.status_socket(S1);
    let sock = sock
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("socket path"))?;
    let out = st.lab.agent_cli(&["rejoin", "--force", "--socket", sock])?;
    if !out.status.success() {
        bail!(
            "ha-agent rejoin --force failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn print_trial(t: &DbTrial, n: usize) {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    let head = format!("bench database {:>2}/{n}", t.index + 1);
    match &t.failure {
        Some(e) => println!("{head}: FAILED: {}", e.lines().next().unwrap_or("")),
        None => println!(
            "{head}: VIPs {} ms, writable {} ms (app {} ms; promotion {} ms, frozen: {}), stale ro gone +{} ms, lost {}/{} acked, old primary accepted {}/{} writes, replicating {} ms, caught up {} ms, Atlas ro +{} ms, reads served by it +{} ms, in sync without an up rw {}/{}{}{}",
            f(t.vips_ms),
            f(t.writable_ms),
            f(t.app_writes_again_ms),
            f(t.promotion_ms),
            t.frozen_by.as_deref().unwrap_or("-"),
            f(t.stale_ro_gone_ms),
            t.lost.map_or("-".into(), |l| l.to_string()),
            t.acked_total,
            t.old_primary_writes_accepted.map_or("-".into(), |l| l.to_string()),
            t.old_primary_write_attempts,
            f(t.rejoin_replicating_ms),
            f(t.rejoin_caught_up_ms),
            f(t.atlas_ro_after_catchup_ms),
            f(t.atlas_reads_after_catchup_ms),
            t.in_sync_without_up_rw,
            t.in_sync_samples,
            t.rejoin_blocked.as_ref().map_or(String::new(), |g| format!(
                "; rejoin BLOCKED by errant {g} ({}), then forced",
                t.rejoin_blocked_because.as_deref().unwrap_or("?")
            )),
            extras(t),
        ),
    }
}

/// The semi-sync outcome of a trial, for its line.
fn extras(t: &DbTrial) -> String {
    let mut v = Vec::new();
    if t.rejoin_automatic {
        v.push("rejoin undid an unacknowledged tail by itself".to_string());
    }
    if let Some(n) = t.extra_rows.filter(|n| *n > 0) {
        v.push(format!(
            "{n} row(s) the new primary lacks STAYED on the rejoined server"
        ));
    }
    if let Some(n) = t.commits_without_ack {
        v.push(format!("{n} commit(s) acknowledged without the replica"));
    }
    if let Some(h) = &t.promotion_held {
        v.push(format!("promotion HELD: {h}"));
    }
    if let Some(l) = &t.possibly_lost {
        v.push(format!("possibly lost (reported): {l}"));
    }
    if v.is_empty() {
        String::new()
    } else {
        format!("; {}", v.join("; "))
    }
}

/// (metric, values, target) rows of the summary table.
fn rows(trials: &[DbTrial]) -> Vec<(&'static str, Vec<f64>, &'static str)> {
    let ok: Vec<&DbTrial> = trials.iter().filter(|t| t.failure.is_none()).collect();
    let col =
        |f: fn(&DbTrial) -> Option<f64>| ok.iter().filter_map(|&t| f(t)).collect::<Vec<f64>>();
    vec![
        ("fault -> both VIPs on server2 (ms)", col(|t| t.vips_ms), ""),
        (
            "fault -> server2 writable through the inside VIP, new connection (ms)",
            col(|t| t.writable_ms),
            "median <= 100",
        ),
        (
            "server2's promotion, as its status reports it (ms)",
            col(|t| t.promotion_ms),
            "",
        ),
        (
            "fault -> the app's long-lived connection writing again (ms)",
            col(|t| t.app_writes_again_ms),
            "",
        ),
        (
            "takeover -> stale ro entry gone from server2's Atlas (ms)",
            col(|t| t.stale_ro_gone_ms),
            "<= 100",
        ),
        (
            "acknowledged writes lost (per trial)",
            col(|t| t.lost.map(|l| l as f64)),
            "0",
        ),
        (
            "writes accepted by the returning old primary (per trial)",
            col(|t| t.old_primary_writes_accepted.map(|l| l as f64)),
            "0",
        ),
        (
            "old primary's mysqld up -> replicating (ms)",
            col(|t| t.rejoin_replicating_ms),
            "<= 1000",
        ),
        (
            "old primary's mysqld up -> caught up (ms)",
            col(|t| t.rejoin_caught_up_ms),
            "",
        ),
        (
            "replica caught up -> listed ro in server2's Atlas (ms)",
            col(|t| t.atlas_ro_after_catchup_ms),
            "median <= 2000",
        ),
        (
            "replica caught up -> reads through server2's Atlas proxy served by it (ms)",
            col(|t| t.atlas_reads_after_catchup_ms),
            "floor: Atlas's checker, listed + 0-4 s",
        ),
        (
            "polls of server2's Atlas with no rw backend",
            col(|t| Some(t.atlas_without_rw as f64)),
            "0",
        ),
        (
            "status samples: server2's agent in sync while its Atlas had no up rw backend",
            col(|t| Some(t.in_sync_without_up_rw as f64)),
            "0",
        ),
    ]
}

pub fn table(trials: &[DbTrial]) -> String {
    let num = |x: f64| {
        if x.abs() < 100.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.0}")
        }
    };
    let mut out = String::new();
    out.push_str("| metric | min / median / max | target |\n|---|---|---|\n");
    for (name, v, target) in rows(trials) {
        let cell = stats(&v).map_or("-".into(), |(a, m, b)| {
            format!("{} / {} / {}", num(a), num(m), num(b))
        });
        out.push_str(&format!("| {name} | {cell} | {target} |\n"));
    }
    let lost: usize = trials.iter().filter_map(|t| t.lost).sum();
    let acked: usize = trials.iter().map(|t| t.acked_total).sum();
    let failed = trials.iter().filter(|t| t.failure.is_some()).count();
    let blocked = trials.iter().filter(|t| t.rejoin_blocked.is_some()).count();
    let automatic = trials.iter().filter(|t| t.rejoin_automatic).count();
    let extra: usize = trials.iter().filter_map(|t| t.extra_rows).sum();
    let held = trials.iter().filter(|t| t.promotion_held.is_some()).count();
    let reported = trials.iter().filter(|t| t.possibly_lost.is_some()).count();
    let killed = trials
        .iter()
        .filter(|t| t.frozen_by.as_deref() == Some("io_thread_killed"))
        .count();
    out.push_str(&format!(
        "| acknowledged writes lost, all trials | {lost} of {acked} | 0 |\n| rejoins blocked: the old primary held transactions server2 lacks (needs an operator; the bench then runs `rejoin --force`, and does not count that rejoin's time) | {blocked}/{n} | 0 with strict |\n| rejoins that undid an unacknowledged tail by themselves | {automatic}/{n} | |\n| rows the new primary lacks left on a rejoined server, all trials | {extra} | 0 |\n| promotions held (strict, the primary had gone asynchronous) | {held}/{n} | |\n| promotions with a possible loss reported (available) | {reported}/{n} | |\n| promotions that froze the IO thread by killing it | {killed}/{n} | |\n| failed trials | {failed}/{n} | 0 |\n",
        n = trials.len(),
    ));
    out
}

pub fn json(trials: &[DbTrial], meta: Value) -> Value {
    let summary: Vec<Value> = rows(trials)
        .into_iter()
        .map(|(name, v, target)| {
            let s = stats(&v);
            json!({"metric": name, "n": v.len(), "min": s.map(|x| x.0), "median": s.map(|x| x.1), "max": s.map(|x| x.2), "target": target})
        })
        .collect();
    let raw: Vec<Value> = trials
        .iter()
        .map(|t| {
            json!({
                "index": t.index, "vips_ms": t.vips_ms, "writable_ms": t.writable_ms,
                "app_writes_again_ms": t.app_writes_again_ms, "stale_ro_gone_ms": t.stale_ro_gone_ms,
                "acked_before_fault": t.acked_before_fault, "acked_total": t.acked_total,
                "lost": t.lost, "lost_tags": t.lost_tags,
                "old_primary_writes_accepted": t.old_primary_writes_accepted,
                "old_primary_write_attempts": t.old_primary_write_attempts,
                "rejoin_replicating_ms": t.rejoin_replicating_ms, "rejoin_caught_up_ms": t.rejoin_caught_up_ms,
                "atlas_ro_after_catchup_ms": t.atlas_ro_after_catchup_ms,
                "atlas_reads_after_catchup_ms": t.atlas_reads_after_catchup_ms,
                "atlas_checker_first_pass_ms": t.atlas_checker_first_pass_ms,
                "in_sync_without_up_rw": t.in_sync_without_up_rw, "in_sync_samples": t.in_sync_samples,
                "atlas_without_rw": t.atlas_without_rw, "rejoin_blocked": t.rejoin_blocked,
                "rejoin_blocked_because": t.rejoin_blocked_because,
                "promotion_ms": t.promotion_ms, "frozen_by": t.frozen_by,
                "promotion_held": t.promotion_held, "possibly_lost": t.possibly_lost,
                "commits_without_ack": t.commits_without_ack,
                "rejoin_automatic": t.rejoin_automatic, "extra_rows": t.extra_rows,
                "failure": t.failure,
            })
        })
        .collect();
    json!({"meta": meta, "summary": summary, "trials": raw})
}
