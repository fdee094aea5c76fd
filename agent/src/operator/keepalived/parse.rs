//! keepalived.conf's grammar: lines of words, `{ ... }` blocks, `#` and `!`
//! comments, `"` and `'` quoting (keepalived.conf(5), "Quoted strings"),
//! and the keywords each block accepts.
//!
//! keepalived itself warns about an unknown keyword and goes on without it
//! (a misspelt `rrp_sync_group` silently drops the sync group); here every
//! unknown keyword in a block we translate is an error naming its line.

use std::fmt;

/// One keyword line, with its block if it opens one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based line of the keyword.
    pub line: usize,
    pub words: Vec<Word>,
    pub block: Option<Vec<Statement>>,
}

/// A word with its quotes removed (`text`) and as written (`raw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub raw: String,
}

impl Statement {
    /// The keyword (first word).
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", |w| w.text.as_str())
    }
    /// The words after the keyword, unquoted.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.words.iter().skip(1).map(|w| w.text.as_str())
    }
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i + 1).map(|w| w.text.as_str())
    }
    pub fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// A syntax error at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    Open,
    Close,
    EndOfLine,
}

/// Splits the text into tokens with their line numbers.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, SyntaxError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut chars = line.chars().peekable();
        let mut word: Option<Word> = None;
        let flush = |word: &mut Option<Word>, out: &mut Vec<(usize, Token)>| {
            if let Some(w) = word.take() {
                out.push((n, Token::Word(w)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() => flush(&mut word, &mut out),
                '#' | '!' => break,
                '{' | '}' => {
                    flush(&mut word, &mut out);
                    out.push((n, if c == '{' { Token::Open } else { Token::Close }));
                }
                '"' | '\'' => {
                    let w = word.get_or_insert_with(|| Word {
                        text: String::new(),
                        raw: String::new(),
                    });
                    w.raw.push(c);
                    let mut closed = false;
                    while let Some(q) = chars.next() {
                        w.raw.push(q);
                        if q == c {
                            closed = true;
                            break;
                        }
                        if q == '\\' {
                            if let Some(e) = chars.next() {
                                w.raw.push(e);
                                w.text.push(e);
                            }
                            continue;
                        }
                        w.text.push(q);
                    }
                    if !closed {
                        return Err(SyntaxError {
                            line: n,
                            message: format!("unterminated {c}quoted{c} string"),
                        });
                    }
                }
                c => {
                    let w = word.get_or_insert_with(|| Word {
                        text: String::new(),
                        raw: String::new(),
                    });
                    w.text.push(c);
                    w.raw.push(c);
                }
            }
        }
        flush(&mut word, &mut out);
        out.push((n, Token::EndOfLine));
    }
    Ok(out)
}

/// Parses keepalived.conf text into statements (no keyword checks yet).
pub fn parse(text: &str) -> Result<Vec<Statement>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let body = parse_block(&tokens, &mut pos, None)?;
    Ok(body)
}

fn parse_block(
    tokens: &[(usize, Token)],
    pos: &mut usize,
    opened_at: Option<usize>,
) -> Result<Vec<Statement>, SyntaxError> {
    let mut out = Vec::new();
    loop {
        while matches!(tokens.get(*pos), Some((_, Token::EndOfLine))) {
            *pos += 1;
        }
        let Some((line, tok)) = tokens.get(*pos) else {
            return match opened_at {
                Some(l) => Err(SyntaxError {
                    line: l,
                    message: "this block's '{' is never closed".into(),
                }),
                None => Ok(out),
            };
        };
        match tok {
            Token::Close => {
                *pos += 1;
                return match opened_at {
                    Some(_) => Ok(out),
                    None => Err(SyntaxError {
                        line: *line,
                        message: "'}' without an open block".into(),
                    }),
                };
            }
            Token::Open => {
                return Err(SyntaxError {
                    line: *line,
                    message: "'{' without a keyword before it".into(),
                })
            }
            Token::EndOfLine => unreachable!("skipped above"),
            Token::Word(_) => {}
        }
        let line = *line;
        let mut words = Vec::new();
        while let Some((_, Token::Word(w))) = tokens.get(*pos) {
            words.push(w.clone());
            *pos += 1;
        }
        // The block's '{' may also stand alone on the next line.
        let mut look = *pos;
        while matches!(tokens.get(look), Some((_, Token::EndOfLine))) {
            look += 1;
        }
        let block = if matches!(tokens.get(look), Some((_, Token::Open))) {
            *pos = look + 1;
            Some(parse_block(tokens, pos, Some(line))?)
        } else {
            None
        };
        out.push(Statement { line, words, block });
    }
}

/// Top-level keywords of keepalived 2.2 (keepalived.conf(5)).
pub const TOP: &[&str] = &[
    "global_defs",
    "linkbeat_interfaces",
    "interface_up_down_delays",
    "track_group",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "track_file",
    "vrrp_track_file",
    "track_process",
    "vrrp_track_process",
    "bfd_instance",
    "vrrp_script",
    "vrrp_sync_group",
    "garp_group",
    "vrrp_instance",
    "virtual_server_group",
    "virtual_server",
    "include",
    "includer",
    "includem",
    "includew",
    "includeb",
    "includea",
];

/// Keywords of a `vrrp_instance` block.
pub const INSTANCE: &[&str] = &[
    "accept",
    "advert_int",
    "authentication",
    "check_unicast_src",
    "debug",
    "dont_track_primary",
    "down_timer_adverts",
    "garp_extra_if",
    "garp_lower_prio_delay",
    "garp_lower_prio_repeat",
    "garp_master_delay",
    "garp_master_refresh",
    "garp_master_refresh_repeat",
    "garp_master_repeat",
    "higher_prio_send_advert",
    "interface",
    "kernel_rx_buf_size",
    "linkbeat_use_polling",
    "lower_prio_no_advert",
    "lvs_sync_daemon_interface",
    "mcast_dst_ip",
    "mcast_src_ip",
    "native_ipv6",
    "no_accept",
    "nopreempt",
    "notify",
    "notify_backup",
    "notify_deleted",
    "notify_fault",
    "notify_master",
    "notify_master_rx_lower_pri",
    "notify_priority_changes",
    "notify_stop",
    "old_unicast_checksum",
    "preempt",
    "preempt_delay",
    "priority",
    "promote_secondaries",
    "skip_check_adv_addr",
    "smtp_alert",
    "state",
    "strict_mode",
    "track_bfd",
    "track_file",
    "track_interface",
    "track_process",
    "track_script",
    "track_src_ip",
    "unicast_fault_no_peer",
    "unicast_peer",
    "unicast_src_ip",
    "unicast_ttl",
    "use_ipvlan",
    "use_vmac",
    "use_vmac_addr",
    "version",
    "virtual_ipaddress",
    "virtual_ipaddress_excluded",
    "virtual_router_id",
    "virtual_routes",
    "virtual_rules",
    "vmac_xmit_base",
    "vrf",
];

/// Keywords of a `vrrp_sync_group` block.
pub const SYNC_GROUP: &[&str] = &[
    "global_tracking",
    "group",
    "notify",
    "notify_backup",
    "notify_deleted",
    "notify_fault",
    "notify_master",
    "notify_priority_changes",
    "notify_stop",
    "smtp_alert",
    "sync_group_tracking_weight",
    "track_bfd",
    "track_file",
    "track_interface",
    "track_process",
    "track_script",
];

/// Keywords of a `vrrp_script` block.
pub const SCRIPT: &[&str] = &[
    "script",
    "interval",
    "timeout",
    "weight",
    "rise",
    "fall",
    "user",
    "init_fail",
];

/// Keywords of an `authentication` block.
pub const AUTHENTICATION: &[&str] = &["auth_type", "auth_pass"];

/// Keywords of `global_defs` (keepalived 2.2).
pub const GLOBAL_DEFS: &[&str] = &[
    "bfd_cpu_affinity",
    "bfd_no_swap",
    "bfd_priority",
    "bfd_process_name",
    "bfd_rlimit_rttime",
    "bfd_rt_priority",
    "checker_cpu_affinity",
    "checker_log_all_failures",
    "checker_no_swap",
    "checker_priority",
    "checker_process_name",
    "checker_rlimit_rttime",
    "checker_rt_priority",
    "child_wait_time",
    "config_save_dir",
    "data_use_instance",
    "dbus_service_name",
    "default_interface",
    "disable_local_igmp",
    "dynamic_interfaces",
    "enable_dbus",
    "enable_script_security",
    "enable_snmp_checker",
    "enable_snmp_rfc",
    "enable_snmp_rfcv2",
    "enable_snmp_rfcv3",
    "enable_snmp_vrrp",
    "enable_traps",
    "fifo_write_vrrp_states_on_reload",
    "include_check",
    "instance",
    "linkbeat_use_polling",
    "log_unknown_vrids",
    "lvs_flush",
    "lvs_flush_on_stop",
    "lvs_id",
    "lvs_netlink_cmd_rcv_bufs",
    "lvs_netlink_cmd_rcv_bufs_force",
    "lvs_netlink_monitor_rcv_bufs",
    "lvs_netlink_monitor_rcv_bufs_force",
    "lvs_notify_fifo",
    "lvs_notify_fifo_script",
    "lvs_sync_daemon",
    "lvs_timeouts",
    "max_auto_priority",
    "min_auto_priority_delay",
    "namespace_with_ipsets",
    "net_namespace",
    "net_namespace_ipvs",
    "nftables",
    "nftables_counters",
    "nftables_ifindex",
    "nftables_ipvs",
    "nftables_ipvs_priority",
    "nftables_ipvs_start_fwmark",
    "nftables_priority",
    "no_checker_emails",
    "no_email_faults",
    "notification_email",
    "notification_email_from",
    "notify_fifo",
    "notify_fifo_script",
    "process_monitor_rcv_bufs",
    "process_monitor_rcv_bufs_force",
    "process_name",
    "process_names",
    "random_seed",
    "reload_check_config",
    "reload_file",
    "reload_repeat",
    "reload_time_file",
    "router_id",
    "rs_init_notifies",
    "script_user",
    "shutdown_script",
    "shutdown_script_timeout",
    "smtp_alert",
    "smtp_alert_checker",
    "smtp_alert_vrrp",
    "smtp_connect_timeout",
    "smtp_helo_name",
    "smtp_server",
    "snmp_socket",
    "startup_script",
    "startup_script_timeout",
    "tmp_config_directory",
    "umask",
    "use_pid_dir",
    "vmac_addr_prefix",
    "vmac_prefix",
    "vrrp_check_unicast_src",
    "vrrp_cpu_affinity",
    "vrrp_down_timer_adverts",
    "vrrp_garp_extra_if",
    "vrrp_garp_interval",
    "vrrp_garp_lower_prio_delay",
    "vrrp_garp_lower_prio_repeat",
    "vrrp_garp_master_delay",
    "vrrp_garp_master_refresh",
    "vrrp_garp_master_refresh_repeat",
    "vrrp_garp_master_repeat",
    "vrrp_gna_interval",
    "vrrp_higher_prio_send_advert",
    "vrrp_ipsets",
    "vrrp_iptables",
    "vrrp_lower_prio_no_advert",
    "vrrp_mcast_group4",
    "vrrp_mcast_group6",
    "vrrp_min_garp",
    "vrrp_netlink_cmd_rcv_bufs",
    "vrrp_netlink_cmd_rcv_bufs_force",
    "vrrp_netlink_monitor_rcv_bufs",
    "vrrp_netlink_monitor_rcv_bufs_force",
    "vrrp_no_swap",
    "vrrp_notify_fifo",
    "vrrp_notify_fifo_script",
    "vrrp_notify_priority_changes",
    "vrrp_priority",
    "vrrp_process_name",
    "vrrp_rlimit_rttime",
    "vrrp_rt_priority",
    "vrrp_rx_bufs_multiplier",
    "vrrp_rx_bufs_policy",
    "vrrp_skip_check_adv_addr",
    "vrrp_startup_delay",
    "vrrp_strict",
    "vrrp_version",
];

/// The known keyword closest to `word`, if it is close enough to be a typo.
pub fn suggest(word: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = (word.len() / 4).clamp(1, 3);
    known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &Statement) -> Vec<&str> {
        s.words.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn blocks_comments_and_quotes() {
        let text = "! comment\nvrrp_sync_group VG_1 {\n group {\n  a\n  b # trailing\n }\n notify \"/x.sh VG 1\"\n}\nvrrp_instance I\n{\n state BACKUP\n virtual_ipaddress { 10.0.0.1/24 dev eth0 }\n}\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(words(&s[0]), ["vrrp_sync_group", "VG_1"]);
        assert_eq!(s[0].line, 2);
        let g = &s[0].children()[0];
        assert_eq!(g.keyword(), "group");
        assert_eq!(
            g.children().iter().map(|c| c.keyword()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let n = &s[0].children()[1];
        assert_eq!(n.arg(0), Some("/x.sh VG 1"));
        assert_eq!(n.words[1].raw, "\"/x.sh VG 1\"");
        assert_eq!(n.line, 7);
        assert_eq!(s[1].line, 9);
        let vip = &s[1].children()[1].children()[0];
        assert_eq!(words(vip), ["10.0.0.1/24", "dev", "eth0"]);
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggest("rrp_sync_group", TOP), Some("vrrp_sync_group"));
        assert_eq!(suggest("nopreemt", INSTANCE), Some("nopreempt"));
        assert_eq!(suggest("frobnicate", INSTANCE), None);
    }

    #[test]
    fn unbalanced_braces_name_the_line() {
        assert_eq!(parse("a {\n b\n").unwrap_err().line, 1);
        assert_eq!(parse("a\n}\n").unwrap_err().line, 2);
        assert_eq!(parse("x \"open\n").unwrap_err().line, 1);
    }
}
