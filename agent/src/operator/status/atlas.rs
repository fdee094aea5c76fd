//! The `atlas` section of `ha-agent status`: the wanted backend table, the
//! table Atlas last showed, and whether they agree.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::drivers::atlas::AtlasStatus;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AtlasSection {
    pub admin_address: String,
    /// The last reconciliation logged in to the admin port.
    pub reachable: bool,
    /// The table is as wanted (and persisted).
    pub in_sync: bool,
    /// The wanted rw backend and ro backends.
    pub wanted_rw: Option<String>,
    pub wanted_ro: Vec<String>,
    /// The table as last read: "1 203.0.113.100:3306 rw up".
    pub table: Vec<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_ok_at: Option<String>,
    pub consecutive_failures: u32,
    pub steps_applied: u64,
    /// The table as last read, typed (for the metrics).
    #[serde(default)]
    pub backends: Vec<AtlasBackend>,
    /// Reconciliations finished (ok or not) since start.
    #[serde(default)]
    pub rounds: u64,
    /// Reconciliations that failed since start (absent until counted).
    #[serde(default)]
    pub failures_total: Option<u64>,
}

/// One row of Atlas's backend table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AtlasBackend {
    pub address: String,
    /// `rw`, `ro` or `unknown`.
    pub kind: String,
    /// `up`, `down`, `unknown` or `offline`.
    pub state: String,
}

impl AtlasSection {
    /// Atlas can take writes: it lists an rw backend that is up.
    pub fn serving(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.kind == "rw" && b.state == "up")
    }
}

impl AtlasSection {
    pub fn new(admin_address: String, s: &AtlasStatus) -> AtlasSection {
        AtlasSection {
            admin_address,
            reachable: s.reachable,
            in_sync: s.in_sync,
            wanted_rw: s.desired.as_ref().map(|d| d.rw.to_string()),
            wanted_ro: s
                .desired
                .iter()
                .flat_map(|d| d.ro.iter().map(|a| a.to_string()))
                .collect(),
            table: s.table.iter().map(|b| b.to_string()).collect(),
            last_error: s.last_error.clone(),
            last_error_at: s.last_error_at.map(crate::operator::status::rfc3339),
            last_ok_at: s.last_ok_at.map(crate::operator::status::rfc3339),
            consecutive_failures: s.consecutive_failures,
            steps_applied: s.steps_applied,
            backends: s
                .table
                .iter()
                .map(|b| AtlasBackend {
                    address: b.address.to_string(),
                    kind: b.kind.as_str().to_string(),
                    state: b.state.as_str().to_string(),
                })
                .collect(),
            rounds: s.rounds,
            failures_total: None,
        }
    }

    /// Lines for `ha-agent status`.
    pub fn render(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "atlas {}: {}, {}",
            self.admin_address,
            if self.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            if self.in_sync {
                "in sync"
            } else {
                "NOT in sync"
            }
        );
        if let Some(rw) = &self.wanted_rw {
            let _ = writeln!(o, "  wanted: rw {rw}  ro [{}]", self.wanted_ro.join(", "));
        }
        let _ = writeln!(o, "  table: [{}]", self.table.join(", "));
        if let Some(e) = &self.last_error {
            let _ = writeln!(
                o,
                "  last error{}: {e}{}",
                self.last_error_at
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default(),
                if self.consecutive_failures > 0 {
                    format!(" ({} failures in a row)", self.consecutive_failures)
                } else {
                    " (recovered since)".to_string()
                }
            );
        }
    }
}
