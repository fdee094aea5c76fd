//! Who holds the VIPs, polled every millisecond from the kernel.
//!
//! One thread per server stays inside that server's namespace for its whole
//! life (entering a namespace per poll, as `Lab::vip_holders` does, would
//! cost two thread spawns per VIP per millisecond) and records every change
//! of the set of VIPs the server holds, with a monotonic timestamp.

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

fn poll_loop(
    ns: &str,
    server: Server,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    deadline: Instant,
) -> Result<()> {
    netns::enter_netns(ns)?;
    let vips = [Link::Outside.vip(), Link::Inside.vip()];
    let mut last: Option<[bool; 2]> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // An error (interface gone while the lab is torn down) reads as "holds nothing".
        let addrs = netns::local_ipv4_addresses().unwrap_or_default();
        let at = Instant::now();
        let now = vips.map(|v| addrs.iter().any(|(_, c)| c.addr == v));
        if last != Some(now) {
            last = Some(now);
            let mut s = shared.lock().unwrap();
            s.current.held[si(server)] = now;
            let cur = s.current;
            s.timeline.push((at, cur));
            s.ready[si(server)] = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
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
}
