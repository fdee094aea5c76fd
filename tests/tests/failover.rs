//! The failover stories with the real agent binary, the real eBPF program and
//! real netlink, in network namespaces. Root only: run by `cargo xtask test`.
//!
//! The VIP holders are read from the server namespaces (`ip addr`), never from
//! the agents' own word.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ha_lab::pair::{server2_mac_outside, started, FAILOVER, SETTLE};
use ha_lab::{wait_until, wait_until_ok, Lab, Link, Overrides, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;
#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn takeover_on_death_and_garp_reaches_the_client() -> Result<()> {
    let r = started()?;
    // The client knows the VIP at server1's MAC.
    ensure!(r.lab.reachable(r.lab.client_ns(), Link::Outside.vip()));
    let before = r.lab.client_neighbour_mac(Link::Outside.vip())?;
    ensure!(
        before.as_deref() == Some(r.lab.mac(S1, Link::Outside)),
        "client's neighbour entry before: {before:?}"
    );
    let pinger = r
        .lab
        .start_pinger(Link::Outside.vip(), Duration::from_millis(2))?;
    wait_until(SETTLE, "first reply", || pinger.log().answered() > 0)?;
    let fault = Instant::now();
    r.lab.links_down(S1)?;
    let took = r.wait_sole_holder(S2, FAILOVER)?;
    let mac2 = server2_mac_outside(&r);
    wait_until(FAILOVER, "client reply from server2", || {
        pinger.log().first_reply_from_after(&mac2, fault).is_some()
    })?;
    let log = pinger.finish()?;
    let first = log.first_reply_from_after(&mac2, fault).unwrap();
    println!(
        "death: VIPs on server2 after {:?}; first client reply via server2 {:?} after the fault (request sent {:?} after)",
        took,
        first.received - fault,
        first.sent.saturating_duration_since(fault)
    );
    // Gratuitous ARP updated the client's existing entry without it asking.
    let after = r.lab.client_neighbour_mac(Link::Outside.vip())?;
    ensure!(
        after.as_deref() == Some(mac2.as_str()),
        "client's neighbour entry after: {after:?}"
    );
    let s2 = r.lab.agent_status(S2)?;
    ensure!(
        s2["state"] == "MASTER" && s2["epoch"] == 2,
        "server2 status: {s2}"
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn nopreempt_after_reboot() -> Result<()> {
    let mut r = started()?;
    // Machine death: links down and the agent gone; then it boots again.
    r.lab.links_down(S1)?;
    r.take(S1).kill()?;
    r.wait_holds_both(S2)?;
    r.lab.links_up(S1)?;
    // The killed agent left its addresses behind, as a crash would; the new
    // one removes them before anything else.
    r.restart(S1)?;
    r.wait_sole_holder(S2, SETTLE)?;
    r.wait_state(S1, "BACKUP")?;
    r.stays_sole_holder(S2, "server2 keeps the VIPs")?;
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn isolated_holder_fences_itself_and_keeps_nothing_after_heal() -> Result<()> {
    let r = started()?;
    r.lab.isolate(S1)?; // carrier up, every frame dropped
    let took = r.wait_holds_both(S2)?;
    let fenced = wait_until(FAILOVER, "server1 holds no VIP", || {
        Link::ALL
            .iter()
            .all(|l| !r.lab.vip_holders(l.vip()).contains(&S1))
    })?;
    println!(
        "isolation: server2 took over after {took:?}; server1 fenced itself after {fenced:?} more"
    );
    ensure!(r.lab.agent_state(S1)? == "FAULT");
    r.lab.heal()?;
    r.wait_state(S1, "BACKUP")?;
    r.holds_for(
        Duration::from_secs(2),
        "server2 keeps the VIPs after heal",
        |l| l.sole_holder_is(S2),
    )?;
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn hung_holder_resumes_without_taking_the_vips_back() -> Result<()> {
    let mut r = started()?;
    // The client has an ARP entry for the VIP (gratuitous ARP only updates one).
    ensure!(r.lab.reachable(r.lab.client_ns(), Link::Outside.vip()));
    // SIGSTOP: server1's kernel still holds the VIPs; server2 takes them and announces.
    r.agent(S1).stop()?;
    r.wait_holds_both(S2)?;
    let mac2 = server2_mac_outside(&r);
    wait_until(FAILOVER, "client's entry moved to server2", || {
        r.lab
            .client_neighbour_mac(Link::Outside.vip())
            .ok()
            .flatten()
            .as_deref()
            == Some(mac2.as_str())
    })?;
    // A hang shorter than the reclaim window (64 ms) counts as a stall and
    // server2 would hand the VIPs back; this one is a real hang.
    r.holds_for(Duration::from_millis(500), "server2 holds both VIPs", |l| {
        Link::ALL
            .iter()
            .all(|k| l.vip_holders(k.vip()).contains(&S2))
    })?;
    r.agent(S1).cont()?; // SIGCONT
    let dropped = r.wait_sole_holder(S2, FAILOVER)?;
    println!("hang: server1 dropped the VIPs {dropped:?} after SIGCONT");
    r.stays_sole_holder(S2, "one holder, server2")?;
    ensure!(r.lab.agent_state(S1)? == "BACKUP");
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn one_cut_link_moves_nothing() -> Result<()> {
    let r = started()?;
    for link in Link::ALL {
        r.lab.cut_between_servers(link)?;
        // Wait until both agents see the link down, then hold still.
        wait_until_ok(SETTLE, format!("{link:?} seen down"), || {
            let s = r.lab.agent_status(S1)?;
            Ok(s["degraded"] == true)
        })?;
        r.holds_for(Duration::from_secs(1), "server1 keeps the VIPs", |l| {
            l.sole_holder_is(S1)
        })?;
        r.lab.heal()?;
        wait_until_ok(SETTLE, "link healed", || {
            Ok(r.lab.agent_status(S1)?["degraded"] == false)
        })?;
    }
    // Carrier lost on server1's inside port: keepalived moved both VIPs here.
    r.lab.link_down(S1, Link::Inside)?;
    r.holds_for(Duration::from_secs(1), "server1 keeps the VIPs", |l| {
        l.sole_holder_is(S1)
    })?;
    let s1 = r.lab.agent_status(S1)?;
    ensure!(s1["degraded"] == true && s1["state"] == "MASTER", "{s1}");
    ensure!(
        s1["warnings"].to_string().contains("inside"),
        "status names the silent link: {s1}"
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn holder_losing_its_outside_uplink_hands_over() -> Result<()> {
    let r = started()?;
    let fault = Instant::now();
    r.lab.drop_uplink(S1, Link::Outside)?; // silent: carrier stays up
    let took = r.wait_sole_holder(S2, FAILOVER)?;
    println!(
        "uplink loss: VIPs on server2 {:?} after the fault",
        fault.elapsed().min(took)
    );
    let s1 = r.lab.agent_status(S1)?;
    ensure!(s1["state"] == "BACKUP", "{s1}");
    // The uplink returns: no move back.
    r.lab.heal()?;
    r.stays_sole_holder(S2, "server2 keeps the VIPs")?;
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn partition_between_servers_heals_to_the_most_recent_holder() -> Result<()> {
    let r = started()?;
    // Both still reach the gateway: two holders while partitioned (no quorum
    // with two nodes); the heal must leave exactly one, the newer one.
    r.lab.cut_between_servers(Link::Outside)?;
    r.lab.cut_between_servers(Link::Inside)?;
    r.wait_holds_both(S2)?;
    // Longer than the reclaim window: a real partition, not a stall.
    r.holds_for(
        Duration::from_millis(500),
        "both hold while partitioned",
        |l| Link::ALL.iter().all(|k| l.vip_holders(k.vip()).len() == 2),
    )?;
    r.lab.heal()?;
    let took = r.wait_sole_holder(S2, FAILOVER)?;
    println!("partition heal: one holder {took:?} after the heal");
    r.stays_sole_holder(S2, "one holder, server2")?;
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn switchover_and_sigterm_hand_over_gracefully() -> Result<()> {
    let mut r = started()?;
    let pinger = r
        .lab
        .start_pinger(Link::Outside.vip(), Duration::from_millis(1))?;
    wait_until(SETTLE, "first reply", || pinger.log().answered() > 0)?;
    r.lab.switchover(S1).with_context(|| r.logs())?;
    let took = r.wait_sole_holder(S2, FAILOVER)?;
    r.wait_state(S1, "BACKUP")?;
    let mac2 = server2_mac_outside(&r);
    wait_until(FAILOVER, "client reply from server2", || {
        pinger
            .log()
            .first_reply_from_after(&mac2, Instant::now() - took)
            .is_some()
    })?;
    let log = pinger.finish()?;
    println!(
        "switchover: VIPs on server2 after {took:?}, longest client gap {:?}",
        log.longest_gap_overall().len()
    );
    // SIGTERM on the new holder hands them back and exits cleanly.
    let mut a2 = r.take(S2);
    a2.signal(libc::SIGTERM)?;
    r.wait_sole_holder(S1, FAILOVER)?;
    let status = a2
        .wait_exit(Duration::from_secs(5))
        .context("agent did not exit after SIGTERM")?;
    ensure!(status.success(), "agent exit after SIGTERM: {status:?}");
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn notify_hooks_run_on_transitions() -> Result<()> {
    let lab = Lab::new()?;
    let marks = lab.dir().join("hooks.log");
    let script = lab.dir().join("notify.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", marks.display()),
    )?;
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )?;
    let hook = Overrides::new().set("hooks.notify", script.display().to_string());
    let read = || std::fs::read_to_string(&marks).unwrap_or_default();
    let a1 = lab.start_agent_with(S1, &hook)?;
    let _a2 = lab.start_agent_with(S2, &Overrides::new())?;
    // Whichever role server1 settles in (the faster starter may take the
    // VIPs), its hooks run; then a switchover makes it MASTER.
    wait_until(SETTLE, "server1's first hooks ran", || {
        read().contains("INSTANCE inside_network")
    })
    .with_context(|| a1.log_tail(30))?;
    if !lab.sole_holder_is(S1) {
        wait_until_ok(SETTLE, "server1 BACKUP", || {
            Ok(lab.agent_state(S1)? == "BACKUP")
        })?;
        lab.switchover(S1).with_context(|| a1.log_tail(30))?;
    }
    wait_until(SETTLE, "server1's MASTER hooks ran", || {
        // The last hook of the MASTER transition.
        read().contains("INSTANCE inside_network MASTER 101")
    })
    .with_context(|| format!("hooks: {}\n{}", read(), a1.log_tail(30)))?;
    let text = read();
    // keepalived's argument convention: GROUP name STATE 0, INSTANCE name STATE priority.
    ensure!(text.contains("GROUP VG_1 MASTER 0"), "hooks: {text}");
    ensure!(
        text.contains("INSTANCE inside_network MASTER 101"),
        "hooks: {text}"
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn bad_config_is_rejected_with_the_field_named() -> Result<()> {
    let lab = Lab::new()?;
    let text = lab
        .default_agent_config(S1)?
        .replace("priority = 101", "priority = 0");
    let path = lab.write_agent_config_raw(S1, &text)?;
    let check = lab.agent_cli(&["check-config", path.to_str().unwrap()])?;
    let err = String::from_utf8_lossy(&check.stderr).to_string();
    ensure!(
        !check.status.success() && err.contains("node.priority"),
        "check-config: {err}"
    );
    // `run` refuses it the same way, before touching anything. It may
    // exit before the lab sees it enter its namespace: that is an error
    // from the start itself, carrying the log.
    match lab.start_agent(S1) {
        Ok(mut p) => {
            let status = p
                .wait_exit(Duration::from_secs(5))
                .context("agent did not exit on a bad config")?;
            ensure!(
                !status.success() && p.log().contains("node.priority"),
                "run: {}",
                p.log()
            );
        }
        Err(e) => ensure!(
            format!("{e:#}").contains("exited at once")
                && format!("{e:#}").contains("node.priority"),
            "run: {e:#}"
        ),
    }
    ensure!(lab.vip_holders(Link::Outside.vip()).is_empty());
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn missing_capabilities_are_named() -> Result<()> {
    let lab = Lab::new()?;
    let config = lab.write_agent_config(S1, &Overrides::new())?;
    let bin = ha_lab::agent_bin()?;
    // Root without the network and BPF capabilities.
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-net_admin,-net_raw,-bpf,-sys_admin",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .context("setpriv (util-linux) is needed")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "agent started without capabilities: {err}"
    );
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"] {
        ensure!(err.contains(cap), "error does not name {cap}: {err}");
    }
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn unplugged_uplink_of_the_holder_hands_over_at_once() -> Result<()> {
    let mut r = started()?;
    let pinger = r
        .lab
        .start_pinger(Link::Outside.vip(), Duration::from_millis(2))?;
    wait_until(SETTLE, "first reply", || pinger.log().answered() > 0)?;
    let fault = Instant::now();
    r.lab.link_down(S1, Link::Outside)?; // the cable: carrier lost
    let took = r.wait_sole_holder(S2, FAILOVER)?;
    let mac2 = server2_mac_outside(&r);
    wait_until(FAILOVER, "client reply from server2", || {
        pinger.log().first_reply_from_after(&mac2, fault).is_some()
    })?;
    let log = pinger.finish()?;
    let gap = log.longest_gap(fault, Instant::now());
    let first = log
        .first_reply_from_after(&mac2, fault)
        .context("no reply")?;
    println!(
        "outside carrier lost on the holder: VIPs on server2 after {took:?}; first client reply via server2 {:?} after the fault; longest client gap {:?}",
        first.received - fault,
        gap.len()
    );
    // Handed over on the carrier, not after the witness timed out.
    let l1 = r.agent(S1).log();
    let carrier = l1.find("carrier LOST").context("no carrier loss logged")?;
    let handover = l1[carrier..]
        .find("we reach 0")
        .map(|at| carrier + at)
        .with_context(|| format!("no handover after the carrier loss:\n{}", r.logs()))?;
    ensure!(
        !l1[carrier..handover].contains("witness does not answer"),
        "the handover waited for the witness timeout:\n{}",
        r.logs()
    );
    r.lab.heal()?;
    r.stays_sole_holder(S2, "server2 keeps the VIPs")?;
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn stalled_cpus_move_nothing() -> Result<()> {
    let r = started()?;
    let history = |s: Server| -> Result<(usize, u64)> {
        let st = r.lab.agent_status(s)?;
        Ok((
            st["transitions"].as_array().map_or(0, Vec::len),
            st["false_alarms"].as_u64().unwrap_or(0),
        ))
    };
    let before = [history(S1)?, history(S2)?];
    // A priority-99 busy loop on one CPU for 50 ms, 20 times, each CPU in
    // turn: what a stalled vCPU does to whatever was to run there.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for k in 0..20 {
        ha_lab::faults::cpu_hog(k % cpus, 99, Duration::from_millis(50))?;
        ha_lab::sleep(Duration::from_millis(150))?;
    }
    ha_lab::sleep(Duration::from_millis(500))?;
    let after = [history(S1)?, history(S2)?];
    ensure!(
        before == after,
        "the stalls moved the VIPs (transitions, false alarms) {before:?} -> {after:?}:\n{}",
        r.logs()
    );
    ensure!(r.lab.sole_holder_is(S1), "{}", r.lab.describe_vips());
    for s in Server::ALL {
        let st = r.lab.agent_status(s)?;
        println!(
            "{s}: senders {} (real-time {}), slots {}, missed {}, best-sender lateness p50 {} us p99 {} us max {} us",
            st["sender"]["threads"],
            st["sender"]["realtime_threads"],
            st["sender"]["slots"],
            st["sender"]["missed_slots"],
            st["sender"]["lateness_p50_us"],
            st["sender"]["lateness_p99_us"],
            st["sender"]["lateness_max_us"]
        );
    }
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn hung_holder_stops_serving_its_vips_within_its_lease() -> Result<()> {
    let mut r = started()?;
    let vip = Link::Outside.vip();
    let mac1 = r.lab.mac(S1, Link::Outside).to_string();
    // A client whose ARP entry gratuitous ARP cannot move (a stale cache).
    r.lab.exec_ok(
        r.lab.client_ns(),
        &[
            "ip",
            "neigh",
            "replace",
            &vip.to_string(),
            "lladdr",
            &mac1,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    let pinger = r.lab.start_pinger(vip, Duration::from_millis(2))?;
    wait_until(SETTLE, "replies from server1", || {
        pinger
            .log()
            .first_reply_from_after(&mac1, Instant::now() - Duration::from_secs(1))
            .is_some()
    })?;
    let lease = Duration::from_millis(r.lab.agent_status(S1)?["lease_ms"].as_u64().unwrap_or(0));
    let stopped = Instant::now();
    r.agent(S1).stop()?; // SIGSTOP: agent hung, kernel and VIP addresses alive
    r.wait_holds_both(S2)?;
    ha_lab::sleep(Duration::from_millis(600))?;
    let resumed = Instant::now();
    r.agent(S1).cont()?;
    r.wait_sole_holder(S2, FAILOVER)?;
    let log = pinger.finish()?;
    let last = log
        .replies_after(stopped)
        .filter(|p| p.from_mac == mac1 && p.received < resumed)
        .map(|p| p.received)
        .max();
    let served = last.map_or(Duration::ZERO, |t| t - stopped);
    println!(
        "hang: server1's kernel answered for the VIP {served:?} after SIGSTOP (lease {lease:?})"
    );
    // The lease is a kernel mechanism: nothing may come from the hung side
    // once it lapsed (the bound only absorbs the pinger's own timing).
    ensure!(
        served <= lease + Duration::from_millis(100),
        "server1 kept serving the VIP {served:?} after SIGSTOP (lease {lease:?}):\n{}",
        r.logs()
    );
    let s1 = r.lab.agent_status(S1)?;
    ensure!(
        s1["links"][0]["lease_drops"].as_u64().unwrap_or(0) > 0,
        "no frame counted as dropped by the lease: {s1}"
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn status_is_root_only_unless_the_status_group_reads() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let r = ha_lab::pair::started_with([
        Overrides::new().set("node.status_group", "nogroup"),
        Overrides::new(),
    ])?;
    let bin = r.lab.agent_binary()?;
    let run_as = |server: Server, gid: u32, command: &str| -> Result<std::process::Output> {
        let sock = r.lab.status_socket(server);
        Ok(std::process::Command::new(&bin)
            .args([command, "--socket", sock.to_str().context("path")?])
            .uid(65534)
            .gid(gid)
            .output()?)
    };
    let nogroup = 65534;
    let ok = run_as(S1, nogroup, "status")?;
    ensure!(
        ok.status.success(),
        "a status_group member reads the status: {ok:?}"
    );
    let refused = run_as(S1, nogroup, "switchover")?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("only root may change"),
        "a status_group member cannot switch over: {refused:?}"
    );
    let stranger = run_as(S1, 4242, "status")?;
    ensure!(
        !stranger.status.success(),
        "a non-member cannot read: {stranger:?}"
    );
    let no_group = run_as(S2, nogroup, "status")?;
    ensure!(
        !no_group.status.success(),
        "without status_group only root reads: {no_group:?}"
    );
    ensure!(r.lab.sole_holder_is(S1), "nothing moved");
    ensure!(r.lab.agent_status(S2)?["state"] == "BACKUP");
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn a_peer_with_this_nodes_name_is_warned_about() -> Result<()> {
    // A config copied to both servers without changing the name.
    let mut r = ha_lab::pair::started_with([
        Overrides::new(),
        Overrides::new().set("node.name", "server1"),
    ])?;
    const WARNING: &str = "the peer has this node's name";
    for s in [S1, S2] {
        let log = r.agent(s).log();
        ensure!(
            log.contains(WARNING),
            "{s} warns of the peer's name; its log:\n{log}"
        );
    }
    // The pair still works as one: server1 holds, alone.
    r.stays_sole_holder(S1, "server1 keeps the VIPs")?;
    drop(r);
    // Distinct names: no warning.
    let mut ok = started()?;
    for s in [S1, S2] {
        ensure!(!ok.agent(s).log().contains(WARNING), "{s}: no warning");
    }
    Ok(())
}

/// The witness ARP requests go to the witness's MAC once it answered (a
/// request every 16 ms broadcast by both servers is a load on every host
/// of the LAN), a witness whose MAC changes (a replaced gateway) is found
/// again after at most one unanswered request, and one that ignores
/// unicast ARP is asked by broadcast after three: it never looks dead.
#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn witness_is_asked_by_unicast_and_found_again_after_a_new_mac() -> Result<()> {
    use ha_lab::capture::watch_arp_requests;
    use ha_lab::GATEWAY;
    let mut r = started()?;
    let sw = r.lab.switch_ns().to_string();
    let bridge = Link::Outside.bridge();
    let mac_bytes = ha_lab::attacker::parse_mac;
    let witness_mac = || -> Result<[u8; 6]> {
        let out = ha_lab::netns::ip_in(&sw, &["-j", "link", "show", "dev", bridge])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        mac_bytes(v[0]["address"].as_str().context("no address")?)
    };
    let old = witness_mac()?;
    let new = [0x02, 0x77, 0, 0, 0, 1];
    let watch =
        |d: Duration| Server::ALL.map(|s| watch_arp_requests(&sw, s.port(Link::Outside), d));
    let requests = |h: [std::thread::JoinHandle<_>; 2]| -> Result<Vec<Vec<(Instant, _)>>> {
        let mut all = Vec::new();
        for (s, h) in Server::ALL.into_iter().zip(h) {
            let seen: Vec<(Instant, ha_lab::capture::ArpFrame)> = h
                .join()
                .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
            let from = mac_bytes(r.lab.mac(s, Link::Outside))?;
            all.push(
                seen.into_iter()
                    .filter(|(_, q)| q.source == from && q.target_ip == GATEWAY)
                    .collect(),
            );
        }
        Ok(all)
    };
    ha_lab::sleep(Duration::from_millis(300))?;

    // Settled: to the witness's MAC.
    let settled = requests(watch(Duration::from_secs(1)))?;
    for (s, seen) in Server::ALL.into_iter().zip(&settled) {
        let broadcast = seen.iter().filter(|(_, q)| q.broadcast()).count();
        let to_witness = seen.iter().filter(|(_, q)| q.destination == old).count();
        println!(
            "{s}: {} witness requests in 1 s: {to_witness} to its MAC, {broadcast} broadcast",
            seen.len()
        );
        ensure!(
            to_witness + broadcast == seen.len(),
            "{s}: a request went elsewhere: {seen:?}"
        );
        // A broadcast only follows a request left unanswered for half an
        // interval (a sender stall longer than 8 ms here).
        ensure!(
            seen.len() >= 30 && broadcast * 10 <= seen.len(),
            "{s}: {broadcast} of {} witness requests broadcast:\n{}",
            seen.len(),
            r.logs()
        );
    }

    // The witness's MAC changes: one request to the old MAC goes
    // unanswered, a broadcast finds the new one, unicast again.
    let h = watch(Duration::from_millis(1500));
    ha_lab::sleep(Duration::from_millis(300))?;
    let changed = Instant::now();
    ha_lab::netns::ip_in(
        &sw,
        &["link", "set", "dev", bridge, "address", "02:77:00:00:00:01"],
    )?;
    let after = requests(h)?;
    for (s, seen) in Server::ALL.into_iter().zip(&after) {
        let later: Vec<_> = seen.iter().filter(|(t, _)| *t >= changed).collect();
        let to_old = later.iter().filter(|(_, q)| q.destination == old).count();
        let first_new = later
            .iter()
            .position(|(_, q)| q.destination == new)
            .with_context(|| format!("{s}: no request to the new MAC: {later:?}"))?;
        // Found by a broadcast, or by the witness's answer (from its new
        // MAC) to a request to the old one while its switch still took
        // frames for that.
        let found_by_broadcast = later[..first_new].iter().any(|(_, q)| q.broadcast());
        println!(
            "{s}: after the witness's new MAC: {to_old} request(s) to the old one, the first to the new one {:?} after the change (found by broadcast: {found_by_broadcast})",
            later[first_new].0 - changed
        );
        // One unanswered request, and one sent as the change was made.
        ensure!(
            to_old <= 2,
            "{s}: {to_old} requests to the old MAC: {later:?}"
        );
        let tail = &later[first_new..];
        ensure!(
            tail.iter().filter(|(_, q)| q.destination == new).count() * 10 >= tail.len() * 9,
            "{s}: not back to unicast: {tail:?}"
        );
    }
    // A witness that answers broadcast requests only: three unanswered
    // unicasts, then broadcast for 64 requests (about a second), then one
    // more try.
    let h = watch(Duration::from_millis(1800));
    ha_lab::sleep(Duration::from_millis(300))?;
    r.lab.witness_ignores_unicast_arp()?;
    let policed = Instant::now();
    let after = requests(h)?;
    for (s, seen) in Server::ALL.into_iter().zip(&after) {
        let later: Vec<_> = seen.iter().filter(|(t, _)| *t >= policed).collect();
        let unicast = later.iter().filter(|(_, q)| !q.broadcast()).count();
        let longest_broadcast_run = later
            .split(|(_, q)| !q.broadcast())
            .map(<[_]>::len)
            .max()
            .unwrap_or(0);
        println!(
            "{s}: a witness that ignores unicast: {} requests in 1.5 s, {unicast} unicast, the longest run of broadcasts {longest_broadcast_run}",
            later.len()
        );
        // Three strikes, one retry after the backoff, and one that crossed
        // the rule's installation.
        ensure!(
            unicast <= 5,
            "{s}: {unicast} unicast requests to a witness that ignores them: {later:?}"
        );
        ensure!(
            longest_broadcast_run >= 60,
            "{s}: no backoff to broadcast: {later:?}"
        );
    }
    for s in Server::ALL {
        let log = r.agent(s).log();
        ensure!(
            !log.contains("witness does not answer"),
            "{s}: the witness looked dead:\n{}",
            r.logs()
        );
        let st = r.lab.agent_status(s)?;
        ensure!(
            st["links"][0]["witness_up"] == true,
            "{s}: witness not up: {}",
            st["links"][0]
        );
        println!(
            "{s}: witness requests {} ({} broadcast)",
            st["sender"]["witness_requests"], st["sender"]["witness_broadcasts"]
        );
    }
    r.stays_sole_holder(S1, "server1 keeps the VIPs")?;
    Ok(())
}
