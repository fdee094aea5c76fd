//! The imported config's text: sections with comments saying where each
//! value came from, the notes and what was not translated in the header.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::read::{At, Instance, Notify, Track};
use super::translate::{toml_str, LinkPlan, Translator};

impl<'a> Translator<'a> {
    pub(super) fn render(
        &mut self,
        group: &str,
        instances: &[&'a Instance],
        links: &[LinkPlan],
    ) -> String {
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
        use crate::operator::config::{DEFAULT_INTERVAL_MS, DEFAULT_MULTIPLIER};
        let silence_ms = DEFAULT_INTERVAL_MS * u64::from(DEFAULT_MULTIPLIER);
        for (value, (l, names, detect_ms)) in &adverts {
            self.notes.push(format!(
                "{}: advert_int {value} (vrrp_instance {}): as backup, keepalived declared the master dead {detect_ms:.0} ms after its last advert (3 adverts + skew); ha-agent probes every {DEFAULT_INTERVAL_MS} ms on every link and takes over after {silence_ms} ms of silence on all of them (link interval_ms and multiplier)",
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
                    let prefix = if v.explicit_prefix {
                        v.prefix_len
                    } else {
                        // keepalived adds an address without /len as a /32;
                        // ha-agent wants the link's subnet: the smallest one
                        // that holds the VIP and both servers' addresses.
                        let p = common_prefix(&[v.address, l.local_ip, l.peer_ip]).min(30);
                        self.notes.push(format!(
                            "line {}: VIP {} had no prefix (keepalived adds it as /32); written as {}/{p}, the smallest subnet holding it and both servers' addresses on {}: check it against `ip addr` there",
                            v.line, v.address, v.address, l.interface
                        ));
                        p
                    };
                    let _ = writeln!(t, "address = \"{}/{prefix}\"", v.address);
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

    pub(super) fn header(&self) -> String {
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

    pub(super) fn garp(&mut self, t: &mut String, instances: &[&Instance]) {
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
    pub(super) fn track_todos(
        &mut self,
        instances: &[&Instance],
        links: &[LinkPlan],
    ) -> Vec<String> {
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

    pub(super) fn hooks(&mut self, t: &mut String, instances: &[&Instance]) {
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
        // keepalived never kills a notify script; ha-agent bounds each (10 s
        // by default), which would cut short a script that waits first (the
        // seed's sleeps 10 s before it promotes).
        t.push_str("# keepalived let notify scripts run as long as they took: a minute here.\ntimeout_ms = 60000\n");
        self.notes.push(
            "hooks.timeout_ms = 60000: keepalived never stopped a notify script, ha-agent stops one after hooks.timeout_ms (10 s by default) and runs the next; the seed's script sleeps 10 s before it acts, so it would have been cut short. Lower it once the script's work is done by [mysql] and [atlas]".to_string(),
        );
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

/// The longest prefix length all of `ips` share.
fn common_prefix(ips: &[std::net::Ipv4Addr]) -> u8 {
    let Some(first) = ips.first().map(|ip| u32::from(*ip)) else {
        return 32;
    };
    let diff = ips
        .iter()
        .fold(0u32, |acc, ip| acc | (u32::from(*ip) ^ first));
    diff.leading_zeros() as u8
}
