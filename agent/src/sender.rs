//! The probe sender: a dedicated real-time thread that sends our signed
//! control state to the peer on every link, and ARP requests to each link's
//! witness, on time even when the machine is saturated.
//!
//! It is a plain thread, not a tokio task, so it can run under SCHED_FIFO:
//! if CPU hogs starved it, the peer would see silence and take over although
//! nothing died. The async side only hands it new probe bytes.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::arp::ArpSocket;
use crate::protocol::{set_seq, PROBE_LEN};

/// What the sender needs for one link.
pub struct SenderLink {
    pub name: String,
    pub socket: UdpSocket,
    pub peer: SocketAddrV4,
    pub interval: Duration,
    pub witness: Option<Witness>,
}

pub struct Witness {
    pub arp: Arc<ArpSocket>,
    pub local_ip: Ipv4Addr,
    pub target: Ipv4Addr,
    pub interval: Duration,
}

struct Shared {
    /// One signed probe per link (index = link), replaced on every control change.
    probes: Vec<[u8; PROBE_LEN]>,
    generation: u64,
    stop: bool,
}

pub struct Sender {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts the thread. `probes` are the first probes (one per link).
    pub fn spawn(
        links: Vec<SenderLink>,
        probes: Vec<[u8; PROBE_LEN]>,
        rt_priority: u8,
    ) -> std::io::Result<Self> {
        let shared = Arc::new((
            Mutex::new(Shared {
                probes,
                generation: 1,
                stop: false,
            }),
            Condvar::new(),
        ));
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ha-probe-sender".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                set_realtime(rt_priority);
                run(links, &for_thread);
            })?;
        Ok(Sender {
            shared,
            thread: Some(thread),
        })
    }

    /// New control state: the thread sends it on every link at once.
    pub fn publish(&self, probes: Vec<[u8; PROBE_LEN]>) {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.probes = probes;
        s.generation += 1;
        cv.notify_one();
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        info!(priority, "probe sender runs under SCHED_FIFO");
    } else {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot run the probe sender under SCHED_FIFO (needs CAP_SYS_NICE): \
             CPU starvation could delay probes and cause a false failover"
        );
    }
}

fn run(links: Vec<SenderLink>, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, cv) = shared;
    let start = Instant::now();
    let mut next_probe: Vec<Instant> = links.iter().map(|_| start).collect();
    let mut next_witness: Vec<Option<Instant>> = links
        .iter()
        .map(|l| l.witness.as_ref().map(|_| start))
        .collect();
    let mut seq: Vec<u32> = vec![0; links.len()];
    let mut seen_generation = 0;
    let mut send_errors: Vec<u64> = vec![0; links.len()];
    let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if guard.stop {
            return;
        }
        let now = Instant::now();
        // Lateness of the earliest due probe: the thread did not get the CPU,
        // or a send blocked. The peer sees this as silence.
        if let Some(first) = next_probe.iter().min() {
            let late = now.saturating_duration_since(*first);
            if late > links.iter().map(|l| l.interval).min().unwrap_or_default() {
                warn!(late_us = late.as_micros() as u64, "probe sender ran late");
            }
        }
        let changed = guard.generation != seen_generation;
        seen_generation = guard.generation;
        let mut due: Vec<(usize, [u8; PROBE_LEN])> = Vec::new();
        for (i, at) in next_probe.iter_mut().enumerate() {
            if changed || now >= *at {
                if let Some(p) = guard.probes.get(i) {
                    due.push((i, *p));
                }
                // Keep the cadence; after a stall, restart it from now.
                *at = (*at + links[i].interval).max(now);
            }
        }
        drop(guard);
        let send_start = Instant::now();
        for (i, mut probe) in due {
            seq[i] = seq[i].wrapping_add(1);
            set_seq(&mut probe, seq[i]);
            if let Err(e) = links[i].socket.send_to(&probe, links[i].peer) {
                send_errors[i] += 1;
                // Rate-limit: a dead route would otherwise log 200 lines/s.
                if send_errors[i].is_power_of_two() {
                    warn!(link = %links[i].name, error = %e, count = send_errors[i], "probe send failed");
                }
            }
        }
        let send_took = send_start.elapsed();
        if send_took > Duration::from_millis(2) {
            warn!(
                took_us = send_took.as_micros() as u64,
                "sending probes blocked"
            );
        }
        for (i, next) in next_witness.iter_mut().enumerate() {
            if let (Some(at), Some(w)) = (next.as_mut(), links[i].witness.as_ref()) {
                if now >= *at {
                    if let Err(e) = w.arp.send_request(w.local_ip, w.target) {
                        warn!(link = %links[i].name, witness = %w.target, error = %e, "witness ARP request failed");
                    }
                    *at = (*at + w.interval).max(now);
                }
            }
        }
        let wake = next_probe
            .iter()
            .chain(next_witness.iter().flatten())
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(1));
        guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !guard.stop && guard.generation == seen_generation {
            let now = Instant::now();
            if now >= wake {
                break;
            }
            guard = cv
                .wait_timeout(guard, wake - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
