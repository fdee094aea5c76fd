//! One failover trial: a fresh lab, a settled pair with server1 holding the
//! VIPs, a client pinging the outside VIP (with a VIP group: the group's
//! last outside VIP) and capturing ARP, then one fault on server1, timed
//! from the instant before the fault command with the monotonic clock.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ha_lab::{Lab, Link, Pinger, Server, CLIENT_IP};

use super::agent_log::AgentLog;
use super::arp::{first_garp, ArpCapture};
use super::contender::{Contender, Pair};
use super::watch::VipWatch;
use super::Ctx;

/// A trial whose VIPs have not moved (or whose client is not answered by
/// server2) this long after the fault has failed.
pub const MOVE_BOUND: Duration = Duration::from_secs(15);
/// Watched after the client is answered again: the tail of the gap, late GARPs.
const TAIL: Duration = Duration::from_millis(500);
/// Upper bound on one trial's helpers (watch, capture, pinger threads).
const TRIAL_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Both of server1's switch ports down: carrier lost (death, cables pulled).
    LinksDown,
    /// Every frame to or from server1 dropped at the switch, carrier up.
    Isolate,
    /// server1's daemon frozen by SIGSTOP (every process of it).
    Hang,
    /// server1's outside cable unplugged: its outside switch port down
    /// (carrier lost on eth0 only), the inside link untouched.
    OutsideCarrier,
    /// server1 dies without a word: its daemon frozen (SIGSTOP, one
    /// system call: the fault instant is exact), then both its ports down.
    /// Unlike [`Fault::LinksDown`], whose two ports go down one after the
    /// other (milliseconds apart under load), server1's daemon cannot see
    /// the first carrier loss and hand over through the port still up.
    /// Not in the default list.
    Death,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::LinksDown,
        Fault::Isolate,
        Fault::Hang,
        Fault::OutsideCarrier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LinksDown => "links_down",
            Fault::Isolate => "isolate",
            Fault::Hang => "hang",
            Fault::OutsideCarrier => "outside_carrier",
            Fault::Death => "death",
        }
    }

    /// For the table.
    pub fn title(self) -> &'static str {
        match self {
            Fault::LinksDown => "server1 links down",
            Fault::Isolate => "server1 isolated",
            Fault::Hang => "server1 daemon SIGSTOP",
            Fault::OutsideCarrier => "server1 outside cable unplugged",
            Fault::Death => "server1 dies (daemon frozen, then links down)",
        }
    }

    /// Every fault a command line may name (the default list and the opt-in ones).
    pub const KNOWN: [Fault; 5] = [
        Fault::LinksDown,
        Fault::Isolate,
        Fault::Hang,
        Fault::OutsideCarrier,
        Fault::Death,
    ];

    pub fn parse(s: &str) -> Result<Fault> {
        match Fault::KNOWN.into_iter().find(|f| f.name() == s.trim()) {
            Some(f) => Ok(f),
            None => {
                let names: Vec<&str> = Fault::KNOWN.iter().map(|f| f.name()).collect();
                bail!("unknown fault {s:?} (known: {})", names.join(", "))
            }
        }
    }
}

/// What one trial measured (ms from the fault instant), and why it failed.
#[derive(Debug, Clone)]
pub struct TrialResult {
    pub contender: Contender,
    pub fault: Fault,
    pub index: usize,
    /// How long the fault command itself took.
    pub fault_cmd_ms: Option<f64>,
    /// Every VIP present on server2.
    pub vips_ms: Option<f64>,
    /// The first VIP present on server2.
    pub first_vip_ms: Option<f64>,
    /// How many VIPs the group has.
    pub vip_count: usize,
    /// server2's agent's own account of its VIP add ("VIPs added ... took_us").
    pub agent_add_us: Option<f64>,
    /// Why server2's agent took over, from its log (the reason of its last
    /// change to MASTER): "peer silent on all links" is the detection path.
    pub takeover_reason: Option<String>,
    /// First gratuitous ARP for the client's VIP from server2's MAC, seen by the client.
    pub garp_ms: Option<f64>,
    /// First echo reply from server2's MAC (capture time) to a request sent after the fault.
    pub reply_ms: Option<f64>,
    /// Longest interval without any reply, from the last reply before the fault.
    pub gap_ms: Option<f64>,
    /// The client's outage around the takeover: from the last reply before
    /// server2's first to that first (a stall of the client elsewhere in
    /// the trial, which the longest gap also catches, does not count).
    pub outage_ms: Option<f64>,
    /// Where that gap started (ms from the fault; negative: before it), and
    /// how many requests the client sent during it (none: the client
    /// itself stalled, not the service).
    pub gap_start_ms: Option<f64>,
    pub gap_requests: Option<usize>,
    /// server1 held no VIP any more (self-fencing or release), if it happened.
    pub s1_released_ms: Option<f64>,
    /// Set when the trial failed (counted and reported, never dropped).
    pub failure: Option<String>,
    /// Where the lab's logs were saved (failed trials).
    pub saved_logs: Option<String>,
    /// Wall time of the whole trial (lab, start-up, fault, teardown).
    pub duration_s: f64,
    /// /proc/loadavg when the trial started: how busy the machine was.
    pub loadavg: String,
}

/// What ha-agent logs when it takes over because it detected the silence
/// (not because the old holder said it let go).
pub const DETECTION_REASON: &str = "peer silent on all links";

impl TrialResult {
    /// Every field, for the JSON reports.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "contender": self.contender.name(),
            "fault": self.fault.name(),
            "index": self.index,
            "fault_cmd_ms": self.fault_cmd_ms,
            "vips_ms": self.vips_ms,
            "first_vip_ms": self.first_vip_ms,
            "vip_count": self.vip_count,
            "agent_add_us": self.agent_add_us,
            "takeover_reason": self.takeover_reason,
            "garp_ms": self.garp_ms,
            "reply_ms": self.reply_ms,
            "gap_ms": self.gap_ms,
            "outage_ms": self.outage_ms,
            "gap_start_ms": self.gap_start_ms,
            "gap_requests": self.gap_requests,
            "s1_released_ms": self.s1_released_ms,
            "failed": self.failure.is_some(),
            "failure": self.failure,
            "saved_logs": self.saved_logs,
            "duration_s": self.duration_s,
            "loadavg": self.loadavg,
        })
    }

    /// ha-agent only: server2 took over by detecting the silence (true) or
    /// because server1 handed over first (false: it saw one port lose
    /// carrier and said so on the other before that went down too).
    pub fn by_detection(&self) -> Option<bool> {
        self.takeover_reason
            .as_deref()
            .map(|r| r == DETECTION_REASON)
    }
}

/// "12/20 by detection" over the successful trials that know it, or "-".
pub fn detection_share<'a>(trials: impl Iterator<Item = &'a TrialResult>) -> String {
    let known: Vec<bool> = trials
        .filter(|t| t.failure.is_none())
        .filter_map(|t| t.by_detection())
        .collect();
    if known.is_empty() {
        return "-".into();
    }
    let n = known.iter().filter(|&&d| d).count();
    format!("{n}/{} (others: hand-over)", known.len())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn since(t: Instant, t0: Instant) -> f64 {
    ms(t.saturating_duration_since(t0))
}

/// Runs one trial on a fresh lab. Only an interruption (or a lab that
/// cannot be removed) is an error; anything else is a failed trial.
pub fn run(ctx: &Ctx, c: Contender, fault: Fault, index: usize) -> Result<TrialResult> {
    let mut r = TrialResult {
        contender: c,
        fault,
        index,
        fault_cmd_ms: None,
        vips_ms: None,
        first_vip_ms: None,
        vip_count: ctx.watch_options().vips.len(),
        agent_add_us: None,
        takeover_reason: None,
        garp_ms: None,
        reply_ms: None,
        gap_ms: None,
        outage_ms: None,
        gap_start_ms: None,
        gap_requests: None,
        s1_released_ms: None,
        failure: None,
        saved_logs: None,
        duration_s: 0.0,
        loadavg: super::loadavg(),
    };
    let started = Instant::now();
    let lab = match ctx.new_lab() {
        Ok(l) => l,
        Err(e) if ha_lab::interrupted() => return Err(e),
        Err(e) => {
            r.failure = Some(format!("lab setup: {e:#}"));
            return Ok(r);
        }
    };
    if let Err(e) = measure(ctx, &lab, &mut r) {
        if ha_lab::interrupted() {
            return Err(e);
        }
        r.failure = Some(format!("{e:#}"));
    }
    if r.failure.is_some() || ctx.all_logs {
        r.saved_logs = ctx.save_logs(&lab, &format!("{c}-{}-{index}", fault.name()));
    }
    lab.close()?;
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}

fn measure(ctx: &Ctx, lab: &Lab, r: &mut TrialResult) -> Result<()> {
    let watch = VipWatch::start_with(lab, TRIAL_MAX, ctx.watch_options())?;
    let mut pair = Pair::start(lab, r.contender, &watch, &ctx.agent_overrides())?;
    let mac2 = lab.mac(Server::S2, Link::Outside).to_string();
    let target = ctx.client_vip();
    let (arp, pinger) = start_client(lab, target, ctx.ping_interval, TRIAL_MAX)?;
    // A steady baseline before the fault.
    ha_lab::sleep(Duration::from_millis(300))?;
    pair.check_alive()?;
    if !watch.current().sole(Server::S1) {
        bail!(
            "before the fault server1 is not the sole holder: {}",
            watch.current().describe()
        );
    }

    let t0 = Instant::now();
    let injected = inject(lab, &mut pair, r.fault);
    r.fault_cmd_ms = Some(since(Instant::now(), t0));
    injected.map_err(|e| e.context("the fault did not happen"))?;
    verify(lab, &mut pair, r.fault).map_err(|e| e.context("the fault did not happen"))?;

    let deadline = t0 + MOVE_BOUND;
    let moved = watch.wait_for(deadline.saturating_duration_since(Instant::now()), |h| {
        h.holds_all(Server::S2)
    })?;
    r.vips_ms = watch
        .first_at_or_after(t0, |h| h.holds_all(Server::S2))
        .map(|t| since(t, t0));
    r.first_vip_ms = watch
        .first_at_or_after(t0, |h| h.holds_any(Server::S2))
        .map(|t| since(t, t0));
    if !moved {
        bail!(
            "the VIPs never moved: {MOVE_BOUND:?} after the fault: {}",
            watch.current().describe()
        );
    }
    let answered = ha_lab::wait_until(
        deadline.saturating_duration_since(Instant::now()),
        "a reply from server2",
        || pinger.log().first_reply_from_after(&mac2, t0).is_some(),
    );
    ha_lab::sleep(TAIL)?;
    let end = Instant::now();
    let log = pinger.finish()?;
    r.reply_ms = log
        .first_reply_from_after(&mac2, t0)
        .map(|x| since(x.received, t0));
    if let Some(first) = log.first_reply_from_after(&mac2, t0) {
        let before = log
            .replies
            .iter()
            .map(|x| x.received)
            .filter(|&t| t < first.received)
            .max()
            .unwrap_or(t0);
        r.outage_ms = Some(ms(first.received.saturating_duration_since(before)));
    }
    let gap = log.longest_gap(t0, end);
    r.gap_ms = Some(ms(gap.len()));
    r.gap_start_ms = Some(if gap.start >= t0 {
        since(gap.start, t0)
    } else {
        -ms(t0 - gap.start)
    });
    r.gap_requests = Some(
        log.sent
            .iter()
            .filter(|&&t| t > gap.start && t < gap.end)
            .count(),
    );
    let frames = arp.finish();
    r.garp_ms = first_garp(&frames, target, &mac2, t0).map(|f| since(f.at, t0));
    r.s1_released_ms = watch
        .first_at_or_after(t0, |h| !h.holds_any(Server::S1))
        .map(|t| since(t, t0));
    if answered.is_err() {
        let neigh = lab.client_neighbour_mac(target).ok().flatten();
        bail!(
            "the VIPs moved after {:.1} ms but the client ({CLIENT_IP}) got no reply from server2 within {MOVE_BOUND:?} (its ARP entry: {neigh:?}; replies from {:?})",
            r.vips_ms.unwrap_or(f64::NAN),
            log.macs()
        );
    }
    if r.contender == Contender::HaAgent {
        let log = AgentLog::read(&lab.agent_log_path(Server::S2));
        r.agent_add_us = log
            .last_with("VIPs added")
            .and_then(|l| l.field_f64("took_us"));
        r.takeover_reason = log
            .last_with("to=MASTER")
            .and_then(|l| l.field_rest("reason"))
            .map(str::to_string);
    }
    pair.shutdown();
    Ok(())
}

/// The client capturing ARP and pinging `target` every `every`, for at
/// most `bound`, once server1 has answered it.
pub fn start_client(
    lab: &Lab,
    target: std::net::Ipv4Addr,
    every: Duration,
    bound: Duration,
) -> Result<(ArpCapture, Pinger)> {
    let mac1 = lab.mac(Server::S1, Link::Outside).to_string();
    let arp = ArpCapture::start(lab.client_ns(), "eth0", bound)?;
    let pinger = Pinger::start(lab.client_ns(), "eth0", target, every, bound)?;
    let t_ping = Instant::now();
    ha_lab::wait_until(
        Duration::from_secs(5),
        "the client answered by server1",
        || pinger.log().first_reply_from_after(&mac1, t_ping).is_some(),
    )?;
    Ok((arp, pinger))
}

/// Injects the fault on server1.
fn inject(lab: &Lab, pair: &mut Pair, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinksDown => lab.links_down(Server::S1),
        Fault::Isolate => lab.isolate(Server::S1),
        Fault::Hang => pair.get(Server::S1)?.stop(),
        Fault::OutsideCarrier => lab.link_down(Server::S1, Link::Outside),
        Fault::Death => {
            pair.get(Server::S1)?.stop()?;
            lab.links_down(Server::S1)
        }
    }
}

/// Every process of server1's daemon is stopped.
fn stopped(pair: &mut Pair) -> Result<()> {
    for pid in pair.get(Server::S1)?.pids() {
        let path = format!("/proc/{pid}/stat");
        // The state is the field after the parenthesised command name;
        // the stop is delivered asynchronously, so allow it 100 ms.
        ha_lab::wait_until_ok(
            Duration::from_millis(100),
            format!("pid {pid} stopped"),
            || {
                let stat = std::fs::read_to_string(&path)?;
                Ok(stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T'))
            },
        )?;
    }
    Ok(())
}

fn port_is_down(lab: &Lab, port: &str) -> Result<()> {
    let out = lab.exec_ok(lab.switch_ns(), &["ip", "-o", "link", "show", port])?;
    // "<BROADCAST,MULTICAST>" once down; "UP" appears only while up.
    let flags = out.split(['<', '>']).nth(1).unwrap_or("");
    if flags.split(',').any(|f| f == "UP") {
        bail!("switch port {port} is still up: {}", out.trim());
    }
    Ok(())
}

/// Checks the fault is in force (a fault that silently failed must not be
/// measured as a slow failover).
fn verify(lab: &Lab, pair: &mut Pair, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinksDown => {
            for link in Link::ALL {
                port_is_down(lab, Server::S1.port(link))?;
            }
        }
        Fault::OutsideCarrier => port_is_down(lab, Server::S1.port(Link::Outside))?,
        Fault::Death => {
            for link in Link::ALL {
                port_is_down(lab, Server::S1.port(link))?;
            }
            stopped(pair)?;
        }
        Fault::Isolate => {
            let rules = lab.fault_rules()?;
            if !rules.contains("isolate server1") {
                bail!("no isolation rules in the switch: {rules}");
            }
        }
        Fault::Hang => stopped(pair)?,
    }
    Ok(())
}
