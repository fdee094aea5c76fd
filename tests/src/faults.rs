//! Fault injection, all inside the switch namespace, all undone by [`Lab::heal`].
//!
//! Port faults set the switch-side veth down (the server's interface loses
//! carrier). Silent faults use one nftables table of the `bridge` family in
//! the switch namespace, `table bridge halab`, with three base chains:
//!
//! - `fault_fwd` (hook forward): frames bridged between two ports (server <->
//!   server, server <-> client);
//! - `fault_in` (hook input): frames from a port to the switch itself (ARP and
//!   ICMP to the gateway 198.51.100.1, i.e. the agents' witness);
//! - `fault_out` (hook output): frames from the switch itself out of a port.
//!
//! Every fault only appends `drop` rules (with a comment naming the fault) to
//! those chains; carrier stays up. [`Lab::heal`] flushes the three chains and
//! sets every port up again.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

use crate::topology::{Lab, Link, Server, CLIENT_PORT};

/// Name of the lab's nftables table (family `bridge`, switch namespace).
pub const TABLE: &str = "halab";

/// Creates the (empty) fault table in the switch namespace.
pub(crate) fn install_base_table(sw: &str) -> Result<()> {
    nft(
        sw,
        &format!(
            "table bridge {TABLE} {{\n\
             \x20 chain fault_fwd {{ type filter hook forward priority 0; policy accept; }}\n\
             \x20 chain fault_in {{ type filter hook input priority 0; policy accept; }}\n\
             \x20 chain fault_out {{ type filter hook output priority 0; policy accept; }}\n\
             }}\n"
        ),
    )
}

/// Runs an nft script (`nft -f -`) in a namespace.
fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft -f failed in {ns}: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn set(ports: &[&str]) -> String {
    let q: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
    format!("{{ {} }}", q.join(", "))
}

/// The rules that silently drop every frame entering or leaving `ports`.
fn drop_ports_rules(ports: &[&str], comment: &str) -> String {
    let s = set(ports);
    format!(
        "add rule bridge {TABLE} fault_fwd iifname {s} drop comment \"{comment}\"\n\
         add rule bridge {TABLE} fault_fwd oifname {s} drop comment \"{comment}\"\n\
         add rule bridge {TABLE} fault_in iifname {s} drop comment \"{comment}\"\n\
         add rule bridge {TABLE} fault_out oifname {s} drop comment \"{comment}\"\n"
    )
}

/// All four server ports.
fn server_ports() -> Vec<&'static str> {
    Server::ALL
        .iter()
        .flat_map(|s| Link::ALL.iter().map(move |l| s.port(*l)))
        .collect()
}

impl Lab {
    /// Sets switch ports up or down in one `ip -batch` (microseconds apart).
    fn port_states(&self, ports: &[&str], up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        let lines: Vec<String> = ports
            .iter()
            .map(|p| format!("link set dev {p} {state}"))
            .collect();
        crate::netns::ip_batch(self.switch_ns(), &lines)
    }

    fn server_links(server: Server) -> Vec<&'static str> {
        Link::ALL.iter().map(|l| server.port(*l)).collect()
    }

    /// Sets both of the server's switch ports down (in one `ip -batch`): the
    /// server's eth0 and eth1 lose carrier (as when its cables are pulled or
    /// it powers off).
    pub fn links_down(&self, server: Server) -> Result<()> {
        self.port_states(&Self::server_links(server), false)
    }

    /// Sets both of the server's switch ports up again.
    pub fn links_up(&self, server: Server) -> Result<()> {
        self.port_states(&Self::server_links(server), true)
    }

    /// Sets one switch port down: that interface of the server loses carrier.
    pub fn link_down(&self, server: Server, link: Link) -> Result<()> {
        self.port_states(&[server.port(link)], false)
    }

    /// Sets one switch port up again.
    pub fn link_up(&self, server: Server, link: Link) -> Result<()> {
        self.port_states(&[server.port(link)], true)
    }

    /// Silently drops every frame to or from both of the server's ports
    /// (bridged, to the switch/gateway, from the switch). Carrier stays up.
    ///
    /// nft: `fault_fwd iifname {"s1o","s1i"} drop`, `fault_fwd oifname {...} drop`,
    /// `fault_in iifname {...} drop`, `fault_out oifname {...} drop`.
    pub fn isolate(&self, server: Server) -> Result<()> {
        let ports: Vec<&str> = Link::ALL.iter().map(|l| server.port(*l)).collect();
        nft(
            self.switch_ns(),
            &drop_ports_rules(&ports, &format!("isolate {server}")),
        )
    }

    /// Silently drops every frame on one of the server's ports (the same four
    /// rules as [`Lab::isolate`] for that one port). Carrier stays up.
    pub fn drop_uplink(&self, server: Server, link: Link) -> Result<()> {
        nft(
            self.switch_ns(),
            &drop_ports_rules(
                &[server.port(link)],
                &format!("drop_uplink {server} {link}"),
            ),
        )
    }

    /// Drops only the frames bridged between server1's and server2's ports on
    /// `link` (both directions); both still reach the switch/gateway and the
    /// client.
    ///
    /// nft: `fault_fwd iifname "s1o" oifname "s2o" drop`, `fault_fwd iifname "s2o" oifname "s1o" drop`.
    pub fn cut_between_servers(&self, link: Link) -> Result<()> {
        let a = Server::S1.port(link);
        let b = Server::S2.port(link);
        let c = format!("cut_between_servers {link}");
        nft(
            self.switch_ns(),
            &format!(
                "add rule bridge {TABLE} fault_fwd iifname \"{a}\" oifname \"{b}\" drop comment \"{c}\"\n\
                 add rule bridge {TABLE} fault_fwd iifname \"{b}\" oifname \"{a}\" drop comment \"{c}\"\n"
            ),
        )
    }

    /// The switch (the servers' witness) ignores ARP requests sent to its
    /// MAC, and answers only broadcast ones, as a gateway that polices
    /// unicast ARP would.
    ///
    /// nft: `fault_in ether type arp ether daddr != ff:ff:ff:ff:ff:ff drop`.
    pub fn witness_ignores_unicast_arp(&self) -> Result<()> {
        nft(
            self.switch_ns(),
            &format!(
                "add rule bridge {TABLE} fault_in ether type arp ether daddr != ff:ff:ff:ff:ff:ff drop comment \"witness_ignores_unicast_arp\"\n"
            ),
        )
    }

    /// Drops `percent`% of the frames through any server port, chosen at
    /// random, each frame tested exactly once (a server-to-server frame is
    /// not tested twice). 0 adds nothing; more than 100 is an error.
    ///
    /// nft (P = the four server ports): `fault_fwd iifname P numgen random mod 100 < N drop`,
    /// `fault_fwd iifname != P oifname P numgen random mod 100 < N drop`,
    /// `fault_in iifname P numgen random mod 100 < N drop`,
    /// `fault_out oifname P numgen random mod 100 < N drop`.
    pub fn random_loss(&self, percent: u32) -> Result<()> {
        if percent > 100 {
            bail!("random_loss: {percent}% is more than 100%");
        }
        if percent == 0 {
            return Ok(());
        }
        let p = set(&server_ports());
        let c = format!("random_loss {percent}%");
        let r = format!("numgen random mod 100 < {percent} drop comment \"{c}\"");
        nft(
            self.switch_ns(),
            &format!(
                "add rule bridge {TABLE} fault_fwd iifname {p} {r}\n\
                 add rule bridge {TABLE} fault_fwd iifname != {p} oifname {p} {r}\n\
                 add rule bridge {TABLE} fault_in iifname {p} {r}\n\
                 add rule bridge {TABLE} fault_out oifname {p} {r}\n"
            ),
        )
    }

    /// Undoes every fault: flushes the three chains, sets every port up.
    pub fn heal(&self) -> Result<()> {
        nft(
            self.switch_ns(),
            &format!(
                "flush chain bridge {TABLE} fault_fwd\n\
                 flush chain bridge {TABLE} fault_in\n\
                 flush chain bridge {TABLE} fault_out\n"
            ),
        )?;
        let mut ports = server_ports();
        ports.push(CLIENT_PORT);
        self.port_states(&ports, true)
    }

    /// The fault rules in force (`nft list table bridge halab`), for logs.
    pub fn fault_rules(&self) -> Result<String> {
        self.exec_ok(self.switch_ns(), &["nft", "list", "table", "bridge", TABLE])
    }
}

/// Runs a busy loop under SCHED_FIFO `priority`, pinned to `cpu`, for `d`
/// (then returns): a CPU that nothing of lower priority gets for that long,
/// as a stalled vCPU. Real-time throttling (95% of each second by default)
/// still lets the kernel's own work through.
pub fn cpu_hog(cpu: usize, priority: i32, d: std::time::Duration) -> Result<()> {
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: cpu_set_t is plain data; CPU_SET within CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: cpu < CPU_SETSIZE (1024).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: valid set for the calling thread.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0
        {
            bail!(
                "sched_setaffinity(cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: plain syscall on the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            bail!(
                "sched_setscheduler(FIFO {priority}): {}",
                std::io::Error::last_os_error()
            );
        }
        let end = std::time::Instant::now() + d;
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("cpu hog panicked"))?
}
