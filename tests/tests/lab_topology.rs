//! Privileged tests of the lab itself: topology, faults, processes, pinger,
//! cleanup. Run by `cargo xtask test` (as root) with `--ignored --test-threads=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ha_lab::selftest;
use ha_lab::{netns, spawn_in, wait_until, Lab, Link, Overrides, Server, OUTSIDE_VIP};

const PRIV: &str = "privileged: run by cargo xtask test";

fn lab() -> Lab {
    Lab::new().expect("building the lab (needs root)")
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn topology_reachability_addresses_and_macs() {
    let _ = PRIV;
    let lab = lab();
    selftest::check_baseline(&lab).unwrap();
    // The client is on the outside bridge only: the switch does not route.
    assert!(!lab.reachable(lab.client_ns(), Server::S1.ip(Link::Inside)));
    // Interface names and MACs are as documented.
    assert_eq!(lab.mac(Server::S2, Link::Outside), "02:4c:00:00:02:00");
    assert_eq!(
        lab.server_with_mac("02:4c:00:00:01:01"),
        Some((Server::S1, Link::Inside))
    );
    for ns in lab.namespaces() {
        assert!(ns.starts_with(lab.prefix()), "{ns}");
    }
    let out = lab
        .exec(lab.server_ns(Server::S1), &["ip", "-o", "link"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("eth0@") && text.contains("eth1@"), "{text}");
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn links_down_and_link_down() {
    let lab = lab();
    selftest::check_links_down(&lab).unwrap();
    selftest::check_link_down(&lab).unwrap();
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn isolate_keeps_carrier_and_drops_everything() {
    let lab = lab();
    selftest::check_isolate(&lab).unwrap();
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn drop_uplink_silences_one_port() {
    let lab = lab();
    selftest::check_drop_uplink(&lab).unwrap();
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn cut_between_servers_only_cuts_server_to_server() {
    let lab = lab();
    selftest::check_cut_between_servers(&lab).unwrap();
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn random_loss_drops_about_the_requested_share() {
    let lab = lab();
    selftest::check_random_loss(&lab).unwrap();
    let rules = lab.fault_rules().unwrap();
    assert!(
        !rules.contains("numgen"),
        "heal left rules behind:\n{rules}"
    );
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn pinger_measures_an_outage_and_the_answering_mac() {
    let lab = lab();
    let target = Server::S1.ip(Link::Outside);
    assert!(lab.reachable(lab.client_ns(), target));
    let pinger = lab.start_pinger(target, Duration::from_millis(2)).unwrap();
    ha_lab::sleep(Duration::from_millis(300)).unwrap();
    lab.link_down(Server::S1, Link::Outside).unwrap();
    let t_fault = Instant::now();
    ha_lab::sleep(Duration::from_millis(200)).unwrap();
    let t_heal = Instant::now();
    lab.heal().unwrap();
    ha_lab::sleep(Duration::from_millis(300)).unwrap();
    let log = pinger.finish().unwrap();
    let (sent, answered) = log.answered_between(log.started, t_fault);
    assert!(sent > 50, "only {sent} requests in 300 ms");
    assert!(
        answered * 10 >= sent * 9,
        "{answered}/{sent} answered before the fault"
    );
    assert_eq!(
        log.macs(),
        vec![lab.mac(Server::S1, Link::Outside).to_string()]
    );
    let gap = log.longest_gap(log.started, log.sent.last().copied().unwrap());
    assert!(
        gap.len() >= Duration::from_millis(190) && gap.len() < Duration::from_millis(600),
        "gap {:?}",
        gap.len()
    );
    let first = log.first_reply_after(t_heal).expect("replies after heal");
    assert!(first.received - t_heal < Duration::from_millis(200));
    let none = log.first_reply_after(t_fault).unwrap();
    assert!(
        none.sent >= t_heal,
        "a reply to a request sent during the outage: sent {:?} after the fault, received {:?} after, heal at {:?}",
        none.sent - t_fault,
        none.received - t_fault,
        t_heal - t_fault
    );
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn processes_stop_continue_and_die_with_the_lab() {
    let lab = lab();
    let log = lab.dir().join("sleep.log");
    let mut p = spawn_in(lab.server_ns(Server::S1), "sleep", &["30"], &log).unwrap();
    let pid = p.pid();
    // It runs in server1's namespace.
    let own = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_of_lab = netns::in_netns(lab.server_ns(Server::S1), || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    assert_eq!(own, ns_of_lab);
    p.stop().unwrap();
    wait_until(Duration::from_secs(2), "sleep to be stopped", || {
        proc_state(pid) == Some('T')
    })
    .unwrap();
    p.cont().unwrap();
    wait_until(Duration::from_secs(2), "sleep to run again", || {
        proc_state(pid) == Some('S')
    })
    .unwrap();
    assert!(p.wait_exit(Duration::from_millis(50)).is_none());
    let status = p.kill().unwrap();
    assert!(!status.success());

    // A process left running is killed when the lab goes.
    let mut q = spawn_in(lab.server_ns(Server::S2), "sleep", &["30"], &log).unwrap();
    let names = lab.namespaces();
    let dir = lab.dir().to_path_buf();
    drop(lab);
    assert!(
        q.wait_exit(Duration::from_secs(2)).is_some(),
        "process outlived its lab"
    );
    let left = netns::list_netns();
    for n in names {
        assert!(!left.contains(&n), "namespace {n} left behind");
    }
    assert!(!dir.exists(), "temp dir left behind");
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn cleanup_stale_and_orphans() {
    // A leaked lab (as after a crash) is removed by cleanup_stale(prefix).
    let lab = lab();
    let prefix = lab.prefix().to_string();
    let names = lab.namespaces();
    std::mem::forget(lab);
    let removed = Lab::cleanup_stale(&format!("{prefix}-")).unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    let left = netns::list_netns();
    assert!(names.iter().all(|n| !left.contains(n)));
    assert!(!Path::new(&format!("/tmp/ha-lab-{prefix}")).exists());

    // A namespace of a lab whose owner (pid 0x3ffffe, above pid_max) is dead
    // is removed by the next Lab::new(); one of a live process is not.
    let dead = "hl3ffffen0-sw";
    netns::ip(&["netns", "add", dead]).unwrap();
    let live = format!("hl{:x}n999-sw", std::process::id());
    netns::ip(&["netns", "add", &live]).unwrap();
    let lab = self::lab();
    let left = netns::list_netns();
    assert!(!left.contains(&dead.to_string()), "orphan not removed");
    assert!(left.contains(&live), "a live lab was removed");
    netns::delete_netns(&live).unwrap();
    lab.close().unwrap();
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn agent_configs_are_valid_and_share_a_key() {
    let lab = lab();
    let c1 = lab
        .write_agent_config(Server::S1, &Overrides::new())
        .unwrap();
    let c2 = lab
        .write_agent_config(
            Server::S2,
            &Overrides::new().set("node.fence_timeout_ms", 500),
        )
        .unwrap();
    let p1 = ha_agent::operator::config::Config::load(&c1).unwrap();
    let p2 = ha_agent::operator::config::Config::load(&c2).unwrap();
    assert_eq!(p1.node.priority, 101);
    assert!(p1.node.nopreempt);
    assert_eq!(p2.node.priority, 100);
    assert_eq!(p2.node.fence_timeout_ms, 500);
    assert_eq!(p1.node.key_file, p2.node.key_file);
    assert_eq!(p1.links[0].witness, Some(ha_lab::GATEWAY));
    assert_eq!(p1.links[1].witness, None);
    assert_eq!(p2.links[1].local_ip, Server::S2.ip(Link::Inside));
    assert_eq!(p2.links[1].peer_ip, Server::S1.ip(Link::Inside));
    let vips = p1.vips();
    assert_eq!(vips[0].address, OUTSIDE_VIP);
    assert_eq!(vips[1].interface, "eth1");
    let key = std::fs::read_to_string(&p1.node.key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&p1.node.key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(p1.node.status_socket.starts_with(lab.dir()));
    // A bad override is caught by the agent's own validation.
    assert!(lab
        .write_agent_config(Server::S1, &Overrides::new().set("node.priority", 0))
        .is_err());
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

/// The lab's agent helpers against the real agent: both start, server1
/// takes both VIPs, status answers, server1's links go down, server2 takes
/// both VIPs and answers the client. (The full failover suite lives elsewhere;
/// this only proves the helpers work end to end.)
#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn agent_helpers_start_status_and_failover() {
    let lab = lab();
    let mut a1 = lab.start_agent(Server::S1).unwrap();
    let mut a2 = lab.start_agent(Server::S2).unwrap();
    if let Err(e) = wait_until(Duration::from_secs(10), "server1 to hold both VIPs", || {
        lab.sole_holder_is(Server::S1)
    }) {
        panic!(
            "{e:#}\nserver1 log:\n{}\nserver2 log:\n{}",
            a1.log_tail(30),
            a2.log_tail(30)
        );
    }
    assert!(a1.is_running() && a2.is_running());
    let status = lab.agent_status(Server::S1).unwrap();
    assert_eq!(status["state"], "MASTER", "{status}");
    assert_eq!(status["node"], "server1", "{status}");
    ha_lab::wait_until_ok(Duration::from_secs(5), "server2 to report BACKUP", || {
        Ok(lab.agent_state(Server::S2)? == "BACKUP")
    })
    .unwrap();

    let mac2 = lab.mac(Server::S2, Link::Outside).to_string();
    let pinger = lab
        .start_pinger(OUTSIDE_VIP, Duration::from_millis(2))
        .unwrap();
    wait_until(Duration::from_secs(3), "replies from server1", || {
        pinger.log().answered() > 10
    })
    .unwrap();
    lab.links_down(Server::S1).unwrap();
    let t_fault = Instant::now();
    let took = wait_until(Duration::from_secs(5), "server2 to hold both VIPs", || {
        lab.vips()
            .iter()
            .all(|v| lab.vip_holders(*v).contains(&Server::S2))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nserver2 log:\n{}", a2.log_tail(30)));
    wait_until(Duration::from_secs(3), "a reply from server2", || {
        pinger
            .log()
            .first_reply_from_after(&mac2, t_fault)
            .is_some()
    })
    .unwrap();
    let log = pinger.finish().unwrap();
    let first = log.first_reply_from_after(&mac2, t_fault).unwrap();
    eprintln!(
        "takeover seen after {took:?}; client answered by server2 after {:?}",
        first.received - t_fault
    );
    assert_eq!(
        lab.client_neighbour_mac(OUTSIDE_VIP).unwrap().as_deref(),
        Some(mac2.as_str())
    );
    let (_, clean) = a2.terminate(Duration::from_secs(3)).unwrap();
    assert!(clean, "server2's agent did not exit on SIGTERM within 3 s");
    a1.kill().unwrap();
}
