//! The lab's topology: namespaces, bridges, veth pairs, addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{self, Cidr};
use crate::{CLIENT_IP, DEFAULT_BASE, GATEWAY, INSIDE_SWITCH, PREFIX_LEN};

/// One of the two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Server {
    S1,
    S2,
}

impl Server {
    pub const ALL: [Server; 2] = [Server::S1, Server::S2];

    /// "server1" / "server2": the agent's node name and the namespace suffix.
    pub fn name(self) -> &'static str {
        match self {
            Server::S1 => "server1",
            Server::S2 => "server2",
        }
    }
    pub fn index(self) -> u8 {
        match self {
            Server::S1 => 1,
            Server::S2 => 2,
        }
    }
    pub fn peer(self) -> Server {
        match self {
            Server::S1 => Server::S2,
            Server::S2 => Server::S1,
        }
    }
    /// The server's own address on a link (198.51.100.11/.12, 203.0.113.11/.12).
    pub fn ip(self, link: Link) -> Ipv4Addr {
        let [a, b, c, _] = link.subnet().octets();
        Ipv4Addr::new(a, b, c, 10 + self.index())
    }
    /// The deterministic MAC the lab gives the server's interface on a link.
    pub fn mac(self, link: Link) -> String {
        format!("02:4c:00:00:{:02x}:{:02x}", self.index(), link.index())
    }
    /// The switch-side port (in the switch namespace) of this server's link.
    pub fn port(self, link: Link) -> &'static str {
        match (self, link) {
            (Server::S1, Link::Outside) => "s1o",
            (Server::S1, Link::Inside) => "s1i",
            (Server::S2, Link::Outside) => "s2o",
            (Server::S2, Link::Inside) => "s2i",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the two LANs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// eth0, 198.51.100.0/24, bridge `br-out`; the client and the gateway are here.
    Outside,
    /// eth1, 203.0.113.0/24, bridge `br-in`.
    Inside,
}

impl Link {
    pub const ALL: [Link; 2] = [Link::Outside, Link::Inside];

    /// The agent's link name ("outside", "inside").
    pub fn name(self) -> &'static str {
        match self {
            Link::Outside => "outside",
            Link::Inside => "inside",
        }
    }
    /// The server's interface on this link.
    pub fn ifname(self) -> &'static str {
        match self {
            Link::Outside => "eth0",
            Link::Inside => "eth1",
        }
    }
    /// The bridge in the switch namespace.
    pub fn bridge(self) -> &'static str {
        match self {
            Link::Outside => "br-out",
            Link::Inside => "br-in",
        }
    }
    pub fn index(self) -> u8 {
        match self {
            Link::Outside => 0,
            Link::Inside => 1,
        }
    }
    /// Network address of the link's /24.
    pub fn subnet(self) -> Ipv4Addr {
        match self {
            Link::Outside => Ipv4Addr::new(198, 51, 100, 0),
            Link::Inside => Ipv4Addr::new(203, 0, 113, 0),
        }
    }
    /// The switch's own address on this link's bridge.
    pub fn switch_ip(self) -> Ipv4Addr {
        match self {
            Link::Outside => GATEWAY,
            Link::Inside => INSIDE_SWITCH,
        }
    }
    /// The VIP that lives on this link.
    pub fn vip(self) -> Ipv4Addr {
        match self {
            Link::Outside => crate::OUTSIDE_VIP,
            Link::Inside => crate::INSIDE_VIP,
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Switch,
    Client,
    Server(Server),
}

impl Node {
    pub const ALL: [Node; 4] = [
        Node::Switch,
        Node::Server(Server::S1),
        Node::Server(Server::S2),
        Node::Client,
    ];
    fn suffix(self) -> &'static str {
        match self {
            Node::Switch => "sw",
            Node::Client => "cl",
            Node::Server(Server::S1) => "s1",
            Node::Server(Server::S2) => "s2",
        }
    }
}

/// The client's switch port.
pub const CLIENT_PORT: &str = "cl0";
/// The client's MAC.
pub const CLIENT_MAC: &str = "02:4c:00:00:00:32";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running lab. Dropping it kills every process in its namespaces and
/// deletes them, and removes its temporary directory (kept when dropped
/// while panicking or with `HA_LAB_KEEP=1`, for the logs).
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    ns: BTreeMap<Node, String>,
    macs: BTreeMap<(Server, Link), String>,
    pub(crate) agent_bin: Option<PathBuf>,
    closed: bool,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Lab {
    /// Builds the topology with a fresh prefix `hl<pid-hex>n<counter>`, after
    /// removing leftovers of earlier labs whose owning process is gone.
    pub fn new() -> Result<Lab> {
        Self::with_base(DEFAULT_BASE)
    }

    /// Like [`Lab::new`] with another prefix base (letters only, 1 to 4 chars).
    pub fn with_base(base: &str) -> Result<Lab> {
        if base.is_empty() || base.len() > 4 || !base.chars().all(|c| c.is_ascii_lowercase()) {
            bail!("lab prefix base must be 1 to 4 lowercase letters, got {base:?}");
        }
        check_root()?;
        let removed = Self::cleanup_orphans(base)?;
        if !removed.is_empty() {
            eprintln!("ha-lab: removed leftovers of dead labs: {removed:?}");
        }
        let prefix = format!(
            "{base}{:x}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut dir = std::env::temp_dir().join(format!("ha-lab-{prefix}"));
        if dir.as_os_str().len() > 60 {
            // Unix socket paths must stay short (108 bytes).
            dir = PathBuf::from("/tmp").join(format!("ha-lab-{prefix}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let ns = Node::ALL
            .iter()
            .map(|&n| (n, format!("{prefix}-{}", n.suffix())))
            .collect();
        let mut lab = Lab {
            prefix,
            dir,
            ns,
            macs: BTreeMap::new(),
            agent_bin: None,
            closed: false,
        };
        // On error, `lab` is dropped here and removes what was built.
        lab.build().context("building the lab topology")?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        for ns in self.ns.values() {
            netns::ip(&["netns", "add", ns])?;
            netns::ip_in(ns, &["link", "set", "lo", "up"])?;
            netns::sysctl_in(
                ns,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
                false,
            )?;
        }
        let sw = self.ns(Node::Switch).to_string();
        // Bridged frames must not also traverse the switch's ip/arp hooks.
        netns::sysctl_in(
            &sw,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-arptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
            ],
            false,
        )?;
        for link in Link::ALL {
            let br = link.bridge();
            netns::ip_in(
                &sw,
                &[
                    "link",
                    "add",
                    br,
                    "type",
                    "bridge",
                    "stp_state",
                    "0",
                    "forward_delay",
                    "0",
                    "mcast_snooping",
                    "0",
                ],
            )?;
            let a = format!("{}/{PREFIX_LEN}", link.switch_ip());
            netns::ip_in(&sw, &["addr", "add", &a, "dev", br])?;
            netns::ip_in(&sw, &["link", "set", br, "up"])?;
        }
        for server in Server::ALL {
            let sns = self.ns(Node::Server(server)).to_string();
            for link in Link::ALL {
                let mac = server.mac(link);
                self.veth(
                    &sw,
                    server.port(link),
                    link.bridge(),
                    &sns,
                    link.ifname(),
                    &mac,
                )?;
                let a = format!("{}/{PREFIX_LEN}", server.ip(link));
                netns::ip_in(&sns, &["addr", "add", &a, "dev", link.ifname()])?;
            }
            netns::ip_in(
                &sns,
                &["route", "add", "default", "via", &GATEWAY.to_string()],
            )?;
        }
        let cl = self.ns(Node::Client).to_string();
        self.veth(&sw, CLIENT_PORT, "br-out", &cl, "eth0", CLIENT_MAC)?;
        netns::ip_in(
            &cl,
            &[
                "addr",
                "add",
                &format!("{CLIENT_IP}/{PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        netns::ip_in(
            &cl,
            &["route", "add", "default", "via", &GATEWAY.to_string()],
        )?;
        crate::faults::install_base_table(&sw)?;
        for server in Server::ALL {
            for link in Link::ALL {
                let mac = self.read_mac(self.ns(Node::Server(server)), link.ifname())?;
                self.macs.insert((server, link), mac);
            }
        }
        Ok(())
    }

    /// Creates a veth pair: `port` in the switch (enslaved to `bridge`), and
    /// `ifname` with `mac` in namespace `ns`; both up.
    fn veth(
        &self,
        sw: &str,
        port: &str,
        bridge: &str,
        ns: &str,
        ifname: &str,
        mac: &str,
    ) -> Result<()> {
        netns::ip_in(
            sw,
            &[
                "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
            ],
        )?;
        netns::ip_in(sw, &["link", "set", port, "master", bridge])?;
        netns::ip_in(sw, &["link", "set", port, "up"])?;
        netns::ip_in(ns, &["link", "set", ifname, "address", mac])?;
        netns::ip_in(ns, &["link", "set", ifname, "up"])?;
        Ok(())
    }

    fn read_mac(&self, ns: &str, ifname: &str) -> Result<String> {
        let out = netns::ip_in(ns, &["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link` output {out:?}"))?;
        v[0]["address"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no MAC for {ifname} in {ns}"))
    }

    /// Removes every namespace whose name starts with `prefix` (killing the
    /// processes inside first) and the temp dirs `ha-lab-<prefix>*`.
    /// Returns the namespaces removed. Use a lab's full prefix to remove one
    /// lab, or a base such as "hl" to remove all of them.
    pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
        let removed = Self::remove_namespaces(prefix)?;
        for dir in [std::env::temp_dir(), PathBuf::from("/tmp")] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(tail) = name.strip_prefix("ha-lab-") {
                        if format!("{tail}-").starts_with(prefix) {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
        }
        Ok(removed)
    }

    fn remove_namespaces(prefix: &str) -> Result<Vec<String>> {
        if prefix.is_empty() {
            bail!("refusing to clean up with an empty prefix");
        }
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for ns in netns::list_netns() {
            if ns.starts_with(prefix) {
                match netns::delete_netns(&ns) {
                    Ok(()) => removed.push(ns),
                    Err(e) => errors.push(format!("{ns}: {e:#}")),
                }
            }
        }
        if !errors.is_empty() {
            bail!("cleanup failed for: {}", errors.join("; "));
        }
        Ok(removed)
    }

    /// Removes the labs with this base whose owning process (the pid in the
    /// prefix) no longer exists. Labs of live processes are left alone.
    pub fn cleanup_orphans(base: &str) -> Result<Vec<String>> {
        let mut prefixes = std::collections::BTreeSet::new();
        for ns in netns::list_netns() {
            if let Some(prefix) = ns.split('-').next() {
                if let Some(pid) = owner_pid(base, prefix) {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        prefixes.insert(format!("{prefix}-"));
                    }
                }
            }
        }
        let mut removed = Vec::new();
        for p in prefixes {
            removed.extend(Self::cleanup_stale(&p)?);
        }
        Ok(removed)
    }

    /// The unique prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The lab's temporary directory (configs, key, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// A node's namespace name.
    pub fn ns(&self, node: Node) -> &str {
        &self.ns[&node]
    }
    pub fn switch_ns(&self) -> &str {
        self.ns(Node::Switch)
    }
    pub fn client_ns(&self) -> &str {
        self.ns(Node::Client)
    }
    pub fn server_ns(&self, server: Server) -> &str {
        self.ns(Node::Server(server))
    }
    /// All four namespace names.
    pub fn namespaces(&self) -> Vec<String> {
        self.ns.values().cloned().collect()
    }
    /// A server's MAC on a link, as the kernel reports it ("02:4c:00:00:01:00").
    pub fn mac(&self, server: Server, link: Link) -> &str {
        &self.macs[&(server, link)]
    }
    /// Which server (if any) has this MAC.
    pub fn server_with_mac(&self, mac: &str) -> Option<(Server, Link)> {
        self.macs
            .iter()
            .find(|(_, m)| m.eq_ignore_ascii_case(mac))
            .map(|(k, _)| *k)
    }

    /// `ip netns exec NS args[0] args[1..]`; returns the output whatever the status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let (prog, rest) = args.split_first().context("exec needs a program")?;
        netns::output(netns::netns_command(ns, prog).args(rest))
    }

    /// Like [`Lab::exec`] but fails unless the command exits 0; returns stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        let (prog, rest) = args.split_first().context("exec needs a program")?;
        netns::run(netns::netns_command(ns, prog).args(rest))
    }

    /// IPv4 addresses on `ifname` in namespace `ns`, read from the kernel.
    pub fn addresses(&self, ns: &str, ifname: &str) -> Result<Vec<Cidr>> {
        netns::addresses(ns, ifname)
    }

    /// The servers that hold `vip` right now, on any interface (ground truth
    /// from the kernel, not the agents' word). Errors count as "not held".
    pub fn vip_holders(&self, vip: Ipv4Addr) -> Vec<Server> {
        Server::ALL
            .into_iter()
            .filter(|&s| {
                netns::in_netns(self.server_ns(s), netns::local_ipv4_addresses)
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|addrs| addrs.iter().any(|(_, c)| c.addr == vip))
            })
            .collect()
    }

    /// The client's neighbour (ARP) entry for `ip`: the MAC, unless the entry
    /// is missing, INCOMPLETE or FAILED.
    pub fn client_neighbour_mac(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        self.neighbour_mac(self.client_ns(), ip)
    }

    /// Same as [`Lab::client_neighbour_mac`] in any namespace.
    pub fn neighbour_mac(&self, ns: &str, ip: Ipv4Addr) -> Result<Option<String>> {
        let out = netns::ip_in(ns, &["-j", "-4", "neigh", "show", "to", &ip.to_string()])?;
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
                .with_context(|| format!("parsing `ip -j neigh` output {out:?}"))?;
        for e in v.as_array().into_iter().flatten() {
            let failed = e["state"].as_array().is_some_and(|st| {
                st.iter()
                    .any(|s| s == "FAILED" || s == "INCOMPLETE" || s == "NONE")
            });
            if let (Some(mac), false) = (e["lladdr"].as_str(), failed) {
                return Ok(Some(mac.to_string()));
            }
        }
        Ok(None)
    }

    /// Removes the client's neighbour entry for `ip` (so the next packet ARPs).
    pub fn flush_client_neighbour(&self, ip: Ipv4Addr) -> Result<()> {
        netns::ip_in(self.client_ns(), &["neigh", "flush", "to", &ip.to_string()])?;
        Ok(())
    }

    /// Pings `ip` from namespace `ns` with `count` probes 10 ms apart, each
    /// waiting up to `wait`; returns how many replies came.
    pub fn ping_count(&self, ns: &str, ip: Ipv4Addr, count: u32, wait: Duration) -> Result<u32> {
        if crate::interrupted() {
            bail!("interrupted");
        }
        let w = format!("{:.3}", wait.as_secs_f64());
        let c = count.to_string();
        let out = self.exec(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &c,
                "-i",
                "0.01",
                "-W",
                &w,
                &ip.to_string(),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "N packets transmitted, M received, ..."
        let received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("cannot parse ping output {text:?}"))?;
        Ok(received)
    }

    /// True if `ip` answers at least one of 3 pings from `ns` (300 ms wait each).
    pub fn reachable(&self, ns: &str, ip: Ipv4Addr) -> bool {
        self.ping_count(ns, ip, 3, Duration::from_millis(300))
            .is_ok_and(|n| n > 0)
    }

    /// Removes everything now and reports errors (dropping does the same silently).
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.teardown()
    }

    /// Where this lab's logs are kept after it ends (every lab's, so a
    /// failure's evidence is there without asking): the workspace's
    /// `target/lab-evidence/<test>-<prefix>/`.
    pub fn evidence_dir(&self) -> PathBuf {
        let test = std::thread::current()
            .name()
            .unwrap_or("lab")
            .replace("::", "-")
            .replace(['/', ' '], "_");
        crate::agent::workspace_root()
            .join("target/lab-evidence")
            .join(format!("{test}-{}", self.prefix))
    }

    /// Copies the lab's logs, configs and small files (not database data
    /// directories) to [`Lab::evidence_dir`], and keeps the newest 200 such
    /// directories.
    fn save_evidence(&self) {
        let to = self.evidence_dir();
        if std::fs::create_dir_all(&to).is_err() {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let path = e.path();
                let small = e
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.len() < 64 << 20);
                let wanted = path.extension().is_some_and(|x| {
                    ["log", "toml", "txt", "err", "json", "cnf"].contains(&x.to_str().unwrap_or(""))
                });
                if small && wanted {
                    let _ = std::fs::copy(&path, to.join(e.file_name()));
                }
            }
        }
        // Database error logs live one level down.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for d in entries.flatten().filter(|e| e.path().is_dir()) {
                for f in ["error.log", "mysqld.err"] {
                    let p = d.path().join(f);
                    if p.is_file() {
                        let name = format!("{}-{f}", d.file_name().to_string_lossy());
                        let _ = std::fs::copy(&p, to.join(name));
                    }
                }
            }
        }
        prune_evidence(to.parent().unwrap_or(&to), 200);
    }

    fn teardown(&mut self) -> Result<()> {
        self.save_evidence();
        let r = Self::remove_namespaces(&format!("{}-", self.prefix));
        let keep = std::thread::panicking() || std::env::var_os("HA_LAB_KEEP").is_some();
        if keep {
            eprintln!("ha-lab: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        r.map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.teardown() {
                eprintln!("ha-lab: cleanup of {} failed: {e:#}", self.prefix);
            }
        }
    }
}

/// Keeps the newest `keep` evidence directories.
fn prune_evidence(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() <= keep {
        return;
    }
    dirs.sort();
    for (_, d) in &dirs[..dirs.len() - keep] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The pid encoded in a lab prefix `<base><pid-hex>n<counter>`.
fn owner_pid(base: &str, prefix: &str) -> Option<u32> {
    let rest = prefix.strip_prefix(base)?;
    let (hex, counter) = rest.split_once('n')?;
    counter.parse::<u32>().ok()?;
    u32::from_str_radix(hex, 16).ok()
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, nftables): run it through `cargo xtask test` as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_prefixes() {
        assert_eq!(owner_pid("hl", "hl1f2an0"), Some(0x1f2a));
        assert_eq!(owner_pid("hl", "hl1f2an12"), Some(0x1f2a));
        assert_eq!(owner_pid("hl", "hx1f2an0"), None);
        assert_eq!(owner_pid("hl", "hl1f2a"), None);
        assert_eq!(owner_pid("hl", "hlzzn0"), None);
    }

    #[test]
    fn names_fit_interface_limits() {
        for s in Server::ALL {
            for l in Link::ALL {
                assert!(s.port(l).len() <= 15);
                assert_eq!(s.ip(l).octets()[3], 10 + s.index());
            }
        }
        assert_eq!(Server::S2.ip(Link::Inside), Ipv4Addr::new(203, 0, 113, 12));
        assert_eq!(Server::S1.mac(Link::Inside), "02:4c:00:00:01:01");
    }
}
