//! Raw packet capture for the lab's observers (the pinger's replies, the
//! benchmark's ARP watch): an owned fd and an AF_PACKET socket bound to one
//! interface of a namespace.

use std::ffi::CString;
use std::mem::{size_of, zeroed};

use anyhow::{bail, Context, Result};

use crate::netns::enter_netns;

/// An owned file descriptor, closed on drop.
pub struct Fd(pub libc::c_int);

impl Fd {
    /// Takes a syscall's result: a negative one is the OS error.
    pub fn new(fd: libc::c_int) -> Result<Fd> {
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

pub fn setsockopt<T>(fd: &Fd, level: libc::c_int, name: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: value points to a T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("setsockopt({level}, {name})"));
    }
    Ok(())
}

/// An AF_PACKET socket in namespace `ns` (entered by the calling thread)
/// receiving frames of `ethertype` on `ifname`, with a 20 ms receive
/// timeout (so a stop flag is seen) and a large receive buffer.
pub fn open_capture(ns: &str, ifname: &str, ethertype: u16) -> Result<Fd> {
    enter_netns(ns)?;
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2).
    let sock = Fd::new(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) })
        .context("AF_PACKET socket")?;
    let cname = CString::new(ifname)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname} in {ns}");
    }
    // SAFETY: zeroed sockaddr_ll is valid; we fill the fields bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            sock.0,
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind AF_PACKET");
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let buf: libc::c_int = 4 << 20;
    let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &buf);
    Ok(sock)
}
