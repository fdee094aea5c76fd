//! Raw packet capture for the lab's observers (the pinger's replies, the
//! benchmark's ARP watch): an owned fd and an AF_PACKET socket bound to one
//! interface of a namespace.

use std::ffi::CString;
use std::mem::{size_of, zeroed};

use anyhow::{bail, Context, Result};

use crate::netns::enter_netns;

/// An owned file descriptor, closed on drop.
pub struct Fd(pub libc::c_int);

impl Fd {
    /// Takes a syscall's result: a negative one is the OS error.
    pub fn new(fd: libc::c_int) -> Result<Fd> {
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

pub fn setsockopt<T>(fd: &Fd, level: libc::c_int, name: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: value points to a T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("setsockopt({level}, {name})"));
    }
    Ok(())
}

/// An AF_PACKET socket in namespace `ns` (entered by the calling thread)
/// receiving frames of `ethertype` on `ifname`, with a 20 ms receive
/// timeout (so a stop flag is seen) and a large receive buffer.
pub fn open_capture(ns: &str, ifname: &str, ethertype: u16) -> Result<Fd> {
    enter_netns(ns)?;
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2).
    let sock = Fd::new(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) })
        .context("AF_PACKET socket")?;
    let cname = CString::new(ifname)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname} in {ns}");
    }
    // SAFETY: zeroed sockaddr_ll is valid; we fill the fields bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            sock.0,
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind AF_PACKET");
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let buf: libc::c_int = 4 << 20;
    let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &buf);
    Ok(sock)
}

/// An Ethernet/IPv4 ARP frame: its Ethernet destination and source, and
/// the ARP fields the lab's observers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    pub destination: [u8; 6],
    pub source: [u8; 6],
    /// A request (operation 1); else a reply or another operation.
    pub request: bool,
    pub sender_mac: [u8; 6],
    pub sender_ip: std::net::Ipv4Addr,
    pub target_ip: std::net::Ipv4Addr,
}

impl ArpFrame {
    pub fn broadcast(&self) -> bool {
        self.destination == [0xff; 6]
    }

    /// Parses an Ethernet frame; None unless it is an Ethernet/IPv4 ARP.
    pub fn parse(frame: &[u8]) -> Option<ArpFrame> {
        let f = frame.get(..42)?;
        // Ethertype ARP; htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4.
        if f[12..14] != [0x08, 0x06] || f[14..20] != [0, 1, 0x08, 0, 6, 4] {
            return None;
        }
        let six = |at: usize| -> [u8; 6] { std::array::from_fn(|i| f[at + i]) };
        let ip = |at: usize| std::net::Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
        Some(ArpFrame {
            destination: six(0),
            source: six(6),
            request: f[20..22] == [0, 1],
            sender_mac: six(22),
            sender_ip: ip(28),
            target_ip: ip(38),
        })
    }
}

/// Captures the ARP requests crossing `ifname` of namespace `ns` (either
/// way) for `d`, with when each was read, in a thread of its own (it
/// enters the namespace). Replies and other frames are left out.
pub fn watch_arp_requests(
    ns: &str,
    ifname: &str,
    d: std::time::Duration,
) -> std::thread::JoinHandle<Result<Vec<(std::time::Instant, ArpFrame)>>> {
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    std::thread::spawn(move || {
        // All frames: a bridge port hands what it receives to the bridge
        // before a tap for ARP alone would see it.
        let sock = open_capture(&ns, &ifname, libc::ETH_P_ALL as u16)?;
        let end = std::time::Instant::now() + d;
        let mut seen = Vec::new();
        let mut buf = [0u8; 128];
        while std::time::Instant::now() < end {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Some(r) = usize::try_from(n)
                .ok()
                .and_then(|n| ArpFrame::parse(&buf[..n]))
                .filter(|r| r.request)
            {
                seen.push((std::time::Instant::now(), r));
            }
        }
        Ok(seen)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_frames_are_parsed_and_nothing_else() {
        let mut f = [0u8; 42];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        f[38..42].copy_from_slice(&[198, 51, 100, 1]);
        let r = ArpFrame::parse(&f).unwrap();
        assert!(r.broadcast() && r.request);
        assert_eq!(r.source, [2, 0, 0, 0, 0, 1]);
        assert_eq!(r.target_ip, std::net::Ipv4Addr::new(198, 51, 100, 1));
        let mut reply = f;
        reply[21] = 2;
        assert!(!ArpFrame::parse(&reply).unwrap().request);
        assert_eq!(ArpFrame::parse(&f[..41]), None);
        let mut ipv6 = f;
        ipv6[16] = 0x86;
        assert_eq!(ArpFrame::parse(&ipv6), None);
    }
}
