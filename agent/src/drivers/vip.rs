//! VIP ownership through rtnetlink: the only code that adds or removes addresses.
//!
//! Every operation is idempotent and says whether it changed anything, so the
//! caller can re-assert its desired state at any time (after a restart, or
//! when an operator has meddled) without special cases.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::AddressFamily;

use crate::operator::config::Vip;

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("cannot open a netlink route socket: {0} (ha-agent needs CAP_NET_ADMIN: run as root or grant it in the systemd unit)")]
    Connect(#[source] io::Error),
    #[error("interface {interface} does not exist; check the interface name in the config against `ip link`")]
    NoInterface { interface: String },
    #[error("interface {interface} has no Ethernet MAC address (got {len} bytes); VIPs need an Ethernet interface to announce by ARP")]
    NoMac { interface: String, len: usize },
    #[error("{op} on interface {interface} failed: {reason}{}", hint(*.errno))]
    Netlink {
        op: String,
        interface: String,
        reason: String,
        errno: Option<i32>,
    },
}

/// What to do about a failed request, by errno.
fn hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (ha-agent needs CAP_NET_ADMIN: run as root or grant it in the systemd unit)"
        }
        Some(libc::ENODEV) => " (the interface disappeared; check `ip link`)",
        Some(libc::EINVAL) => " (the kernel rejected the address; check the VIP's prefix length)",
        _ => "",
    }
}

/// The facts about an interface that the drivers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// Administratively up and carrier present.
    pub oper_up: bool,
}

pub struct VipDriver {
    handle: rtnetlink::Handle,
    /// Interface indices known from start-up: a takeover sends only the
    /// address requests, no lookups.
    indices: std::collections::HashMap<String, u32>,
}

impl VipDriver {
    /// Opens the netlink connection and spawns it on the current tokio runtime.
    ///
    /// The socket belongs to the network namespace of the calling thread.
    pub async fn new() -> Result<Self, VipError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(VipError::Connect)?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            indices: Default::default(),
        })
    }

    /// Remembers interface indices (name, index), looked up at start.
    pub fn remember(&mut self, interfaces: &[(String, u32)]) {
        self.indices.extend(interfaces.iter().cloned());
    }

    async fn index_of(&self, name: &str) -> Result<u32, VipError> {
        match self.indices.get(name) {
            Some(i) => Ok(*i),
            None => Ok(self.interface(name).await?.index),
        }
    }

    /// Adds every VIP, all requests in flight at once (one netlink round
    /// trip for the group, not one per VIP). Returns how many were added
    /// and the failures.
    pub async fn add_all(&self, vips: &[Vip]) -> (usize, Vec<(Vip, VipError)>) {
        let results = futures::future::join_all(vips.iter().map(|v| self.add(v))).await;
        let mut added = 0;
        let mut errors = Vec::new();
        for (v, r) in vips.iter().zip(results) {
            match r {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(e) => errors.push((v.clone(), e)),
            }
        }
        (added, errors)
    }

    /// Removes every VIP, all requests in flight at once. Returns how many
    /// were removed and the failures.
    pub async fn remove_all(&self, vips: &[Vip]) -> (usize, Vec<(Vip, VipError)>) {
        let results = futures::future::join_all(vips.iter().map(|v| self.remove(v))).await;
        let mut removed = 0;
        let mut errors = Vec::new();
        for (v, r) in vips.iter().zip(results) {
            match r {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => errors.push((v.clone(), e)),
            }
        }
        (removed, errors)
    }

    /// Index, MAC and state of interface `name`.
    pub async fn interface(&self, name: &str) -> Result<InterfaceInfo, VipError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(no_interface(name)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Err(no_interface(name)),
            Err(e) => return Err(netlink_error("looking up the interface", name, &e)),
        };
        link_info(name, &msg)
    }

    /// Adds the VIP (its prefix length, broadcast address, on its interface).
    /// Returns true if it was added, false if it was already there.
    pub async fn add(&self, vip: &Vip) -> Result<bool, VipError> {
        let index = self.index_of(&vip.interface).await?;
        // The builder sets IFA_LOCAL = IFA_ADDRESS = the VIP and, below /31,
        // IFA_BROADCAST = the subnet's broadcast address (what `ip addr add
        // ... brd +` and keepalived do).
        let request = self
            .handle
            .address()
            .add(index, IpAddr::V4(vip.address), vip.prefix_len);
        match request.execute().await {
            Ok(()) => Ok(true),
            // The kernel refuses a second identical address: already held.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(netlink_error(
                &format!("adding VIP {}/{}", vip.address, vip.prefix_len),
                &vip.interface,
                &e,
            )),
        }
    }

    /// Removes the VIP from its interface, and nothing else.
    /// Returns true if it was removed, false if it was not there.
    pub async fn remove(&self, vip: &Vip) -> Result<bool, VipError> {
        let index = self.index_of(&vip.interface).await?;
        let mut removed = false;
        for found in self.find(index, vip).await? {
            let request = self.handle.address().del(delete_message(&found));
            match request.execute().await {
                Ok(()) => removed = true,
                // Gone between the dump and the delete: someone else removed it.
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(netlink_error(
                        &format!("removing VIP {}", vip.address),
                        &vip.interface,
                        &e,
                    ))
                }
            }
        }
        Ok(removed)
    }

    /// Whether the VIP's address is on its interface (with any prefix length:
    /// the address is what attracts the traffic).
    pub async fn held(&self, vip: &Vip) -> Result<bool, VipError> {
        let index = self.index_of(&vip.interface).await?;
        Ok(!self.find(index, vip).await?.is_empty())
    }

    /// The kernel's records of the VIP's address on interface `index`.
    async fn find(&self, index: u32, vip: &Vip) -> Result<Vec<AddressMessage>, VipError> {
        // Addresses cannot be looked up by value over netlink; dump the
        // interface's addresses and filter here.
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        loop {
            match dump.try_next().await {
                Ok(Some(msg)) => {
                    if is_address(&msg, index, vip.address) {
                        found.push(msg);
                    }
                }
                Ok(None) => return Ok(found),
                Err(e) => return Err(netlink_error("listing addresses", &vip.interface, &e)),
            }
        }
    }
}

/// Whether `msg` is `address` configured on interface `index`.
///
/// Matches on IFA_LOCAL, the interface's own address. IFA_ADDRESS is the
/// peer on point-to-point links, so matching it (as rtnetlink's filter does)
/// could mistake "a peer at the VIP" for "we hold the VIP".
fn is_address(msg: &AddressMessage, index: u32, address: Ipv4Addr) -> bool {
    msg.header.index == index
        && msg.header.family == AddressFamily::Inet
        && msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == address))
}

/// The RTM_DELADDR request for exactly the address in `found`.
///
/// The kernel deletes the first address of the interface that matches the
/// attributes given, and an attribute left out matches anything: a request
/// without IFA_LOCAL would delete the interface's primary address. So the
/// request carries the local address, the prefix length and IFA_ADDRESS from
/// the kernel's own record, which together single out one address.
fn delete_message(found: &AddressMessage) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header = found.header.clone();
    msg.attributes = found
        .attributes
        .iter()
        .filter(|a| matches!(a, AddressAttribute::Local(_) | AddressAttribute::Address(_)))
        .cloned()
        .collect();
    msg
}

fn link_info(name: &str, msg: &LinkMessage) -> Result<InterfaceInfo, VipError> {
    let mac = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(bytes.clone()),
        _ => None,
    });
    let bytes = mac.unwrap_or_default();
    let mac: [u8; 6] = bytes.as_slice().try_into().map_err(|_| VipError::NoMac {
        interface: name.to_string(),
        len: bytes.len(),
    })?;
    Ok(InterfaceInfo {
        index: msg.header.index,
        mac,
        oper_up: crate::drivers::carrier::carries(msg),
    })
}

fn no_interface(name: &str) -> VipError {
    VipError::NoInterface {
        interface: name.to_string(),
    }
}

/// The errno of a kernel refusal, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn netlink_error(op: &str, interface: &str, e: &rtnetlink::Error) -> VipError {
    let code = errno(e);
    let reason = match code {
        Some(n) => io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    VipError::Netlink {
        op: op.to_string(),
        interface: interface.to_string(),
        reason,
        errno: code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn msg(index: u32, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = index;
        m.header.prefix_len = 24;
        m.attributes = attrs;
        m
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 239);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    #[test]
    fn address_matches_on_local_and_index_only() {
        let local = msg(
            3,
            vec![
                AddressAttribute::Address(VIP.into()),
                AddressAttribute::Local(VIP.into()),
            ],
        );
        assert!(is_address(&local, 3, VIP));
        assert!(!is_address(&local, 4, VIP), "other interface");
        // Point-to-point: the peer is the VIP, our own address is not.
        let p2p = msg(
            3,
            vec![
                AddressAttribute::Address(VIP.into()),
                AddressAttribute::Local(PEER.into()),
            ],
        );
        assert!(!is_address(&p2p, 3, VIP));
    }

    #[test]
    fn delete_message_names_exactly_one_address() {
        let found = msg(
            3,
            vec![
                AddressAttribute::Address(VIP.into()),
                AddressAttribute::Local(VIP.into()),
                AddressAttribute::Broadcast(Ipv4Addr::new(198, 51, 100, 255)),
                AddressAttribute::Label("eth0".into()),
            ],
        );
        let del = delete_message(&found);
        assert_eq!(del.header, found.header);
        assert_eq!(
            del.attributes,
            vec![
                AddressAttribute::Address(VIP.into()),
                AddressAttribute::Local(VIP.into()),
            ]
        );
    }

    #[test]
    fn link_without_ethernet_mac_is_an_error_naming_it() {
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::Address(vec![0; 4])];
        let err = link_info("tun0", &m).unwrap_err();
        assert!(err.to_string().contains("tun0"), "{err}");
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1])];
        assert_eq!(link_info("eth0", &m).unwrap().mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn permission_errors_say_what_to_do() {
        let mut em = ErrorMessage::default();
        em.code = NonZeroI32::new(-libc::EPERM);
        let e = netlink_error(
            "adding VIP 198.51.100.239/24",
            "eth0",
            &rtnetlink::Error::NetlinkError(em),
        );
        let text = e.to_string();
        assert!(
            text.contains("eth0") && text.contains("198.51.100.239"),
            "{text}"
        );
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
    }

    /// Real netlink in a throwaway namespace; needs root.
    #[test]
    #[ignore = "privileged: run by cargo xtask test"]
    fn add_remove_held_in_a_namespace() {
        use crate::drivers::testns::Netns;
        let ns = Netns::new("vip");
        // veth pairs inside the one namespace (this kernel may lack dummy).
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
        ns.ip(&["link", "add", "d1", "type", "veth", "peer", "name", "d1p"]);
        ns.ip(&["link", "set", "d0p", "up"]);
        ns.ip(&["link", "set", "d0", "up"]);
        ns.ip(&["addr", "add", "198.51.100.10/24", "dev", "d0"]);
        ns.ip(&["addr", "add", "203.0.113.5/24", "dev", "d0"]);
        let vip = Vip {
            address: VIP,
            prefix_len: 24,
            interface: "d0".into(),
            instance: "outside_network".into(),
        };
        let on_d1 = Vip {
            interface: "d1".into(),
            ..vip.clone()
        };
        let missing = Vip {
            interface: "nope0".into(),
            ..vip.clone()
        };

        ns.block_on(|| async {
            let d = VipDriver::new().await.unwrap();
            let info = d.interface("d0").await.unwrap();
            assert!(info.oper_up);
            assert_ne!(info.mac, [0; 6]);
            assert!(!d.interface("d1").await.unwrap().oper_up, "d1 is down");
            let err = d.interface("nope0").await.unwrap_err();
            assert!(matches!(err, VipError::NoInterface { .. }), "{err}");

            assert!(!d.held(&vip).await.unwrap());
            assert!(d.add(&vip).await.unwrap(), "first add adds");
            assert!(!d.add(&vip).await.unwrap(), "second add is a no-op");
            assert!(d.held(&vip).await.unwrap());
            assert!(!d.held(&on_d1).await.unwrap(), "held is per interface");
            assert!(matches!(
                d.add(&missing).await.unwrap_err(),
                VipError::NoInterface { .. }
            ));
        });
        let shown = ns.ip(&["-4", "addr", "show", "dev", "d0"]);
        assert!(
            shown.contains("inet 198.51.100.239/24 brd 198.51.100.255 scope global secondary d0"),
            "{shown}"
        );

        ns.block_on(|| async {
            let d = VipDriver::new().await.unwrap();
            assert!(d.remove(&vip).await.unwrap(), "first remove removes");
            assert!(!d.remove(&vip).await.unwrap(), "second remove is a no-op");
            assert!(!d.held(&vip).await.unwrap());
            // A VIP alone on an interface (so the primary address of its subnet),
            // on an interface that is down.
            assert!(d.add(&on_d1).await.unwrap());
            assert!(d.remove(&on_d1).await.unwrap());
        });
        let shown = ns.ip(&["-4", "-o", "addr", "show"]);
        assert!(!shown.contains("198.51.100.239"), "{shown}");
        assert!(shown.contains("inet 198.51.100.10/24"), "{shown}");
        assert!(shown.contains("inet 203.0.113.5/24"), "{shown}");
    }
}
