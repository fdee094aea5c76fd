//! `cargo xtask lab`: the failover demo in a namespace lab.
//!
//! Both agents start; server1 must hold both VIPs. A client pings the outside
//! VIP every 2 ms. Server1's links go down (carrier lost): both VIPs must move
//! to server2, and the client must be answered by server2's MAC. Server1's
//! links come back: with nopreempt it must not take the VIPs back. Prints a
//! timeline in ms from the fault and a PASS/FAIL line per check. The lab is
//! removed at the end, on error and on Ctrl-C.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ha_lab::{selftest, wait_until, Lab, LabProcess, Link, Overrides, PingLog, Server};

/// Longest client outage accepted for "links down" (the agent aims for tens of ms).
const MAX_OUTAGE: Duration = Duration::from_secs(1);
/// How long to watch after server1 returns.
const WATCH_RETURN: Duration = Duration::from_secs(3);

pub fn topology_only() -> Result<()> {
    let lab = Lab::new()?;
    describe_lab(&lab);
    println!("lab: self-test of the topology and every fault");
    for line in selftest::self_test(&lab)? {
        println!("  {line}");
    }
    lab.close()?;
    println!("lab: removed; no namespace left behind");
    Ok(())
}

fn describe_lab(lab: &Lab) {
    println!(
        "lab: prefix {}, files in {}",
        lab.prefix(),
        lab.dir().display()
    );
    println!("lab: namespaces {}", lab.namespaces().join(" "));
    for s in Server::ALL {
        println!(
            "lab: {s}: eth0 {} {}, eth1 {} {}",
            s.ip(Link::Outside),
            lab.mac(s, Link::Outside),
            s.ip(Link::Inside),
            lab.mac(s, Link::Inside)
        );
    }
}

struct Timeline {
    events: Vec<(Instant, String)>,
}

impl Timeline {
    fn add(&mut self, at: Instant, what: impl Into<String>) {
        self.events.push((at, what.into()));
    }
    fn print(&self, origin: Instant) {
        let mut ev = self.events.clone();
        ev.sort_by_key(|(t, _)| *t);
        println!("\ntimeline (ms from server1's links going down):");
        for (t, what) in ev {
            println!("  {:>+10.1}  {what}", offset_ms(t, origin));
        }
    }
}

fn offset_ms(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        (t - origin).as_secs_f64() * 1000.0
    } else {
        -((origin - t).as_secs_f64() * 1000.0)
    }
}

struct Checks {
    results: Vec<(bool, String)>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("{}  {what}", if ok { "PASS" } else { "FAIL" });
        self.results.push((ok, what));
    }
    fn failed(&self) -> usize {
        self.results.iter().filter(|(ok, _)| !ok).count()
    }
}

fn holders_text(h: &[Server]) -> String {
    if h.is_empty() {
        "nobody".into()
    } else {
        h.iter().map(|s| s.name()).collect::<Vec<_>>().join(" and ")
    }
}

fn ensure_alive(agents: &mut [(Server, &mut LabProcess)]) -> Result<()> {
    for (s, p) in agents.iter_mut() {
        if let Some(status) = p.try_status() {
            bail!(
                "{s}'s agent exited ({status}); last log lines:\n{}",
                p.log_tail(30)
            );
        }
    }
    Ok(())
}

/// Polls who holds each VIP until `done` or `timeout`, recording every change.
fn watch_vips(
    lab: &Lab,
    tl: &mut Timeline,
    last: &mut [Vec<Server>; 2],
    timeout: Duration,
    agents: &mut [(Server, &mut LabProcess)],
    mut done: impl FnMut(&[Vec<Server>; 2]) -> bool,
) -> Result<bool> {
    let start = Instant::now();
    let mut last_alive_check = start;
    loop {
        if ha_lab::interrupted() {
            bail!("interrupted");
        }
        let now_holders = [
            lab.vip_holders(Link::Outside.vip()),
            lab.vip_holders(Link::Inside.vip()),
        ];
        let at = Instant::now();
        for (i, link) in Link::ALL.iter().enumerate() {
            if now_holders[i] != last[i] {
                tl.add(
                    at,
                    format!(
                        "{} ({}) held by {}",
                        link.vip(),
                        link.name(),
                        holders_text(&now_holders[i])
                    ),
                );
                last[i] = now_holders[i].clone();
            }
        }
        if done(last) {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        if last_alive_check.elapsed() >= Duration::from_millis(200) {
            ensure_alive(agents)?;
            last_alive_check = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn run(bin: &Path, self_test: bool) -> Result<()> {
    let mut lab = Lab::new()?;
    lab.set_agent_bin(bin);
    describe_lab(&lab);
    if self_test {
        println!("lab: self-test of the topology and every fault");
        for line in selftest::self_test(&lab)? {
            println!("  {line}");
        }
    }
    let result = scenario(&lab);
    if result.is_err() {
        println!(
            "lab: agent logs: {} and {}",
            lab.agent_log_path(Server::S1).display(),
            lab.agent_log_path(Server::S2).display()
        );
    }
    match result {
        Ok(0) => {
            lab.close()?;
            println!("\nlab: all checks passed; lab removed");
            Ok(())
        }
        Ok(n) => {
            for s in Server::ALL {
                let log = std::fs::read_to_string(lab.agent_log_path(s)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                println!("\n--- last lines of {s}'s agent log ---");
                for l in &lines[lines.len().saturating_sub(25)..] {
                    println!("{l}");
                }
            }
            lab.close()?;
            bail!("{n} check(s) failed")
        }
        Err(e) => Err(e),
    }
}

/// The scenario; returns the number of failed checks.
fn scenario(lab: &Lab) -> Result<usize> {
    let vip = Link::Outside.vip();
    let mac1 = lab.mac(Server::S1, Link::Outside).to_string();
    let mac2 = lab.mac(Server::S2, Link::Outside).to_string();
    let mut tl = Timeline { events: Vec::new() };
    let mut checks = Checks {
        results: Vec::new(),
    };

    for s in Server::ALL {
        let path = lab.write_agent_config(s, &Overrides::new())?;
        println!("lab: {s}'s config: {}", path.display());
    }
    let t_agents = Instant::now();
    let mut a1 = lab.start_agent(Server::S1)?;
    tl.add(
        Instant::now(),
        format!("server1's agent started (pid {})", a1.pid()),
    );
    let mut a2 = lab.start_agent(Server::S2)?;
    tl.add(
        Instant::now(),
        format!("server2's agent started (pid {})", a2.pid()),
    );

    let mut last: [Vec<Server>; 2] = [Vec::new(), Vec::new()];
    let ok = watch_vips(
        lab,
        &mut tl,
        &mut last,
        Duration::from_secs(10),
        &mut [(Server::S1, &mut a1), (Server::S2, &mut a2)],
        |h| h.iter().all(|x| x == &[Server::S1]),
    )?;
    checks.check(
        ok,
        format!(
            "initially server1 holds both VIPs ({} ms after start; now: {})",
            t_agents.elapsed().as_millis(),
            lab.describe_vips()
        ),
    );
    if !ok {
        return Ok(checks.failed());
    }
    // Let server2 see server1 and settle as BACKUP (best effort: status may be absent).
    let settled = wait_until(
        Duration::from_secs(5),
        "server2's agent to report BACKUP",
        || lab.agent_state(Server::S2).is_ok_and(|s| s == "BACKUP"),
    );
    match settled {
        Ok(d) => println!("lab: server2 reports BACKUP ({} ms)", d.as_millis()),
        Err(e) => println!("lab: note: {e:#}"),
    }
    ha_lab::sleep(Duration::from_millis(300))?;

    let pinger = lab.start_pinger(vip, Duration::from_millis(2))?;
    if let Err(e) = wait_until(
        Duration::from_secs(3),
        "the client's pings to be answered by server1",
        || pinger.log().replies.iter().any(|r| r.from_mac == mac1),
    ) {
        let log = pinger.log();
        bail!(
            "{e:#}: {} requests sent, replies from {:?}; client's ARP entry for {vip}: {:?}; VIPs: {}; ping: {:?}",
            log.sent.len(),
            log.macs(),
            lab.neighbour_mac(lab.client_ns(), vip),
            lab.describe_vips(),
            lab.ping_count(lab.client_ns(), vip, 3, Duration::from_millis(300))
        );
    }
    ha_lab::sleep(Duration::from_millis(300))?;

    // The fault.
    let t_fault = Instant::now();
    lab.links_down(Server::S1)?;
    let t_fault_done = Instant::now();
    tl.add(
        t_fault,
        format!(
            "server1's links down (switch ports s1o and s1i down: carrier lost; command took {:.1} ms)",
            offset_ms(t_fault_done, t_fault)
        ),
    );
    let took_over = watch_vips(
        lab,
        &mut tl,
        &mut last,
        Duration::from_secs(10),
        &mut [(Server::S1, &mut a1), (Server::S2, &mut a2)],
        |h| h.iter().all(|x| x.contains(&Server::S2)),
    )?;
    let t_takeover = Instant::now();
    checks.check(
        took_over,
        format!(
            "both VIPs on server2, {:.1} ms after the fault (now: {})",
            offset_ms(t_takeover, t_fault),
            lab.describe_vips()
        ),
    );
    // Server1, cut off, should drop its copies (self-fencing); harmless
    // meanwhile since its carrier is down.
    let released = watch_vips(
        lab,
        &mut tl,
        &mut last,
        Duration::from_secs(5),
        &mut [(Server::S1, &mut a1), (Server::S2, &mut a2)],
        |h| h.iter().all(|x| x == &[Server::S2]),
    )?;
    checks.check(
        released,
        format!(
            "server1 (links down) released its VIPs, {:.1} ms after the fault (now: {})",
            offset_ms(Instant::now(), t_fault),
            lab.describe_vips()
        ),
    );
    // First answer via server2.
    let answered = wait_until(Duration::from_secs(5), "a reply from server2's MAC", || {
        pinger
            .log()
            .first_reply_from_after(&mac2, t_fault)
            .is_some()
    });
    let neigh = wait_until(
        Duration::from_secs(2),
        "the client's ARP entry for the VIP to be server2's MAC",
        || lab.client_neighbour_mac(vip).ok().flatten().as_deref() == Some(mac2.as_str()),
    );
    checks.check(
        neigh.is_ok(),
        format!(
            "the client's ARP entry for {vip} is server2's MAC {mac2} (now {:?})",
            lab.client_neighbour_mac(vip).ok().flatten()
        ),
    );
    ha_lab::sleep(Duration::from_millis(500))?;

    // Server1 comes back.
    let t_back = Instant::now();
    lab.links_up(Server::S1)?;
    tl.add(t_back, "server1's links up again");
    let mut s1_took = false;
    watch_vips(
        lab,
        &mut tl,
        &mut last,
        WATCH_RETURN,
        &mut [(Server::S1, &mut a1), (Server::S2, &mut a2)],
        |h| {
            if h.iter().any(|x| x.contains(&Server::S1)) {
                s1_took = true;
            }
            false
        },
    )?;
    let t_end = Instant::now();
    let log = pinger.finish()?;
    pinger_events(&log, &mut tl, lab, t_fault_done, t_back);

    let first2 = log.first_reply_from_after(&mac2, t_fault_done).cloned();
    checks.check(
        answered.is_ok() && first2.is_some(),
        match &first2 {
            Some(r) => format!(
                "client answered via server2 {:.1} ms after the fault",
                offset_ms(r.received, t_fault)
            ),
            None => "client never answered via server2".into(),
        },
    );
    let gap = log.longest_gap(t_fault, t_back);
    checks.check(
        first2.is_some() && gap.len() < MAX_OUTAGE,
        format!(
            "longest client gap around the failover: {:.1} ms (from {:+.1} to {:+.1}; limit {} ms)",
            gap.len().as_secs_f64() * 1000.0,
            offset_ms(gap.start, t_fault),
            offset_ms(gap.end, t_fault),
            MAX_OUTAGE.as_millis()
        ),
    );
    let after_back_s1 = log
        .replies_after(t_back)
        .filter(|r| r.from_mac == mac1)
        .count();
    let still_s2 = lab.sole_holder_is(Server::S2);
    checks.check(
        !s1_took && still_s2 && after_back_s1 == 0,
        format!(
            "nopreempt: for {} s after server1 returned, it took no VIP (VIPs: {}; replies from server1: {after_back_s1})",
            WATCH_RETURN.as_secs(),
            lab.describe_vips()
        ),
    );
    let gap_back = log.longest_gap(t_back, t_end);
    println!(
        "lab: longest client gap after server1 returned: {:.1} ms",
        gap_back.len().as_secs_f64() * 1000.0
    );
    let (sent, got) = log.answered_between(log.started, t_end);
    println!("lab: client pings: {sent} sent, {got} answered");
    for s in Server::ALL {
        match lab.agent_status(s) {
            Ok(v) => println!(
                "lab: {s} status: state {} epoch {} vips_held {}",
                v["state"], v["epoch"], v["vips_held"]
            ),
            Err(e) => println!("lab: {s} status unavailable: {e:#}"),
        }
    }
    tl.print(t_fault);
    println!();

    for (s, p) in [(Server::S1, &mut a1), (Server::S2, &mut a2)] {
        let (status, clean) = p.terminate(Duration::from_secs(3))?;
        println!(
            "lab: {s}'s agent stopped ({status}{})",
            if clean { "" } else { ", killed after 3 s" }
        );
    }
    let failed = checks.failed();
    println!("lab: {} check(s), {} failed", checks.results.len(), failed);
    Ok(failed)
}

/// Client-side events; `t_fault` is when the fault command had returned.
fn pinger_events(log: &PingLog, tl: &mut Timeline, lab: &Lab, t_fault: Instant, t_back: Instant) {
    let name = |mac: &str| match lab.server_with_mac(mac) {
        Some((s, _)) => s.name().to_string(),
        None => mac.to_string(),
    };
    if let Some(r) = log
        .replies
        .iter()
        .filter(|r| r.received < t_fault)
        .max_by_key(|r| r.received)
    {
        tl.add(
            r.received,
            format!(
                "client: last reply before the fault (from {})",
                name(&r.from_mac)
            ),
        );
    }
    if let Some(r) = log.first_reply_after(t_fault) {
        tl.add(
            r.received,
            format!(
                "client: first reply to a request sent after the fault (from {}, rtt {:.2} ms)",
                name(&r.from_mac),
                r.rtt().as_secs_f64() * 1000.0
            ),
        );
    }
    if let Some(r) = log.first_reply_after(t_back) {
        tl.add(
            r.received,
            format!(
                "client: first reply after server1 returned (from {})",
                name(&r.from_mac)
            ),
        );
    }
}
