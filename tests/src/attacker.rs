//! An attacker on the LAN: in the switch namespace it captures the frames a
//! server sends, and sends frames (as captured, or altered) out of a switch
//! port towards a server, as any host on that segment could.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::capture::{open_capture, Fd};
use crate::topology::{Lab, Link, Server};

const ETH_P_ALL: u16 = 0x0003;
const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const UDP_OFF: usize = ETH_HLEN + IP_HLEN;
/// Where the probe (UDP payload) starts.
pub const PROBE_OFF: usize = UDP_OFF + 8;

/// One Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(pub Vec<u8>);

impl Frame {
    fn ipv4_udp(&self) -> bool {
        self.0.len() >= PROBE_OFF
            && self.0[12..14] == [0x08, 0x00]
            && self.0[ETH_HLEN] == 0x45
            && self.0[ETH_HLEN + 9] == 17
    }

    pub fn src_ip(&self) -> Ipv4Addr {
        let b = &self.0[ETH_HLEN + 12..ETH_HLEN + 16];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.0[UDP_OFF + 2], self.0[UDP_OFF + 3]])
    }

    /// The UDP payload (the probe).
    pub fn payload(&self) -> &[u8] {
        &self.0[PROBE_OFF..]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.0[PROBE_OFF..]
    }

    /// Rewrites the IPv4 source and destination (with a valid header
    /// checksum and no UDP checksum, as a forger would).
    pub fn set_ips(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.0[ETH_HLEN + 12..ETH_HLEN + 16].copy_from_slice(&src.octets());
        self.0[ETH_HLEN + 16..ETH_HLEN + 20].copy_from_slice(&dst.octets());
        self.fix_checksums();
    }

    pub fn set_dst_mac(&mut self, mac: [u8; 6]) {
        self.0[0..6].copy_from_slice(&mac);
    }

    /// The same datagram with a 4-byte IP option (three NOPs and an end):
    /// still a valid frame for the IP stack, never a probe's shape.
    pub fn with_ip_option(&self) -> Frame {
        let mut b = self.0.clone();
        b.splice(UDP_OFF..UDP_OFF, [1u8, 1, 1, 0]);
        b[ETH_HLEN] = 0x46;
        let total = u16::from_be_bytes([b[ETH_HLEN + 2], b[ETH_HLEN + 3]]).saturating_add(4);
        b[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
        let mut f = Frame(b);
        f.fix_checksums();
        f
    }

    /// The same datagram marked as the first fragment of a longer one (MF).
    pub fn as_first_fragment(&self) -> Frame {
        let mut f = self.clone();
        f.0[ETH_HLEN + 6] |= 0x20;
        f.fix_checksums();
        f
    }

    /// After the payload changed: the IP checksum again, UDP's off (0).
    pub fn fix_checksums(&mut self) {
        let ihl = usize::from(self.0[ETH_HLEN] & 0x0f) * 4;
        self.0[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let mut sum = 0u32;
        for w in self.0[ETH_HLEN..ETH_HLEN + ihl].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        self.0[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        self.0[ETH_HLEN + ihl + 6..ETH_HLEN + ihl + 8].fill(0);
    }
}

/// Parses "02:4c:00:00:01:00".
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    parts.try_into().map_err(|_| anyhow!("bad MAC {s:?}"))
}

/// Frames going on in the background until stopped.
pub struct Injector {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// The sending thread's result: how long it sent.
    thread: Option<JoinHandle<Result<Duration>>>,
}

impl Injector {
    /// Stops; returns (frames sent, achieved rate per second).
    pub fn stop(mut self) -> Result<(u64, f64)> {
        self.stop.store(true, Ordering::Release);
        let sending = match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("injector panicked"))??,
            None => Duration::ZERO,
        };
        let sent = self.sent.load(Ordering::Acquire);
        Ok((sent, sent as f64 / sending.as_secs_f64().max(1e-9)))
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Lab {
    /// Captures, for `d`, the UDP frames to `port` that `from` sends on
    /// `link` (as they enter the switch).
    pub fn capture_udp(
        &self,
        from: Server,
        link: Link,
        port: u16,
        d: Duration,
    ) -> Result<Vec<Frame>> {
        let ns = self.switch_ns().to_string();
        let ifname = from.port(link).to_string();
        let src = from.ip(link);
        std::thread::spawn(move || -> Result<Vec<Frame>> {
            let sock = open_capture(&ns, &ifname, ETH_P_ALL)?;
            let end = Instant::now() + d;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 2048];
            while Instant::now() < end {
                let n = recv(&sock, &mut buf);
                if n <= 0 {
                    continue;
                }
                let f = Frame(buf[..n as usize].to_vec());
                if f.ipv4_udp() && f.src_ip() == src && f.dst_port() == port {
                    out.push(f);
                }
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow!("capture thread panicked"))?
    }

    /// Sends `frames` (cycling through them) out of `to`'s switch port on
    /// `link`, towards `to`, at about `rate_hz`, until stopped.
    pub fn inject(
        &self,
        to: Server,
        link: Link,
        frames: Vec<Frame>,
        rate_hz: u32,
    ) -> Result<Injector> {
        if frames.is_empty() {
            bail!("nothing to inject");
        }
        let ns = self.switch_ns().to_string();
        let ifname = to.port(link).to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, n2) = (stop.clone(), sent.clone());
        let period = Duration::from_secs_f64(1.0 / f64::from(rate_hz.max(1)));
        let thread = std::thread::spawn(move || -> Result<Duration> {
            let sock = open_capture(&ns, &ifname, ETH_P_ALL)?;
            let start = Instant::now();
            let mut k: u64 = 0;
            while !s2.load(Ordering::Acquire) {
                let f = &frames[(k % frames.len() as u64) as usize];
                // SAFETY: sending a valid buffer on our own bound socket.
                let rc = unsafe { libc::send(sock.0, f.0.as_ptr().cast(), f.0.len(), 0) };
                if rc > 0 {
                    n2.fetch_add(1, Ordering::Release);
                }
                k += 1;
                // Paced on the schedule, not on the sleeps' accuracy.
                let due = start + period.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            Ok(start.elapsed())
        });
        Ok(Injector {
            stop,
            sent,
            thread: Some(thread),
        })
    }
}

fn recv(sock: &Fd, buf: &mut [u8]) -> isize {
    // SAFETY: reading into our own buffer.
    unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) }
}
