//! From keepalived.conf statements to what the importer needs: the sync
//! groups, the VRRP instances, the track scripts and global settings, each
//! with its line. Keywords are checked against keepalived's own lists: an
//! unknown one is a [`Problem`], never skipped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::parse::{self, Statement};
use super::Problem;

/// A value and the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

/// The notify scripts of an instance or a sync group.
#[derive(Debug, Clone, Default)]
pub struct Notify {
    pub master: Option<At<String>>,
    pub backup: Option<At<String>>,
    pub fault: Option<At<String>>,
    pub stop: Option<At<String>>,
    pub notify: Option<At<String>>,
}

/// `track_interface`, `track_script`, ... : one tracked name.
#[derive(Debug, Clone)]
pub struct Track {
    pub kind: String,
    pub name: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct VipDef {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Set by `/len`; keepalived's default is /32.
    pub explicit_prefix: bool,
    pub dev: Option<String>,
    pub excluded: bool,
    pub line: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub name: String,
    pub line: usize,
    pub state: Option<At<String>>,
    pub interface: Option<At<String>>,
    pub virtual_router_id: Option<At<u8>>,
    pub priority: Option<At<u8>>,
    pub advert_int: Option<At<f64>>,
    pub nopreempt: Option<usize>,
    pub preempt: Option<usize>,
    pub preempt_delay: Option<At<f64>>,
    pub auth: Option<At<(String, Option<String>)>>,
    pub vips: Vec<VipDef>,
    pub unicast_src_ip: Option<At<Ipv4Addr>>,
    pub mcast_src_ip: Option<At<Ipv4Addr>>,
    pub unicast_peers: Vec<At<Ipv4Addr>>,
    pub notify: Notify,
    pub tracks: Vec<Track>,
    pub garp_master_repeat: Option<At<u32>>,
    pub garp_master_refresh: Option<At<f64>>,
}

#[derive(Debug, Clone, Default)]
pub struct SyncGroup {
    pub name: String,
    pub line: usize,
    pub members: Vec<At<String>>,
    pub notify: Notify,
    pub tracks: Vec<Track>,
}

#[derive(Debug, Clone)]
pub struct Script {
    pub name: String,
    pub script: Option<String>,
    pub interval: Option<String>,
    pub line: usize,
}

/// One keepalived.conf, read.
#[derive(Debug, Clone, Default)]
pub struct Keepalived {
    pub file: PathBuf,
    pub router_id: Option<String>,
    pub groups: Vec<SyncGroup>,
    pub instances: Vec<Instance>,
    pub scripts: Vec<Script>,
    pub garp_master_repeat: Option<At<u32>>,
    pub garp_master_refresh: Option<At<f64>>,
    /// "line N: keyword: why it has no equivalent".
    pub untranslated: Vec<String>,
}

struct Reader<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
    out: Keepalived,
}

/// Reads a keepalived.conf; every problem (syntax, unknown keyword, bad
/// value, something keepalived would ignore) is returned, all at once.
pub fn read(file: &Path, text: &str) -> Result<Keepalived, Vec<Problem>> {
    let statements = parse::parse(text).map_err(|e| {
        vec![Problem {
            file: file.to_owned(),
            line: e.line,
            message: e.message,
        }]
    })?;
    let mut r = Reader {
        file,
        problems: Vec::new(),
        out: Keepalived {
            file: file.to_owned(),
            ..Default::default()
        },
    };
    for s in &statements {
        r.top(s);
    }
    if r.problems.is_empty() {
        Ok(r.out)
    } else {
        Err(r.problems)
    }
}

impl Reader<'_> {
    fn problem(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        });
    }

    fn untranslated(&mut self, s: &Statement, why: &str) {
        let args: Vec<&str> = s.args().collect();
        let what = if args.is_empty() {
            s.keyword().to_string()
        } else {
            format!("{} {}", s.keyword(), args.join(" "))
        };
        self.out
            .untranslated
            .push(format!("line {}: {what}: {why}", s.line));
    }

    /// False (and a problem) if the keyword is not one keepalived knows here.
    fn known(&mut self, s: &Statement, known: &[&'static str], block: &str) -> bool {
        let k = s.keyword();
        if known.contains(&k) {
            return true;
        }
        let hint = parse::suggest(k, known)
            .map(|g| format!("; did you mean `{g}`?"))
            .unwrap_or_default();
        self.problem(
            s.line,
            format!(
                "unknown keyword `{k}` {block}: keepalived would only log a warning and run without it{hint} (fix the file, then import again)"
            ),
        );
        false
    }

    fn top(&mut self, s: &Statement) {
        let k = s.keyword();
        if k.starts_with('@') || k.starts_with('$') || k.starts_with('~') {
            self.problem(
                s.line,
                format!("`{k}`: conditional configuration, parameter substitution and sequence blocks are not supported; import the configuration keepalived actually uses (expand it by hand)"),
            );
            return;
        }
        if !TOP_KNOWN.contains(&k) {
            let hint = parse::suggest(k, parse::TOP)
                .map(|g| format!("; did you mean `{g}`?"))
                .unwrap_or_default();
            let ignored = if s.block.is_some() {
                "this whole block"
            } else {
                "this line"
            };
            self.problem(
                s.line,
                format!("unknown top-level keyword `{k}`: keepalived would log a warning and ignore {ignored} (`keepalived -t` still passes){hint} (fix the file, then import again)"),
            );
            return;
        }
        match k {
            "global_defs" => self.global_defs(s),
            "vrrp_sync_group" => self.sync_group(s),
            "vrrp_instance" => self.instance(s),
            "vrrp_script" => self.script(s),
            k if k.starts_with("include") => self.problem(
                s.line,
                format!("`{k}`: included files are not followed; put their content in one file and import that"),
            ),
            "virtual_server" | "virtual_server_group" => {
                self.untranslated(s, "LVS load balancing is not ha-agent's job (keep keepalived's checker, or nginx, for it)")
            }
            "static_ipaddress" | "static_routes" | "static_rules" => self.untranslated(
                s,
                "static addresses, routes and rules do not move: configure them in the OS network config",
            ),
            _ => self.untranslated(s, "no ha-agent equivalent"),
        }
    }

    fn name_of(&mut self, s: &Statement) -> String {
        match s.arg(0) {
            Some(n) => n.to_string(),
            None => {
                self.problem(s.line, format!("`{}` needs a name", s.keyword()));
                String::new()
            }
        }
    }

    fn global_defs(&mut self, s: &Statement) {
        for c in s.children() {
            if !self.known(c, parse::GLOBAL_DEFS, "in global_defs") {
                continue;
            }
            match c.keyword() {
                "router_id" => self.out.router_id = c.arg(0).map(str::to_string),
                "vrrp_garp_master_repeat" => {
                    self.out.garp_master_repeat = self.number(c, "a count", 1.0, 100.0)
                }
                "vrrp_garp_master_refresh" => {
                    self.out.garp_master_refresh = self.number(c, "seconds", 0.0, 86_400.0)
                }
                "enable_script_security" | "script_user" => self.untranslated(
                    c,
                    "hooks run as root, the agent's user (keep the scripts root-owned, not writable by others)",
                ),
                "notification_email" | "notification_email_from" | "smtp_server"
                | "smtp_connect_timeout" | "smtp_alert" | "smtp_helo_name" => self.untranslated(
                    c,
                    "no e-mail alerts: watch the metrics ([metrics]) or send mail from a hook",
                ),
                _ => self.untranslated(c, "keepalived daemon setting with no ha-agent equivalent"),
            }
        }
    }

    fn sync_group(&mut self, s: &Statement) {
        let mut g = SyncGroup {
            name: self.name_of(s),
            line: s.line,
            ..Default::default()
        };
        for c in s.children() {
            if !self.known(
                c,
                parse::SYNC_GROUP,
                &format!("in vrrp_sync_group {}", g.name),
            ) {
                continue;
            }
            match c.keyword() {
                "group" => {
                    for m in c.children() {
                        for w in &m.words {
                            g.members.push(At {
                                value: w.text.clone(),
                                line: m.line,
                            });
                        }
                    }
                }
                k if k.starts_with("notify") => self.notify(c, &mut g.notify),
                k if k.starts_with("track_") => self.tracks(c, &mut g.tracks),
                _ => self.untranslated(c, "no ha-agent equivalent"),
            }
        }
        self.out.groups.push(g);
    }

    fn script(&mut self, s: &Statement) {
        let mut sc = Script {
            name: self.name_of(s),
            script: None,
            interval: None,
            line: s.line,
        };
        for c in s.children() {
            if !self.known(c, parse::SCRIPT, &format!("in vrrp_script {}", sc.name)) {
                continue;
            }
            match c.keyword() {
                "script" => sc.script = c.words.get(1).map(|w| script_text(&w.raw)),
                "interval" => sc.interval = c.arg(0).map(str::to_string),
                _ => {}
            }
        }
        self.out.scripts.push(sc);
    }

    fn instance(&mut self, s: &Statement) {
        let mut i = Instance {
            name: self.name_of(s),
            line: s.line,
            ..Default::default()
        };
        let block = format!("in vrrp_instance {}", i.name);
        for c in s.children() {
            if !self.known(c, parse::INSTANCE, &block) {
                continue;
            }
            let at = |value| At {
                value,
                line: c.line,
            };
            match c.keyword() {
                "state" => match c.arg(0) {
                    Some(v @ ("MASTER" | "BACKUP")) => i.state = Some(at(v.to_string())),
                    other => self.problem(
                        c.line,
                        format!("state must be MASTER or BACKUP, not {other:?}"),
                    ),
                },
                "interface" => match c.arg(0) {
                    Some(v) => i.interface = Some(at(v.to_string())),
                    None => self.problem(c.line, "interface needs a name"),
                },
                "virtual_router_id" => {
                    i.virtual_router_id = self.number(c, "1..255", 1.0, 255.0)
                }
                "priority" => i.priority = self.number(c, "1..255", 1.0, 255.0),
                "advert_int" => i.advert_int = self.number(c, "seconds", 0.001, 255.0),
                "nopreempt" => i.nopreempt = Some(c.line),
                "preempt" => i.preempt = Some(c.line),
                "preempt_delay" => i.preempt_delay = self.number(c, "seconds", 0.0, 1000.0),
                "authentication" => self.authentication(c, &mut i),
                "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                    let excluded = c.keyword() == "virtual_ipaddress_excluded";
                    for v in c.children() {
                        if let Some(vip) = self.vip(v, excluded) {
                            i.vips.push(vip);
                        }
                    }
                }
                "unicast_src_ip" => i.unicast_src_ip = self.ipv4(c),
                "mcast_src_ip" => i.mcast_src_ip = self.ipv4(c),
                "unicast_peer" => {
                    for p in c.children() {
                        match p.keyword().parse::<Ipv4Addr>() {
                            Ok(ip) => i.unicast_peers.push(At {
                                value: ip,
                                line: p.line,
                            }),
                            Err(_) => self.problem(
                                p.line,
                                format!(
                                    "unicast_peer {:?} is not an IPv4 address",
                                    p.keyword()
                                ),
                            ),
                        }
                    }
                }
                "garp_master_repeat" => i.garp_master_repeat = self.number(c, "a count", 1.0, 100.0),
                "garp_master_refresh" => {
                    i.garp_master_refresh = self.number(c, "seconds", 0.0, 86_400.0)
                }
                k if k.starts_with("notify") && k != "notify_priority_changes" => {
                    self.notify(c, &mut i.notify)
                }
                k if k.starts_with("track_") && k != "track_src_ip" => {
                    self.tracks(c, &mut i.tracks)
                }
                "virtual_routes" | "virtual_rules" => self.untranslated(
                    c,
                    "routes and rules that follow the VIPs are not managed: add them in the notify_master/notify_backup hooks",
                ),
                "use_vmac" | "use_vmac_addr" | "use_ipvlan" | "vmac_xmit_base" => self.untranslated(
                    c,
                    "ha-agent adds the VIPs to the interface itself (no virtual MAC) and announces them by gratuitous ARP",
                ),
                "garp_master_delay" | "garp_lower_prio_delay" | "garp_lower_prio_repeat"
                | "garp_master_refresh_repeat" | "garp_extra_if" => self.untranslated(
                    c,
                    "ha-agent sends garp.count gratuitous ARPs garp.spacing_ms apart at once on takeover",
                ),
                "smtp_alert" | "notify_priority_changes" | "notify_master_rx_lower_pri" => self
                    .untranslated(
                        c,
                        "no e-mail or FIFO notifications: use the hooks or the metrics",
                    ),
                _ => self.untranslated(
                    c,
                    "VRRP protocol setting: ha-agent speaks its own signed probe protocol",
                ),
            }
        }
        self.out.instances.push(i);
    }

    fn authentication(&mut self, s: &Statement, i: &mut Instance) {
        let mut kind = None;
        let mut pass = None;
        for c in s.children() {
            if !self.known(c, parse::AUTHENTICATION, "in authentication") {
                continue;
            }
            match c.keyword() {
                "auth_type" => kind = c.arg(0).map(str::to_string),
                _ => pass = c.arg(0).map(str::to_string),
            }
        }
        i.auth = Some(At {
            value: (kind.unwrap_or_else(|| "PASS".into()), pass),
            line: s.line,
        });
    }

    fn vip(&mut self, s: &Statement, excluded: bool) -> Option<VipDef> {
        let addr = s.keyword();
        if addr.contains(':') {
            self.problem(
                s.line,
                format!("VIP {addr}: IPv6 VIPs are not supported by ha-agent"),
            );
            return None;
        }
        let (address, prefix_len) = match crate::operator::config::parse_cidr(addr) {
            Ok(v) => v,
            Err(e) => {
                self.problem(s.line, format!("VIP {e}"));
                return None;
            }
        };
        let mut dev = None;
        let mut rest = s.args();
        while let Some(w) = rest.next() {
            match w {
                "dev" => dev = rest.next().map(str::to_string),
                // keepalived.conf(5): options without a value.
                flag
                @ ("home" | "-nodad" | "nodad" | "noprefixroute" | "autojoin" | "no_track") => {
                    self.out.untranslated.push(format!(
                        "line {}: VIP {addr} option `{flag}`: ha-agent adds plain addresses",
                        s.line
                    ))
                }
                other => {
                    let value = rest.next().unwrap_or("");
                    self.out.untranslated.push(format!(
                        "line {}: VIP {addr} option `{other} {value}`: ha-agent adds plain addresses (no label, scope, peer or broadcast options)",
                        s.line
                    ));
                }
            }
        }
        Some(VipDef {
            address,
            prefix_len,
            explicit_prefix: addr.contains('/'),
            dev,
            excluded,
            line: s.line,
        })
    }

    fn notify(&mut self, s: &Statement, n: &mut Notify) {
        let Some(word) = s.words.get(1) else {
            if s.keyword() != "notify_deleted" {
                self.problem(s.line, format!("`{}` needs a script", s.keyword()));
            }
            return;
        };
        let value = At {
            value: script_text(&word.raw),
            line: s.line,
        };
        if s.words.len() > 2 {
            // keepalived's `script [username [groupname]]`.
            let mut who = s.args().skip(1);
            let user = who.next().unwrap_or_default();
            let group = who
                .next()
                .map(|g| format!(" (group {g})"))
                .unwrap_or_default();
            self.out.untranslated.push(format!(
                "line {}: {} runs as user {user}{group}: ha-agent runs hooks as root",
                s.line,
                s.keyword(),
            ));
        }
        match s.keyword() {
            "notify_master" => n.master = Some(value),
            "notify_backup" => n.backup = Some(value),
            "notify_fault" => n.fault = Some(value),
            "notify_stop" => n.stop = Some(value),
            "notify" => n.notify = Some(value),
            _ => self.untranslated(s, "no ha-agent equivalent"),
        }
    }

    fn tracks(&mut self, s: &Statement, tracks: &mut Vec<Track>) {
        for c in s.children() {
            tracks.push(Track {
                kind: s.keyword().to_string(),
                name: c.keyword().to_string(),
                line: c.line,
            });
        }
        if let Some(name) = s.arg(0) {
            tracks.push(Track {
                kind: s.keyword().to_string(),
                name: name.to_string(),
                line: s.line,
            });
        }
    }

    fn ipv4(&mut self, s: &Statement) -> Option<At<Ipv4Addr>> {
        match s.arg(0).map(str::parse::<Ipv4Addr>) {
            Some(Ok(ip)) => Some(At {
                value: ip,
                line: s.line,
            }),
            _ => {
                self.problem(s.line, format!("{} needs an IPv4 address", s.keyword()));
                None
            }
        }
    }

    fn number<T: std::str::FromStr + Into<f64> + Copy>(
        &mut self,
        s: &Statement,
        what: &str,
        min: f64,
        max: f64,
    ) -> Option<At<T>> {
        match s.arg(0).map(str::parse::<T>) {
            Some(Ok(v)) if (min..=max).contains(&v.into()) => Some(At {
                value: v,
                line: s.line,
            }),
            _ => {
                self.problem(
                    s.line,
                    format!(
                        "{} needs {what} ({min}..={max}), not {:?}",
                        s.keyword(),
                        s.arg(0).unwrap_or("")
                    ),
                );
                None
            }
        }
    }
}

const TOP_KNOWN: &[&str] = parse::TOP;

/// A script argument as keepalived splits it later: outer double quotes
/// removed, inner quoting kept (ha-agent's hooks split it the same way).
fn script_text(raw: &str) -> String {
    raw.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw)
        .to_string()
}
