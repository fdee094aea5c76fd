//! The probe sockets: one to receive per link (the agent reads only what
//! the kernel passes up), and the senders' own, connected and non-blocking.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::warn;

/// One datagram from a receive socket.
pub struct Received {
    pub link: usize,
    pub source: Ipv4Addr,
    pub bytes: [u8; 256],
    pub len: usize,
}

impl Received {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len.min(self.bytes.len())]
    }
}

/// Reads every receive socket (index = link) on the current runtime and
/// hands what arrives, with its source, to one channel.
pub fn spawn_readers(sockets: Vec<UdpSocket>) -> Result<mpsc::Receiver<Received>> {
    let (tx, rx) = mpsc::channel(256);
    for (i, s) in sockets.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        // Read interest only: the loop is never woken for write space.
        // SAFETY: the AsyncFd owns the socket, whose fd stays open and the
        // same until the AsyncFd is dropped.
        let sock = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                let got = match sock.readable().await {
                    Ok(mut guard) => match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                        Ok(r) => r,
                        Err(_would_block) => continue,
                    },
                    Err(e) => Err(e),
                };
                match got {
                    Ok((n, std::net::SocketAddr::V4(src))) => {
                        let got = Received {
                            link: i,
                            source: *src.ip(),
                            bytes: buf,
                            len: n,
                        };
                        if tx.send(got).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(link = i, error = %e, "probe socket receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    Ok(rx)
}

/// UDP socket bound to the link's address and interface; marked as network
/// control traffic so queues let it through first.
pub fn receive_socket(ifname: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_tos_v4(0xC0)?;
    s.set_priority(6)?;
    s.bind(&SocketAddrV4::new(ip, port).into())?;
    Ok(s.into())
}

/// The senders' socket per link: connected, so the kernel keeps the route
/// instead of looking it up for every probe, and never read, so no one is
/// woken when its send buffer drains. Its source port is ephemeral: the
/// peer accepts probes by destination port. One per sender thread.
pub fn send_socket(ifname: &str, ip: Ipv4Addr, peer: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_tos_v4(0xC0)?;
    s.set_priority(6)?;
    s.bind(&SocketAddrV4::new(ip, 0).into())?;
    s.connect(&peer.into())?;
    // Nothing is ever read here: the smallest receive buffer.
    s.set_recv_buffer_size(0)?;
    // Never block a real-time thread: with the peer's address unresolved
    // (it died), the kernel parks our datagrams in the neighbour queue, and
    // a blocking send waits until ARP gives up (seconds) once they fill
    // the send buffer. A full buffer is a failed send (counted), never a wait.
    s.set_nonblocking(true)?;
    Ok(s.into())
}
