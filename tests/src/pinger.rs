//! A small ICMP echo pinger for measurements, run on two threads inside a
//! lab namespace: one sends echo requests through a raw IPv4 socket (so the
//! kernel routes and ARPs as a real client would), one captures the replies
//! on the interface with an AF_PACKET socket, recording when each came and
//! from which MAC (so a caller can tell which server answered).
//!
//! All instants are `std::time::Instant` (monotonic), comparable with the
//! caller's own `Instant::now()` taken when it injects a fault.

use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::capture::{open_capture, setsockopt, Fd};
use crate::netns::enter_netns;

/// One echo reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Request number (0, 1, 2, ...; not wrapped at 65536).
    pub seq: u64,
    /// When the request was sent.
    pub sent: Instant,
    /// When the reply was captured.
    pub received: Instant,
    /// Source MAC of the reply frame ("02:4c:00:00:02:00").
    pub from_mac: String,
}

impl Reply {
    pub fn rtt(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }
}

/// An interval without replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start: Instant,
    pub end: Instant,
}

impl Gap {
    pub fn len(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len().is_zero()
    }
}

/// What a pinger saw: every request's send instant (index = seq) and every
/// reply (in capture order; a duplicate reply is kept, see [`PingLog::answered`]).
#[derive(Debug, Clone)]
pub struct PingLog {
    pub target: Ipv4Addr,
    pub interval: Duration,
    pub started: Instant,
    pub sent: Vec<Instant>,
    pub replies: Vec<Reply>,
}

impl PingLog {
    /// Replies received (by capture time) at or after `t`, in order.
    pub fn replies_after(&self, t: Instant) -> impl Iterator<Item = &Reply> {
        self.replies.iter().filter(move |r| r.received >= t)
    }

    /// The first reply to a request sent at or after `t` (by capture time):
    /// "when did the service answer again after the fault at `t`".
    pub fn first_reply_after(&self, t: Instant) -> Option<&Reply> {
        self.replies
            .iter()
            .filter(|r| r.sent >= t)
            .min_by_key(|r| r.received)
    }

    /// The first reply captured at or after `t` (whenever its request was sent).
    pub fn first_reply_received_after(&self, t: Instant) -> Option<&Reply> {
        self.replies
            .iter()
            .filter(|r| r.received >= t)
            .min_by_key(|r| r.received)
    }

    /// The first reply to a request sent at or after `t` that came from `mac`.
    pub fn first_reply_from_after(&self, mac: &str, t: Instant) -> Option<&Reply> {
        self.replies
            .iter()
            .filter(|r| r.sent >= t && r.from_mac.eq_ignore_ascii_case(mac))
            .min_by_key(|r| r.received)
    }

    /// The longest interval without a captured reply within `[from, to]`. It
    /// starts at the last reply before `from` (or at `from` if there is none)
    /// and a trailing interval without replies counts up to `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Gap {
        let mut times: Vec<Instant> = self.replies.iter().map(|r| r.received).collect();
        times.sort();
        let mut prev = times
            .iter()
            .rev()
            .find(|&&t| t < from)
            .copied()
            .unwrap_or(from);
        let mut best = Gap {
            start: prev,
            end: prev,
        };
        for &t in times.iter().filter(|&&t| t >= from && t <= to) {
            if t.saturating_duration_since(prev) > best.len() {
                best = Gap {
                    start: prev,
                    end: t,
                };
            }
            prev = t;
        }
        if to.saturating_duration_since(prev) > best.len() {
            best = Gap {
                start: prev,
                end: to,
            };
        }
        best
    }

    /// The longest gap over the whole log (from the first request to the last).
    pub fn longest_gap_overall(&self) -> Gap {
        let end = self.sent.last().copied().unwrap_or(self.started);
        self.longest_gap(self.started, end)
    }

    /// Distinct requests answered.
    pub fn answered(&self) -> usize {
        let mut seqs: Vec<u64> = self.replies.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }

    /// (requests sent, requests answered) among requests sent in `[from, to)`.
    pub fn answered_between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let in_window = |t: Instant| t >= from && t < to;
        let sent = self.sent.iter().filter(|&&t| in_window(t)).count();
        let mut seqs: Vec<u64> = self
            .replies
            .iter()
            .filter(|r| in_window(r.sent))
            .map(|r| r.seq)
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        (sent, seqs.len())
    }

    /// The distinct MACs that answered, in order of first appearance.
    pub fn macs(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &self.replies {
            if !v.contains(&r.from_mac) {
                v.push(r.from_mac.clone());
            }
        }
        v
    }
}

#[derive(Default)]
struct Shared {
    sent: Vec<Instant>,
    replies: Vec<Reply>,
}

/// A running pinger; stops (and joins its threads) on [`Pinger::finish`] or drop.
/// It also stops by itself after its `max_duration`.
pub struct Pinger {
    target: Ipv4Addr,
    interval: Duration,
    started: Instant,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    threads: Vec<JoinHandle<Result<()>>>,
}

const PAYLOAD_MAGIC: &[u8; 8] = b"ha-lab!!";

impl Pinger {
    /// Starts pinging `target` every `interval` from namespace `ns`,
    /// capturing replies on `ifname`; runs at most `max_duration`.
    pub fn start(
        ns: &str,
        ifname: &str,
        target: Ipv4Addr,
        interval: Duration,
        max_duration: Duration,
    ) -> Result<Pinger> {
        if interval.is_zero() {
            bail!("pinger interval must be > 0");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        // Different pingers (and the system's ping) use different ids.
        let id = (std::process::id() as u16) ^ (rand_u16() | 1);
        let started = Instant::now();
        let deadline = started + max_duration;

        // Receiver first, so the first reply is not missed; it signals readiness.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let rx_thread = {
            let (ns, ifname) = (ns.to_string(), ifname.to_string());
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::Builder::new()
                .name("ha-lab-ping-rx".into())
                .spawn(move || -> Result<()> {
                    let sock = match open_capture(&ns, &ifname, libc::ETH_P_IP as u16) {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                            return Err(e);
                        }
                    };
                    receive_loop(&sock, target, id, &stop, &shared, deadline)
                })?
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("pinger receiver did not start"))??;

        let tx_thread = {
            let ns = ns.to_string();
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::Builder::new()
                .name("ha-lab-ping-tx".into())
                .spawn(move || -> Result<()> {
                    enter_netns(&ns)?;
                    let sock = Fd::new(unsafe {
                        libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
                    })
                    .context("raw ICMP socket")?;
                    // Queue no ICMP on this socket: replies are read by the capture socket.
                    let filter: u32 = u32::MAX;
                    setsockopt(&sock, libc::SOL_RAW, 1 /* ICMP_FILTER */, &filter)?;
                    send_loop(&sock, target, id, interval, &stop, &shared, deadline)
                })?
        };
        Ok(Pinger {
            target,
            interval,
            started,
            stop,
            shared,
            threads: vec![rx_thread, tx_thread],
        })
    }

    /// What was seen so far (the pinger keeps running).
    pub fn log(&self) -> PingLog {
        let s = self.shared.lock().unwrap();
        PingLog {
            target: self.target,
            interval: self.interval,
            started: self.started,
            sent: s.sent.clone(),
            replies: s.replies.clone(),
        }
    }

    /// Stops the pinger (after a short grace period for replies in flight)
    /// and returns everything it saw.
    pub fn finish(mut self) -> Result<PingLog> {
        self.shutdown(Duration::from_millis(50))?;
        Ok(self.log())
    }

    fn shutdown(&mut self, grace: Duration) -> Result<()> {
        if self.threads.is_empty() {
            return Ok(());
        }
        std::thread::sleep(grace);
        self.stop.store(true, Ordering::SeqCst);
        let mut first_err = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("pinger thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.shutdown(Duration::ZERO);
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u16::from_ne_bytes(b)
}

/// An owned file descriptor (closed on drop).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(id: u16, seq: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8..16].copy_from_slice(PAYLOAD_MAGIC);
    p[16..24].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

fn send_loop(
    sock: &Fd,
    target: Ipv4Addr,
    id: u16,
    interval: Duration,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    deadline: Instant,
) -> Result<()> {
    // SAFETY: zeroed sockaddr_in is valid.
    let mut dst: libc::sockaddr_in = unsafe { zeroed() };
    dst.sin_family = libc::AF_INET as u16;
    dst.sin_addr.s_addr = u32::from(target).to_be();
    let mut next = Instant::now();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let pkt = echo_request(id, seq);
        shared.lock().unwrap().sent.push(Instant::now());
        // SAFETY: pkt and dst are valid for the given lengths. Errors (no ARP
        // answer yet: EHOSTUNREACH) just mean this request is lost.
        unsafe {
            libc::sendto(
                sock.0,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &dst as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
        seq += 1;
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 10 {
            next = now; // far behind (the machine stalled): do not burst
        }
    }
    Ok(())
}

fn receive_loop(
    sock: &Fd,
    target: Ipv4Addr,
    id: u16,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    deadline: Instant,
) -> Result<()> {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline + Duration::from_secs(1) {
        // SAFETY: zeroed sockaddr_ll is valid as an out parameter.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and sll are valid for writes of their sizes.
        let n = unsafe {
            libc::recvfrom(
                sock.0,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        let received = Instant::now();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e).context("recvfrom"),
            }
        }
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n as usize];
        if let Some((seq, mac)) = parse_reply(frame, target, id) {
            let mut s = shared.lock().unwrap();
            if let Some(&sent) = s.sent.get(seq as usize) {
                s.replies.push(Reply {
                    seq,
                    sent,
                    received,
                    from_mac: mac,
                });
            }
        }
    }
    Ok(())
}

/// Parses an Ethernet frame; returns (seq, source MAC) if it is our echo reply from `target`.
fn parse_reply(frame: &[u8], target: Ipv4Addr, id: u16) -> Option<(u64, String)> {
    if frame.len() < 14 + 20 + 24 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 1 || ip.len() < ihl + 24 {
        return None;
    }
    if Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]) != target {
        return None;
    }
    let icmp = &ip[ihl..];
    if icmp[0] != 0 || icmp[1] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    if &icmp[8..16] != PAYLOAD_MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(icmp[16..24].try_into().ok()?);
    let m = &frame[6..12];
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    Some((seq, mac))
}

impl crate::Lab {
    /// Starts a pinger in the client namespace (eth0) against `target`,
    /// every `interval` (e.g. 2 ms), for at most 10 minutes.
    pub fn start_pinger(&self, target: Ipv4Addr, interval: Duration) -> Result<Pinger> {
        Pinger::start(
            self.client_ns(),
            "eth0",
            target,
            interval,
            Duration::from_secs(600),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let p = echo_request(0x1234, 70_000);
        assert_eq!(checksum(&p), 0);
        assert_eq!(
            u16::from_be_bytes([p[6], p[7]]),
            (70_000u64 & 0xffff) as u16
        );
    }

    #[test]
    fn parses_a_reply_frame() {
        let target = Ipv4Addr::new(198, 51, 100, 100);
        let mut req = echo_request(7, 42);
        req[0] = 0;
        let mut f = vec![0u8; 14];
        f[6..12].copy_from_slice(&[2, 0x4c, 0, 0, 2, 0]);
        f[12] = 8;
        let mut ip = vec![0x45, 0, 0, 44, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&target.octets());
        ip.extend_from_slice(&[198, 51, 100, 50]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&req);
        assert_eq!(
            parse_reply(&f, target, 7),
            Some((42, "02:4c:00:00:02:00".to_string()))
        );
        assert_eq!(parse_reply(&f, target, 8), None);
        assert_eq!(parse_reply(&f, Ipv4Addr::new(1, 2, 3, 4), 7), None);
    }

    #[test]
    fn gaps_and_first_replies() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let reply = |seq: u64, sent: u64, rcv: u64, mac: &str| Reply {
            seq,
            sent: ms(sent),
            received: ms(rcv),
            from_mac: mac.into(),
        };
        let log = PingLog {
            target: Ipv4Addr::LOCALHOST,
            interval: Duration::from_millis(10),
            started: t0,
            sent: (0..10).map(|i| ms(i * 10)).collect(),
            replies: vec![
                reply(0, 0, 1, "a"),
                reply(1, 10, 11, "a"),
                reply(6, 60, 61, "b"),
                reply(7, 70, 71, "b"),
            ],
        };
        let g = log.longest_gap(ms(15), ms(80));
        assert_eq!((g.start, g.end), (ms(11), ms(61)));
        assert_eq!(log.first_reply_after(ms(15)).unwrap().seq, 6);
        assert_eq!(log.first_reply_from_after("b", ms(0)).unwrap().seq, 6);
        assert_eq!(log.answered_between(ms(0), ms(50)), (5, 2));
        assert_eq!(
            log.longest_gap(ms(65), ms(200)).len(),
            Duration::from_millis(129)
        );
        assert_eq!(log.macs(), vec!["a", "b"]);
    }
}
