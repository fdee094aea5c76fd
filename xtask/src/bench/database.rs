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

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
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
    /// Polls of server2's Atlas that saw no rw backend (must stay 0).
    pub atlas_without_rw: usize,
    /// The returning old primary held transactions server2 lacks (written
    /// to its binlog, never acknowledged, when it died): its agent refused
    /// to rejoin, as it must. The errant set.
    pub rejoin_blocked: Option<String>,
    /// server2's own account of its promotion (`last_promotion.took_ms`).
    pub promotion_ms: Option<f64>,
    /// How it froze what it had received: `applier` or `io_thread`.
    pub frozen_by: Option<String>,
    pub failure: Option<String>,
}

pub fn run(index: usize, semisync: bool) -> Result<DbTrial> {
    let mut t = DbTrial {
        index,
        ..Default::default()
    };
    let st = match started(StackOptions {
        semisync,
        lab_base: LAB_BASE,
        down_handover_ms: None,
        test: "bench-database",
    }) {
        Ok(st) => st,
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            t.failure = Some(format!("stack start: {e:#}"));
            return Ok(t);
        }
    };
    let mut st = st;
    match trial(&mut st, &mut t) {
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

fn trial(st: &mut Stack, t: &mut DbTrial) -> Result<()> {
    let ns2 = st.lab.server_ns(S2).to_string();
    let bound = PHASE * 4;
    let app = Writer::start(&ns2, vip(), "a", WriterMode::APP, bound)?;
    let probe = Writer::start(&ns2, vip(), "p", WriterMode::PROBE, bound)?;
    // Both writing to server1 before the fault.
    app.wait_acks(50, PHASE)?;
    probe.wait_acks(20, PHASE)?;
    if app.acks().iter().any(|a| a.server_id != 1) {
        bail!("a write was acknowledged by server2 before the fault");
    }

    // Machine death of server1.
    let fault = Instant::now();
    st.lab.links_down(S1)?;
    st.kill_agent(S1)?;
    st.dbs[0].kill()?;
    t.acked_before_fault = app.acks().iter().filter(|a| a.at < fault).count()
        + probe.acks().iter().filter(|a| a.at < fault).count();

    let mut vips_at = None;
    let mut stale_gone_at = None;
    let end = fault + PHASE;
    while Instant::now() < end {
        ha_lab::check_interrupt()?;
        let now = Instant::now();
        if vips_at.is_none()
            && Link::ALL
                .iter()
                // A killed server1 keeps its addresses (its links are down).
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
        if vips_at.is_some()
            && stale_gone_at.is_some()
            && probe.first_ack_from(2, fault).is_some()
            && app.first_ack_from(2, fault).is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    t.vips_ms = vips_at.map(|v| ms(v - fault));
    t.writable_ms = probe.first_ack_from(2, fault).map(|a| ms(a.at - fault));
    t.app_writes_again_ms = app.first_ack_from(2, fault).map(|a| ms(a.at - fault));
    t.stale_ro_gone_ms = match (vips_at, stale_gone_at) {
        (Some(v), Some(g)) => Some(ms(g.saturating_duration_since(v))),
        _ => None,
    };
    // A few more writes on the new primary, then count.
    let more = Instant::now() + Duration::from_millis(200);
    while Instant::now() < more {
        ha_lab::check_interrupt()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Ok(s) = st.lab.agent_status(S2) {
        let p = &s["database"]["last_promotion"];
        t.promotion_ms = p["took_ms"].as_f64();
        t.frozen_by = p["frozen_by"].as_str().map(str::to_string);
    }
    let (app_acks, _) = app.finish()?;
    let (probe_acks, _) = probe.finish()?;
    t.acked_total = app_acks.len() + probe_acks.len();
    let lost = st.missing_writes(S2, &[("a", &app_acks), ("p", &probe_acks)])?;
    t.lost = Some(lost.len());
    t.lost_tags = lost.into_iter().take(20).collect();
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

    // server1 returns: links, agent (BACKUP), then its MariaDB.
    st.lab.links_up(S1)?;
    st.start_agent(S1)?;
    st.wait_state(S1, "BACKUP")?;
    st.dbs[0].spawn()?;
    let up = Instant::now();
    let target_rows = st.db(S2).count()?;
    let (mut accepted, mut attempts) = (0, 0);
    let (mut repl_at, mut caught_at, mut listed_at) = (None, None, None);
    let end = up + PHASE;
    while Instant::now() < end && listed_at.is_none() {
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
        if caught_at.is_some() && rw == [vip()] && ro == [inside(S1)] {
            listed_at = Some(Instant::now());
        }
        if repl_at.is_none() {
            if let Ok(s) = st.lab.agent_status(S1) {
                if let Some(g) = s["database"]["errant"]["gtids"].as_str() {
                    t.rejoin_blocked = Some(g.to_string());
                    break;
                }
            }
        }
    }
    t.old_primary_writes_accepted = Some(accepted);
    t.old_primary_write_attempts = attempts;
    t.rejoin_replicating_ms = repl_at.map(|r| ms(r - up));
    t.rejoin_caught_up_ms = caught_at.map(|c| ms(c - up));
    t.atlas_ro_after_catchup_ms = match (caught_at, listed_at) {
        (Some(c), Some(l)) => Some(ms(l - c)),
        _ => None,
    };
    if std::env::var_os("HA_BENCH_LOGS").is_some() {
        println!("{}", st.logs());
    }
    if listed_at.is_none() && t.rejoin_blocked.is_none() {
        bail!(
            "rejoin: replicating {:?}, caught up {:?}, listed ro never within {PHASE:?}; Atlas {}",
            t.rejoin_replicating_ms,
            t.rejoin_caught_up_ms,
            st.atlas(S2).describe()
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
            "{head}: VIPs {} ms, writable {} ms (app {} ms; promotion {} ms, frozen by the {}), stale ro gone +{} ms, lost {}/{} acked, old primary accepted {}/{} writes, replicating {} ms, caught up {} ms, Atlas ro +{} ms{}",
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
            t.rejoin_blocked
                .as_ref()
                .map_or(String::new(), |g| format!("; rejoin BLOCKED by errant {g}")),
        ),
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
            "polls of server2's Atlas with no rw backend",
            col(|t| Some(t.atlas_without_rw as f64)),
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
    let by_applier = trials
        .iter()
        .filter(|t| t.frozen_by.as_deref() == Some("applier"))
        .count();
    out.push_str(&format!(
        "| acknowledged writes lost, all trials | {lost} of {acked} | 0 |\n| rejoins blocked: the old primary held transactions server2 lacks | {blocked}/{n} | |\n| promotions frozen by the applier (no wait for the IO thread's stop) | {by_applier}/{n} | |\n| failed trials | {failed}/{n} | 0 |\n",
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
                "atlas_without_rw": t.atlas_without_rw, "rejoin_blocked": t.rejoin_blocked,
                "promotion_ms": t.promotion_ms, "frozen_by": t.frozen_by,
                "failure": t.failure,
            })
        })
        .collect();
    json!({"meta": meta, "summary": summary, "trials": raw})
}
