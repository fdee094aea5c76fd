//! TCP ports a fixture keeps while it is down.
//!
//! A fixture that picks a free port by binding port 0, closes it, and binds
//! it again later can find it taken meanwhile: the unprivileged tests run in
//! parallel, and another test's bind to port 0, or a connection's source
//! port, may get it (seen: `AddrInUse` from a fake backend's start). A
//! [`ReservedPort`] holds the port with a bound socket that never listens,
//! so connections to it are refused as to a stopped server, and nothing
//! else can take it; [`ReservedPort::listen`] opens a listener beside it
//! (`SO_REUSEPORT`, same user), as often as the fixture starts again.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// A port held for a fixture (see the module doc).
#[derive(Debug)]
pub struct ReservedPort {
    _holder: Socket,
    addr: SocketAddr,
}

/// A TCP socket that may share its port with the holder (`SO_REUSEPORT`,
/// same user); a listener also binds over its predecessor's connections
/// in TIME_WAIT (`SO_REUSEADDR`). The holder has no `SO_REUSEADDR`: with
/// it, any other socket that has it (every std listener) could bind the
/// port beside a holder that does not listen.
fn socket(addr: SocketAddr, reuse_address: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(reuse_address)?;
    s.set_reuse_port(true)?;
    Ok(s)
}

impl ReservedPort {
    /// A free port on `ip` (port 0) or the given one, held from now on.
    pub fn new(addr: SocketAddr) -> io::Result<ReservedPort> {
        let holder = socket(addr, false)?;
        holder.bind(&addr.into())?;
        let addr = holder
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the reserved socket has no IP address"))?;
        Ok(ReservedPort {
            _holder: holder,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A listener on the port (one at a time: two would share the
    /// connections).
    pub fn listen(&self) -> io::Result<TcpListener> {
        let s = socket(self.addr, true)?;
        s.bind(&self.addr.into())?;
        s.listen(128)?;
        Ok(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_reserved_port_refuses_connections_and_cannot_be_taken_until_it_listens() {
        let p = ReservedPort::new(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        assert_ne!(p.addr().port(), 0);
        assert!(TcpStream::connect(p.addr()).is_err(), "refused while down");
        assert!(TcpListener::bind(p.addr()).is_err(), "taken by nobody else");
        for _ in 0..2 {
            let l = p.listen().unwrap();
            let c = TcpStream::connect(p.addr()).unwrap();
            let (s, _) = l.accept().unwrap();
            assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
            drop((l, s, c));
            assert!(
                TcpStream::connect(p.addr()).is_err(),
                "refused when down again"
            );
        }
    }
}
