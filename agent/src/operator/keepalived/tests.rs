use std::net::Ipv4Addr;
use std::path::Path;

use super::*;
use crate::operator::config::Config;

const SEED1: &str = include_str!("../../../tests/data/keepalived/seed-server1.conf");
const SEED2: &str = include_str!("../../../tests/data/keepalived/seed-server2.conf");
const DOC: &str = include_str!("../../../tests/data/keepalived/documented-options.conf");
const DOC_PEER: &str = include_str!("../../../tests/data/keepalived/documented-options-peer.conf");

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The seed's addresses, which its keepalived.conf does not hold.
fn seed_options(server: u8) -> ImportOptions {
    let (me, peer) = if server == 1 { (110, 114) } else { (114, 110) };
    let (mi, pi) = if server == 1 { (100, 101) } else { (101, 100) };
    let mut o = ImportOptions {
        name: Some(format!("server{server}")),
        hostname: "unused".into(),
        ..Default::default()
    };
    o.local_ips
        .insert("eth0".into(), ip(&format!("10.96.153.{me}")));
    o.peer_ips
        .insert("eth0".into(), ip(&format!("10.96.153.{peer}")));
    o.local_ips
        .insert("eth1".into(), ip(&format!("192.168.1.{mi}")));
    o.peer_ips
        .insert("eth1".into(), ip(&format!("192.168.1.{pi}")));
    o.witnesses.insert("eth0".into(), ip("10.96.153.1"));
    o
}

fn src<'a>(path: &'a str, text: &'a str) -> Source<'a> {
    Source {
        path: Path::new(path),
        text,
    }
}

fn refused(r: Result<Imported, ImportError>) -> Vec<Problem> {
    match r {
        Err(ImportError::Refused(p)) => p,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn parse(i: &Imported) -> Config {
    Config::parse(&i.toml, Path::new("imported.toml")).unwrap_or_else(|e| panic!("{e}\n{}", i.toml))
}

#[test]
fn seed_server1_becomes_a_valid_config() {
    let i = import(src("server1.conf", SEED1), None, &seed_options(1)).unwrap();
    let c = parse(&i);
    assert_eq!(c.node.name, "server1");
    assert_eq!(c.node.group, "VG_1");
    assert_eq!(c.node.priority, 101);
    assert!(c.node.nopreempt);
    // Group order: inside_network, outside_network.
    let links: Vec<(&str, &str)> = c
        .links
        .iter()
        .map(|l| (l.name.as_str(), l.interface.as_str()))
        .collect();
    assert_eq!(links, [("inside", "eth1"), ("outside", "eth0")]);
    assert_eq!(c.links[0].local_ip, ip("192.168.1.100"));
    assert_eq!(c.links[0].peer_ip, ip("192.168.1.101"));
    assert_eq!(c.links[1].witness, Some(ip("10.96.153.1")));
    let vips: Vec<(String, String, String)> = c
        .vips()
        .into_iter()
        .map(|v| {
            (
                format!("{}/{}", v.address, v.prefix_len),
                v.interface,
                v.instance,
            )
        })
        .collect();
    assert_eq!(
        vips,
        [
            (
                "192.168.1.150/24".into(),
                "eth1".into(),
                "inside_network".into()
            ),
            (
                "10.96.153.239/24".into(),
                "eth0".into(),
                "outside_network".into()
            )
        ]
    );
    assert_eq!(
        c.hooks.notify.as_deref(),
        Some("/data/sh/mysqlfailover-server1.sh")
    );
    let notes = i.notes.join("\n");
    assert!(notes.contains("advert_int 1 s"), "{notes}");
    assert!(
        notes.contains("3605 ms"),
        "3 x 1 s + (256-101)/256 s: {notes}"
    );
    assert!(notes.contains("authentication PASS"), "{notes}");
    assert!(notes.contains("runs 3 times per transition"), "{notes}");
    // The seed's script sleeps 10 s first: the default 10 s bound would
    // stop it before it acts; keepalived never stopped it.
    assert_eq!(c.hooks.timeout_ms, 60_000);
    assert!(notes.contains("hooks.timeout_ms = 60000"), "{notes}");
    // The password itself never reaches the output.
    assert!(!i.toml.contains("3489"), "{}", i.toml);
    // The inside link has no witness: a TODO says what to put there.
    assert!(i.toml.contains("# TODO witness"), "{}", i.toml);
}

#[test]
fn seed_server2_typo_is_refused_naming_the_line() {
    let p = refused(import(src("server2.conf", SEED2), None, &seed_options(2)));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, 1);
    assert_eq!(p[0].file, Path::new("server2.conf"));
    let text = p[0].to_string();
    assert!(text.starts_with("server2.conf:1: unknown top-level keyword `rrp_sync_group`"));
    assert!(text.contains("did you mean `vrrp_sync_group`?"), "{text}");
    // Also when it is only the peer's file.
    let p = refused(import(
        src("server1.conf", SEED1),
        Some(src("server2.conf", SEED2)),
        &seed_options(1),
    ));
    assert_eq!(
        (p[0].file.as_path(), p[0].line),
        (Path::new("server2.conf"), 1)
    );
}

#[test]
fn seed_server2_fixed_imports_with_the_peer_checked() {
    let fixed = SEED2.replacen("rrp_sync_group", "vrrp_sync_group", 1);
    let i = import(
        src("server2.conf", &fixed),
        Some(src("server1.conf", SEED1)),
        &seed_options(2),
    )
    .unwrap();
    let c = parse(&i);
    assert_eq!(c.node.priority, 100);
    // keepalived preempted on server2 (no nopreempt): said, not hidden.
    assert!(!c.node.nopreempt);
    // server2 wrote the inside VIP without /24 (keepalived's /32): it is
    // written with the subnet both servers share, and said so.
    assert_eq!(c.vips()[0].prefix_len, 24);
    let notes = i.notes.join("\n");
    assert!(
        notes.contains("VIP 192.168.1.150 had no prefix")
            && notes.contains("written as 192.168.1.150/24"),
        "{notes}"
    );
    // One account of that VIP's prefix, not two that disagree.
    assert!(!notes.contains("uses /32"), "{notes}");
}

#[test]
fn missing_addresses_are_listed_with_the_options_to_pass() {
    let opts = ImportOptions {
        name: Some("server1".into()),
        ..Default::default()
    };
    match import(src("server1.conf", SEED1), None, &opts) {
        Err(ImportError::MissingAddresses(m)) => {
            assert_eq!(m.len(), 4);
            let text = ImportError::MissingAddresses(m).to_string();
            assert!(text.contains("pass --local-ip eth1=ADDRESS"), "{text}");
            assert!(text.contains("pass --peer-ip eth0=ADDRESS"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn documented_options_translate_or_are_listed() {
    let opts = ImportOptions {
        hostname: "unused".into(),
        ..Default::default()
    };
    let i = import(src("a.conf", DOC), Some(src("b.conf", DOC_PEER)), &opts).unwrap();
    let c = parse(&i);
    // Names and addresses from the files alone: router_id, unicast and mcast sources.
    assert_eq!(c.node.name, "lb-a");
    assert_eq!(c.node.group, "VG_DB");
    assert_eq!(c.node.priority, 150);
    assert!(c.node.nopreempt);
    assert_eq!(c.node.preempt_delay_ms, 30_000);
    assert_eq!(c.links[0].name, "VI_OUT");
    assert_eq!(
        (c.links[0].local_ip, c.links[0].peer_ip),
        (ip("10.0.0.11"), ip("10.0.0.12"))
    );
    assert_eq!(
        (c.links[1].local_ip, c.links[1].peer_ip),
        (ip("10.1.0.11"), ip("10.1.0.12"))
    );
    assert_eq!(c.vips().len(), 3, "virtual_ipaddress_excluded moves too");
    assert_eq!(c.garp.count, 5);
    assert_eq!(c.garp.refresh_ms, 60_000);
    assert_eq!(
        c.hooks.notify_master.as_deref(),
        Some("/etc/keepalived/to_master.sh VG_DB")
    );
    assert_eq!(
        c.hooks.notify_backup.as_deref(),
        Some("/etc/keepalived/to_backup.sh")
    );
    assert_eq!(
        c.hooks.notify_fault.as_deref(),
        Some("/etc/keepalived/fault.sh VG_DB")
    );
    let untranslated = i.untranslated.join("\n");
    for want in [
        "virtual_routes",
        "use_vmac",
        "garp_master_delay",
        "label eth0:vip",
        "notify_stop /etc/keepalived/stop.sh",
        "runs as user root (group root)",
        "virtual_server 10.0.0.100 80",
        "notification_email",
        "smtp_alert",
    ] {
        assert!(
            untranslated.contains(want),
            "{want:?} missing in:\n{untranslated}"
        );
    }
    for want in [
        "# TODO track_script chk_mysql (runs `/usr/bin/killall -0 mysqld`)",
        "# TODO track_interface eth2",
    ] {
        assert!(i.toml.contains(want), "{want:?} missing in:\n{}", i.toml);
    }
    let notes = i.notes.join("\n");
    assert!(notes.contains("track_interface eth0"), "{notes}");
    assert!(notes.contains("advert_int 0.5 s"), "{notes}");
    assert!(!i.toml.contains("s3cret"));
}

#[test]
fn what_keepalived_would_ignore_is_refused() {
    let opts = seed_options(1);
    let typo = SEED1.replacen("nopreempt\nnotify", "nopreemt\nnotify", 1);
    let p = refused(import(src("s1.conf", &typo), None, &opts));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, 21);
    assert!(p[0]
        .message
        .contains("unknown keyword `nopreemt` in vrrp_instance inside_network"));
    assert!(p[0].message.contains("did you mean `nopreempt`?"), "{p:?}");
    let master = SEED1.replacen("state BACKUP", "state MASTER", 1);
    let p = refused(import(src("s1.conf", &master), None, &opts));
    assert_eq!(p[0].line, 21, "{p:?}");
    assert!(
        p[0].message
            .contains("nopreempt with state MASTER (line 9)"),
        "{p:?}"
    );
    let p = refused(import(
        src(
            "s1.conf",
            &format!("include /etc/keepalived/extra.conf\n{SEED1}"),
        ),
        None,
        &opts,
    ));
    assert!(p[0].line == 1 && p[0].message.contains("include"), "{p:?}");
    let p = refused(import(
        src(
            "s1.conf",
            &SEED1.replacen(
                "inside_network\noutside_network",
                "inside_network\noutside_netwrk",
                1,
            ),
        ),
        None,
        &opts,
    ));
    assert!(
        p.iter()
            .any(|p| p.line == 4 && p.message.contains("outside_netwrk")),
        "{p:?}"
    );
    let p = refused(import(src("s1.conf", "vrrp_instance x {\n"), None, &opts));
    assert_eq!(p[0].line, 1, "{p:?}");
}

#[test]
fn both_files_must_describe_the_same_vips() {
    let other = SEED1
        .replace("10.96.153.239/24", "10.96.153.240/24")
        .replacen("priority 101", "priority 100", 2);
    let p = refused(import(
        src("s1.conf", SEED1),
        Some(src("s2.conf", &other)),
        &seed_options(1),
    ));
    assert!(
        p.iter()
            .any(|p| p.file == Path::new("s2.conf") && p.message.contains("same VIPs")),
        "{p:?}"
    );
}

#[test]
fn vip_options_with_and_without_values() {
    let text = SEED1.replacen(
        "192.168.1.150/24\n",
        "192.168.1.150/24 no_track brd 192.168.1.255 dev eth1 label eth1:vip noprefixroute\n",
        1,
    );
    let i = import(src("s1.conf", &text), None, &seed_options(1)).unwrap();
    let c = parse(&i);
    assert_eq!(c.vips()[0].interface, "eth1");
    let u = i.untranslated.join("\n");
    for want in [
        "`no_track`",
        "`brd 192.168.1.255`",
        "`label eth1:vip`",
        "`noprefixroute`",
    ] {
        assert!(u.contains(want), "{want} missing in:\n{u}");
    }
}

#[test]
fn a_vip_off_the_links_is_refused() {
    let text = SEED1.replacen("192.168.1.150/24\n", "192.168.1.150/24 dev eth5\n", 1);
    let p = refused(import(src("s1.conf", &text), None, &seed_options(1)));
    assert!(
        p.iter()
            .any(|p| p.line == 19 && p.message.contains("on eth5, where no vrrp_instance runs")),
        "{p:?}"
    );
}
