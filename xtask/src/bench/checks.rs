//! Behaviour checks: faults where the right answer is a particular outcome
//! (often "nothing moves") rather than a time. Each runs on a fresh lab
//! with a settled pair, server1 holding the VIPs.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ha_lab::{Lab, Link, Server};

use super::contender::{Contender, Pair};
use super::trial::{ms, MOVE_BOUND};
use super::watch::{Holders, VipWatch};
use super::Ctx;

/// How long "nothing may move" is watched: more than twice the seed
/// keepalived's master-down interval (3.6 s).
const STILL: Duration = Duration::from_secs(8);
/// "No flapping": the final state must last this long.
const STABLE: Duration = Duration::from_secs(3);
const CHECK_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    InsideCut,
    OutsideUplink,
    ReturnAfterDeath,
    PartitionHeal,
}

impl Check {
    pub const ALL: [Check; 4] = [
        Check::InsideCut,
        Check::OutsideUplink,
        Check::ReturnAfterDeath,
        Check::PartitionHeal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::InsideCut => "inside_cut",
            Check::OutsideUplink => "outside_uplink_drop",
            Check::ReturnAfterDeath => "return_after_death",
            Check::PartitionHeal => "partition_heal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Check::InsideCut => "inside link cut between servers: no move",
            Check::OutsideUplink => "server1 outside uplink dropped: VIPs to server2",
            Check::ReturnAfterDeath => "server1 back after death: no move back",
            Check::PartitionHeal => "partition healed: one holder, no flapping 3 s",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub contender: Contender,
    pub check: Check,
    pub passed: bool,
    /// What happened, in one line.
    pub happened: String,
    /// A few words for the table cell, after PASS/FAIL.
    pub short: String,
    /// Holder changes, ms from the fault.
    pub events: Vec<String>,
    pub saved_logs: Option<String>,
}

pub fn run(ctx: &Ctx, c: Contender, check: Check) -> Result<CheckResult> {
    let mut r = CheckResult {
        contender: c,
        check,
        passed: false,
        happened: String::new(),
        short: String::new(),
        events: Vec::new(),
        saved_logs: None,
    };
    let lab = match ctx.new_lab() {
        Ok(l) => l,
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            r.happened = format!("lab setup failed: {e:#}");
            r.short = "error".into();
            return Ok(r);
        }
    };
    match run_on(ctx, &lab, &mut r) {
        Ok(()) => {}
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            r.passed = false;
            r.happened = format!("{}error: {e:#}", with_sep(&r.happened));
            r.short = "error".into();
        }
    }
    // HA_BENCH_LOGS=1 keeps the daemons' logs of passed checks too.
    if !r.passed || std::env::var_os("HA_BENCH_LOGS").is_some() {
        r.saved_logs = ctx.save_logs(&lab, &format!("{c}-{}", check.name()));
    }
    lab.close()?;
    Ok(r)
}

fn with_sep(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("{s}; ")
    }
}

fn run_on(ctx: &Ctx, lab: &Lab, r: &mut CheckResult) -> Result<()> {
    let watch = VipWatch::start(lab, CHECK_MAX)?;
    let mut pair = Pair::start(lab, r.contender, &watch, &ctx.agent_overrides())?;
    let t0 = Instant::now();
    let result = match r.check {
        Check::InsideCut => inside_cut(lab, &watch, &mut pair, t0, r),
        Check::OutsideUplink => outside_uplink(lab, &watch, &mut pair, t0, r),
        Check::ReturnAfterDeath => return_after_death(lab, &watch, &mut pair, t0, r),
        Check::PartitionHeal => partition_heal(lab, &watch, &mut pair, t0, r),
    };
    r.events = describe_events(&watch.timeline(), t0);
    pair.shutdown();
    result
}

/// Holder changes from `t0` on, "+3612.0 ms outside: server1+server2, inside: ...".
fn describe_events(tl: &[(Instant, Holders)], t0: Instant) -> Vec<String> {
    tl.iter()
        .filter(|(t, _)| *t >= t0)
        .map(|(t, h)| {
            format!(
                "{:+.1} ms {}",
                ms(t.saturating_duration_since(t0)),
                h.describe()
            )
        })
        .collect()
}

/// Watches for `d`; returns whether `cond` held at every poll, and the
/// first state (and its offset from `t0`) where it did not.
fn holds_throughout(
    watch: &VipWatch,
    pair: &mut Pair,
    d: Duration,
    t0: Instant,
    cond: impl Fn(&Holders) -> bool,
) -> Result<Option<(f64, Holders)>> {
    let from = Instant::now();
    let end = from + d;
    while Instant::now() < end {
        ha_lab::sleep(Duration::from_millis(20))?;
        pair.check_alive()?;
    }
    // The timeline has every change; look there, not at 20 ms samples.
    let tl = watch.timeline();
    let state_at_from = tl.iter().rev().find(|(t, _)| *t < from).map(|(_, h)| *h);
    if let Some(h) = state_at_from.filter(|h| !cond(h)) {
        return Ok(Some((ms(from.saturating_duration_since(t0)), h)));
    }
    Ok(tl
        .iter()
        .find(|(t, h)| *t >= from && *t <= end && !cond(h))
        .map(|(t, h)| (ms(t.saturating_duration_since(t0)), *h)))
}

/// Waits (at most `bound`) until `cond` has held continuously for `stable`;
/// returns when it started holding.
fn wait_stable(
    watch: &VipWatch,
    pair: &mut Pair,
    bound: Duration,
    stable: Duration,
    cond: impl Fn(&Holders) -> bool,
) -> Result<Option<Instant>> {
    let end = Instant::now() + bound + stable;
    let mut since: Option<Instant> = None;
    while Instant::now() < end {
        let now = Instant::now();
        if cond(&watch.current()) {
            let s = *since.get_or_insert(now);
            if now - s >= stable {
                return Ok(Some(s));
            }
        } else {
            since = None;
        }
        pair.check_alive()?;
        ha_lab::sleep(Duration::from_millis(1))?;
    }
    Ok(None)
}

fn inside_cut(
    lab: &Lab,
    watch: &VipWatch,
    pair: &mut Pair,
    t0: Instant,
    r: &mut CheckResult,
) -> Result<()> {
    lab.cut_between_servers(Link::Inside)?;
    match holds_throughout(watch, pair, STILL, t0, |h| h.sole(Server::S1))? {
        None => {
            r.passed = true;
            r.happened = format!("server1 kept both VIPs, alone, for {STILL:?}");
        }
        Some((at, h)) => {
            r.short = format!("moved at +{at:.0} ms");
            r.happened = format!(
                "at +{at:.0} ms: {}; at the end: {}",
                h.describe(),
                watch.current().describe()
            );
        }
    }
    Ok(())
}

fn outside_uplink(
    lab: &Lab,
    watch: &VipWatch,
    pair: &mut Pair,
    t0: Instant,
    r: &mut CheckResult,
) -> Result<()> {
    lab.drop_uplink(Server::S1, Link::Outside)?;
    let stable = wait_stable(watch, pair, MOVE_BOUND, STABLE, |h| h.sole(Server::S2))?;
    let took = watch
        .first_at_or_after(t0, |h| h.holds_all(Server::S2))
        .map(|t| ms(t - t0));
    match stable {
        Some(s) => {
            r.passed = true;
            r.short = format!("+{:.0} ms", took.unwrap_or(f64::NAN));
            r.happened = format!(
                "server2 held both VIPs at +{:.0} ms, alone from +{:.0} ms, stable {STABLE:?}",
                took.unwrap_or(f64::NAN),
                ms(s - t0)
            );
        }
        None => {
            r.short = match took {
                None => "nothing moved".into(),
                Some(_) => "no stable move".into(),
            };
            r.happened = format!(
                "no stable single holder server2 within {MOVE_BOUND:?}; server2 first held both at {}; now: {}",
                took.map_or("never".into(), |t| format!("+{t:.0} ms")),
                watch.current().describe()
            );
        }
    }
    Ok(())
}

/// Removes the VIPs from a dead server's interfaces and flushes its ARP
/// cache, as its reboot would (the kernel keeps addresses of a killed
/// daemon; a rebooted machine does not).
fn simulate_reboot(lab: &Lab, s: Server) -> Result<()> {
    let ns = lab.server_ns(s);
    for link in Link::ALL {
        let held: Vec<Ipv4Addr> = lab
            .addresses(ns, link.ifname())?
            .into_iter()
            .map(|c| c.addr)
            .filter(|&a| a == link.vip())
            .collect();
        for vip in held {
            let a = format!("{vip}/{}", ha_lab::PREFIX_LEN);
            lab.exec_ok(ns, &["ip", "addr", "del", &a, "dev", link.ifname()])?;
        }
    }
    lab.exec_ok(ns, &["ip", "neigh", "flush", "all"])?;
    Ok(())
}

fn return_after_death(
    lab: &Lab,
    watch: &VipWatch,
    pair: &mut Pair,
    t0: Instant,
    r: &mut CheckResult,
) -> Result<()> {
    lab.links_down(Server::S1)?;
    pair.kill(Server::S1)?;
    if !watch.wait_for(MOVE_BOUND, |h| h.holds_all(Server::S2))? {
        bail!(
            "server2 never took the VIPs after server1's death: {}",
            watch.current().describe()
        );
    }
    let took = watch
        .first_at_or_after(t0, |h| h.holds_all(Server::S2))
        .map_or(f64::NAN, |t| ms(t - t0));
    simulate_reboot(lab, Server::S1)?;
    ha_lab::sleep(Duration::from_secs(1))?;
    lab.links_up(Server::S1)?;
    pair.restart(lab, Server::S1)?;
    let t_back = Instant::now();
    let bad = holds_throughout(watch, pair, STILL, t0, |h| {
        h.holds_all(Server::S2) && !h.holds_any(Server::S1)
    })?;
    match bad {
        None => {
            r.passed = true;
            r.happened = format!(
                "server2 took over at +{took:.0} ms; server1 restarted at +{:.0} ms and took nothing for {STILL:?}",
                ms(t_back - t0)
            );
        }
        Some((at, h)) => {
            r.short = format!("moved at +{at:.0} ms");
            r.happened = format!(
                "server2 took over at +{took:.0} ms; server1 restarted at +{:.0} ms; at +{at:.0} ms: {}; at the end: {}",
                ms(t_back - t0),
                h.describe(),
                watch.current().describe()
            );
        }
    }
    Ok(())
}

fn partition_heal(
    lab: &Lab,
    watch: &VipWatch,
    pair: &mut Pair,
    t0: Instant,
    r: &mut CheckResult,
) -> Result<()> {
    lab.cut_between_servers(Link::Outside)?;
    lab.cut_between_servers(Link::Inside)?;
    let s2_took = watch.wait_for(MOVE_BOUND, |h| h.holds_all(Server::S2))?;
    let during = if s2_took {
        // Let the partition last a moment after the takeover, as a real one would.
        ha_lab::sleep(Duration::from_secs(1))?;
        let took = watch
            .first_at_or_after(t0, |h| h.holds_all(Server::S2))
            .map_or(f64::NAN, |t| ms(t - t0));
        format!(
            "partitioned: server2 took both VIPs at +{took:.0} ms ({})",
            watch.current().describe()
        )
    } else {
        format!(
            "partitioned: server2 did not take both VIPs within {MOVE_BOUND:?} ({})",
            watch.current().describe()
        )
    };
    let t_heal = Instant::now();
    lab.heal()?;
    let one = |h: &Holders| h.sole(Server::S1) || h.sole(Server::S2);
    match wait_stable(watch, pair, MOVE_BOUND, STABLE, one)? {
        Some(s) => {
            let h = watch.current();
            let who = if h.sole(Server::S1) {
                "server1"
            } else {
                "server2"
            };
            r.passed = true;
            r.short = format!("{who} holds");
            r.happened = format!(
                "{during}; healed at +{:.0} ms; single holder {who} from +{:.0} ms, stable {STABLE:?}",
                ms(t_heal - t0),
                ms(s - t0)
            );
        }
        None => {
            r.short = "no single holder".into();
            r.happened = format!(
                "{during}; healed at +{:.0} ms; no stable single holder within {MOVE_BOUND:?}; now: {}",
                ms(t_heal - t0),
                watch.current().describe()
            );
        }
    }
    Ok(())
}
