#![no_main]
//! The config parser and validator on any text. A config that is accepted
//! must be fully usable: no problem left, and everything the daemon derives
//! from it computes without panicking.

use std::path::Path;

use ha_agent::decisions::proxy::ProxyAddresses;
use ha_agent::drivers::hooks::split_command;
use ha_agent::operator::config::{parse_cidr, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = parse_cidr(line);
        let _ = split_command(line);
    }
    let Ok(cfg) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    assert!(cfg.problems().is_empty());
    let vips = cfg.vips();
    assert_eq!(vips.len(), cfg.vips.len());
    let _ = cfg.init_timeout();
    for l in &cfg.links {
        let _ = (l.detect_time(), l.witness_detect_time());
    }
    if let Some(a) = &cfg.atlas {
        let _ = (a.period(), a.connect_timeout(), a.query_timeout());
        assert!(ProxyAddresses::from_config(&cfg).is_ok());
    }
    if let Some(m) = &cfg.mysql {
        let _ = (m.catchup_timeout(), m.down_handover(), m.timeout());
        let _ = m.check_interval();
    }
    for (_, cmd) in cfg.hooks.commands() {
        assert!(split_command(cmd).is_ok());
    }
    assert!(cfg.node.name.len() <= ha_agent::operator::config::NODE_NAME_MAX);
});
