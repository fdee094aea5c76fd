//! Low-level helpers: running commands, entering a named network namespace
//! from a thread, reading addresses, listing and deleting namespaces.

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// An IPv4 address with its prefix length, as configured on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Runs a command to completion and returns its output (whatever its status).
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", describe(cmd)))
}

/// Runs a command; fails with its stderr unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...` (in the root namespace: only for `netns` management and `-n NS`).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// `ip -n NS ARGS...`
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip -n NS -batch -` with `lines` on stdin: several changes in one process,
/// microseconds apart (e.g. two ports down "at once").
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip -batch")?;
    let mut input = lines.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .context("ip -batch stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch failed: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip netns exec NS ARGS...` as a `Command` (not yet run).
pub fn netns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Writes sysctls inside a namespace (`sysctl -qw k=v ...`); keys that do not
/// exist there are an error only if `strict`.
pub fn sysctl_in(ns: &str, settings: &[&str], strict: bool) -> Result<()> {
    for s in settings {
        let r = run(netns_command(ns, "sysctl").args(["-qw", s]));
        if strict {
            r?;
        }
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Moves the calling thread into the named network namespace (for good).
/// Only for threads the lab creates itself.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a valid fd; affects only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the named network namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            enter_netns(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// The IPv4 addresses of every interface in the calling thread's namespace,
/// as (interface name, address) pairs, read by `getifaddrs(3)` (netlink).
pub fn local_ipv4_addresses() -> Result<Vec<(String, Cidr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: family is AF_INET, so it is a sockaddr_in; same for the netmask.
        let addr = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let prefix_len = if ifa.ifa_netmask.is_null() {
            32
        } else {
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push((
            name,
            Cidr {
                addr: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                prefix_len,
            },
        ));
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The IPv4 addresses of `ifname` in namespace `ns` (ground truth from the kernel).
pub fn addresses(ns: &str, ifname: &str) -> Result<Vec<Cidr>> {
    let all = in_netns(ns, local_ipv4_addresses)??;
    Ok(all
        .into_iter()
        .filter(|(n, _)| n == ifname)
        .map(|(_, c)| c)
        .collect())
}

/// Names of all named network namespaces.
pub fn list_netns() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// PIDs of the processes inside a named namespace (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills (SIGKILL) every process in a namespace, waiting up to 2 s for them
/// to go, then deletes the namespace (which destroys its veths and bridges).
pub fn delete_netns(ns: &str) -> Result<()> {
    for _ in 0..200 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2); the pid was listed inside our own namespace.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if std::path::Path::new(NETNS_DIR).join(ns).exists() {
        ip(&["netns", "delete", ns])?;
    }
    Ok(())
}
