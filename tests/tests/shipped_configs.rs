//! The configs shipped in config/ parse and validate with the agent's own parser
//! (unprivileged: runs with plain `cargo test`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ha_agent::operator::config::Config;

fn read(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

fn load(name: &str) -> Config {
    let (path, text) = read(name);
    Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn server1_and_server2_configs_are_valid_and_mirror_each_other() {
    let s1 = load("server1.toml");
    let s2 = load("server2.toml");
    assert_eq!(s1.node.name, "server1");
    assert_eq!(s2.node.name, "server2");
    assert_eq!(s1.node.priority, 101);
    assert_eq!(s2.node.priority, 100);
    assert!(s1.node.nopreempt && s2.node.nopreempt);
    assert_eq!(s1.node.key_file, PathBuf::from("/etc/ha-agent/key"));
    assert_eq!(s1.node.key_file, s2.node.key_file);
    assert_eq!(s1.node.port, s2.node.port);
    assert_eq!(s1.links.len(), 2);
    for (a, b) in s1.links.iter().zip(&s2.links) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.interface, b.interface);
        assert_eq!(a.local_ip, b.peer_ip);
        assert_eq!(a.peer_ip, b.local_ip);
        assert_eq!(a.witness, b.witness);
        assert!(a.witness.is_some(), "link {} has no witness", a.name);
    }
    assert_eq!(s1.links[0].interface, "eth0");
    assert_eq!(s1.links[0].local_ip, Ipv4Addr::new(10, 96, 153, 110));
    assert_eq!(s2.links[0].local_ip, Ipv4Addr::new(10, 96, 153, 114));
    assert_eq!(s1.links[0].witness, Some(Ipv4Addr::new(10, 96, 153, 1)));
    assert_eq!(s1.links[1].local_ip, Ipv4Addr::new(192, 168, 1, 100));
    assert_eq!(s2.links[1].local_ip, Ipv4Addr::new(192, 168, 1, 101));
    assert_eq!(s1.vips(), s2.vips());
    let vips = s1.vips();
    assert_eq!(vips.len(), 2);
    assert_eq!(
        (
            vips[0].address,
            vips[0].prefix_len,
            vips[0].interface.as_str()
        ),
        (Ipv4Addr::new(10, 96, 153, 239), 24, "eth0")
    );
    assert_eq!(
        (
            vips[1].address,
            vips[1].prefix_len,
            vips[1].interface.as_str()
        ),
        (Ipv4Addr::new(192, 168, 1, 150), 24, "eth1")
    );
    assert_eq!(vips[1].instance, "inside_network");
}

#[test]
fn example_configs_run_the_whole_seed_pipeline() {
    let s1 = load("server1.toml");
    let s2 = load("server2.toml");
    for (c, me, peer) in [(&s1, 100, 101), (&s2, 101, 100)] {
        let m = c.mysql.as_ref().expect("[mysql] in the example config");
        assert_eq!(m.address, format!("192.168.1.{me}:3306").parse().unwrap());
        assert_eq!(
            m.peer_address,
            format!("192.168.1.{peer}:3306").parse().unwrap()
        );
        let a = c.atlas.as_ref().expect("[atlas] in the example config");
        assert_eq!(a.admin_address, "127.0.0.1:2345".parse().unwrap());
        // Atlas's rw backend: the inside VIP, found from the config.
        assert_eq!(
            a.rw_backend_or(c.vips()[1].address),
            "192.168.1.150:3306".parse().unwrap()
        );
        let metrics = c.metrics.as_ref().expect("[metrics] in the example config");
        assert_eq!(metrics.listen, "127.0.0.1:9405".parse().unwrap());
        assert!(c.links[1].witness.is_some(), "inside link witness");
    }
    assert_eq!(
        s1.mysql.as_ref().unwrap().password_file,
        s2.mysql.as_ref().unwrap().password_file
    );
}

/// The hooks are commented out in the examples; uncommented they are valid.
#[test]
fn commented_hooks_are_valid_when_uncommented() {
    for name in ["server1.toml", "server2.toml"] {
        let (path, text) = read(name);
        let start = text.find("# [hooks]").expect("a commented [hooks] section");
        let hooks: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&format!("{}\n{hooks}\n", &text[..start]), &path)
            .unwrap_or_else(|e| panic!("{name} with its hooks uncommented: {e}"));
        assert!(c.hooks.notify_master.is_some() && c.hooks.notify.is_some());
        assert!(
            load(name).hooks.notify_master.is_none(),
            "hooks are off by default"
        );
    }
}

#[test]
fn systemd_unit_has_the_capabilities_and_restart_policy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/ha-agent.service");
    let unit = std::fs::read_to_string(path).unwrap();
    let caps = "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_SYS_NICE CAP_IPC_LOCK \
                CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER";
    for line in [
        "Type=simple".to_string(),
        format!("AmbientCapabilities={caps}"),
        format!("CapabilityBoundingSet={caps}"),
        "Restart=on-failure".into(),
        "RestartSec=1".into(),
        "LimitMEMLOCK=infinity".into(),
        "RuntimeDirectory=ha-agent".into(),
        "StateDirectory=ha-agent".into(),
        "KillSignal=SIGTERM".into(),
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "missing {line:?}");
    }
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains("/usr/local/sbin/ha-agent run --config /etc/ha-agent/"));
}
