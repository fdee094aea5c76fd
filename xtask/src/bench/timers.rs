//! ha-agent's timers for a bench run: `--agent-interval-ms`,
//! `--agent-multiplier` and `--agent-senders`, written into both servers'
//! configs (every link alike) as overrides of the lab's config. Without
//! them the agent runs its own defaults.

use std::fmt;

use anyhow::{bail, Context, Result};
use clap::Args;
use ha_lab::{Link, Overrides};
use serde_json::{json, Value};

#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentTimers {
    /// ha-agent on both servers: probe interval of every link, in ms
    /// (`[[link]] interval_ms`; default: the agent's).
    #[arg(long)]
    pub agent_interval_ms: Option<u64>,
    /// ha-agent on both servers: probe slots of silence that make a link
    /// silent (`[[link]] multiplier`; default: the agent's).
    #[arg(long)]
    pub agent_multiplier: Option<u32>,
    /// ha-agent on both servers: probe sender threads, 0 = one per CPU
    /// (`node.senders`; default: the agent's).
    #[arg(long)]
    pub agent_senders: Option<usize>,
}

impl AgentTimers {
    /// "2x3": 2 ms probes, 3 slots of silence.
    pub fn parse_setting(s: &str) -> Result<AgentTimers> {
        let (i, m) = s
            .trim()
            .split_once(['x', 'X'])
            .with_context(|| format!("{s:?}: a setting is INTERVALxMULTIPLIER, e.g. 2x3"))?;
        let t = AgentTimers {
            agent_interval_ms: Some(
                i.trim()
                    .parse()
                    .with_context(|| format!("{s:?}: interval"))?,
            ),
            agent_multiplier: Some(
                m.trim()
                    .parse()
                    .with_context(|| format!("{s:?}: multiplier"))?,
            ),
            agent_senders: None,
        };
        t.check()?;
        Ok(t)
    }

    /// Refuses values the agent would refuse, before any lab is built.
    pub fn check(&self) -> Result<()> {
        if let Some(i) = self.agent_interval_ms {
            if !(1..=10_000).contains(&i) {
                bail!("--agent-interval-ms must be between 1 and 10000");
            }
        }
        if let Some(m) = self.agent_multiplier {
            if !(2..=100).contains(&m) {
                bail!("--agent-multiplier must be between 2 and 100");
            }
        }
        Ok(())
    }

    /// `base` plus these settings, for both links.
    pub fn overrides(&self, mut base: Overrides) -> Overrides {
        for l in Link::ALL {
            let i = l.index();
            if let Some(v) = self.agent_interval_ms {
                base = base.set(&format!("link.{i}.interval_ms"), v as i64);
            }
            if let Some(v) = self.agent_multiplier {
                base = base.set(&format!("link.{i}.multiplier"), i64::from(v));
            }
        }
        if let Some(n) = self.agent_senders {
            base = base.set("node.senders", n as i64);
        }
        base
    }

    /// The silence that makes a link silent, when both are given.
    pub fn detect_ms(&self) -> Option<u64> {
        Some(self.agent_interval_ms? * u64::from(self.agent_multiplier?))
    }

    pub fn json(&self) -> Value {
        json!({
            "interval_ms": self.agent_interval_ms,
            "multiplier": self.agent_multiplier,
            "senders": self.agent_senders,
        })
    }
}

impl fmt::Display for AgentTimers {
    /// "2x3", "2x3 senders=1", or "agent defaults".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match (self.agent_interval_ms, self.agent_multiplier) {
            (Some(i), Some(m)) => parts.push(format!("{i}x{m}")),
            (Some(i), None) => parts.push(format!("interval {i} ms")),
            (None, Some(m)) => parts.push(format!("multiplier {m}")),
            (None, None) => {}
        }
        if let Some(n) = self.agent_senders {
            parts.push(format!("senders={n}"));
        }
        if parts.is_empty() {
            f.write_str("agent defaults")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_become_overrides() {
        let t = AgentTimers::parse_setting("2x4").unwrap();
        assert_eq!(t.to_string(), "2x4");
        assert_eq!(t.detect_ms(), Some(8));
        let mut doc: toml::Table = "[node]\n[[link]]\n[[link]]\n".parse().unwrap();
        t.overrides(Overrides::new()).apply(&mut doc).unwrap();
        for l in 0..2 {
            assert_eq!(doc["link"][l]["interval_ms"].as_integer(), Some(2));
            assert_eq!(doc["link"][l]["multiplier"].as_integer(), Some(4));
        }
        assert!(AgentTimers::parse_setting("2").is_err());
        assert!(AgentTimers::parse_setting("0x3").is_err());
        assert!(AgentTimers::parse_setting("2x1").is_err());
        assert_eq!(AgentTimers::default().to_string(), "agent defaults");
    }
}
