//! One failover trial: a fresh lab, a settled pair with server1 holding the
//! VIPs, a client pinging the outside VIP and capturing ARP, then one fault
//! on server1, timed from the instant before the fault command with the
//! monotonic clock.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ha_lab::{Lab, Link, Pinger, Server, CLIENT_IP};

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
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::LinksDown, Fault::Isolate, Fault::Hang];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LinksDown => "links_down",
            Fault::Isolate => "isolate",
            Fault::Hang => "hang",
        }
    }

    /// For the table.
    pub fn title(self) -> &'static str {
        match self {
            Fault::LinksDown => "server1 links down",
            Fault::Isolate => "server1 isolated",
            Fault::Hang => "server1 daemon SIGSTOP",
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
    /// Both VIPs present on server2.
    pub vips_ms: Option<f64>,
    /// First gratuitous ARP for the outside VIP from server2's MAC, seen by the client.
    pub garp_ms: Option<f64>,
    /// First echo reply from server2's MAC (capture time) to a request sent after the fault.
    pub reply_ms: Option<f64>,
    /// Longest interval without any reply, from the last reply before the fault.
    pub gap_ms: Option<f64>,
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
        garp_ms: None,
        reply_ms: None,
        gap_ms: None,
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
    if r.failure.is_some() {
        r.saved_logs = ctx.save_logs(&lab, &format!("{c}-{}-{index}", fault.name()));
    }
    lab.close()?;
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}

fn measure(ctx: &Ctx, lab: &Lab, r: &mut TrialResult) -> Result<()> {
    let watch = VipWatch::start(lab, TRIAL_MAX)?;
    let mut pair = Pair::start(lab, r.contender, &watch)?;
    let mac1 = lab.mac(Server::S1, Link::Outside).to_string();
    let mac2 = lab.mac(Server::S2, Link::Outside).to_string();
    let arp = ArpCapture::start(lab.client_ns(), "eth0", TRIAL_MAX)?;
    let pinger = Pinger::start(
        lab.client_ns(),
        "eth0",
        Link::Outside.vip(),
        ctx.ping_interval,
        TRIAL_MAX,
    )?;
    let t_ping = Instant::now();
    ha_lab::wait_until(
        Duration::from_secs(5),
        "the client answered by server1",
        || pinger.log().first_reply_from_after(&mac1, t_ping).is_some(),
    )?;
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
        h.holds_both(Server::S2)
    })?;
    r.vips_ms = watch
        .first_at_or_after(t0, |h| h.holds_both(Server::S2))
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
    r.gap_ms = Some(ms(log.longest_gap(t0, end).len()));
    let frames = arp.finish();
    r.garp_ms = first_garp(&frames, Link::Outside.vip(), &mac2, t0).map(|f| since(f.at, t0));
    r.s1_released_ms = watch
        .first_at_or_after(t0, |h| !h.holds_any(Server::S1))
        .map(|t| since(t, t0));
    if answered.is_err() {
        let neigh = lab.client_neighbour_mac(Link::Outside.vip()).ok().flatten();
        bail!(
            "the VIPs moved after {:.1} ms but the client ({CLIENT_IP}) got no reply from server2 within {MOVE_BOUND:?} (its ARP entry: {neigh:?}; replies from {:?})",
            r.vips_ms.unwrap_or(f64::NAN),
            log.macs()
        );
    }
    pair.shutdown();
    Ok(())
}

/// Injects the fault on server1.
fn inject(lab: &Lab, pair: &mut Pair, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinksDown => lab.links_down(Server::S1),
        Fault::Isolate => lab.isolate(Server::S1),
        Fault::Hang => pair.get(Server::S1)?.stop(),
    }
}

/// Checks the fault is in force (a fault that silently failed must not be
/// measured as a slow failover).
fn verify(lab: &Lab, pair: &mut Pair, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinksDown => {
            for link in Link::ALL {
                let port = Server::S1.port(link);
                let out = lab.exec_ok(lab.switch_ns(), &["ip", "-o", "link", "show", port])?;
                // "<BROADCAST,MULTICAST>" once down; "UP" appears only while up.
                let flags = out.split(['<', '>']).nth(1).unwrap_or("");
                if flags.split(',').any(|f| f == "UP") {
                    bail!("switch port {port} is still up: {}", out.trim());
                }
            }
        }
        Fault::Isolate => {
            let rules = lab.fault_rules()?;
            if !rules.contains("isolate server1") {
                bail!("no isolation rules in the switch: {rules}");
            }
        }
        Fault::Hang => {
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
        }
    }
    Ok(())
}
