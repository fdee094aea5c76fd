//! Who holds the VIPs, from the kernel, with every change timestamped.
//!
//! One thread per server stays inside that server's namespace for its whole
//! life (entering a namespace per poll, as `Lab::vip_holders` does, would
//! cost two thread spawns per VIP per millisecond). It listens to the
//! kernel's address events (netlink `RTMGRP_IPV4_IFADDR`), so a VIP added
//! and removed again within a millisecond is still seen (polling every
//! millisecond missed such flaps of ha-agent under load), and it also reads
//! the addresses whenever no event came for the resync period, to recover
//! from an overrun of the netlink socket.
//!
//! The threads run under SCHED_FIFO (see [`WATCH_RT_PRIORITY`]). By
//! default they watch the lab's two VIPs; [`WatchOptions`] gives it a
//! group of up to 256 (`ha_lab::vips`). Every VIP address that appears on a
//! server is also kept as an [`AddEvent`]: in a soak, where nothing should
//! move, each one is a VIP added where it was not.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ha_lab::{netns, Lab, Link, Server};

/// The most VIPs one watch follows (the agent's limit).
pub const MAX_WATCHED: usize = 256;
const WORDS: usize = MAX_WATCHED / 64;

/// Which of the watched VIPs each server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holders {
    /// Bit i of `bits[server]`: watched VIP i is on that server (server1 = 0).
    bits: [[u64; WORDS]; 2],
    total: u16,
    /// Where the lab's outside and inside VIPs are in the watched list.
    main: [Option<u16>; 2],
}

impl Default for Holders {
    /// The lab's two VIPs (outside first), held by nobody.
    fn default() -> Self {
        Holders::new(&[Link::Outside.vip(), Link::Inside.vip()])
    }
}

fn si(s: Server) -> usize {
    usize::from(s.index() - 1)
}

impl Holders {
    /// Nobody holds any of `vips` (at most [`MAX_WATCHED`]).
    pub fn new(vips: &[Ipv4Addr]) -> Holders {
        let pos = |v: Ipv4Addr| vips.iter().position(|&x| x == v).map(|i| i as u16);
        Holders {
            bits: [[0; WORDS]; 2],
            total: vips.len().min(MAX_WATCHED) as u16,
            main: [pos(Link::Outside.vip()), pos(Link::Inside.vip())],
        }
    }

    pub fn set(&mut self, s: Server, vip: usize, held: bool) {
        if vip < usize::from(self.total) {
            let (w, b) = (vip / 64, vip % 64);
            if held {
                self.bits[si(s)][w] |= 1 << b;
            } else {
                self.bits[si(s)][w] &= !(1 << b);
            }
        }
    }

    pub fn holds_vip(&self, s: Server, vip: usize) -> bool {
        vip < usize::from(self.total) && self.bits[si(s)][vip / 64] & (1 << (vip % 64)) != 0
    }

    /// The lab's VIP of `l` (false if it is not watched).
    pub fn holds(&self, s: Server, l: Link) -> bool {
        self.main[usize::from(l.index())].is_some_and(|i| self.holds_vip(s, usize::from(i)))
    }

    /// How many watched VIPs the server holds.
    pub fn count(&self, s: Server) -> usize {
        self.bits[si(s)]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    pub fn total(&self) -> usize {
        usize::from(self.total)
    }

    /// Watched VIPs held by both servers.
    pub fn both_count(&self) -> usize {
        (0..WORDS)
            .map(|w| (self.bits[0][w] & self.bits[1][w]).count_ones() as usize)
            .sum()
    }

    /// Watched VIPs held by neither server.
    pub fn neither_count(&self) -> usize {
        let any: usize = (0..WORDS)
            .map(|w| (self.bits[0][w] | self.bits[1][w]).count_ones() as usize)
            .sum();
        self.total() - any
    }

    /// The server holds every watched VIP (the other may hold some too).
    pub fn holds_all(&self, s: Server) -> bool {
        self.count(s) == self.total()
    }
    /// The server holds at least one watched VIP.
    pub fn holds_any(&self, s: Server) -> bool {
        self.count(s) > 0
    }
    /// `s` holds every watched VIP and the other server none.
    pub fn sole(&self, s: Server) -> bool {
        self.holds_all(s) && !self.holds_any(s.peer())
    }
    /// Some VIP is held by both servers.
    pub fn dual(&self) -> bool {
        self.both_count() > 0
    }
    /// Some VIP is held by nobody.
    pub fn orphan(&self) -> bool {
        self.neither_count() > 0
    }
    /// "outside: server1, inside: server1+server2", and for a larger group
    /// "; of 256: server1 256, server2 12".
    pub fn describe(&self) -> String {
        let mut out = Link::ALL
            .iter()
            .filter(|&&l| self.main[usize::from(l.index())].is_some())
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
            .join(", ");
        if self.total > 2 {
            out.push_str(&format!(
                "; of {}: server1 {}, server2 {}",
                self.total,
                self.count(Server::S1),
                self.count(Server::S2)
            ));
        }
        out
    }
}

/// A watched VIP that appeared on a server.
#[derive(Debug, Clone, Copy)]
pub struct AddEvent {
    pub at: Instant,
    pub server: Server,
    /// Index in the watched list.
    pub vip: usize,
}

/// What a watch follows, and how.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The VIPs (at most [`MAX_WATCHED`]).
    pub vips: Vec<Ipv4Addr>,
    /// With no address event for this long, read the addresses anyway.
    pub resync: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            vips: vec![Link::Outside.vip(), Link::Inside.vip()],
            resync: Duration::from_millis(1),
        }
    }
}

/// SCHED_FIFO priority of the watch threads: above the agent's threads (50
/// and 49 by default) and any normal process, so a VIP's arrival is stamped
/// when it happens even on a busy host (a normal thread was seen stamping
/// 120 ms late there). They only wake for address events and the resync.
const WATCH_RT_PRIORITY: i32 = 80;

struct Shared {
    current: Holders,
    /// Every change of `current` (the first entry is the initial state).
    timeline: Vec<(Instant, Holders)>,
    adds: Vec<AddEvent>,
    /// Servers whose thread has taken its first reading.
    ready: [bool; 2],
}

/// The whole record of a finished watch.
pub struct WatchLog {
    pub timeline: Vec<(Instant, Holders)>,
    pub adds: Vec<AddEvent>,
    pub vips: Vec<Ipv4Addr>,
}

/// A running watch; stops on [`VipWatch::finish`] or drop, or by itself
/// after its maximum duration.
pub struct VipWatch {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    threads: Vec<JoinHandle<Result<()>>>,
    vips: Vec<Ipv4Addr>,
}

impl VipWatch {
    /// Starts watching the lab's two VIPs on both servers for at most `max`
    /// (a bound, not a plan).
    pub fn start(lab: &Lab, max: Duration) -> Result<VipWatch> {
        Self::start_with(lab, max, WatchOptions::default())
    }

    pub fn start_with(lab: &Lab, max: Duration, opts: WatchOptions) -> Result<VipWatch> {
        if opts.vips.is_empty() || opts.vips.len() > MAX_WATCHED {
            bail!(
                "a VIP watch follows 1 to {MAX_WATCHED} VIPs, not {}",
                opts.vips.len()
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared {
            current: Holders::new(&opts.vips),
            timeline: Vec::new(),
            adds: Vec::new(),
            ready: [false; 2],
        }));
        let deadline = Instant::now() + max;
        let mut threads = Vec::new();
        for server in Server::ALL {
            let ns = lab.server_ns(server).to_string();
            let (stop, shared, opts) = (stop.clone(), shared.clone(), opts.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bench-vips-{}", server.index()))
                    .spawn(move || poll_loop(&ns, server, &opts, &stop, &shared, deadline))?,
            );
        }
        let mut w = VipWatch {
            stop,
            shared,
            threads,
            vips: opts.vips,
        };
        let start = Instant::now();
        while !w.shared.lock().unwrap().ready.iter().all(|&r| r) {
            if w.threads.iter().any(|t| t.is_finished()) {
                let errors = w.join_errors();
                return Err(anyhow!("a VIP watch thread failed: {errors}"));
            }
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
    pub fn finish(self) -> Vec<(Instant, Holders)> {
        self.finish_log().timeline
    }

    /// Stops the threads; returns everything recorded.
    pub fn finish_log(mut self) -> WatchLog {
        self.shutdown();
        let s = self.shared.lock().unwrap();
        WatchLog {
            timeline: s.timeline.clone(),
            adds: s.adds.clone(),
            vips: self.vips.clone(),
        }
    }

    fn join_errors(&mut self) -> String {
        self.stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(_) => errors.push("panicked".into()),
            }
        }
        errors.join("; ")
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

fn held_now(vips: &[Ipv4Addr]) -> Vec<bool> {
    // An error (interface gone while the lab is torn down) reads as "holds nothing".
    let addrs = netns::local_ipv4_addresses().unwrap_or_default();
    vips.iter()
        .map(|v| addrs.iter().any(|(_, c)| c.addr == *v))
        .collect()
}

fn set_fifo(priority: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall on the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "sched_setscheduler(SCHED_FIFO {priority}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn poll_loop(
    ns: &str,
    server: Server,
    opts: &WatchOptions,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    deadline: Instant,
) -> Result<()> {
    netns::enter_netns(ns)?;
    set_fifo(WATCH_RT_PRIORITY)?;
    // Subscribe before the first reading so no change falls in between.
    let sock = AddrEvents::open(opts.resync)?;
    let vips = &opts.vips;
    let mut last: Option<Vec<bool>> = None;
    let record = |last: &mut Option<Vec<bool>>, now: Vec<bool>, at: Instant| {
        if last.as_ref() == Some(&now) {
            return;
        }
        let mut s = shared.lock().unwrap();
        for (i, &held) in now.iter().enumerate() {
            let was = last.as_ref().map(|l| l[i]);
            if was == Some(false) && held {
                s.adds.push(AddEvent { at, server, vip: i });
            }
            s.current.set(server, i, held);
        }
        let cur = s.current;
        s.timeline.push((at, cur));
        s.ready[si(server)] = true;
        *last = Some(now);
    };
    record(&mut last, held_now(vips), Instant::now());
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(Some(n)) => {
                let at = Instant::now();
                for (add, addr) in parse_addr_events(&buf[..n]) {
                    if let Some(i) = vips.iter().position(|&v| v == addr) {
                        let mut now = last.clone().unwrap_or_else(|| vec![false; vips.len()]);
                        now[i] = add;
                        record(&mut last, now, at);
                    }
                }
            }
            // Timeout or overrun: read the truth.
            Ok(None) | Err(_) => record(&mut last, held_now(vips), Instant::now()),
        }
    }
    Ok(())
}

/// A netlink socket subscribed to IPv4 address changes.
struct AddrEvents(libc::c_int);

impl AddrEvents {
    /// Subscribed; a receive returns None after `resync` without events.
    fn open(resync: Duration) -> Result<AddrEvents> {
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
        // A whole group's events at once (256 VIPs) must fit: an overrun
        // loses their individual times (the resync reads the state later).
        let size: libc::c_int = 8 << 20;
        // SAFETY: size is a valid c_int; FORCE needs root, which the lab has.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // Wake up without events: the resync poll.
        let tv = libc::timeval {
            tv_sec: resync.as_secs() as libc::time_t,
            tv_usec: resync.subsec_micros().max(1) as libc::suseconds_t,
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
        a.set(Server::S1, 0, true);
        a.set(Server::S1, 1, true);
        let mut b = a;
        b.set(Server::S2, 0, true);
        b.set(Server::S2, 1, true);
        let mut c = b;
        c.set(Server::S1, 0, false);
        c.set(Server::S1, 1, false);
        let tl = vec![(ms(0), a), (ms(10), b), (ms(20), c)];
        assert_eq!(
            first_at_or_after(&tl, ms(5), |h| h.sole(Server::S1)),
            Some(ms(5))
        );
        assert_eq!(
            first_at_or_after(&tl, ms(5), |h| h.holds_all(Server::S2)),
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
    fn a_large_group_counts_every_vip() {
        let vips: Vec<Ipv4Addr> = (0..200u8).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let mut h = Holders::new(&vips);
        for i in 0..200 {
            h.set(Server::S1, i, true);
        }
        h.set(Server::S2, 130, true);
        h.set(Server::S1, 199, false);
        assert_eq!(h.count(Server::S1), 199);
        assert_eq!(h.both_count(), 1);
        assert_eq!(h.neither_count(), 1);
        assert!(h.holds_vip(Server::S2, 130) && !h.holds_vip(Server::S2, 129));
        assert!(!h.holds_all(Server::S1) && h.dual() && h.orphan());
        assert!(
            !h.holds(Server::S1, Link::Outside),
            "the lab VIP is not watched"
        );
        assert!(h.describe().ends_with("of 200: server1 199, server2 1"));
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
