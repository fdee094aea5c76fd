//! The Atlas backend table the agent wants, from the election's view and the
//! local database's state (a pure function; [`crate::drivers::atlas`] applies it).
//!
//! - rw: always the inside VIP on port 3306 (or `atlas.rw_backend`): writes
//!   follow the VIP, whoever holds it.
//! - ro: the replica, only while it is a usable one. As MASTER: the peer's
//!   server, while the peer is BACKUP and advertises `replica_ok`. As BACKUP:
//!   our own server, while the peer is MASTER and our replica is caught up.
//!   Otherwise none, so a takeover empties it at once (the seed's `REMOVE
//!   BACKEND 2`) and reads go to the rw backend until a replica is back.
//!
//! Which VIP is the inside one: the config has no label for it, so the
//! inside link is found from `[mysql]` (the link whose own address is
//! `mysql.address`, or whose peer address is `mysql.peer_address`'s), else
//! a link named "inside"; the VIP on that link's interface is the rw
//! backend. `atlas.rw_backend` overrides this, and is required when no
//! inside link can be found.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::decisions::election::{Control, Role};
use crate::drivers::atlas::Desired;
use crate::operator::config::{Config, LinkConfig};

/// MySQL's port when nothing says otherwise.
const MYSQL_PORT: u16 = 3306;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("is needed here: no [[link]] matches mysql.address or mysql.peer_address and none is named \"inside\", so the inside VIP (Atlas's rw backend) cannot be told apart; set rw_backend = \"<inside VIP>:3306\"")]
    NoInsideLink,
    #[error("is needed here: no [[vip]] lives on the inside link's interface {interface}; set rw_backend = \"<inside VIP>:3306\"")]
    NoInsideVip { interface: String },
}

/// The addresses the table is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddresses {
    /// Atlas's rw backend.
    pub rw: SocketAddrV4,
    /// This server's MySQL as Atlas must reach it (its inside address).
    pub own: Option<SocketAddrV4>,
    /// The peer's MySQL on its inside address.
    pub peer: Option<SocketAddrV4>,
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

/// The inside link: see the module documentation.
pub fn inside_link(cfg: &Config) -> Option<&LinkConfig> {
    let by_mysql = cfg.mysql.as_ref().and_then(|m| {
        cfg.links.iter().find(|l| {
            m.address.ip() == IpAddr::V4(l.local_ip) || m.peer_address.ip() == IpAddr::V4(l.peer_ip)
        })
    });
    by_mysql.or_else(|| cfg.links.iter().find(|l| l.name == "inside"))
}

impl ProxyAddresses {
    pub fn from_config(cfg: &Config) -> Result<ProxyAddresses, ProxyConfigError> {
        let inside = inside_link(cfg);
        let explicit = cfg.atlas.as_ref().and_then(|a| a.rw_backend);
        let rw = match explicit {
            Some(rw) => rw,
            None => {
                let link = inside.ok_or(ProxyConfigError::NoInsideLink)?;
                let vip = cfg
                    .vips()
                    .into_iter()
                    .find(|v| v.interface == link.interface)
                    .ok_or_else(|| ProxyConfigError::NoInsideVip {
                        interface: link.interface.clone(),
                    })?;
                SocketAddrV4::new(vip.address, MYSQL_PORT)
            }
        };
        let port = cfg.mysql.as_ref().map_or(MYSQL_PORT, |m| m.address.port());
        // Our server as Atlas reaches it: mysql.address unless it is a
        // loopback or wildcard address, then the inside link's own address.
        let own = cfg
            .mysql
            .as_ref()
            .and_then(|m| v4(m.address))
            .filter(|a| usable(*a.ip()))
            .or_else(|| inside.map(|l| SocketAddrV4::new(l.local_ip, port)));
        let peer = cfg
            .mysql
            .as_ref()
            .and_then(|m| v4(m.peer_address))
            .or_else(|| inside.map(|l| SocketAddrV4::new(l.peer_ip, port)));
        Ok(ProxyAddresses { rw, own, peer })
    }
}

/// The table for this moment. `peer`: the peer's control while it is heard.
pub fn desired(
    addrs: &ProxyAddresses,
    role: Role,
    peer: Option<&Control>,
    local_replica_ok: bool,
) -> Desired {
    let peer_role = peer.map(|p| p.role);
    let ro = match role {
        Role::Master if peer_role == Some(Role::Backup) && peer.is_some_and(|p| p.replica_ok) => {
            addrs.peer
        }
        Role::Backup if peer_role == Some(Role::Master) && local_replica_ok => addrs.own,
        _ => None,
    };
    Desired {
        rw: addrs.rw,
        ro: ro.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[node]
name = "server2"
key_file = "/etc/ha-agent/key"

[[link]]
name = "outside"
interface = "eth0"
local_ip = "10.96.153.114"
peer_ip = "10.96.153.110"

[[link]]
name = "lan2"
interface = "eth1"
local_ip = "192.168.1.101"
peer_ip = "192.168.1.100"

[[vip]]
address = "10.96.153.239/24"
interface = "eth0"

[[vip]]
address = "192.168.1.150/24"
interface = "eth1"

[atlas]
user = "admin"
password_file = "/etc/ha-agent/atlas-password"
persist = "none"
"#;

    const MYSQL: &str = r#"
[mysql]
user = "ha_agent"
password_file = "/etc/ha-agent/mysql-password"
replication_user = "repl"
replication_password_file = "/etc/ha-agent/repl-password"
peer_address = "192.168.1.100:3306"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    fn with_rw(text: &str, rw: &str) -> String {
        text.replace("[atlas]\n", &format!("[atlas]\nrw_backend = \"{rw}\"\n"))
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn addrs() -> ProxyAddresses {
        ProxyAddresses::from_config(&parse(&format!("{BASE}{MYSQL}"))).unwrap()
    }

    #[test]
    fn the_inside_vip_is_found_from_the_mysql_peer_address() {
        // mysql.address is the default 127.0.0.1:3306: the link is found by
        // the peer's address, and our own address is that link's.
        assert_eq!(
            addrs(),
            ProxyAddresses {
                rw: a("192.168.1.150:3306"),
                own: Some(a("192.168.1.101:3306")),
                peer: Some(a("192.168.1.100:3306")),
            }
        );
        // mysql bound to the inside address: used as is.
        let bound = format!("{BASE}{MYSQL}address = \"192.168.1.101:3307\"\n");
        let got = ProxyAddresses::from_config(&parse(&bound)).unwrap();
        assert_eq!(got.own, Some(a("192.168.1.101:3307")));
        assert_eq!(got.rw, a("192.168.1.150:3306"));
    }

    #[test]
    fn without_mysql_a_link_named_inside_or_rw_backend_is_needed() {
        let e = Config::parse(BASE, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("atlas.rw_backend: is needed here"), "{e}");
        let mut cfg = parse(&with_rw(BASE, "192.168.1.150:3306"));
        cfg.atlas.as_mut().unwrap().rw_backend = None;
        assert_eq!(
            ProxyAddresses::from_config(&cfg),
            Err(ProxyConfigError::NoInsideLink)
        );
        let named = parse(&BASE.replace("\"lan2\"", "\"inside\""));
        let got = ProxyAddresses::from_config(&named).unwrap();
        assert_eq!(got.rw, a("192.168.1.150:3306"));
        assert_eq!(got.peer, Some(a("192.168.1.100:3306")));
        let explicit = parse(&with_rw(BASE, "192.168.1.150:3307"));
        let got = ProxyAddresses::from_config(&explicit).unwrap();
        assert_eq!(got.rw, a("192.168.1.150:3307"));
        assert_eq!(got.peer, None, "no inside link: no replica address");
    }

    #[test]
    fn an_inside_link_without_a_vip_is_an_error() {
        let text = format!("{BASE}{MYSQL}").replace(
            "address = \"192.168.1.150/24\"\ninterface = \"eth1\"",
            "address = \"10.96.153.240/24\"\ninterface = \"eth0\"",
        );
        let e = Config::parse(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[vip]] lives on"), "{e}");
        let mut cfg = parse(&with_rw(&text, "10.96.153.240:3306"));
        cfg.atlas.as_mut().unwrap().rw_backend = None;
        assert_eq!(
            ProxyAddresses::from_config(&cfg),
            Err(ProxyConfigError::NoInsideVip {
                interface: "eth1".into()
            })
        );
    }

    fn control(role: Role, replica_ok: bool) -> Control {
        Control {
            epoch: 2,
            router_id: 1,
            replica_ok,
            ..Control::for_tests(role)
        }
    }

    #[test]
    fn master_reads_from_the_peer_only_while_it_is_a_caught_up_replica() {
        let ad = addrs();
        let rw = a("192.168.1.150:3306");
        let peer_ro = vec![a("192.168.1.100:3306")];
        let backup_ok = control(Role::Backup, true);
        let d = desired(&ad, Role::Master, Some(&backup_ok), false);
        assert_eq!((d.rw, d.ro), (rw, peer_ro));
        for peer in [
            None, // takeover: the peer is dead, REMOVE BACKEND at once
            Some(control(Role::Backup, false)),
            Some(control(Role::Init, true)),
            Some(control(Role::Fault, true)),
        ] {
            let d = desired(&ad, Role::Master, peer.as_ref(), true);
            assert_eq!((d.rw, d.ro.len()), (rw, 0), "{peer:?}");
        }
    }

    #[test]
    fn backup_reads_from_itself_only_while_caught_up_with_a_master_peer() {
        let ad = addrs();
        let master = control(Role::Master, false);
        let d = desired(&ad, Role::Backup, Some(&master), true);
        assert_eq!(d.ro, vec![a("192.168.1.101:3306")]);
        assert_eq!(d.rw, a("192.168.1.150:3306"));
        assert!(desired(&ad, Role::Backup, Some(&master), false)
            .ro
            .is_empty());
        assert!(desired(&ad, Role::Backup, None, true).ro.is_empty());
        let backup = control(Role::Backup, true);
        assert!(desired(&ad, Role::Backup, Some(&backup), true)
            .ro
            .is_empty());
        for role in [Role::Init, Role::Fault] {
            let d = desired(&ad, role, Some(&master), true);
            assert!(d.ro.is_empty(), "{role}");
            assert_eq!(d.rw, a("192.168.1.150:3306"), "writes always go to the VIP");
        }
    }
}
