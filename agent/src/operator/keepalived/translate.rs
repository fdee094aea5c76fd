//! The translation's decisions: the group, the links and their addresses,
//! and the checks that refuse what cannot be translated faithfully.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use super::read::{Instance, Keepalived};
use super::{ImportError, ImportOptions, Imported, MissingAddress, Problem};
use crate::operator::config::Config;

/// One link of the result: the instances on one interface.
pub(super) struct LinkPlan<'a> {
    pub(super) name: String,
    pub(super) interface: String,
    pub(super) instances: Vec<&'a Instance>,
    pub(super) local_ip: Ipv4Addr,
    pub(super) peer_ip: Ipv4Addr,
    pub(super) witness: Option<Ipv4Addr>,
}

pub(super) struct Translator<'a> {
    pub(super) ka: &'a Keepalived,
    pub(super) peer: Option<&'a Keepalived>,
    pub(super) opts: &'a ImportOptions,
    pub(super) problems: Vec<Problem>,
    pub(super) notes: Vec<String>,
    pub(super) untranslated: Vec<String>,
}

pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl<'a> Translator<'a> {
    pub(super) fn problem(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.ka.file.clone(),
            line,
            message: message.into(),
        });
    }

    pub(super) fn peer_problem(&mut self, line: usize, message: impl Into<String>) {
        let file = self.peer.map(|p| p.file.clone()).unwrap_or_default();
        self.problems.push(Problem {
            file,
            line,
            message: message.into(),
        });
    }

    pub(super) fn run(mut self) -> Result<Imported, ImportError> {
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
    pub(super) fn group(&mut self) -> String {
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
    pub(super) fn instances_in_order(&self) -> Vec<&'a Instance> {
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

    pub(super) fn check_instance(&mut self, i: &Instance) {
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
    pub(super) fn peer_instance(&self, i: &Instance) -> Option<&'a Instance> {
        let p = self.peer?;
        p.instances.iter().find(|x| x.name == i.name).or_else(|| {
            p.instances.iter().find(|x| {
                x.interface.as_ref().map(|a| &a.value) == i.interface.as_ref().map(|a| &a.value)
                    && x.virtual_router_id.as_ref().map(|v| v.value)
                        == i.virtual_router_id.as_ref().map(|v| v.value)
            })
        })
    }

    pub(super) fn links(
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

    pub(super) fn local_address(&mut self, i: &Instance, iface: &str) -> Option<Ipv4Addr> {
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

    pub(super) fn peer_address(&mut self, i: &Instance, iface: &str) -> Option<Ipv4Addr> {
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
    pub(super) fn check_peer(&mut self, instances: &[&'a Instance]) {
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
                // Without a prefix here the rendering picks one and says so.
                if a.explicit_prefix && a.prefix_len != b.prefix_len {
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
}
