//! `ha-agent import-keepalived`: an ha-agent config from a keepalived.conf.
//!
//! [`parse`] holds keepalived's grammar, [`read`] turns statements into
//! instances and groups (refusing unknown keywords), and [`import`] maps
//! them onto ha-agent's config: the sync group becomes the group, each
//! instance a link with its VIPs. What has no equivalent is listed in the
//! result's header, what needs a decision is a `TODO` comment next to the
//! field, and the text is validated with the agent's own parser.

pub mod parse;
pub mod read;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use read::{At, Instance, Keepalived, Notify, Track};

use crate::operator::config::Config;

/// Something in a keepalived.conf that stops the import, at its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// An address the keepalived.conf files do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingAddress {
    pub interface: String,
    pub instance: String,
    /// This server's address (else the peer's).
    pub local: bool,
}

impl fmt::Display for MissingAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whose, flag, kw) = if self.local {
            ("this server's", "--local-ip", "unicast_src_ip")
        } else {
            ("the peer's", "--peer-ip", "unicast_peer")
        };
        write!(
            f,
            "{whose} address on {} (vrrp_instance {} has no {kw}): pass {flag} {}=ADDRESS",
            self.interface, self.instance, self.interface
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refused: {} problem(s) to fix first:\n{}", .0.len(), lines(.0))]
    Refused(Vec<Problem>),
    #[error("{} address(es) missing (the peer's keepalived.conf, --peer-config, may hold them):\n{}", .0.len(), lines(.0))]
    MissingAddresses(Vec<MissingAddress>),
    #[error("bad option {option} {value:?}: {reason}")]
    BadOption {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the imported config does not validate (please report this with the keepalived.conf): {0}"
    )]
    Invalid(String),
}

fn lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the operator adds to the files.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// This server's name; else global_defs router_id, else `hostname`.
    pub name: Option<String>,
    /// Fallback name (the machine's host name).
    pub hostname: String,
    /// Per interface: this server's address, the peer's, the witness.
    pub local_ips: BTreeMap<String, Ipv4Addr>,
    pub peer_ips: BTreeMap<String, Ipv4Addr>,
    pub witnesses: BTreeMap<String, Ipv4Addr>,
}

impl ImportOptions {
    /// Parses `IFACE=IP` values of `option` into `map`.
    pub fn add_addresses(
        map: &mut BTreeMap<String, Ipv4Addr>,
        option: &'static str,
        values: &[String],
    ) -> Result<(), ImportError> {
        for v in values {
            let bad = |reason: &str| ImportError::BadOption {
                option,
                value: v.clone(),
                reason: reason.to_string(),
            };
            let (iface, ip) = v
                .split_once('=')
                .ok_or_else(|| bad("expected IFACE=IPv4, e.g. eth1=192.168.1.100"))?;
            let ip: Ipv4Addr = ip
                .trim()
                .parse()
                .map_err(|_| bad("not an IPv4 address after '='"))?;
            if map.insert(iface.trim().to_string(), ip).is_some() {
                return Err(bad("this interface is given twice"));
            }
        }
        Ok(())
    }
}

/// The result: the config text and what the operator must review.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    /// Translated with a change of meaning, or needing a decision.
    pub notes: Vec<String>,
    /// keepalived settings with no ha-agent equivalent.
    pub untranslated: Vec<String>,
}

/// A keepalived.conf: its path (for messages) and its text.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// Reads a file for [`import`].
    pub fn load(path: &Path) -> Result<String, ImportError> {
        std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })
    }
}

/// One link of the result: the instances on one interface.
struct LinkPlan<'a> {
    name: String,
    interface: String,
    instances: Vec<&'a Instance>,
    local_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    witness: Option<Ipv4Addr>,
}

/// Translates `local` (this server's keepalived.conf), checked against
/// `peer` (the other server's) when given.
pub fn import(
    local: Source,
    peer: Option<Source>,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let ka = read::read(local.path, local.text);
    let pk = peer
        .as_ref()
        .map(|p| read::read(p.path, p.text))
        .transpose();
    let (ka, pk) = match (ka, pk) {
        (Ok(ka), Ok(pk)) => (ka, pk),
        (ka, pk) => {
            let mut problems = ka.err().unwrap_or_default();
            problems.extend(pk.err().unwrap_or_default());
            return Err(ImportError::Refused(problems));
        }
    };
    Translator {
        ka: &ka,
        peer: pk.as_ref(),
        opts,
        problems: Vec::new(),
        notes: Vec::new(),
        untranslated: ka.untranslated.clone(),
    }
    .run()
}

struct Translator<'a> {
    ka: &'a Keepalived,
    peer: Option<&'a Keepalived>,
    opts: &'a ImportOptions,
    problems: Vec<Problem>,
    notes: Vec<String>,
    untranslated: Vec<String>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl<'a> Translator<'a> {
    fn problem(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.ka.file.clone(),
            line,
            message: message.into(),
        });
    }

    fn peer_problem(&mut self, line: usize, message: impl Into<String>) {
        let file = self.peer.map(|p| p.file.clone()).unwrap_or_default();
        self.problems.push(Problem {
            file,
            line,
            message: message.into(),
        });
    }

    fn run(mut self) -> Result<Imported, ImportError> {
        let ka = self.ka;
        if ka.instances.is_empty() {
            self.problem(1, "no vrrp_instance: nothing to import");
            return Err(ImportError::Refused(self.problems));
        }
        let group = self.group();
        let instances = self.instances_in_order();
        for i in &instances {
            self.check_instance(i);
        }
        let links = self.links(&instances);
        self.check_peer(&instances);
        let missing = links.as_ref().err().cloned().unwrap_or_default();
        if !self.problems.is_empty() {
            return Err(ImportError::Refused(self.problems));
        }
        if !missing.is_empty() {
            return Err(ImportError::MissingAddresses(missing));
        }
        let links = links.unwrap_or_default();
        let text = self.render(&group, &instances, &links);
        let probe = Path::new("imported.toml");
        Config::parse(&text, probe).map_err(|e| ImportError::Invalid(e.to_string()))?;
        Ok(Imported {
            toml: text,
            notes: self.notes,
            untranslated: self.untranslated,
        })
    }

    /// The one sync group's name (ha-agent moves every VIP together).
    fn group(&mut self) -> String {
        let ka = self.ka;
        match ka.groups.as_slice() {
            [] => {
                if ka.instances.len() > 1 {
                    self.notes.push(format!(
                        "no vrrp_sync_group: keepalived moved the {} instances independently; ha-agent moves all VIPs together, as one group (VG_1)",
                        ka.instances.len()
                    ));
                }
                "VG_1".to_string()
            }
            [g] => {
                for m in &g.members {
                    if !ka.instances.iter().any(|i| i.name == m.value) {
                        self.problem(
                            m.line,
                            format!(
                                "vrrp_sync_group {} names `{}`, which is no vrrp_instance in this file (keepalived would warn and leave it out)",
                                g.name, m.value
                            ),
                        );
                    }
                }
                for i in &ka.instances {
                    if !g.members.iter().any(|m| m.value == i.name) {
                        self.notes.push(format!(
                            "line {}: vrrp_instance {} is not in vrrp_sync_group {}: ha-agent moves its VIPs with the group anyway",
                            i.line, i.name, g.name
                        ));
                    }
                }
                g.name.clone()
            }
            [first, rest @ ..] => {
                for g in rest {
                    self.problem(
                        g.line,
                        format!(
                            "a second vrrp_sync_group ({}, after {} at line {}): ha-agent moves all VIPs as one group; merge them into one",
                            g.name, first.name, first.line
                        ),
                    );
                }
                first.name.clone()
            }
        }
    }

    /// Group members first (in group order), then the other instances.
    fn instances_in_order(&self) -> Vec<&'a Instance> {
        let ka = self.ka;
        let mut out: Vec<&Instance> = Vec::new();
        if let Some(g) = ka.groups.first() {
            for m in &g.members {
                if let Some(i) = ka.instances.iter().find(|i| i.name == m.value) {
                    if !out.iter().any(|o| o.name == i.name) {
                        out.push(i);
                    }
                }
            }
        }
        for i in &ka.instances {
            if !out.iter().any(|o| o.name == i.name) {
                out.push(i);
            }
        }
        out
    }

    fn check_instance(&mut self, i: &Instance) {
        if i.interface.is_none() {
            self.problem(i.line, format!("vrrp_instance {} has no interface", i.name));
        }
        if i.vips.is_empty() {
            self.problem(
                i.line,
                format!(
                    "vrrp_instance {} has no virtual_ipaddress: nothing to move",
                    i.name
                ),
            );
        }
        if let (Some(line), Some(state)) = (i.nopreempt, &i.state) {
            if state.value == "MASTER" {
                self.problem(
                    line,
                    format!(
                        "vrrp_instance {}: nopreempt with state MASTER (line {}): keepalived clears nopreempt with only a warning, so this server did preempt; set state BACKUP to keep nopreempt, or remove nopreempt",
                        i.name, state.line
                    ),
                );
            }
        }
        if i.unicast_peers.len() > 1 {
            self.problem(
                i.unicast_peers[1].line,
                format!(
                    "vrrp_instance {} has {} unicast peers: ha-agent pairs exactly two servers",
                    i.name,
                    i.unicast_peers.len()
                ),
            );
        }
        if let (Some(u), Some(m)) = (&i.unicast_src_ip, &i.mcast_src_ip) {
            if u.value != m.value {
                self.problem(
                    m.line,
                    format!(
                        "vrrp_instance {}: mcast_src_ip {} differs from unicast_src_ip {} (line {})",
                        i.name, m.value, u.value, u.line
                    ),
                );
            }
        }
    }

    /// The peer's instance matching `i` (by name, else by interface and router id).
    fn peer_instance(&self, i: &Instance) -> Option<&'a Instance> {
        let p = self.peer?;
        p.instances.iter().find(|x| x.name == i.name).or_else(|| {
            p.instances.iter().find(|x| {
                x.interface.as_ref().map(|a| &a.value) == i.interface.as_ref().map(|a| &a.value)
                    && x.virtual_router_id.as_ref().map(|v| v.value)
                        == i.virtual_router_id.as_ref().map(|v| v.value)
            })
        })
    }

    fn links(
        &mut self,
        instances: &[&'a Instance],
    ) -> Result<Vec<LinkPlan<'a>>, Vec<MissingAddress>> {
        let mut plans: Vec<LinkPlan> = Vec::new();
        let mut missing = Vec::new();
        for i in instances {
            let Some(iface) = i.interface.as_ref().map(|a| a.value.clone()) else {
                continue;
            };
            if let Some(p) = plans.iter_mut().find(|p| p.interface == iface) {
                p.instances.push(i);
                continue;
            }
            let local = self.local_address(i, &iface);
            let peer = self.peer_address(i, &iface);
            if local.is_none() {
                missing.push(MissingAddress {
                    interface: iface.clone(),
                    instance: i.name.clone(),
                    local: true,
                });
            }
            if peer.is_none() {
                missing.push(MissingAddress {
                    interface: iface.clone(),
                    instance: i.name.clone(),
                    local: false,
                });
            }
            plans.push(LinkPlan {
                name: String::new(),
                interface: iface.clone(),
                instances: vec![i],
                local_ip: local.unwrap_or(Ipv4Addr::UNSPECIFIED),
                peer_ip: peer.unwrap_or(Ipv4Addr::UNSPECIFIED),
                witness: self.opts.witnesses.get(&iface).copied(),
            });
        }
        for iface in self
            .opts
            .local_ips
            .keys()
            .chain(self.opts.peer_ips.keys())
            .chain(self.opts.witnesses.keys())
        {
            if !plans.iter().any(|p| &p.interface == iface) {
                self.problem(
                    1,
                    format!(
                        "an address was given for interface {iface}, which no vrrp_instance uses"
                    ),
                );
            }
        }
        // Link names: the instance name without the usual "_network"
        // suffix ("inside_network" -> "inside"), else the interface.
        let mut used: Vec<String> = Vec::new();
        for p in &mut plans {
            let base = p.instances[0].name.as_str();
            let short = ["_network", "_net", "_vrrp", "_vip"]
                .iter()
                .find_map(|s| base.strip_suffix(s))
                .unwrap_or(base);
            let name = if short.is_empty() || used.iter().any(|u| u == short) {
                p.interface.clone()
            } else {
                short.to_string()
            };
            used.push(name.clone());
            p.name = name;
        }
        // VIPs must live on a watched interface.
        for i in instances {
            for v in &i.vips {
                let dev = v
                    .dev
                    .clone()
                    .or_else(|| i.interface.as_ref().map(|a| a.value.clone()))
                    .unwrap_or_default();
                if !plans.iter().any(|p| p.interface == dev) {
                    self.problem(
                        v.line,
                        format!(
                            "VIP {} on {dev}, where no vrrp_instance runs: ha-agent adds VIPs only on the interfaces of its links (add an instance, or move the VIP)",
                            v.address
                        ),
                    );
                }
            }
        }
        let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for i in instances {
            for v in &i.vips {
                if let Some(first) = seen.insert(v.address, v.line) {
                    self.problem(
                        v.line,
                        format!("VIP {} is listed twice (first at line {first})", v.address),
                    );
                }
            }
        }
        if missing.is_empty() {
            Ok(plans)
        } else {
            Err(missing)
        }
    }

    fn local_address(&mut self, i: &Instance, iface: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.opts.local_ips.get(iface) {
            return Some(*ip);
        }
        if let Some(a) = i.unicast_src_ip.as_ref().or(i.mcast_src_ip.as_ref()) {
            return Some(a.value);
        }
        // The peer's unicast_peer names us.
        let p = self.peer_instance(i)?;
        p.unicast_peers.first().map(|a| a.value)
    }

    fn peer_address(&mut self, i: &Instance, iface: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.opts.peer_ips.get(iface) {
            return Some(*ip);
        }
        let ours = i.unicast_peers.first().cloned();
        let theirs = self
            .peer_instance(i)
            .and_then(|p| p.unicast_src_ip.clone().or_else(|| p.mcast_src_ip.clone()));
        match (ours, theirs) {
            (Some(a), Some(b)) if a.value != b.value => {
                self.problem(
                    a.line,
                    format!(
                        "unicast_peer {} differs from the peer's own source address {} ({}:{})",
                        a.value,
                        b.value,
                        self.peer
                            .map(|p| p.file.display().to_string())
                            .unwrap_or_default(),
                        b.line
                    ),
                );
                None
            }
            (Some(a), _) => Some(a.value),
            (None, Some(b)) => Some(b.value),
            (None, None) => None,
        }
    }

    /// Both files must describe the same pair.
    fn check_peer(&mut self, instances: &[&'a Instance]) {
        let Some(peer) = self.peer else {
            return;
        };
        for i in instances {
            let Some(p) = self.peer_instance(i) else {
                self.peer_problem(
                    1,
                    format!(
                        "no vrrp_instance matching {} (line {} of this server's file): both servers must run the same instances",
                        i.name, i.line
                    ),
                );
                continue;
            };
            let ours: Vec<Ipv4Addr> = i.vips.iter().map(|v| v.address).collect();
            let theirs: Vec<Ipv4Addr> = p.vips.iter().map(|v| v.address).collect();
            if ours != theirs {
                self.peer_problem(
                    p.line,
                    format!(
                        "vrrp_instance {} moves VIPs {theirs:?} there but {ours:?} here (line {}): both servers must hold the same VIPs",
                        p.name, i.line
                    ),
                );
                continue;
            }
            for (a, b) in i.vips.iter().zip(&p.vips) {
                if a.prefix_len != b.prefix_len {
                    self.notes.push(format!(
                        "line {}: VIP {}/{} here is /{} in the peer's file ({}:{}){}: ha-agent uses /{} on both servers (use the same config on both)",
                        a.line,
                        a.address,
                        a.prefix_len,
                        b.prefix_len,
                        peer.file.display(),
                        b.line,
                        if b.explicit_prefix { "" } else { ", keepalived's default for an address without /len" },
                        a.prefix_len
                    ));
                }
            }
            let prio = |x: &Instance| x.priority.as_ref().map_or(100, |p| p.value);
            if prio(i) == prio(p) {
                self.notes.push(format!(
                    "vrrp_instance {}: both servers have priority {}: the tie is broken by the servers' addresses; give the preferred primary a higher priority",
                    i.name,
                    prio(i)
                ));
            }
            let vrid = |x: &Instance| x.virtual_router_id.as_ref().map(|v| v.value);
            if vrid(i) != vrid(p) {
                self.notes.push(format!(
                    "vrrp_instance {}: virtual_router_id {:?} here, {:?} on the peer: keepalived never paired these instances (ha-agent needs no router id)",
                    i.name,
                    vrid(i),
                    vrid(p)
                ));
            }
            let pass = |x: &Instance| x.auth.as_ref().and_then(|a| a.value.1.clone());
            if pass(i) != pass(p) {
                self.notes.push(format!(
                    "vrrp_instance {}: the authentication passwords differ between the servers: keepalived dropped each other's adverts (both MASTER)",
                    i.name
                ));
            }
        }
        if peer.groups.is_empty() && !self.ka.groups.is_empty() && peer.instances.len() > 1 {
            self.notes.push(format!(
                "the peer's file ({}) has no vrrp_sync_group: there keepalived moved the VIPs independently",
                peer.file.display()
            ));
        }
    }

    fn render(&mut self, group: &str, instances: &[&'a Instance], links: &[LinkPlan]) -> String {
        let ka = self.ka;
        let mut t = String::new();
        let name = self
            .opts
            .name
            .clone()
            .or_else(|| ka.router_id.clone())
            .unwrap_or_else(|| self.opts.hostname.clone());

        // Election settings, merged over the instances.
        let prios: Vec<u8> = instances
            .iter()
            .map(|i| i.priority.as_ref().map_or(100, |p| p.value))
            .collect();
        let mut priority = prios.iter().copied().max().unwrap_or(100);
        if prios.iter().any(|p| *p != priority) {
            self.notes.push(format!(
                "the instances have different priorities ({prios:?}): ha-agent has one per server, {priority} is used"
            ));
        }
        if priority == 255 {
            self.notes.push(
                "priority 255 (VRRP address owner) becomes 254, the highest ha-agent priority"
                    .into(),
            );
            priority = 254;
        }
        let with_nopreempt = instances.iter().filter(|i| i.nopreempt.is_some()).count();
        let nopreempt = with_nopreempt > 0;
        if nopreempt && with_nopreempt < instances.len() {
            self.notes.push(
                "nopreempt is set on some instances only: ha-agent never preempts (nopreempt = true) for the whole group"
                    .into(),
            );
        }
        let preempt_delay_ms = instances
            .iter()
            .filter_map(|i| i.preempt_delay.as_ref())
            .map(|d| (d.value * 1000.0).round() as u64)
            .max();
        for i in instances {
            if let Some(s) = &i.state {
                if s.value == "MASTER" {
                    self.notes.push(format!(
                        "line {}: state MASTER: ha-agent has no initial state; the election decides (priority, then who holds the VIPs)",
                        s.line
                    ));
                }
            }
        }
        // One note per distinct setting, naming every line it is on.
        let mut adverts: BTreeMap<String, (Vec<usize>, Vec<&str>, f64)> = BTreeMap::new();
        let mut auths: BTreeMap<String, (Vec<usize>, Vec<&str>)> = BTreeMap::new();
        for i in instances {
            if let Some(a) = &i.advert_int {
                let prio = f64::from(i.priority.as_ref().map_or(100, |p| p.value));
                let detect_ms = (3.0 * a.value + (256.0 - prio) / 256.0 * a.value) * 1000.0;
                let e = adverts.entry(format!("{} s", a.value)).or_insert((
                    Vec::new(),
                    Vec::new(),
                    detect_ms,
                ));
                e.0.push(a.line);
                e.1.push(&i.name);
            }
            if let Some(a) = &i.auth {
                let e = auths.entry(a.value.0.clone()).or_default();
                e.0.push(a.line);
                e.1.push(&i.name);
            }
        }
        let lines = |l: &[usize]| {
            let l: Vec<String> = l.iter().map(usize::to_string).collect();
            format!(
                "line{} {}",
                if l.len() > 1 { "s" } else { "" },
                l.join(", ")
            )
        };
        for (value, (l, names, detect_ms)) in &adverts {
            self.notes.push(format!(
                "{}: advert_int {value} (vrrp_instance {}): as backup, keepalived declared the master dead {detect_ms:.0} ms after its last advert (3 adverts + skew); ha-agent probes every 4 ms on every link and takes over after 12 ms of silence on all of them (link interval_ms and multiplier)",
                lines(l),
                names.join(", ")
            ));
        }
        for (kind, (l, names)) in &auths {
            self.notes.push(format!(
                "{}: authentication {kind} (vrrp_instance {}): the VRRP password is not carried over; ha-agent signs every probe (HMAC-SHA256) with the key in node.key_file: create it once and copy it to both servers (see the comment in [node])",
                lines(l),
                names.join(", ")
            ));
        }

        t.push_str("[node]\n");
        let _ = writeln!(t, "name = {}", toml_str(&name));
        let _ = writeln!(t, "priority = {priority}");
        if nopreempt {
            t.push_str("# keepalived: nopreempt (with state BACKUP). Never take the VIPs from a healthy holder.\nnopreempt = true\n");
        } else {
            t.push_str("# keepalived preempted (no nopreempt): a higher-priority backup takes the VIPs back.\nnopreempt = false\n");
        }
        if let Some(ms) = preempt_delay_ms {
            let _ = writeln!(t, "preempt_delay_ms = {ms}");
        }
        t.push_str("# Shared key (replaces VRRP authentication), the same file on both servers, mode 0600:\n#   install -d -m 700 /etc/ha-agent\n#   head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/ha-agent/key; chmod 600 /etc/ha-agent/key\nkey_file = \"/etc/ha-agent/key\"\n");
        let _ = writeln!(
            t,
            "# keepalived's vrrp_sync_group, passed to the hooks as GROUP.\ngroup = {}",
            toml_str(group)
        );
        let todos = self.track_todos(instances, links);
        for todo in todos {
            let _ = writeln!(t, "{todo}");
        }

        for l in links {
            let names: Vec<&str> = l.instances.iter().map(|i| i.name.as_str()).collect();
            let lines: Vec<String> = l.instances.iter().map(|i| i.line.to_string()).collect();
            let _ = writeln!(
                t,
                "\n# vrrp_instance {} (line {}) on {}.",
                names.join(", "),
                lines.join(", "),
                l.interface
            );
            t.push_str("[[link]]\n");
            let _ = writeln!(t, "name = {}", toml_str(&l.name));
            let _ = writeln!(t, "interface = {}", toml_str(&l.interface));
            let _ = writeln!(t, "local_ip = \"{}\"", l.local_ip);
            let _ = writeln!(t, "peer_ip = \"{}\"", l.peer_ip);
            match l.witness {
                Some(w) => {
                    let _ = writeln!(t, "witness = \"{w}\"");
                }
                None => {
                    let _ = writeln!(t, "# TODO witness = \"GATEWAY\"  # a third host on this link (the gateway), probed by ARP:\n# without one, a partition between the servers makes both hold the VIPs (--witness {}=IP)", l.interface);
                }
            }
        }

        for l in links {
            for i in &l.instances {
                for v in &i.vips {
                    let dev = v.dev.clone().unwrap_or_else(|| l.interface.clone());
                    let _ = writeln!(
                        t,
                        "\n# vrrp_instance {}, line {}{}.",
                        i.name,
                        v.line,
                        if v.excluded {
                            " (virtual_ipaddress_excluded: moved like the others)"
                        } else {
                            ""
                        }
                    );
                    t.push_str("[[vip]]\n");
                    let _ = writeln!(t, "address = \"{}/{}\"", v.address, v.prefix_len);
                    let _ = writeln!(t, "interface = {}", toml_str(&dev));
                    let _ = writeln!(t, "instance = {}", toml_str(&i.name));
                }
            }
        }

        self.garp(&mut t, instances);
        self.hooks(&mut t, instances);
        t.push_str(SERVICES_TEMPLATE);
        // The header last: the sections above add notes.
        format!("{}\n{t}", self.header())
    }

    fn header(&self) -> String {
        let mut t = format!(
            "# ha-agent config imported by `ha-agent import-keepalived` from {}{}.\n# Check it with: ha-agent check-config FILE\n",
            self.ka.file.display(),
            self.peer
                .map(|p| format!(" (peer: {})", p.file.display()))
                .unwrap_or_default()
        );
        if !self.notes.is_empty() {
            t.push_str("#\n# Review:\n");
            for n in &self.notes {
                let _ = writeln!(t, "#  - {n}");
            }
        }
        if !self.untranslated.is_empty() {
            t.push_str("#\n# Not translated (no ha-agent equivalent):\n");
            for n in &self.untranslated {
                let _ = writeln!(t, "#  - {n}");
            }
        }
        t
    }

    fn garp(&mut self, t: &mut String, instances: &[&Instance]) {
        let ka = self.ka;
        let repeat = instances
            .iter()
            .find_map(|i| i.garp_master_repeat.clone())
            .or_else(|| ka.garp_master_repeat.clone());
        let refresh = instances
            .iter()
            .find_map(|i| i.garp_master_refresh.clone())
            .or_else(|| ka.garp_master_refresh.clone());
        if repeat.is_none() && refresh.is_none() {
            return;
        }
        t.push_str("\n[garp]\n");
        if let Some(r) = repeat {
            let _ = writeln!(
                t,
                "# garp_master_repeat, line {}\ncount = {}",
                r.line, r.value
            );
        }
        if let Some(r) = refresh {
            let ms = (r.value * 1000.0).round() as u64;
            if ms > 0 && ms < 100 {
                self.notes.push(format!(
                    "line {}: garp_master_refresh {} s is below ha-agent's 100 ms minimum: 100 ms used",
                    r.line, r.value
                ));
            }
            let ms = if ms == 0 { 0 } else { ms.max(100) };
            let _ = writeln!(
                t,
                "# garp_master_refresh, line {}\nrefresh_ms = {ms}",
                r.line
            );
        }
    }

    /// `track_*` have no direct equivalent: the closest one, as a TODO.
    fn track_todos(&mut self, instances: &[&Instance], links: &[LinkPlan]) -> Vec<String> {
        let ka = self.ka;
        let mut tracks: Vec<(&str, &Track)> = Vec::new();
        for g in &ka.groups {
            tracks.extend(g.tracks.iter().map(|t| (g.name.as_str(), t)));
        }
        for i in instances {
            tracks.extend(i.tracks.iter().map(|t| (i.name.as_str(), t)));
        }
        let mut out = Vec::new();
        for (owner, tr) in tracks {
            let text = match tr.kind.as_str() {
                "track_interface" if links.iter().any(|l| l.interface == tr.name) => {
                    self.notes.push(format!(
                        "line {}: track_interface {} ({owner}): already watched, it is a link",
                        tr.line, tr.name
                    ));
                    continue;
                }
                "track_interface" => format!(
                    "# TODO track_interface {} ({owner}, line {}): ha-agent does not track interfaces. If the peer is reachable over {}, add it as a [[link]]; an uplink's loss is caught by a link's witness.",
                    tr.name, tr.line, tr.name
                ),
                "track_script" => {
                    let script = ka
                        .scripts
                        .iter()
                        .find(|s| s.name == tr.name)
                        .and_then(|s| s.script.clone())
                        .map(|s| format!(" (runs `{s}`)"))
                        .unwrap_or_default();
                    format!(
                        "# TODO track_script {}{script} ({owner}, line {}): ha-agent runs no health scripts. For MySQL, [mysql] below hands the VIPs to the peer when the local server is down for mysql.down_handover_ms.",
                        tr.name, tr.line
                    )
                }
                other => format!(
                    "# TODO {other} {} ({owner}, line {}): no ha-agent equivalent.",
                    tr.name, tr.line
                ),
            };
            out.push(text);
        }
        out
    }

    fn hooks(&mut self, t: &mut String, instances: &[&Instance]) {
        let ka = self.ka;
        // Group-level scripts first (keepalived ran them once per group
        // transition, as ha-agent does), then the instances'.
        let mut sources: Vec<(String, &Notify)> = Vec::new();
        if let Some(g) = ka.groups.first() {
            sources.push((format!("vrrp_sync_group {}", g.name), &g.notify));
        }
        for i in instances {
            sources.push((format!("vrrp_instance {}", i.name), &i.notify));
        }
        let mut chosen: [Option<(String, At<String>)>; 4] = Default::default();
        let names = ["notify_master", "notify_backup", "notify_fault", "notify"];
        for (owner, n) in &sources {
            for (k, script) in [&n.master, &n.backup, &n.fault, &n.notify]
                .into_iter()
                .enumerate()
            {
                let Some(script) = script else { continue };
                match &chosen[k] {
                    None => chosen[k] = Some((owner.clone(), script.clone())),
                    Some((_, s)) if s.value == script.value => {}
                    Some((first, s)) => self.untranslated.push(format!(
                        "line {}: {} {} ({owner}): ha-agent runs one {} per transition; it runs {} from {first} (line {})",
                        script.line, names[k], script.value, names[k], s.value, s.line
                    )),
                }
            }
            if let Some(s) = &n.stop {
                self.untranslated.push(format!(
                    "line {}: notify_stop {} ({owner}): no notify_stop in ha-agent; `notify` is called with STOP when the agent stops",
                    s.line, s.value
                ));
            }
        }
        if chosen.iter().all(Option::is_none) {
            return;
        }
        t.push_str("\n# keepalived's notify scripts, run one at a time in transition order, each\n# bounded by hooks.timeout_ms. If a script promotes MySQL or edits Atlas\n# (like the seed's mysqlfailover-*.sh), remove it and uncomment [mysql]\n# and [atlas] below instead: ha-agent does that work without the race.\n[hooks]\n");
        for (k, c) in chosen.iter().enumerate() {
            let Some((owner, script)) = c else { continue };
            if k == 3 && owner.starts_with("vrrp_instance") {
                self.notes.push(format!(
                    "line {}: `notify {}` was on {owner} only: ha-agent calls `notify` as `GROUP {} STATE 0` and as `INSTANCE NAME STATE PRIORITY` for every instance, so the script runs {} times per transition; make it act on one call ($1 and $2) only",
                    script.line,
                    script.value,
                    ka.groups.first().map_or("VG_1", |g| g.name.as_str()),
                    1 + instances.len()
                ));
            }
            let _ = writeln!(
                t,
                "# {} ({owner}, line {})\n{} = {}",
                names[k],
                script.line,
                names[k],
                toml_str(&script.value)
            );
        }
    }
}

/// Commented sections for what the notify scripts and cron jobs did.
const SERVICES_TEMPLATE: &str = r#"
# The seed's notify script and cron job (promotion with mysqlrpladmin,
# rejoin with mysqlreplicate, Atlas's REMOVE BACKEND / ADD SLAVE) are ha-agent's
# own job with these two sections; see the README ("MySQL", "Atlas").
# [mysql]
# address = "LOCAL_INSIDE_IP:3306"
# user = "ha_agent"
# password_file = "/etc/ha-agent/mysql-password"
# replication_user = "repl"
# replication_password_file = "/etc/ha-agent/repl-password"
# peer_address = "PEER_INSIDE_IP:3306"
#
# [atlas]
# admin_address = "127.0.0.1:2345"
# user = "user"
# password_file = "/etc/ha-agent/atlas-password"
#
# Prometheus metrics:
# [metrics]
# listen = "127.0.0.1:9405"
"#;
