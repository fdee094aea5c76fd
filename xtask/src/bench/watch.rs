//! Who holds the VIPs, from the kernel, with every change timestamped.
//!
//! One thread per server stays inside that server's namespace for its whole
//! life (entering a namespace per poll, as `Lab::vip_holders` does, would
//! cost two thread spawns per VIP per millisecond). It listens to the
//! kernel's address events (netlink `RTMGRP_IPV4_IFADDR`), so a VIP added
//! and removed again within a millisecond is still seen (polling every
//! millisecond missed such flaps of ha-agent under load), and it also polls
//! the addresses every millisecond when no event comes, to resynchronise
//! after an overrun of the netlink socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use ha_lab::{netns, Lab, Link, Server};

/// Which VIPs each server holds: `held[server][link]` (server1 = 0, outside = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Holders {
    pub held: [[bool; 2]; 2],
}

fn si(s: Server) -> usize {
    usize::from(s.index() - 1)
}

impl Holders {
    pub fn holds(&self, s: Server, l: Link) -> bool {
        self.held[si(s)][usize::from(l.index())]
    }
    /// The server holds both VIPs (the other may hold some too).
    pub fn holds_both(&self, s: Server) -> bool {
        Link::ALL.iter().all(|&l| self.holds(s, l))
    }
    /// The server holds at least one VIP.
    pub fn holds_any(&self, s: Server) -> bool {
        Link::ALL.iter().any(|&l| self.holds(s, l))
    }
    /// `s` holds both VIPs and the other server none.
    pub fn sole(&self, s: Server) -> bool {
        self.holds_both(s) && !self.holds_any(s.peer())
    }
    /// Some VIP is held by both servers.
    pub fn dual(&self) -> bool {
        Link::ALL
            .iter()
            .any(|&l| Server::ALL.iter().all(|&s| self.holds(s, l)))
    }
    /// Some VIP is held by nobody.
    pub fn orphan(&self) -> bool {
        Link::ALL
            .iter()
            .any(|&l| Server::ALL.iter().all(|&s| !self.holds(s, l)))
    }
    /// "outside: server1, inside: server1+server2".
    pub fn describe(&self) -> String {
        Link::ALL
            .iter()
            .map(|&l| {
                let who: Vec<&str> = Server::ALL
                    .iter()
                    .filter(|&&s| self.holds(s, l))
                    .map(|s| s.name())
                    .collect();
                let who = if who.is_empty() {
                    "nobody".to_string()
                } else {
                    who.join("+")
                };
                format!("{}: {who}", l.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Default)]
struct Shared {
    current: Holders,
    /// Every change of `current` (the first entry is the initial state).
    timeline: Vec<(Instant, Holders)>,
    /// Servers whose thread has taken its first reading.
    ready: [bool; 2],
}

/// A running watch; stops on [`VipWatch::finish`] or drop, or by itself
/// after its maximum duration.
pub struct VipWatch {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl VipWatch {
    /// Starts watching both servers for at most `max` (a bound, not a plan).
    pub fn start(lab: &Lab, max: Duration) -> Result<VipWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let deadline = Instant::now() + max;
        let mut threads = Vec::new();
        for server in Server::ALL {
            let ns = lab.server_ns(server).to_string();
            let (stop, shared) = (stop.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bench-vips-{}", server.index()))
                    .spawn(move || poll_loop(&ns, server, &stop, &shared, deadline))?,
            );
        }
        let w = VipWatch {
            stop,
            shared,
            threads,
        };
        let start = Instant::now();
        while !w.shared.lock().unwrap().ready.iter().all(|&r| r) {
            if start.elapsed() > Duration::from_secs(5) {
                return Err(anyhow!("the VIP watch threads did not start"));
            }
            ha_lab::sleep(Duration::from_millis(1))?;
        }
        Ok(w)
    }

    pub fn current(&self) -> Holders {
        self.shared.lock().unwrap().current
    }

    /// Every change so far, in order.
    pub fn timeline(&self) -> Vec<(Instant, Holders)> {
        self.shared.lock().unwrap().timeline.clone()
    }

    /// Polls (every ms) until `cond` holds for the current state, for at
    /// most `timeout`; returns whether it did. Fails only if interrupted.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Holders) -> bool) -> Result<bool> {
        let end = Instant::now() + timeout;
        loop {
            if cond(&self.current()) {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            ha_lab::sleep(Duration::from_millis(1))?;
        }
    }

    /// The first instant at or after `t` when `cond` held (per the timeline).
    pub fn first_at_or_after(
        &self,
        t: Instant,
        cond: impl Fn(&Holders) -> bool,
    ) -> Option<Instant> {
        first_at_or_after(&self.timeline(), t, cond)
    }

    /// Stops the threads; returns the timeline.
    pub fn finish(mut self) -> Vec<(Instant, Holders)> {
        self.shutdown();
        self.timeline()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The first instant at or after `t` when `cond` held, in a timeline of changes.
pub fn first_at_or_after(
    timeline: &[(Instant, Holders)],
    t: Instant,
    cond: impl Fn(&Holders) -> bool,
) -> Option<Instant> {
    // The state in force at `t` is the last change before it.
    if let Some((_, h)) = timeline.iter().rev().find(|(at, _)| *at < t) {
        if cond(h) {
            return Some(t);
        }
    }
    timeline
        .iter()
        .find(|(at, h)| *at >= t && cond(h))
        .map(|(at, _)| *at)
}

fn held_now(vips: &[std::net::Ipv4Addr; 2]) -> [bool; 2] {
    // An error (interface gone while the lab is torn down) reads as "holds nothing".
    let addrs = netns::local_ipv4_addresses().unwrap_or_default();
    vips.map(|v| addrs.iter().any(|(_, c)| c.addr == v))
}

fn poll_loop(
    ns: &str,
    server: Server,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    deadline: Instant,
) -> Result<()> {
    netns::enter_netns(ns)?;
    // Subscribe before the first reading so no change falls in between.
    let sock = AddrEvents::open()?;
    let vips = [Link::Outside.vip(), Link::Inside.vip()];
    let mut last: Option<[bool; 2]> = None;
    let record = |last: &mut Option<[bool; 2]>, now: [bool; 2], at: Instant| {
        if *last != Some(now) {
            *last = Some(now);
            let mut s = shared.lock().unwrap();
            s.current.held[si(server)] = now;
            let cur = s.current;
            s.timeline.push((at, cur));
            s.ready[si(server)] = true;
        }
    };
    record(&mut last, held_now(&vips), Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(Some(n)) => {
                let at = Instant::now();
                for (add, addr) in parse_addr_events(&buf[..n]) {
                    if let Some(i) = vips.iter().position(|&v| v == addr) {
                        let mut now = last.unwrap_or_default();
                        now[i] = add;
                        record(&mut last, now, at);
                    }
                }
            }
            // Timeout (1 ms) or overrun: read the truth.
            Ok(None) | Err(_) => record(&mut last, held_now(&vips), Instant::now()),
        }
    }
    Ok(())
}

/// A netlink socket subscribed to IPv4 address changes.
struct AddrEvents(libc::c_int);

impl AddrEvents {
    fn open() -> Result<AddrEvents> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(anyhow!(
                "netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let sock = AddrEvents(fd);
        // SAFETY: a zeroed sockaddr_nl is valid; we set the family and groups.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = libc::RTMGRP_IPV4_IFADDR as u32;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(anyhow!("netlink bind: {}", std::io::Error::last_os_error()));
        }
        // Wake up every millisecond without events: the resync poll.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 1_000,
        };
        // SAFETY: tv is a valid timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    /// Some(bytes) read, None on timeout; an error on overrun (ENOBUFS).
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}

impl Drop for AddrEvents {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// (added?, address) for every IPv4 RTM_NEWADDR/RTM_DELADDR in a netlink datagram.
fn parse_addr_events(mut b: &[u8]) -> Vec<(bool, std::net::Ipv4Addr)> {
    let mut out = Vec::new();
    // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            break;
        }
        let msg = &b[16..len];
        // ifaddrmsg: family u8, prefixlen u8, flags u8, scope u8, index u32.
        let add = kind == libc::RTM_NEWADDR;
        if (add || kind == libc::RTM_DELADDR)
            && msg.len() >= 8
            && i32::from(msg[0]) == libc::AF_INET
        {
            let mut attrs = &msg[8..];
            let mut local = None;
            let mut address = None;
            // rtattr: len u16, type u16, value, padded to 4.
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let atype = u16::from_ne_bytes([attrs[2], attrs[3]]);
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if alen == 8 {
                    let ip = std::net::Ipv4Addr::new(attrs[4], attrs[5], attrs[6], attrs[7]);
                    match atype {
                        2 => local = Some(ip),   // IFA_LOCAL
                        1 => address = Some(ip), // IFA_ADDRESS
                        _ => {}
                    }
                }
                attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
            }
            if let Some(ip) = local.or(address) {
                out.push((add, ip));
            }
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_or_after_uses_the_state_in_force() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Holders::default();
        a.held[0] = [true, true];
        let mut b = a;
        b.held[1] = [true, true];
        let mut c = b;
        c.held[0] = [false, false];
        let tl = vec![(ms(0), a), (ms(10), b), (ms(20), c)];
        assert_eq!(
            first_at_or_after(&tl, ms(5), |h| h.sole(Server::S1)),
            Some(ms(5))
        );
        assert_eq!(
            first_at_or_after(&tl, ms(5), |h| h.holds_both(Server::S2)),
            Some(ms(10))
        );
        assert_eq!(
            first_at_or_after(&tl, ms(15), |h| h.sole(Server::S2)),
            Some(ms(20))
        );
        assert!(b.dual() && !b.orphan() && !a.dual());
        assert_eq!(c.describe(), "outside: server2, inside: server2");
    }

    #[test]
    fn parses_address_events() {
        let mut m = Vec::new();
        let body_len = 16 + 8 + 8;
        m.extend_from_slice(&(body_len as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_DELADDR.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[libc::AF_INET as u8, 24, 0, 0, 2, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[198, 51, 100, 100]);
        let ev = parse_addr_events(&m);
        assert_eq!(
            ev,
            vec![(false, std::net::Ipv4Addr::new(198, 51, 100, 100))]
        );
    }
}
