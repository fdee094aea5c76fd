//! ARP as the client sees it: an AF_PACKET receiver thread in the client
//! namespace, timestamping every ARP frame with `Instant::now()` (monotonic,
//! comparable with the fault instant; tcpdump's wall-clock stamps are not).

use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ha_lab::capture::{open_capture, Fd};

/// One ARP frame seen on the client's interface.
#[derive(Debug, Clone)]
pub struct ArpFrame {
    pub at: Instant,
    pub sender_mac: String,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// Gratuitous: the sender announces its own address (request or reply).
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

/// A running capture; stops on [`ArpCapture::finish`] or drop, or by itself
/// after its maximum duration.
pub struct ArpCapture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<ArpFrame>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl ArpCapture {
    /// Captures ARP on `ifname` in namespace `ns` for at most `max`.
    pub fn start(ns: &str, ifname: &str, max: Duration) -> Result<ArpCapture> {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + max;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = {
            let (ns, ifname) = (ns.to_string(), ifname.to_string());
            let (stop, frames) = (stop.clone(), frames.clone());
            std::thread::Builder::new()
                .name("bench-arp".into())
                .spawn(move || -> Result<()> {
                    let fd = match open_capture(&ns, &ifname, libc::ETH_P_ARP as u16) {
                        Ok(fd) => {
                            let _ = ready_tx.send(Ok(()));
                            fd
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                            return Err(e);
                        }
                    };
                    receive(&fd, &stop, &frames, deadline)
                })?
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("ARP capture did not start"))??;
        Ok(ArpCapture {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// Stops the thread; returns every frame.
    pub fn finish(mut self) -> Vec<ArpFrame> {
        self.shutdown();
        std::mem::take(&mut *self.frames.lock().unwrap())
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ArpCapture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The first gratuitous ARP for `ip` from `mac` at or after `t`.
pub fn first_garp<'a>(
    frames: &'a [ArpFrame],
    ip: Ipv4Addr,
    mac: &str,
    t: Instant,
) -> Option<&'a ArpFrame> {
    frames.iter().find(|f| {
        f.at >= t
            && f.is_gratuitous()
            && f.sender_ip == ip
            && f.sender_mac.eq_ignore_ascii_case(mac)
    })
}

fn receive(
    fd: &Fd,
    stop: &AtomicBool,
    frames: &Mutex<Vec<ArpFrame>>,
    deadline: Instant,
) -> Result<()> {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // SAFETY: a zeroed sockaddr_ll is a valid out parameter.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and sll are valid for writes of their sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.0,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        let at = Instant::now();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => bail!("recvfrom: {e}"),
            }
        }
        // The client's own requests are not announcements.
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if let Some(f) = parse(&buf[..n as usize], at) {
            frames.lock().unwrap().push(f);
        }
    }
    Ok(())
}

/// Parses an Ethernet/IPv4 ARP frame.
fn parse(frame: &[u8], at: Instant) -> Option<ArpFrame> {
    let a = ha_lab::capture::ArpFrame::parse(frame)?;
    let m = a.sender_mac;
    let sender_mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    Some(ArpFrame {
        at,
        sender_mac,
        sender_ip: a.sender_ip,
        target_ip: a.target_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_gratuitous_arp() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0x4c, 0, 0, 2, 0, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0x4c, 0, 0, 2, 0, 198, 51, 100, 100]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 51, 100, 100]);
        let a = parse(&f, Instant::now()).unwrap();
        assert!(a.is_gratuitous());
        assert_eq!(a.sender_mac, "02:4c:00:00:02:00");
        assert_eq!(a.sender_ip, Ipv4Addr::new(198, 51, 100, 100));
        f[14 + 27] = 1;
        assert!(!parse(&f, Instant::now()).unwrap().is_gratuitous());
    }
}
