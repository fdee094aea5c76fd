//! Soak: a settled pair left alone under hostile but survivable conditions
//! (both cores saturated by `stress-ng --cpu 2`, 2% random loss on every
//! server port) for `--soak-secs`. Nothing failed, so every VIP move is a
//! false failover.

use std::time::{Duration, Instant};

use anyhow::Result;
use ha_lab::{spawn_in, Lab, Link, Pinger, Server};

use super::arp::{ArpCapture, ArpFrame};
use super::contender::{Contender, Pair};
use super::trial::ms;
use super::watch::{Holders, VipWatch};
use super::Ctx;

/// Loss on every server port, per frame, in percent.
pub const LOSS_PERCENT: u32 = 2;
/// The client pings the outside VIP this often during the soak.
const PING_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct SoakResult {
    pub contender: Contender,
    pub secs: u64,
    /// Times a server that held no VIP came to hold one (a sync-group move of
    /// both VIPs counts once).
    pub moves: Option<usize>,
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
    pub failure: Option<String>,
    pub saved_logs: Option<String>,
}

pub fn run(ctx: &Ctx, c: Contender, secs: u64) -> Result<SoakResult> {
    let mut r = SoakResult {
        contender: c,
        secs,
        moves: None,
        dual_ms: None,
        orphan_ms: None,
        pings_sent: None,
        pings_answered: None,
        longest_gap_ms: None,
        gap_detail: None,
        events: Vec::new(),
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
    if let Err(e) = soak(&lab, &mut r) {
        if ha_lab::interrupted() {
            return Err(e);
        }
        r.failure = Some(format!("{e:#}"));
    }
    // Always kept: the daemons' view of a false failover is the interesting part.
    if r.failure.is_some() || r.moves.is_some_and(|m| m > 0) {
        r.saved_logs = ctx.save_logs(&lab, &format!("{c}-soak"));
    }
    lab.close()?;
    Ok(r)
}

fn soak(lab: &Lab, r: &mut SoakResult) -> Result<()> {
    let d = Duration::from_secs(r.secs);
    let bound = d + Duration::from_secs(120);
    let watch = VipWatch::start(lab, bound)?;
    let mut pair = Pair::start(lab, r.contender, &watch)?;
    let mac1 = lab.mac(Server::S1, Link::Outside).to_string();
    let arp = ArpCapture::start(lab.client_ns(), "eth0", bound)?;
    let pinger = Pinger::start(
        lab.client_ns(),
        "eth0",
        Link::Outside.vip(),
        PING_EVERY,
        bound,
    )?;
    let t_ping = Instant::now();
    ha_lab::wait_until(
        Duration::from_secs(5),
        "the client answered by server1",
        || pinger.log().first_reply_from_after(&mac1, t_ping).is_some(),
    )?;
    // stress-ng runs in the switch namespace so the lab's teardown kills it
    // (and its workers) even if we cannot; --timeout bounds it as well.
    let timeout = format!("{}s", r.secs + 60);
    let mut stress = spawn_in(
        lab.switch_ns(),
        "stress-ng",
        &["--cpu", "2", "--timeout", &timeout, "--quiet"],
        &lab.dir().join("stress-ng.log"),
    )?;
    ha_lab::sleep(Duration::from_millis(500))?;
    lab.random_loss(LOSS_PERCENT)?;
    let t_start = Instant::now();
    let result = (|| -> Result<()> {
        while t_start.elapsed() < d {
            ha_lab::sleep(Duration::from_secs(1).min(d.saturating_sub(t_start.elapsed())))?;
            pair.check_alive()?;
        }
        Ok(())
    })();
    let t_end = Instant::now();
    let _ = lab.heal();
    let _ = stress.terminate(Duration::from_secs(5));
    let log = pinger.finish()?;
    let timeline = watch.finish();
    let (sent, answered) = log.answered_between(t_start, t_end);
    r.pings_sent = Some(sent);
    r.pings_answered = Some(answered);
    let gap = log.longest_gap(t_start, t_end);
    r.longest_gap_ms = Some(ms(gap.len()));
    r.gap_detail = Some(gap_detail(lab, &arp.finish(), gap, t_start));
    let s = summarize(&timeline, t_start, t_end);
    r.moves = Some(s.moves);
    r.dual_ms = Some(ms(s.dual));
    r.orphan_ms = Some(ms(s.orphan));
    r.events = s.events;
    pair.shutdown();
    result
}

/// "gap +16.34..21.28 s; GARPs for the outside VIP: +16.340 s server2, ...":
/// the announcements from 100 ms before the gap to its end.
fn gap_detail(lab: &Lab, frames: &[ArpFrame], gap: ha_lab::Gap, t0: Instant) -> String {
    let off = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let from = gap
        .start
        .checked_sub(Duration::from_millis(100))
        .unwrap_or(gap.start);
    let garps: Vec<String> = frames
        .iter()
        .filter(|f| f.at >= from && f.at <= gap.end)
        .filter(|f| f.is_gratuitous() && f.sender_ip == Link::Outside.vip())
        .map(|f| {
            let who = lab
                .server_with_mac(&f.sender_mac)
                .map_or(f.sender_mac.clone(), |(s, _)| s.name().to_string());
            format!("+{:.3} s {who}", off(f.at))
        })
        .collect();
    format!(
        "gap +{:.3}..+{:.3} s; GARPs for {} seen by the client from 100 ms before it: {}",
        off(gap.start),
        off(gap.end),
        Link::Outside.vip(),
        if garps.is_empty() {
            "none".to_string()
        } else {
            garps.join(", ")
        }
    )
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
    fn a_sync_group_move_counts_once() {
        let t0 = Instant::now();
        let at = |n| t0 + Duration::from_millis(n);
        let mut s1 = Holders::default();
        s1.held[0] = [true, true];
        let mut both = s1;
        both.held[1] = [true, true];
        let mut s2 = Holders::default();
        s2.held[1] = [true, true];
        let tl = vec![(at(0), s1), (at(100), both), (at(150), s2), (at(300), both)];
        let s = summarize(&tl, at(50), at(400));
        assert_eq!(s.moves, 2); // server2 at 100, server1 at 300
        assert_eq!(s.dual, Duration::from_millis(50 + 100));
        assert_eq!(s.orphan, Duration::ZERO);
        assert_eq!(s.events.len(), 3);
    }
}
