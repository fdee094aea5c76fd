//! Which user serves the other end of a local TCP connection, from
//! `/proc/net/tcp` and `/proc/net/tcp6` (of the caller's network namespace).
//!
//! Why: the admin client proves it knows Atlas's password with a
//! mysql_native_password scramble. While Atlas is down, any local user can
//! bind its admin port (it is above 1024), send a greeting with a challenge
//! of their choosing and collect the scramble, which can then be attacked
//! offline. Before sending it, the client checks that the server side of
//! its connection belongs to the user Atlas runs as (root by default).
//!
//! The uid of a TCP socket in these tables is the uid of the process that
//! created it, for an accepted socket the process that called `accept()`
//! (the kernel reports root for a connection nobody has accepted yet, so the
//! check is made after the greeting, which proves the accept). The check
//! is exact for connections within this host; for an admin port on another
//! host there is nothing local to check ([`Owner::Remote`]).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The socket that serves the connection, and its owner.
    Uid(u32),
    /// The server is on another host (the connection's two ends have
    /// different addresses, so it is not a connection within this host).
    Remote,
    /// A local connection whose server side is not listed (it was closed).
    NotFound,
}

/// Who owns the server side of the connection from `client` to `server`.
pub fn of_connection(server: SocketAddr, client: SocketAddr) -> io::Result<Owner> {
    let (server, client) = (unmap(server), unmap(client));
    if server.ip() != client.ip() {
        // Connections to a local address use that address as their source:
        // different addresses mean another host.
        return Ok(Owner::Remote);
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(t) => t,
            // No IPv6 in this kernel or namespace.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find(&text, server, client) {
            return Ok(Owner::Uid(uid));
        }
    }
    Ok(Owner::NotFound)
}

/// The uid of the row whose local address is `local` and remote `remote`.
pub fn find(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid ...
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (parse_endpoint(l)? == local && parse_endpoint(r)? == remote)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:0929` or the 32-digit IPv6 form: each 32-bit word is printed
/// as a host-order integer, the port as a host-order number.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let addr = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(unmap(SocketAddr::new(addr, port)))
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view) as IPv4.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn parses_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0929 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 5 1 0 20 4 30 10 -1\n";
        let admin: SocketAddr = "127.0.0.1:2345".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(find(v4, admin, client), Some(1000));
        assert_eq!(find(v4, client, admin), None);
        // A dual-stack listener: ::ffff:127.0.0.1 on both ends.
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0000000000000000FFFF00000100007F:0929 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 7 1 0\n";
        assert_eq!(find(v6, admin, client), Some(0));
        assert_eq!(find("header\ngarbage line\n", admin, client), None);
    }

    #[test]
    fn finds_the_owner_of_a_real_local_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _accepted = l.accept().unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(
            of_connection(c.peer_addr().unwrap(), c.local_addr().unwrap()).unwrap(),
            Owner::Uid(me)
        );
        let far: SocketAddr = "192.0.2.1:2345".parse().unwrap();
        assert_eq!(
            of_connection(far, c.local_addr().unwrap()).unwrap(),
            Owner::Remote
        );
    }
}
