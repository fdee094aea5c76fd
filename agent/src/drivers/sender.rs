//! The probe sender: a dedicated real-time thread that sends our signed
//! control state to the peer on every link, and ARP requests to each link's
//! witness, on time even when the machine is saturated.
//!
//! It is a plain thread, not a tokio task, so it can run under SCHED_FIFO:
//! if CPU hogs starved it, the peer would see silence and take over although
//! nothing died. The async side only hands it new probe bytes.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::drivers::arp::ArpSocket;
use crate::protocol::{set_seq, PROBE_LEN};

/// What the sender needs for one link.
pub struct SenderLink {
    pub name: String,
    /// Connected to the peer's probe address.
    pub socket: UdpSocket,
    pub interval: Duration,
    pub witness: Option<Witness>,
}

pub struct Witness {
    pub arp: Arc<ArpSocket>,
    pub local_ip: Ipv4Addr,
    pub target: Ipv4Addr,
    pub interval: Duration,
}

/// State shared with the async side. The real-time thread never blocks on
/// the lock (it would inherit the scheduling of a preempted normal thread:
/// priority inversion): it only `try_lock`s, keeps its own copy, and is woken
/// by `unpark` after `generation` changes.
struct Shared {
    /// One signed probe per link (index = link), replaced on every control change.
    probes: Mutex<Vec<[u8; PROBE_LEN]>>,
    generation: AtomicU64,
    stop: AtomicBool,
}

pub struct Sender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts the thread. `probes` are the first probes (one per link).
    pub fn spawn(
        links: Vec<SenderLink>,
        probes: Vec<[u8; PROBE_LEN]>,
        rt_priority: u8,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            probes: Mutex::new(probes),
            generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
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
        *self.shared.probes.lock().unwrap_or_else(|e| e.into_inner()) = probes;
        self.shared.generation.fetch_add(1, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
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

fn run(links: Vec<SenderLink>, shared: &Shared) {
    let start = Instant::now();
    let mut next_probe: Vec<Instant> = links.iter().map(|_| start).collect();
    let mut next_witness: Vec<Option<Instant>> = links
        .iter()
        .map(|l| l.witness.as_ref().map(|_| start))
        .collect();
    let mut seq: Vec<u32> = vec![0; links.len()];
    let mut send_errors: Vec<u64> = vec![0; links.len()];
    let mut probes: Vec<[u8; PROBE_LEN]> = Vec::new();
    let mut seen_generation = 0;
    let shortest = links
        .iter()
        .map(|l| l.interval)
        .min()
        .unwrap_or(Duration::from_millis(5));
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        // Lateness of the earliest due probe: the thread did not get the CPU,
        // or a send blocked. The peer sees this as silence.
        if let Some(first) = next_probe.iter().min() {
            let late = now.saturating_duration_since(*first);
            if late > shortest {
                warn!(late_us = late.as_micros() as u64, "probe sender ran late");
            }
        }
        let generation = shared.generation.load(Ordering::Acquire);
        let mut changed = false;
        if generation != seen_generation {
            // Never wait for the lock: if the async side holds it right now,
            // send what we have and pick the new probes up on the next pass.
            if let Ok(p) = shared.probes.try_lock() {
                probes.clone_from(&p);
                seen_generation = generation;
                changed = true;
            }
        }
        let send_start = Instant::now();
        for (i, at) in next_probe.iter_mut().enumerate() {
            let Some(next) = probe_schedule(*at, links[i].interval, now, changed) else {
                continue;
            };
            *at = next;
            let Some(mut probe) = probes.get(i).copied() else {
                continue;
            };
            seq[i] = seq[i].wrapping_add(1);
            set_seq(&mut probe, seq[i]);
            if let Err(e) = send(&links[i].socket, &probe) {
                send_errors[i] += 1;
                // Rate-limit: a dead route would otherwise log 250 lines/s.
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
                    *at = next_slot(*at, w.interval, now);
                }
            }
        }
        let mut wake = next_probe
            .iter()
            .chain(next_witness.iter().flatten())
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(1));
        if shared.generation.load(Ordering::Acquire) != seen_generation {
            // New probes we could not take yet: look again very soon.
            wake = wake.min(Instant::now() + Duration::from_micros(200));
        }
        let now = Instant::now();
        if wake > now {
            // unpark() from publish/shutdown ends this early.
            std::thread::park_timeout(wake - now);
        }
    }
}

/// The first slot of the grid `at + k * interval` after `now`. Every grid
/// starts at the same instant, so after a stall the probes and the witness
/// ARP stay on common slots: one wake serves them all.
fn next_slot(at: Instant, interval: Duration, now: Instant) -> Instant {
    let next = at + interval;
    if next > now || interval.is_zero() {
        return next;
    }
    let behind = now.duration_since(at).as_nanos();
    let step = interval.as_nanos();
    let slots = u32::try_from(behind / step + 1).unwrap_or(u32::MAX);
    at + interval.saturating_mul(slots)
}

/// Whether a link's probe goes out now and when its next one is due:
/// `None` if it is not due and nothing changed. A probe sent early because
/// the control state changed does not move the cadence: pushing the next
/// slot back on each change would leave the peer a silence of one interval
/// per change after a burst of them (a false death at start-up, where a
/// few changes come within milliseconds).
fn probe_schedule(at: Instant, interval: Duration, now: Instant, changed: bool) -> Option<Instant> {
    if now >= at {
        Some(next_slot(at, interval, now))
    } else if changed {
        Some(at)
    } else {
        None
    }
}

/// Sends on a connected socket. An ICMP port-unreachable from the peer (its
/// agent not running yet) is reported by the next send, which then did not
/// go out: that is not our failure, so send again once.
fn send(socket: &UdpSocket, probe: &[u8]) -> std::io::Result<()> {
    match socket.send(probe) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            socket.send(probe).map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_changes_does_not_delay_the_next_regular_probe() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut at = t0 + ms(4);
        // Four control changes within the interval: each sent at once...
        for k in 0..4 {
            let now = t0 + Duration::from_micros(500 * k + 100);
            at = probe_schedule(at, ms(4), now, true).expect("a change is sent at once");
        }
        // ...and the regular probe is still due on its slot.
        assert_eq!(at, t0 + ms(4));
        assert_eq!(probe_schedule(at, ms(4), t0 + ms(3), false), None);
        assert_eq!(
            probe_schedule(at, ms(4), t0 + ms(4), false),
            Some(t0 + ms(8))
        );
    }

    #[test]
    fn next_slot_keeps_the_grid_after_a_stall() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // On time: the next slot.
        assert_eq!(next_slot(t0, ms(4), t0 + ms(1)), t0 + ms(4));
        // 9 ms late: slots 4 and 8 are gone, 12 is next (not now + 4).
        assert_eq!(next_slot(t0, ms(4), t0 + ms(9)), t0 + ms(12));
        // Exactly on a slot boundary: that slot is due now, so the next one.
        assert_eq!(next_slot(t0, ms(4), t0 + ms(8)), t0 + ms(12));
        // A witness grid of 20 ms from the same start meets the probe grid.
        assert_eq!(next_slot(t0, ms(20), t0 + ms(33)), t0 + ms(40));
    }
}
