//! Soak: a settled pair left alone for a long time; nothing fails, so every
//! VIP that appears anywhere is a false takeover. Two variants:
//!
//! - **idle**: no load at all (idle vCPUs stall too). The bench itself only
//!   listens: the VIP watch sleeps on the kernel's address events (and
//!   reads the addresses every 100 ms in case of an overrun); no client
//!   pings, no capture.
//! - **hostile**: both cores saturated (`stress-ng --cpu 2`), 2% random loss
//!   on every server port, and a client pinging the outside VIP every 10 ms
//!   (the service it sees) while capturing ARP.
//!
//! Counted from the kernel's address events: every VIP address added on a
//! server (a 1 ms flap counts), holder changes, the time some VIP was on
//! both servers or on neither. For ha-agent, from both agents' status read
//! at the start and at the end of the window (before the pair stops): the
//! false alarms and their causes, the probe senders' slots, missed slots
//! and per-slot lateness of the best sender (histogram, p50/p99/max).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use ha_lab::{spawn_in, Lab, Pinger, Server};
use serde_json::{json, Value};

use super::agent_log::AgentLog;
use super::arp::{ArpCapture, ArpFrame};
use super::contender::{Contender, Pair};
use super::trial::ms;
use super::watch::{AddEvent, Holders, VipWatch, WatchOptions};
use super::Ctx;

/// Loss on every server port, per frame, in percent (hostile).
pub const LOSS_PERCENT: u32 = 2;
/// The client pings the outside VIP this often (hostile).
const PING_EVERY: Duration = Duration::from_millis(10);
/// The VIP watch reads the addresses if no event came for this long: the
/// events see every change; this only recovers from an overrun, and a
/// longer period keeps the bench from waking the idle CPUs.
const WATCH_RESYNC: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Idle,
    Hostile,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Idle, Variant::Hostile];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Idle => "idle",
            Variant::Hostile => "hostile",
        }
    }

    pub fn title(self) -> String {
        match self {
            Variant::Idle => "idle (no load)".into(),
            Variant::Hostile => format!("hostile (stress-ng --cpu 2, {LOSS_PERCENT}% loss)"),
        }
    }

    pub fn parse(s: &str) -> Result<Variant> {
        match Variant::ALL.into_iter().find(|v| v.name() == s.trim()) {
            Some(v) => Ok(v),
            None => anyhow::bail!("unknown soak variant {s:?} (known: idle, hostile)"),
        }
    }
}

/// What the agents logged about slots none of their senders could send in
/// time ("probe slots no sender could send in time", at most one line per
/// 20 ms tick). In the lab both servers share one VM: an episode on both at
/// once is the whole VM stalled, which no number of senders can cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stalls {
    pub server1: usize,
    pub server2: usize,
    /// server1's episodes with one of server2's within [`SAME_STALL`].
    pub both: usize,
}

/// Two agents' reports this close are the same stall (the reports come
/// from each agent's 20 ms tick).
const SAME_STALL: Duration = Duration::from_millis(25);
const MISSED_LINE: &str = "probe slots no sender could send in time";

/// Counts the episodes in `[from, to]` of both agents' logs.
pub fn stall_episodes(logs: &[AgentLog; 2], from: SystemTime, to: SystemTime) -> Stalls {
    let times = |log: &AgentLog| -> Vec<SystemTime> {
        log.lines
            .iter()
            .filter(|l| l.text.contains(MISSED_LINE))
            .filter_map(|l| l.wall)
            .filter(|&w| w >= from && w <= to)
            .collect()
    };
    let (a, b) = (times(&logs[0]), times(&logs[1]));
    let near = |x: SystemTime, y: SystemTime| {
        x.duration_since(y)
            .or_else(|_| y.duration_since(x))
            .is_ok_and(|d| d <= SAME_STALL)
    };
    Stalls {
        server1: a.len(),
        server2: b.len(),
        both: a.iter().filter(|&&x| b.iter().any(|&y| near(x, y))).count(),
    }
}

/// One agent's account of the soak window, from its status at the start
/// and at the end (counters are the difference).
#[derive(Debug, Clone, Default)]
pub struct AgentSoak {
    pub server: String,
    /// False alarms in the window, and in the agent's whole life.
    pub false_alarms: u64,
    pub false_alarms_total: u64,
    /// The status entries (`recent_false_alarms`) of the window's false alarms.
    pub causes: Vec<Value>,
    pub threads: u64,
    pub realtime_threads: u64,
    pub slots: u64,
    pub missed_slots: u64,
    /// Per-slot lateness of the best sender in the window: (bucket upper
    /// bound in us, None = above the last; count).
    pub lateness: Vec<(Option<u64>, u64)>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// The exact maximum if it was reached in the window (the status keeps
    /// a lifetime maximum); otherwise the window's highest bucket bound.
    pub max_us: Option<u64>,
    pub max_exact: bool,
    pub send_errors: u64,
    pub loop_stale: u64,
    /// Sender wakes in the window whose own work (sends, lease) took longer
    /// than a probe interval, and the longest such work in the agent's life
    /// (us): a thread held inside its system calls rather than before waking.
    pub long_work: u64,
    pub work_max_us: u64,
}

#[derive(Debug, Clone)]
pub struct SoakResult {
    pub contender: Contender,
    pub variant: Variant,
    pub secs: u64,
    /// Times a server that held no VIP came to hold one (a sync-group move of
    /// both VIPs counts once).
    pub moves: Option<usize>,
    /// VIP addresses that appeared on a server in the window (each VIP of a
    /// takeover and of its hand-back counts).
    pub vip_adds: Option<usize>,
    /// Total time some VIP was held by both servers.
    pub dual_ms: Option<f64>,
    /// Total time some VIP was held by nobody.
    pub orphan_ms: Option<f64>,
    pub pings_sent: Option<usize>,
    pub pings_answered: Option<usize>,
    pub longest_gap_ms: Option<f64>,
    /// Where the longest gap was, and the gratuitous ARPs the client saw
    /// just before and during it (who it was told to send to).
    pub gap_detail: Option<String>,
    /// The holder changes, "+12.3 s outside: server1+server2, ...".
    pub events: Vec<String>,
    /// Each VIP address added, "+12.345 s server2 198.51.100.100".
    pub adds: Vec<String>,
    /// ha-agent only: both agents' view (server1, server2).
    pub agents: Vec<AgentSoak>,
    /// ha-agent only: episodes of missed probe slots from the agents' logs.
    pub stalls: Option<Stalls>,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub failure: Option<String>,
    pub saved_logs: Option<String>,
}

pub fn run(ctx: &Ctx, c: Contender, secs: u64, variant: Variant) -> Result<SoakResult> {
    let mut r = SoakResult {
        contender: c,
        variant,
        secs,
        moves: None,
        vip_adds: None,
        dual_ms: None,
        orphan_ms: None,
        pings_sent: None,
        pings_answered: None,
        longest_gap_ms: None,
        gap_detail: None,
        events: Vec::new(),
        adds: Vec::new(),
        agents: Vec::new(),
        stalls: None,
        loadavg_start: String::new(),
        loadavg_end: String::new(),
        failure: None,
        saved_logs: None,
    };
    let lab = match ctx.new_lab() {
        Ok(l) => l,
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            r.failure = Some(format!("lab setup: {e:#}"));
            return Ok(r);
        }
    };
    if let Err(e) = soak(ctx, &lab, &mut r) {
        if ha_lab::interrupted() {
            return Err(e);
        }
        r.failure = Some(format!("{e:#}"));
    }
    // Always kept: the daemons' view of a false failover is the interesting part.
    let moved = r.vip_adds.is_some_and(|m| m > 0) || r.agents.iter().any(|a| a.false_alarms > 0);
    if r.failure.is_some() || moved || std::env::var_os("HA_BENCH_LOGS").is_some() {
        r.saved_logs = ctx.save_logs(&lab, &format!("{c}-soak-{}", variant.name()));
    }
    lab.close()?;
    Ok(r)
}

/// The client side of a hostile soak.
struct Client {
    arp: ArpCapture,
    pinger: Pinger,
}

fn soak(ctx: &Ctx, lab: &Lab, r: &mut SoakResult) -> Result<()> {
    let d = Duration::from_secs(r.secs);
    let bound = d + Duration::from_secs(120);
    let opts = WatchOptions {
        resync: WATCH_RESYNC,
        ..ctx.watch_options()
    };
    let watch = VipWatch::start_with(lab, bound, opts)?;
    let mut pair = Pair::start(lab, r.contender, &watch, &ctx.agent_overrides())?;
    let hostile = r.variant == Variant::Hostile;
    let client = if hostile {
        let (arp, pinger) = super::trial::start_client(lab, ctx.client_vip(), PING_EVERY, bound)?;
        Some(Client { arp, pinger })
    } else {
        None
    };
    // stress-ng runs in the switch namespace so the lab's teardown kills it
    // (and its workers) even if we cannot; --timeout bounds it as well.
    let mut stress = if hostile {
        let timeout = format!("{}s", r.secs + 60);
        let s = spawn_in(
            lab.switch_ns(),
            "stress-ng",
            &["--cpu", "2", "--timeout", &timeout, "--quiet"],
            &lab.dir().join("stress-ng.log"),
        )?;
        ha_lab::sleep(Duration::from_millis(500))?;
        lab.random_loss(LOSS_PERCENT)?;
        Some(s)
    } else {
        None
    };
    let agent = r.contender == Contender::HaAgent;
    let before = if agent { Some(statuses(lab)?) } else { None };
    r.loadavg_start = super::loadavg();
    let (t_start, wall_start) = (Instant::now(), SystemTime::now());
    let result = (|| -> Result<()> {
        while t_start.elapsed() < d {
            ha_lab::sleep(Duration::from_secs(1).min(d.saturating_sub(t_start.elapsed())))?;
            pair.check_alive()?;
        }
        Ok(())
    })();
    let t_end = Instant::now();
    let wall_end = SystemTime::now();
    r.loadavg_end = super::loadavg();
    if agent {
        let logs = Server::ALL.map(|s| AgentLog::read(&lab.agent_log_path(s)));
        r.stalls = Some(stall_episodes(&logs, wall_start, wall_end));
    }
    // Read before anything changes: the pair is still under the soak's conditions.
    if let Some(before) = &before {
        match statuses(lab) {
            Ok(after) => {
                r.agents = Server::ALL
                    .iter()
                    .zip(before.iter().zip(&after))
                    .map(|(s, (b, a))| agent_soak(*s, b, a))
                    .collect();
            }
            Err(e) => r.failure = Some(format!("reading the agents' status at the end: {e:#}")),
        }
    }
    if hostile {
        let _ = lab.heal();
    }
    if let Some(s) = stress.as_mut() {
        let _ = s.terminate(Duration::from_secs(5));
    }
    if let Some(c) = client {
        let log = c.pinger.finish()?;
        let (sent, answered) = log.answered_between(t_start, t_end);
        r.pings_sent = Some(sent);
        r.pings_answered = Some(answered);
        let gap = log.longest_gap(t_start, t_end);
        r.longest_gap_ms = Some(ms(gap.len()));
        r.gap_detail = Some(gap_detail(lab, &c.arp.finish(), gap, t_start, ctx));
    }
    let wlog = watch.finish_log();
    let s = summarize(&wlog.timeline, t_start, t_end);
    r.moves = Some(s.moves);
    r.dual_ms = Some(ms(s.dual));
    r.orphan_ms = Some(ms(s.orphan));
    r.events = s.events;
    let adds: Vec<&AddEvent> = wlog
        .adds
        .iter()
        .filter(|a| a.at >= t_start && a.at <= t_end)
        .collect();
    r.vip_adds = Some(adds.len());
    r.adds = adds
        .iter()
        .map(|a| {
            format!(
                "{:+.3} s {} {}",
                a.at.saturating_duration_since(t_start).as_secs_f64(),
                a.server,
                wlog.vips[a.vip]
            )
        })
        .collect();
    pair.shutdown();
    result
}

/// Both agents' status (server1, server2).
fn statuses(lab: &Lab) -> Result<[Value; 2]> {
    Ok([lab.agent_status(Server::S1)?, lab.agent_status(Server::S2)?])
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// The window's share of one agent's counters (`after` minus `before`).
pub fn agent_soak(server: Server, before: &Value, after: &Value) -> AgentSoak {
    let d = |path: &[&str]| u(after, path).saturating_sub(u(before, path));
    // The status's histogram: `counts` has one more entry than
    // `bounds_us` (the overflow bucket, no bound).
    let buckets = |v: &Value| -> Vec<(Option<u64>, u64)> {
        let h = &v["sender"]["lateness"];
        let bounds: Vec<u64> = h["bounds_us"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        h["counts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, n)| (bounds.get(i).copied(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let lateness: Vec<(Option<u64>, u64)> = b1
        .iter()
        .enumerate()
        .map(|(i, &(le, n))| (le, n.saturating_sub(b0.get(i).map_or(0, |x| x.1))))
        .collect();
    let false_alarms = d(&["false_alarms"]);
    let causes: Vec<Value> = after["recent_false_alarms"]
        .as_array()
        .map(|a| {
            let n = (false_alarms as usize).min(a.len());
            a[a.len() - n..].to_vec()
        })
        .unwrap_or_default();
    let (max0, max1) = (
        u(before, &["sender", "lateness_max_us"]),
        u(after, &["sender", "lateness_max_us"]),
    );
    let max_exact = max1 > max0;
    let max_us = if max_exact {
        Some(max1)
    } else {
        // The window's highest non-empty bucket; above the last bound the
        // lifetime maximum is the best bound we have.
        lateness
            .iter()
            .rev()
            .find(|(_, n)| *n > 0)
            .map(|(le, _)| le.unwrap_or(max1))
    };
    AgentSoak {
        server: server.name().into(),
        false_alarms,
        false_alarms_total: u(after, &["false_alarms"]),
        causes,
        threads: u(after, &["sender", "threads"]),
        realtime_threads: u(after, &["sender", "realtime_threads"]),
        slots: d(&["sender", "slots"]),
        missed_slots: d(&["sender", "missed_slots"]),
        p50_us: quantile(&lateness, 0.5),
        p99_us: quantile(&lateness, 0.99),
        lateness,
        max_us,
        max_exact,
        send_errors: d(&["sender", "send_errors"]),
        loop_stale: d(&["sender", "loop_stale"]),
        long_work: d(&["sender", "long_work"]),
        work_max_us: u(after, &["sender", "work_max_us"]),
    }
}

/// The upper bound of the bucket holding quantile `q` (None if empty or
/// above the last bound).
fn quantile(h: &[(Option<u64>, u64)], q: f64) -> Option<u64> {
    let total: u64 = h.iter().map(|x| x.1).sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for &(le, n) in h {
        seen += n;
        if seen >= want {
            return le;
        }
    }
    None
}

/// "gap +16.34..21.28 s; GARPs for the outside VIP: +16.340 s server2, ...":
/// the announcements from 100 ms before the gap to its end.
fn gap_detail(lab: &Lab, frames: &[ArpFrame], gap: ha_lab::Gap, t0: Instant, ctx: &Ctx) -> String {
    let vip = ctx.client_vip();
    let off = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let from = gap
        .start
        .checked_sub(Duration::from_millis(100))
        .unwrap_or(gap.start);
    let garps: Vec<String> = frames
        .iter()
        .filter(|f| f.at >= from && f.at <= gap.end)
        .filter(|f| f.is_gratuitous() && f.sender_ip == vip)
        .map(|f| {
            let who = lab
                .server_with_mac(&f.sender_mac)
                .map_or(f.sender_mac.clone(), |(s, _)| s.name().to_string());
            format!("+{:.3} s {who}", off(f.at))
        })
        .collect();
    format!(
        "gap +{:.3}..+{:.3} s; GARPs for {vip} seen by the client from 100 ms before it: {}",
        off(gap.start),
        off(gap.end),
        if garps.is_empty() {
            "none".to_string()
        } else {
            garps.join(", ")
        }
    )
}

/// One soak's agents' figures as JSON.
pub fn agent_json(a: &AgentSoak) -> Value {
    json!({
        "server": a.server,
        "false_alarms": a.false_alarms,
        "false_alarms_total": a.false_alarms_total,
        "false_alarm_causes": a.causes,
        "sender_threads": a.threads,
        "sender_realtime_threads": a.realtime_threads,
        "slots": a.slots,
        "missed_slots": a.missed_slots,
        "lateness_buckets": a.lateness.iter().map(|(le, n)| json!({"le_us": le, "count": n})).collect::<Vec<_>>(),
        "lateness_p50_us": a.p50_us,
        "lateness_p99_us": a.p99_us,
        "lateness_max_us": a.max_us,
        "lateness_max_exact": a.max_exact,
        "send_errors": a.send_errors,
        "loop_stale": a.loop_stale,
        "long_work": a.long_work,
        "work_max_us": a.work_max_us,
    })
}

/// One soak as JSON.
pub fn json_of(s: &SoakResult) -> Value {
    json!({
        "contender": s.contender.name(),
        "variant": s.variant.name(),
        "secs": s.secs,
        "vip_adds": s.vip_adds,
        "moves": s.moves,
        "dual_ms": s.dual_ms,
        "orphan_ms": s.orphan_ms,
        "pings_sent": s.pings_sent,
        "pings_answered": s.pings_answered,
        "longest_gap_ms": s.longest_gap_ms,
        "gap_detail": s.gap_detail,
        "events": s.events,
        "adds": s.adds,
        "agents": s.agents.iter().map(agent_json).collect::<Vec<_>>(),
        "stall_episodes": s.stalls.map(|x| json!({
            "server1": x.server1, "server2": x.server2, "both_at_once": x.both,
        })),
        "loadavg_start": s.loadavg_start,
        "loadavg_end": s.loadavg_end,
        "failure": s.failure,
        "saved_logs": s.saved_logs,
    })
}

/// "3 / 0" for server1 / server2 of an ha-agent soak, "-" otherwise.
fn per_agent(s: &SoakResult, f: impl Fn(&AgentSoak) -> String) -> String {
    per_agent_joined(s, " / ", f)
}

/// Each agent's cell, joined by `sep` ("; " when a cell holds a " / ").
fn per_agent_joined(s: &SoakResult, sep: &str, f: impl Fn(&AgentSoak) -> String) -> String {
    if s.agents.is_empty() {
        return "-".into();
    }
    s.agents.iter().map(f).collect::<Vec<_>>().join(sep)
}

fn opt_us(x: Option<u64>) -> String {
    x.map_or("-".into(), |v| v.to_string())
}

/// The rows of the soak table, one cell per soak.
pub fn rows(soaks: &[SoakResult]) -> Vec<(String, Vec<String>)> {
    let row = |title: &str, f: &dyn Fn(&SoakResult) -> String| {
        (
            title.to_string(),
            soaks
                .iter()
                .map(|s| match &s.failure {
                    Some(_) => format!("FAILED; {}", f(s)),
                    None => f(s),
                })
                .collect(),
        )
    };
    let num = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    let count = |x: Option<usize>| x.map_or("-".into(), |v| v.to_string());
    vec![
        row("VIP addresses added (netlink events)", &|s| {
            count(s.vip_adds)
        }),
        row("holder changes (a server that held none took some)", &|s| {
            count(s.moves)
        }),
        row("time with a VIP on both servers (ms)", &|s| num(s.dual_ms)),
        row("time with a VIP on neither (ms)", &|s| num(s.orphan_ms)),
        row(
            "client pings answered (every 10 ms)",
            &|s| match (s.pings_sent, s.pings_answered) {
                (Some(n), Some(a)) if n > 0 => {
                    format!("{:.2}% of {n}", 100.0 * a as f64 / n as f64)
                }
                _ => "-".into(),
            },
        ),
        row("longest client reply gap (ms)", &|s| num(s.longest_gap_ms)),
        row(
            "ha-agent false alarms in the soak (server1 / server2)",
            &|s| per_agent(s, |a| a.false_alarms.to_string()),
        ),
        row(
            "ha-agent false alarms since start (server1 / server2)",
            &|s| per_agent(s, |a| a.false_alarms_total.to_string()),
        ),
        row("probe slots sent / missed (server1; server2)", &|s| {
            per_agent_joined(s, "; ", |a| format!("{} / {}", a.slots, a.missed_slots))
        }),
        row(
            "best sender's lateness p50 / p99 / max (us; server1; server2)",
            &|s| {
                per_agent_joined(s, "; ", |a| {
                    let max = match (a.max_us, a.max_exact) {
                        (Some(m), true) => m.to_string(),
                        (Some(m), false) => format!("<={m}"),
                        (None, _) => "-".into(),
                    };
                    format!("<={} / <={} / {max}", opt_us(a.p50_us), opt_us(a.p99_us))
                })
            },
        ),
        row(
            "sender wakes held in their own work > 1 interval / longest ever (us; server1; server2)",
            &|s| per_agent_joined(s, "; ", |a| format!("{} / {}", a.long_work, a.work_max_us)),
        ),
        row(
            "missed-slot episodes in the logs (server1 / server2 / both at once)",
            &|s| {
                s.stalls.map_or("-".into(), |x| {
                    format!("{} / {} / {}", x.server1, x.server2, x.both)
                })
            },
        ),
        row("probe send errors (server1 / server2)", &|s| {
            per_agent(s, |a| a.send_errors.to_string())
        }),
        row("sender threads (realtime) (server1 / server2)", &|s| {
            per_agent(s, |a| format!("{} ({})", a.threads, a.realtime_threads))
        }),
        row("load average at start -> end", &|s| {
            format!("{} -> {}", s.loadavg_start, s.loadavg_end)
        }),
    ]
}

/// The soak table: one column per soak ("idle / ha-agent", ...).
pub fn table(soaks: &[SoakResult]) -> String {
    let mut header = vec!["soak metric".to_string()];
    header.extend(
        soaks
            .iter()
            .map(|s| format!("{} {} s / {}", s.variant.name(), s.secs, s.contender)),
    );
    super::table::markdown(&header, &rows(soaks))
}

/// What a soak found worth a look: each false alarm's cause, each VIP
/// added, the histograms.
pub fn details(s: &SoakResult) -> String {
    let mut out = String::new();
    let head = format!("{} / {}", s.variant.name(), s.contender);
    for a in &s.agents {
        for c in &a.causes {
            out.push_str(&format!(
                "{head}: {} false alarm at {}: silence {} ms, held {} ms, peer lateness {} ms, own lateness {} ms\n",
                a.server,
                c["time"].as_str().unwrap_or("?"),
                c["silence_ms"],
                c["held_ms"],
                c["peer_lateness_ms"],
                c["own_lateness_ms"]
            ));
        }
        if a.false_alarms as usize > a.causes.len() {
            out.push_str(&format!(
                "{head}: {}: {} more false alarm(s) than the status keeps\n",
                a.server,
                a.false_alarms as usize - a.causes.len()
            ));
        }
        let h: Vec<String> = a
            .lateness
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(le, n)| match le {
                Some(le) => format!("<={le}us:{n}"),
                None => format!("more:{n}"),
            })
            .collect();
        out.push_str(&format!(
            "{head}: {} best sender lateness histogram in the soak: {}\n",
            a.server,
            h.join(" ")
        ));
    }
    for e in s.adds.iter().take(20) {
        out.push_str(&format!("{head}: VIP added {e}\n"));
    }
    if s.adds.len() > 20 {
        out.push_str(&format!(
            "{head}: ... {} more VIP(s) added\n",
            s.adds.len() - 20
        ));
    }
    if let Some(l) = &s.saved_logs {
        out.push_str(&format!("{head}: logs kept in {l}\n"));
    }
    out
}

pub struct Summary {
    pub moves: usize,
    pub dual: Duration,
    pub orphan: Duration,
    pub events: Vec<String>,
}

/// Counts moves and integrates dual/orphan time over `[from, to]`.
pub fn summarize(timeline: &[(Instant, Holders)], from: Instant, to: Instant) -> Summary {
    let mut state = timeline
        .iter()
        .rev()
        .find(|(t, _)| *t < from)
        .map(|(_, h)| *h)
        .unwrap_or_default();
    let mut since = from;
    let mut s = Summary {
        moves: 0,
        dual: Duration::ZERO,
        orphan: Duration::ZERO,
        events: Vec::new(),
    };
    for &(t, h) in timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
        let span = t.saturating_duration_since(since);
        if state.dual() {
            s.dual += span;
        }
        if state.orphan() {
            s.orphan += span;
        }
        s.moves += Server::ALL
            .iter()
            .filter(|&&x| !state.holds_any(x) && h.holds_any(x))
            .count();
        s.events.push(format!(
            "{:+.3} s {}",
            t.saturating_duration_since(from).as_secs_f64(),
            h.describe()
        ));
        state = h;
        since = t;
    }
    let span = to.saturating_duration_since(since);
    if state.dual() {
        s.dual += span;
    }
    if state.orphan() {
        s.orphan += span;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_on_both_servers_at_once_are_counted() {
        let line = |t: &str| {
            format!("{t}  WARN agent{{node=x}}: {MISSED_LINE} (every sender thread was late): the peer saw silence slots=3 worst_ms=9.1\n")
        };
        let s1 = AgentLog::parse(
            &(line("2026-12-02T06:23:35.347048Z") + &line("2026-12-02T06:23:40.000000Z")),
        );
        let s2 = AgentLog::parse(
            &(line("2026-12-02T06:23:35.347832Z") + &line("2026-12-02T06:23:50.000000Z")),
        );
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let st = stall_episodes(
            &[s1, s2],
            t("2026-12-02T06:23:30Z"),
            t("2026-12-02T06:23:45Z"),
        );
        assert_eq!(
            st,
            Stalls {
                server1: 2,
                server2: 1,
                both: 1
            }
        );
    }

    #[test]
    fn the_window_is_the_difference_of_two_statuses() {
        let status = |counts: [u64; 3], max: u64, fa: u64| {
            json!({
                "false_alarms": fa,
                "recent_false_alarms": (0..fa).map(|i| json!({"epoch": i})).collect::<Vec<_>>(),
                "sender": {
                    "threads": 2, "realtime_threads": 2, "slots": 1000 * fa + 10, "missed_slots": fa,
                    "lateness_max_us": max, "send_errors": 0, "loop_stale": 0,
                    "long_work": 5 * fa, "work_max_us": 400 * fa,
                    "lateness": {"bounds_us": [25, 50], "counts": counts, "sum_us": 0},
                },
            })
        };
        let a = agent_soak(
            Server::S1,
            &status([10, 0, 1], 90_000, 1),
            &status([108, 2, 1], 90_000, 3),
        );
        assert_eq!(a.false_alarms, 2);
        assert_eq!(a.false_alarms_total, 3);
        assert_eq!(a.causes, vec![json!({"epoch": 1}), json!({"epoch": 2})]);
        assert_eq!(a.lateness, vec![(Some(25), 98), (Some(50), 2), (None, 0)]);
        assert_eq!((a.p50_us, a.p99_us), (Some(25), Some(50)));
        // The lifetime maximum came before the window: only its bucket is known.
        assert_eq!((a.max_us, a.max_exact), (Some(50), false));
        assert_eq!((a.slots, a.missed_slots), (2000, 2));
        // Work: wakes held in the window, the longest in the agent's life.
        assert_eq!((a.long_work, a.work_max_us), (10, 1200));
        let b = agent_soak(
            Server::S1,
            &status([1, 0, 0], 20, 0),
            &status([1, 0, 1], 70_000, 0),
        );
        assert_eq!(
            (b.max_us, b.max_exact, b.p99_us),
            (Some(70_000), true, None)
        );
    }

    #[test]
    fn a_sync_group_move_counts_once() {
        let t0 = Instant::now();
        let at = |n| t0 + Duration::from_millis(n);
        let mut s1 = Holders::default();
        s1.set(Server::S1, 0, true);
        s1.set(Server::S1, 1, true);
        let mut both = s1;
        both.set(Server::S2, 0, true);
        both.set(Server::S2, 1, true);
        let mut s2 = Holders::default();
        s2.set(Server::S2, 0, true);
        s2.set(Server::S2, 1, true);
        let tl = vec![(at(0), s1), (at(100), both), (at(150), s2), (at(300), both)];
        let s = summarize(&tl, at(50), at(400));
        assert_eq!(s.moves, 2); // server2 at 100, server1 at 300
        assert_eq!(s.dual, Duration::from_millis(50 + 100));
        assert_eq!(s.orphan, Duration::ZERO);
        assert_eq!(s.events.len(), 3);
    }
}
