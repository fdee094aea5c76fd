//! Checks that the lab's topology and each fault do what they say, with pings.
//! Used by the privileged tests (`tests/lab_topology.rs`) and `cargo xtask lab --self-test`.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::topology::{Lab, Link, Node, Server};
use crate::{CLIENT_IP, GATEWAY, INSIDE_SWITCH};

/// One ping probe: from a node to an address.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub from: Node,
    pub to: Ipv4Addr,
}

impl Probe {
    pub fn label(&self) -> String {
        let from = match self.from {
            Node::Switch => "switch".to_string(),
            Node::Client => "client".to_string(),
            Node::Server(s) => s.name().to_string(),
        };
        format!("{from} -> {}", self.to)
    }
}

/// The standard probes (9): each server to the gateway, to the inside switch
/// address and to its peer on both links; the client to both servers and the gateway.
pub fn standard_probes() -> Vec<Probe> {
    let s1 = Node::Server(Server::S1);
    let s2 = Node::Server(Server::S2);
    vec![
        Probe {
            from: s1,
            to: GATEWAY,
        },
        Probe {
            from: s1,
            to: Server::S2.ip(Link::Outside),
        },
        Probe {
            from: s1,
            to: INSIDE_SWITCH,
        },
        Probe {
            from: s1,
            to: Server::S2.ip(Link::Inside),
        },
        Probe {
            from: s2,
            to: GATEWAY,
        },
        Probe {
            from: s2,
            to: INSIDE_SWITCH,
        },
        Probe {
            from: Node::Client,
            to: Server::S1.ip(Link::Outside),
        },
        Probe {
            from: Node::Client,
            to: Server::S2.ip(Link::Outside),
        },
        Probe {
            from: Node::Client,
            to: GATEWAY,
        },
    ]
}

/// Runs the probes in parallel; true = at least one of 3 pings answered.
pub fn reachability(lab: &Lab, probes: &[Probe]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| s.spawn(move || lab.reachable(lab.ns(p.from), p.to)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
}

/// Checks the standard probes against `expected` (same order as
/// [`standard_probes`]), re-probing for up to 4 s: after a fault is healed,
/// a neighbour entry left INCOMPLETE re-ARPs only at its next retransmit
/// (1 s), which the lab deliberately does not hide. The error lists every
/// probe that still disagreed.
pub fn expect_reachability(lab: &Lab, what: &str, expected: [bool; 9]) -> Result<()> {
    let probes = standard_probes();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    loop {
        if crate::interrupted() {
            bail!("interrupted");
        }
        let got = reachability(lab, &probes);
        let wrong: Vec<String> = probes
            .iter()
            .zip(got.iter().zip(expected.iter()))
            .filter(|(_, (g, e))| g != e)
            .map(|(p, (g, _))| {
                format!(
                    "{} {}",
                    p.label(),
                    if *g {
                        "answered (expected no answer)"
                    } else {
                        "did not answer (expected an answer)"
                    }
                )
            })
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline || crate::interrupted() {
            bail!("{what}: {}", wrong.join("; "));
        }
        crate::sleep(Duration::from_millis(100))?;
    }
}

/// True if the server's interface on `link` has carrier (operstate UP, no NO-CARRIER).
pub fn has_carrier(lab: &Lab, server: Server, link: Link) -> Result<bool> {
    let out = crate::netns::ip_in(
        lab.server_ns(server),
        &["-j", "link", "show", "dev", link.ifname()],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let no_carrier = v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "NO-CARRIER"));
    Ok(!no_carrier && v[0]["operstate"] == "UP")
}

fn expect_carrier(lab: &Lab, server: Server, link: Link, want: bool, what: &str) -> Result<()> {
    let got = has_carrier(lab, server, link)?;
    if got != want {
        bail!(
            "{what}: {server} {} carrier is {} (expected {})",
            link.ifname(),
            if got { "up" } else { "down" },
            if want { "up" } else { "down" }
        );
    }
    Ok(())
}

const ALL: [bool; 9] = [true; 9];
/// server1 cut off entirely.
const S1_GONE: [bool; 9] = [false, false, false, false, true, true, false, true, true];
/// server1's outside link dead, inside fine.
const S1_OUT_GONE: [bool; 9] = [false, false, true, true, true, true, false, true, true];
/// server1 <-> server2 outside dead only.
const CUT_OUT: [bool; 9] = [true, false, true, true, true, true, true, true, true];
/// server1 <-> server2 inside dead only.
const CUT_IN: [bool; 9] = [true, true, true, false, true, true, true, true, true];

/// Baseline: every probe answers, carriers up, addresses and MACs as designed.
pub fn check_baseline(lab: &Lab) -> Result<()> {
    expect_reachability(lab, "baseline", ALL)?;
    for s in Server::ALL {
        for l in Link::ALL {
            expect_carrier(lab, s, l, true, "baseline")?;
            let addrs = lab.addresses(lab.server_ns(s), l.ifname())?;
            let want = format!("{}/24", s.ip(l));
            if addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() != [want.clone()] {
                bail!(
                    "baseline: {s} {} has {addrs:?}, expected [{want}]",
                    l.ifname()
                );
            }
        }
        let mac = lab
            .client_neighbour_mac(s.ip(Link::Outside))?
            .with_context(|| format!("client has no ARP entry for {s}"))?;
        if mac != lab.mac(s, Link::Outside) {
            bail!(
                "baseline: client's ARP entry for {s} is {mac}, expected {}",
                lab.mac(s, Link::Outside)
            );
        }
    }
    let client = lab.addresses(lab.client_ns(), "eth0")?;
    if client.first().map(|c| c.addr) != Some(CLIENT_IP) {
        bail!("baseline: client has {client:?}");
    }
    for vip in lab.vips() {
        let h = lab.vip_holders(vip);
        if !h.is_empty() {
            bail!("baseline: VIP {vip} is held by {h:?} before any agent ran");
        }
    }
    Ok(())
}

/// links_down(server1): both carriers down, server1 unreachable; heal restores.
pub fn check_links_down(lab: &Lab) -> Result<()> {
    lab.links_down(Server::S1)?;
    for l in Link::ALL {
        expect_carrier(lab, Server::S1, l, false, "links_down")?;
        expect_carrier(lab, Server::S2, l, true, "links_down")?;
    }
    expect_reachability(lab, "links_down(server1)", S1_GONE)?;
    lab.links_up(Server::S1)?;
    expect_reachability(lab, "links_up(server1)", ALL)
}

/// link_down(server1, outside): only eth0 loses carrier.
pub fn check_link_down(lab: &Lab) -> Result<()> {
    lab.link_down(Server::S1, Link::Outside)?;
    expect_carrier(lab, Server::S1, Link::Outside, false, "link_down")?;
    expect_carrier(lab, Server::S1, Link::Inside, true, "link_down")?;
    expect_reachability(lab, "link_down(server1, outside)", S1_OUT_GONE)?;
    lab.heal()?;
    expect_reachability(lab, "heal after link_down", ALL)
}

/// isolate(server1): carrier stays up, every frame dropped.
pub fn check_isolate(lab: &Lab) -> Result<()> {
    lab.isolate(Server::S1)?;
    for l in Link::ALL {
        expect_carrier(lab, Server::S1, l, true, "isolate")?;
    }
    expect_reachability(lab, "isolate(server1)", S1_GONE)?;
    lab.heal()?;
    expect_reachability(lab, "heal after isolate", ALL)
}

/// drop_uplink(server1, outside): carrier up, only the outside port silent.
pub fn check_drop_uplink(lab: &Lab) -> Result<()> {
    lab.drop_uplink(Server::S1, Link::Outside)?;
    expect_carrier(lab, Server::S1, Link::Outside, true, "drop_uplink")?;
    expect_reachability(lab, "drop_uplink(server1, outside)", S1_OUT_GONE)?;
    lab.heal()?;
    expect_reachability(lab, "heal after drop_uplink", ALL)
}

/// cut_between_servers(outside) then (inside): only server<->server on that bridge.
pub fn check_cut_between_servers(lab: &Lab) -> Result<()> {
    lab.cut_between_servers(Link::Outside)?;
    expect_reachability(lab, "cut_between_servers(outside)", CUT_OUT)?;
    lab.heal()?;
    lab.cut_between_servers(Link::Inside)?;
    expect_reachability(lab, "cut_between_servers(inside)", CUT_IN)?;
    lab.heal()?;
    expect_reachability(lab, "heal after cut_between_servers", ALL)
}

/// random_loss(30): a ping round trip crosses two tested frames, so about
/// 49% of 100 pings come back; after heal all do. Returns the replies seen.
pub fn check_random_loss(lab: &Lab) -> Result<u32> {
    // Resolve ARP first so the loss applies to the pings only.
    expect_reachability(lab, "before random_loss", ALL)?;
    if !lab.reachable(lab.server_ns(Server::S1), Server::S2.ip(Link::Inside)) {
        bail!("before random_loss: server1 does not reach server2 inside");
    }
    lab.random_loss(30)?;
    let n = 100;
    let got = lab.ping_count(
        lab.client_ns(),
        Server::S1.ip(Link::Outside),
        n,
        Duration::from_millis(200),
    )?;
    let s2s = lab.ping_count(
        lab.server_ns(Server::S1),
        Server::S2.ip(Link::Inside),
        n,
        Duration::from_millis(200),
    )?;
    lab.heal()?;
    // Binomial(100, 0.49): mean 49, sd 5; accept +-5 sd.
    for (what, got) in [
        ("client -> server1", got),
        ("server1 -> server2 inside", s2s),
    ] {
        if !(24..=74).contains(&got) {
            bail!("random_loss(30): {what}: {got}/{n} replies, expected about 49 (49%)");
        }
    }
    let after = lab.ping_count(
        lab.client_ns(),
        Server::S1.ip(Link::Outside),
        50,
        Duration::from_millis(200),
    )?;
    if after != 50 {
        bail!("heal after random_loss: only {after}/50 replies");
    }
    Ok(got)
}

/// Every check above, in order, healing between them. Returns a line per check.
pub fn self_test(lab: &Lab) -> Result<Vec<String>> {
    type Check = fn(&Lab) -> Result<()>;
    let checks: [(&str, Check); 6] = [
        (
            "baseline reachability, carriers, addresses, MACs",
            check_baseline,
        ),
        ("links_down / links_up", check_links_down),
        ("link_down (one port) / heal", check_link_down),
        (
            "isolate (carrier up, all frames dropped) / heal",
            check_isolate,
        ),
        ("drop_uplink (one port silent) / heal", check_drop_uplink),
        (
            "cut_between_servers (outside, inside) / heal",
            check_cut_between_servers,
        ),
    ];
    let mut report = Vec::new();
    for (name, check) in checks {
        if crate::interrupted() {
            bail!("interrupted");
        }
        let t = std::time::Instant::now();
        check(lab).with_context(|| format!("self-test {name:?}"))?;
        report.push(format!("ok  {name} ({} ms)", t.elapsed().as_millis()));
    }
    if crate::interrupted() {
        bail!("interrupted");
    }
    let t = std::time::Instant::now();
    let got = check_random_loss(lab).context("self-test random_loss")?;
    report.push(format!(
        "ok  random_loss(30%): {got}/100 client pings answered (expected ~49) ({} ms)",
        t.elapsed().as_millis()
    ));
    Ok(report)
}
