//! ARP frames and a send-only AF_PACKET socket per interface.
//!
//! pnet_packet builds the frames (field layout and byte order are its job),
//! but the socket is our own. pnet_datalink's channel opens an ETH_P_ALL
//! socket, and the kernel then copies every frame crossing the interface into
//! its receive queue, whether or not anyone reads it: a per-packet cost on
//! the web/MySQL traffic for a socket that only ever sends a few ARPs. Ours
//! is opened with protocol 0, which the kernel never delivers frames to.
//! (Replies to witness probes are observed elsewhere, in XDP.)

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use pnet_base::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};

/// Length of an ARP frame over Ethernet (14 header + 28 ARP), without padding;
/// the NIC pads it to the 60-byte minimum.
pub const FRAME_LEN: usize = 42;

const BROADCAST: [u8; 6] = [0xff; 6];
const ETH_HEADER_LEN: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("cannot open an ARP socket for interface {ifname}: {source}{}", hint(.source))]
    Open { ifname: String, source: io::Error },
    #[error("cannot bind the ARP socket to interface {ifname} (index {ifindex}): {source}{}", hint(.source))]
    Bind {
        ifname: String,
        ifindex: u32,
        source: io::Error,
    },
    #[error("cannot send {what} on interface {ifname}: {source}{}", hint(.source))]
    Send {
        ifname: String,
        what: String,
        source: io::Error,
    },
}

/// What to do about a socket error.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (ha-agent needs CAP_NET_RAW: run as root or grant it in the systemd unit)"
        }
        Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (the interface is gone or was recreated with a new index; the socket must be reopened)"
        }
        Some(libc::ENETDOWN) => " (the interface is down; `ip link set <if> up`)",
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
            " (the transmit queue is full; this ARP was dropped, the next one may pass)"
        }
        _ => "",
    }
}

/// A gratuitous ARP announcing that `ip` is at `mac`.
///
/// A broadcast ARP *request* with sender IP = target IP = `ip`, what
/// keepalived sends: Linux neighbours always take it as an override of an
/// existing entry (even within locktime), and switches learn the MAC from it.
pub fn gratuitous_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame(BROADCAST, mac, ip, BROADCAST, ip)
}

/// A "who-has `target`, tell `src`" (witness probing), broadcast, or sent
/// to the MAC `to` only (a unicast poll, RFC 1122 2.3.2.1, as Linux's own
/// neighbour probes do to confirm an entry).
pub fn request_frame(
    mac: [u8; 6],
    src: Ipv4Addr,
    target: Ipv4Addr,
    to: Option<[u8; 6]>,
) -> [u8; FRAME_LEN] {
    // Target hardware address unknown: zero, as RFC 826, arping and Linux
    // (for its unicast probes too) use.
    frame(to.unwrap_or(BROADCAST), mac, src, [0; 6], target)
}

fn frame(
    destination: [u8; 6],
    mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> [u8; FRAME_LEN] {
    let mut buf = [0u8; FRAME_LEN];
    // Cannot fail: both buffers are constant sizes, larger than the headers.
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("42 bytes hold an Ethernet header");
    eth.set_destination(mac_addr(destination));
    eth.set_source(mac_addr(mac));
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp =
        MutableArpPacket::new(&mut buf[ETH_HEADER_LEN..]).expect("28 bytes hold an ARP packet");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(mac_addr(mac));
    arp.set_sender_proto_addr(sender_ip);
    arp.set_target_hw_addr(mac_addr(target_mac));
    arp.set_target_proto_addr(target_ip);
    buf
}

fn mac_addr(m: [u8; 6]) -> MacAddr {
    MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A send-only raw socket on one interface.
///
/// `Send + Sync`: sending is a single `sendto` on a shared fd, so the
/// real-time probe thread and tokio tasks can use one socket at once.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    mac: [u8; 6],
}

impl ArpSocket {
    /// Opens the socket on interface `ifname` (index `ifindex`), sending
    /// frames from `mac`.
    pub fn open(ifname: &str, ifindex: u32, mac: [u8; 6]) -> Result<Self, ArpError> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(ArpError::Open {
                ifname: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Binding with protocol 0 keeps the socket deaf (see the module doc)
        // and fails now, with ENODEV, if the index is wrong.
        let addr = sockaddr(ifindex, 0, [0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ArpError::Bind {
                ifname: ifname.to_string(),
                ifindex,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            fd,
            ifname: ifname.to_string(),
            ifindex,
            mac,
        })
    }

    /// Announces that `ip` is at this interface's MAC.
    pub fn send_gratuitous(&self, ip: Ipv4Addr) -> Result<(), ArpError> {
        self.send(&gratuitous_frame(self.mac, ip), || {
            format!("gratuitous ARP for {ip}")
        })
    }

    /// Asks who has `target`, from `src`.
    pub fn send_request(&self, src: Ipv4Addr, target: Ipv4Addr) -> Result<(), ArpError> {
        self.send(&request_frame(self.mac, src, target, None), || {
            format!("ARP request for {target} from {src}")
        })
    }

    /// [`Self::send_request`] for a real-time thread, broadcast or to the
    /// MAC `to` only: nothing is allocated, a failure is its errno.
    pub fn send_request_raw(
        &self,
        src: Ipv4Addr,
        target: Ipv4Addr,
        to: Option<[u8; 6]>,
    ) -> Result<(), i32> {
        self.send_raw(&request_frame(self.mac, src, target, to))
    }

    fn send(&self, frame: &[u8; FRAME_LEN], what: impl Fn() -> String) -> Result<(), ArpError> {
        self.send_raw(frame).map_err(|errno| ArpError::Send {
            ifname: self.ifname.clone(),
            what: what(),
            source: io::Error::from_raw_os_error(errno),
        })
    }

    fn send_raw(&self, frame: &[u8; FRAME_LEN]) -> Result<(), i32> {
        // The destination address gives the frame's protocol (ETH_P_ARP) to
        // the kernel, which the bind with protocol 0 does not.
        let addr = sockaddr(self.ifindex, libc::ETH_P_ARP as u16, BROADCAST);
        // MSG_DONTWAIT: a full transmit queue must cost one lost ARP, never a
        // stalled probe thread; the next announcement or probe follows soon.
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        } else if sent as usize != frame.len() {
            // A short send of one frame: the frame did not go out whole.
            Err(libc::EMSGSIZE)
        } else {
            Ok(())
        }
    }
}

fn sockaddr(ifindex: u32, protocol: u16, dest: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        // Interface indexes are positive ints in the kernel; a u32 above
        // i32::MAX cannot name one, and wraps to a negative index that bind
        // rejects with ENODEV.
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    addr.sll_addr[..6].copy_from_slice(&dest);
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn gratuitous_frame_bytes() {
        let f = gratuitous_frame(MAC, Ipv4Addr::new(198, 51, 100, 239));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            // Ethernet: broadcast destination, our source, type ARP.
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x08, 0x06,
            // ARP: Ethernet/IPv4, lengths 6/4, request.
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            // Sender: our MAC, the VIP.
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 198, 51, 100, 239,
            // Target: broadcast MAC (as keepalived), the VIP again.
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 198, 51, 100, 239,
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn request_frame_bytes() {
        let src = Ipv4Addr::new(198, 51, 100, 10);
        let target = Ipv4Addr::new(198, 51, 100, 1);
        let f = request_frame(MAC, src, target, None);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 198, 51, 100, 10,
            // Target MAC unknown: zeros.
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 51, 100, 1,
        ];
        assert_eq!(f, want);
        // A unicast poll differs in the Ethernet destination only.
        let gw = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let u = request_frame(MAC, src, target, Some(gw));
        assert_eq!(u[..6], gw);
        assert_eq!(u[6..], want[6..]);
    }

    #[test]
    fn socket_is_shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ArpSocket>();
    }

    #[test]
    fn errors_name_the_interface_and_the_fix() {
        let e = ArpError::Send {
            ifname: "eth0".into(),
            what: "gratuitous ARP for 198.51.100.239".into(),
            source: io::Error::from_raw_os_error(libc::ENETDOWN),
        };
        let text = e.to_string();
        assert!(
            text.contains("eth0") && text.contains("198.51.100.239"),
            "{text}"
        );
        assert!(text.contains("is down"), "{text}");
        let e = ArpError::Open {
            ifname: "eth1".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().contains("CAP_NET_RAW"), "{e}");
    }

    /// A GARP from namespace A overrides B's neighbour entry for the VIP.
    #[test]
    #[ignore = "privileged: run by cargo xtask test"]
    fn gratuitous_arp_updates_the_peers_neighbour_entry() {
        use crate::drivers::testns::{ifindex_of, mac_of, veth_pair};
        let (a, b) = veth_pair("garp", "198.51.100.10/24", "198.51.100.20/24");
        let mac_a = mac_of(&a, "va");
        // B believes the VIP is at some other MAC (the old holder). Linux only
        // updates existing entries from unsolicited ARP (arp_accept=0).
        b.ip(&[
            "neigh",
            "replace",
            "198.51.100.239",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "vb",
            "nud",
            "reachable",
        ]);
        let ifindex = ifindex_of(&a, "va");
        a.run(|| {
            let s = ArpSocket::open("va", ifindex, mac_a).unwrap();
            s.send_gratuitous(Ipv4Addr::new(198, 51, 100, 239)).unwrap();
        });
        let want = mac_a
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        // The frame crosses the veth in softirq context; poll the outcome
        // with a deadline rather than guess a delay.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let neigh = b.ip(&["neigh", "show", "198.51.100.239", "dev", "vb"]);
            if neigh.contains(&want) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "B still has: {neigh}");
            std::thread::yield_now();
        }
    }

    /// An ARP request to B's address gets B's reply.
    #[test]
    #[ignore = "privileged: run by cargo xtask test"]
    fn request_gets_a_reply() {
        use crate::drivers::testns::{ifindex_of, mac_of, veth_pair};
        let (a, b) = veth_pair("req", "198.51.100.10/24", "198.51.100.20/24");
        let mac_a = mac_of(&a, "va");
        let mac_b = mac_of(&b, "vb");
        let ifindex = ifindex_of(&a, "va");
        let reply = a.run(|| {
            // A listening socket for the test only, opened before sending.
            let rx = listen_arp(ifindex);
            let s = ArpSocket::open("va", ifindex, mac_a).unwrap();
            s.send_request(
                Ipv4Addr::new(198, 51, 100, 10),
                Ipv4Addr::new(198, 51, 100, 20),
            )
            .unwrap();
            let mut buf = [0u8; 128];
            loop {
                // Blocks until a frame arrives or SO_RCVTIMEO expires.
                // SAFETY: buf is valid for its length.
                let n =
                    unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                assert!(n >= 0, "no ARP reply: {}", io::Error::last_os_error());
                let f = &buf[..n as usize];
                // An ARP reply (opcode 2) from B.
                if f.len() >= 42 && f[20..22] == [0, 2] {
                    return f.to_vec();
                }
            }
        });
        assert_eq!(&reply[0..6], &mac_a, "unicast to A");
        assert_eq!(&reply[22..28], &mac_b, "sender MAC is B's");
        assert_eq!(&reply[28..32], &[198, 51, 100, 20], "sender IP is B's");
    }

    fn listen_arp(ifindex: u32) -> OwnedFd {
        // SAFETY: plain syscalls with checked results and valid pointers.
        unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ARP as u16).to_be() as i32,
            );
            assert!(raw >= 0, "{}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let addr = sockaddr(ifindex, libc::ETH_P_ARP as u16, [0; 6]);
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
            assert_eq!(rc, 0);
            fd
        }
    }
}
