//! The threat model, proven: an attacker on either LAN captures the agents'
//! real probes (signed with the real key) and sends them again: as they
//! were, from an earlier run of the peer, from this node's own earlier run,
//! onto the other link, from another address, with a forged sequence number
//! (a sniffed token is no key), in floods of 10,000 frames a second. Nothing
//! may change state, keep a dead peer alive or move a VIP. Root only: run by
//! `cargo xtask test`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ha_agent::operator::config::DEFAULT_PORT;
use ha_lab::attacker::{parse_mac, Frame};
use ha_lab::pair::{started, Running, FAILOVER, SETTLE};
use ha_lab::{wait_until, wait_until_ok, Link, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;
const FLOOD_HZ: u32 = 10_000;
/// Where the wire's `seq` sits in a probe (see `ha_agent::protocol`).
const SEQ_AT: usize = 24;

/// The probes `from` sends on `link` during `d`.
fn capture(r: &Running, from: Server, link: Link, d: Duration) -> Result<Vec<Frame>> {
    let frames = r.lab.capture_udp(from, link, DEFAULT_PORT, d)?;
    ensure!(!frames.is_empty(), "captured no probe of {from} on {link}");
    Ok(frames)
}

/// Each server's state as far as a move would show: (state, epoch, transitions, false alarms).
fn fingerprint(r: &Running) -> Result<Vec<(String, u64, usize, u64)>> {
    Server::ALL
        .iter()
        .map(|s| {
            let st = r.lab.agent_status(*s)?;
            Ok((
                st["state"].as_str().unwrap_or("?").to_string(),
                st["epoch"].as_u64().unwrap_or(0),
                st["transitions"].as_array().map_or(0, Vec::len),
                st["false_alarms"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// Frames re-addressed as if `to` received them on `link` from `src`.
fn readdressed(
    frames: &[Frame],
    src: Ipv4Addr,
    to: Server,
    link: Link,
    r: &Running,
) -> Result<Vec<Frame>> {
    let mac = parse_mac(r.lab.mac(to, link))?;
    Ok(frames
        .iter()
        .cloned()
        .map(|mut f| {
            f.set_ips(src, to.ip(link));
            f.set_dst_mac(mac);
            f
        })
        .collect())
}

/// Probes with a forged, higher sequence number: what an attacker who
/// sniffed the session token (but has no key) can make.
fn forged_seq(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, mut f)| {
            let seq =
                u64::from_be_bytes(f.payload()[SEQ_AT..SEQ_AT + 8].try_into().unwrap_or([0; 8]));
            let forged = seq + (1 << 30) + i as u64;
            f.payload_mut()[SEQ_AT..SEQ_AT + 8].copy_from_slice(&forged.to_be_bytes());
            f.fix_checksums();
            f
        })
        .collect()
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn replayed_and_forged_probes_move_nothing() -> Result<()> {
    let mut r = started()?;
    // Probes of server2's first run, including its request for the VIPs.
    let old_run: Vec<Frame> = capture(&r, S2, Link::Outside, Duration::from_millis(300))?;
    r.lab
        .switchover(S2)
        .with_context(|| format!("server2 asks for the VIPs\n{}", r.logs()))?;
    let asking = capture(&r, S2, Link::Outside, Duration::from_millis(100))?;
    r.wait_sole_holder(S2, FAILOVER)?;
    // server1 yielded: it is not a candidate until its handover hold ends.
    wait_until_ok(SETTLE, "server1 eligible again", || {
        Ok(r.lab.agent_status(S2)?["peer"]["eligible"] == true)
    })?;
    r.lab
        .switchover(S2)
        .with_context(|| format!("server2 hands them back\n{}", r.logs()))?;
    r.wait_sole_holder(S1, FAILOVER)?;
    // server1's own probes (its current run), and server2's after a restart.
    let own = capture(&r, S1, Link::Outside, Duration::from_millis(200))?;
    r.take(S2).terminate(Duration::from_secs(5))?;
    r.restart(S2)?;
    r.wait_state(S2, "BACKUP")?;
    r.wait_sole_holder(S1, SETTLE)?;
    let current = capture(&r, S2, Link::Outside, Duration::from_millis(300))?;
    let current_inside = capture(&r, S2, Link::Inside, Duration::from_millis(300))?;

    let peer_out = S2.ip(Link::Outside);
    // Odd shapes of valid probes: the kernel must drop them itself, or
    // anyone could make the agent check tags in userspace at line rate.
    let with_option: Vec<Frame> = current.iter().map(Frame::with_ip_option).collect();
    let first_fragments: Vec<Frame> = current.iter().map(Frame::as_first_fragment).collect();
    let attacks: Vec<(&str, Link, Vec<Frame>, bool)> = vec![
        (
            "server2's current session, as captured",
            Link::Outside,
            current.clone(),
            false,
        ),
        (
            "server2's probes with an IP option",
            Link::Outside,
            with_option,
            true,
        ),
        (
            "server2's probes as first fragments",
            Link::Outside,
            first_fragments,
            true,
        ),
        (
            "server2's current inside probes, as captured",
            Link::Inside,
            current_inside,
            false,
        ),
        (
            "server2's previous run (with its request for the VIPs)",
            Link::Outside,
            [old_run, asking].concat(),
            false,
        ),
        (
            "server1's own probes reflected to it",
            Link::Outside,
            readdressed(&own, peer_out, S1, Link::Outside, &r)?,
            false,
        ),
        (
            "server2's outside probes moved onto the inside link",
            Link::Inside,
            readdressed(&current, S2.ip(Link::Inside), S1, Link::Inside, &r)?,
            false,
        ),
        (
            "server2's probes from another address",
            Link::Outside,
            readdressed(
                &current,
                Ipv4Addr::new(198, 51, 100, 66),
                S1,
                Link::Outside,
                &r,
            )?,
            false,
        ),
        (
            "server2's probes with a forged seq (sniffed token, no key)",
            Link::Outside,
            forged_seq(&current),
            false,
        ),
    ];
    let before = fingerprint(&r)?;
    let counters = |r: &Running| -> Result<(u64, u64, u64)> {
        let s = r.lab.agent_status(S1)?;
        let sum = |k: &str| {
            s["links"].as_array().map_or(0, |l| {
                l.iter().map(|x| x[k].as_u64().unwrap_or(0)).sum::<u64>()
            })
        };
        Ok((
            sum("probes_rejected"),
            sum("probes_duplicate"),
            s["probes_refused"].as_u64().unwrap_or(0),
        ))
    };
    // kernel_only: the kernel must drop every frame itself.
    for (what, link, frames, kernel_only) in attacks {
        let (rej0, dup0, ref0) = counters(&r)?;
        let flood = r.lab.inject(S1, link, frames, FLOOD_HZ)?;
        ha_lab::sleep(Duration::from_secs(2))?;
        let (sent, rate) = flood.stop()?;
        ha_lab::sleep(Duration::from_millis(100))?;
        let after = fingerprint(&r)?;
        let (rej1, dup1, ref1) = counters(&r)?;
        println!(
            "{what}: {sent} frames at {rate:.0}/s; server1 dropped {} in the kernel (+{} as copies), refused {} in userspace",
            rej1 - rej0,
            dup1 - dup0,
            ref1 - ref0
        );
        ensure!(
            after == before,
            "{what} changed the state {before:?} -> {after:?}:\n{}",
            r.logs()
        );
        ensure!(
            r.lab.sole_holder_is(S1),
            "{what}: {}",
            r.lab.describe_vips()
        );
        ensure!(
            (rej1 - rej0) + (dup1 - dup0) + (ref1 - ref0) >= sent / 2,
            "{what}: the frames did not reach server1's checks ({sent} sent)"
        );
        if kernel_only {
            ensure!(ref1 == ref0, "{what}: {} reached userspace", ref1 - ref0);
        }
    }
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn replays_cannot_keep_a_dead_peer_alive() -> Result<()> {
    let mut r = started()?;
    // The holder's real probes, and forged ones built on them.
    let out = capture(&r, S1, Link::Outside, Duration::from_millis(300))?;
    let inside = capture(&r, S1, Link::Inside, Duration::from_millis(300))?;
    let forged = forged_seq(&out);
    let floods = [
        r.lab
            .inject(S2, Link::Outside, [out, forged].concat(), FLOOD_HZ)?,
        r.lab.inject(S2, Link::Inside, inside, FLOOD_HZ)?,
    ];
    ha_lab::sleep(Duration::from_millis(200))?;
    ensure!(r.lab.sole_holder_is(S1), "{}", r.lab.describe_vips());
    // server1 dies (its cables and its agent) while the floods go on.
    let died = Instant::now();
    r.lab.links_down(S1)?;
    r.take(S1).kill()?;
    let took = wait_until(FAILOVER, "server2 holds both VIPs", || {
        Link::ALL
            .iter()
            .all(|l| r.lab.vip_holders(l.vip()).contains(&S2))
    })
    .with_context(|| r.logs())?;
    for f in floods {
        let (sent, rate) = f.stop()?;
        println!("flood: {sent} frames at {rate:.0}/s");
    }
    println!(
        "death under a replay flood: server2 took over after {took:?} ({:?} since the death)",
        died.elapsed()
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn replays_cannot_keep_a_restarted_peer_from_hearing_the_holder() -> Result<()> {
    let mut r = started()?;
    // The holder's probes: after server2 restarts they belong to a session
    // its new run has not accepted yet, which the kernel passes up only
    // once per 100 us. Replayed at 10 kHz they must not take those turns
    // from the holder's real probes (that echo the new run).
    let out = capture(&r, S1, Link::Outside, Duration::from_millis(300))?;
    let inside = capture(&r, S1, Link::Inside, Duration::from_millis(300))?;
    let epoch = r.lab.agent_status(S1)?["epoch"].as_u64().unwrap_or(0);
    r.take(S2).terminate(Duration::from_secs(5))?;
    let floods = [
        r.lab.inject(S2, Link::Outside, out, FLOOD_HZ)?,
        r.lab.inject(S2, Link::Inside, inside, FLOOD_HZ)?,
    ];
    ha_lab::sleep(Duration::from_millis(100))?;
    r.restart(S2)?;
    let joined = r.wait_state(S2, "BACKUP");
    ha_lab::sleep(Duration::from_secs(1))?;
    for f in floods {
        let (sent, rate) = f.stop()?;
        println!("flood: {sent} frames at {rate:.0}/s");
    }
    joined.with_context(|| r.logs())?;
    let s1 = r.lab.agent_status(S1)?;
    ensure!(
        s1["state"] == "MASTER" && s1["epoch"].as_u64() == Some(epoch),
        "server1 was disturbed: {s1}\n{}",
        r.logs()
    );
    let s2 = r.lab.agent_status(S2)?;
    ensure!(
        s2["transitions"]
            .as_array()
            .is_some_and(|t| t.iter().all(|x| x["to"] != "MASTER")),
        "server2 took the VIPs while the holder was alive: {s2}\n{}",
        r.logs()
    );
    r.wait_sole_holder(S1, SETTLE)?;
    Ok(())
}
