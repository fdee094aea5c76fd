//! The `atlas` section of `ha-agent status`: the wanted backend table, the
//! table Atlas last showed, whether they agree, and whether each wanted
//! backend is only listed or already serving (Atlas's state `up`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::drivers::atlas::AtlasStatus;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AtlasSection {
    pub admin_address: String,
    /// The last reconciliation logged in to the admin port.
    pub reachable: bool,
    /// The table is as wanted, persisted, and its rw backend is `up`.
    pub in_sync: bool,
    /// The table lists exactly the wanted backends (whatever their state).
    #[serde(default)]
    pub listed: bool,
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
    /// Each wanted backend: "rw 192.168.1.150:3306 up, serving since ...".
    #[serde(default)]
    pub serving: Vec<ServingLine>,
    /// Set while the rw backend has not been up for longer than the bound.
    #[serde(default)]
    pub rw_alarm: Option<String>,
    #[serde(default)]
    pub rw_not_up_since: Option<String>,
    /// About the `.cnf`'s exposure, found at start.
    #[serde(default)]
    pub cnf_warnings: Vec<String>,
    /// Times the `.cnf` was brought up to date since start.
    #[serde(default)]
    pub persists: u64,
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

/// One wanted backend, listed or not, serving or not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServingLine {
    pub address: String,
    /// "rw" or "ro".
    pub kind: String,
    /// Atlas's state; None: not listed.
    pub state: Option<String>,
    pub serving: bool,
    pub listed_since: Option<String>,
    pub serving_since: Option<String>,
    /// From listed to `up`, the last time the agent saw it happen.
    pub time_to_serving_ms: Option<f64>,
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
    pub fn rw_serving(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.kind == "rw" && b.state == "up")
    }

    pub fn new(admin_address: String, s: &AtlasStatus) -> AtlasSection {
        AtlasSection {
            admin_address,
            reachable: s.reachable,
            in_sync: s.in_sync,
            listed: s.listed,
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
            serving: s
                .serving
                .iter()
                .map(|e| ServingLine {
                    address: e.address.to_string(),
                    kind: e.kind.to_string(),
                    state: e.state.map(|st| st.to_string()),
                    serving: e.serving,
                    listed_since: e.listed_since.map(crate::operator::status::rfc3339),
                    serving_since: e.serving_since.map(crate::operator::status::rfc3339),
                    time_to_serving_ms: e.time_to_serving_ms,
                })
                .collect(),
            rw_alarm: s.rw_alarm.clone(),
            rw_not_up_since: s.rw_not_up_since.map(crate::operator::status::rfc3339),
            cnf_warnings: s.cnf_warnings.clone(),
            persists: s.persists,
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
            failures_total: Some(s.failures_total),
        }
    }

    /// Lines for the status's warnings: the rw alarm and the `.cnf`'s exposure.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self.rw_alarm.iter().cloned().collect();
        w.extend(self.cnf_warnings.iter().cloned());
        w
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
            match (self.in_sync, self.listed) {
                (true, _) => "in sync (listed, rw serving)",
                (false, true) => "NOT in sync (listed, but not serving or not persisted yet)",
                (false, false) => "NOT in sync",
            }
        );
        if let Some(rw) = &self.wanted_rw {
            let _ = writeln!(o, "  wanted: rw {rw}  ro [{}]", self.wanted_ro.join(", "));
        }
        let _ = writeln!(o, "  table: [{}]", self.table.join(", "));
        for b in &self.serving {
            let how = match (&b.state, b.serving) {
                (None, _) => "NOT listed".to_string(),
                (Some(_), true) => format!(
                    "serving{}",
                    b.time_to_serving_ms
                        .map(|t| format!(" ({:.1} s after it was listed)", t / 1000.0))
                        .unwrap_or_default()
                ),
                (Some(st), false) => format!(
                    "listed, NOT serving yet (state {st}{})",
                    b.listed_since
                        .as_deref()
                        .map(|t| format!(", listed since {t}"))
                        .unwrap_or_default()
                ),
            };
            let _ = writeln!(o, "  {} {}: {how}", b.kind, b.address);
        }
        if let Some(a) = &self.rw_alarm {
            let _ = writeln!(o, "  ALARM: {a}");
        }
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
