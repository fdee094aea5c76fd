//! The `database` section of `ha-agent status`: what the agent wants from
//! the local MySQL/MariaDB, what it is, and what the agent last did to it.
//! Plain data (strings and numbers) so the CLI can read it back.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DatabaseStatus {
    /// The local server's address.
    pub server: String,
    /// What the agent makes of it: "primary", "replica of ADDR" or "fenced".
    pub wanted: String,
    /// What it is: "primary" (writable), "replica", "fenced" (read-only and
    /// not replicating), "down", or "unknown" (not probed yet).
    pub role: String,
    pub up: bool,
    pub read_only: bool,
    pub writable: bool,
    /// "MariaDB 10.11.6" once probed.
    pub version: Option<String>,
    /// False once it has been down for `down_handover_ms`: the election
    /// then treats this node as unfit to hold the VIPs.
    pub fit: bool,
    /// "fit", "failing: down for N ms", or "UNFIT: down for N ms".
    pub fitness: String,
    /// Advertised to the peer: replicating from it and caught up.
    pub replica_ok: bool,
    pub replication: Option<ReplicationStatus>,
    pub executed_gtids: Option<String>,
    /// With `semisync = true`: whether semi-sync is in effect for its role
    /// (a primary: effective with the peer; a replica: acknowledging).
    pub semisync_effective: Option<bool>,
    /// With `semisync = true`: what it advertises, since when, and what
    /// went without an acknowledgement.
    #[serde(default)]
    pub semisync: Option<SemisyncStatus>,
    /// The action running now ("promote", "rejoin", ...) and since when.
    pub action: Option<String>,
    pub action_since: Option<String>,
    pub last_promotion: Option<PromotionStatus>,
    pub last_rejoin: Option<RejoinStatus>,
    /// Set while a rejoin is refused because this server has transactions
    /// the peer lacks (cleared by `ha-agent rejoin --force`).
    pub errant: Option<ErrantStatus>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Settings that break the failover (binary log off, ...).
    pub problems: Vec<String>,
    /// What the last probe could not read (or why the server is down).
    pub probe_errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SemisyncStatus {
    /// "strict" or "available".
    pub durability: String,
    /// What this node says in its probes ("effective", "asynchronous
    /// (announcement N)", "acking", ...).
    pub advertised: String,
    /// A primary: effective (every commit waits for the peer) since.
    pub effective_since: Option<String>,
    /// A primary: may acknowledge without the peer since (or announced it).
    pub asynchronous_since: Option<String>,
    /// A primary: commits acknowledged without a replica's acknowledgement
    /// since it was promoted.
    pub commits_without_ack: Option<u64>,
    /// A primary: commits waiting for an acknowledgement now.
    pub waiting_commits: Option<u64>,
    /// What the peer said while it was the primary, and since when.
    pub peer_said: Option<String>,
    /// Why a promotion is held (durability = "strict").
    pub promotion_held: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicationStatus {
    pub source: String,
    /// `Yes`, `No` or `Connecting`.
    pub io_running: String,
    pub sql_running: bool,
    pub sql_state: String,
    pub seconds_behind: Option<u64>,
    pub all_relay_applied: bool,
    pub received_gtids: Option<String>,
    pub last_io_error: Option<String>,
    pub last_sql_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PromotionStatus {
    pub time: String,
    pub took_ms: f64,
    /// Of which waiting for the applier.
    pub waited_ms: f64,
    pub was_replica: bool,
    pub caught_up: bool,
    /// Received but never applied (only with `catchup_policy = "promote"`).
    pub skipped_gtids: Option<String>,
    /// Planned handover: how the old primary's last transactions were awaited.
    #[serde(default)]
    pub handoff: Option<String>,
    /// How the received set was frozen: see `PromotionReport::frozen_by`.
    #[serde(default)]
    pub frozen_by: Option<String>,
    /// Promoted although the old primary may have acknowledged writes that
    /// are not here (durability = "available", or forced): why.
    #[serde(default)]
    pub possibly_lost: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RejoinStatus {
    pub time: String,
    pub peer: String,
    pub took_ms: f64,
    pub io_running: bool,
    pub sql_running: bool,
    /// With `--force`: the errant transactions given up.
    pub discarded: Option<String>,
    /// MariaDB: how their row changes were undone.
    #[serde(default)]
    pub undone: Option<String>,
    /// Rows the undo reversed.
    #[serde(default)]
    pub undone_rows: Option<u64>,
    /// The directory with what was undone (rows.txt, undo.sql, summary.txt).
    #[serde(default)]
    pub undo_record: Option<String>,
    /// Given up without an operator: proved never acknowledged.
    #[serde(default)]
    pub automatic: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrantStatus {
    pub peer: String,
    pub gtids: String,
    pub transactions: u64,
    pub details: Vec<String>,
    pub since: String,
    /// Why they were not undone automatically.
    #[serde(default)]
    pub not_undone_because: Option<String>,
}

impl DatabaseStatus {
    /// Lines for `ha-agent status`.
    pub fn render(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "database {}{}: {}{}  [wanted: {}]  {}",
            self.server,
            self.version
                .as_deref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            self.role,
            if self.up {
                if self.read_only {
                    ", read-only"
                } else {
                    ", writable"
                }
            } else {
                ""
            },
            self.wanted,
            self.fitness
        );
        if let Some(r) = &self.replication {
            let lag = r
                .seconds_behind
                .map_or("unknown".to_string(), |s| format!("{s} s"));
            let _ = writeln!(
                o,
                "  replication from {}: IO {}  SQL {}  lag {}{}{}",
                r.source,
                r.io_running,
                if r.sql_running { "Yes" } else { "No" },
                lag,
                if r.all_relay_applied {
                    "  all relay log applied"
                } else {
                    ""
                },
                if self.replica_ok {
                    "  (offered for reads)"
                } else {
                    ""
                }
            );
            for e in [&r.last_io_error, &r.last_sql_error].into_iter().flatten() {
                let _ = writeln!(o, "  replication error: {e}");
            }
        }
        if let Some(g) = &self.executed_gtids {
            let _ = writeln!(o, "  executed GTIDs: {g}");
        }
        if let Some(s) = &self.semisync {
            let _ = writeln!(
                o,
                "  semi-sync ({}): {}{}{}",
                s.durability,
                s.advertised,
                s.effective_since
                    .as_deref()
                    .map(|t| format!(", effective since {t}"))
                    .unwrap_or_default(),
                s.asynchronous_since
                    .as_deref()
                    .map(|t| format!(", asynchronous since {t}"))
                    .unwrap_or_default(),
            );
            if let Some(n) = s.commits_without_ack {
                let _ = writeln!(
                    o,
                    "    commits without an acknowledgement since the promotion: {n}{}",
                    s.waiting_commits
                        .filter(|w| *w > 0)
                        .map(|w| format!("; {w} waiting now"))
                        .unwrap_or_default()
                );
            }
            if let Some(p) = &s.peer_said {
                let _ = writeln!(o, "    the primary said: {p}");
            }
            if let Some(h) = &s.promotion_held {
                let _ = writeln!(
                    o,
                    "  PROMOTION HELD: {h}; run `ha-agent promote --force` to accept the loss"
                );
            }
        } else if let Some(s) = self.semisync_effective {
            let _ = writeln!(
                o,
                "  semi-sync: {}",
                if s { "effective" } else { "NOT effective" }
            );
        }
        if let (Some(a), Some(since)) = (&self.action, &self.action_since) {
            let _ = writeln!(o, "  running: {a} (since {since})");
        }
        if let Some(p) = &self.last_promotion {
            let _ = writeln!(
                o,
                "  last promotion: {}  took {:.1} ms (waited {:.1} ms for the applier){}{}",
                p.time,
                p.took_ms,
                p.waited_ms,
                if p.caught_up {
                    ", caught up"
                } else {
                    ", NOT caught up"
                },
                p.skipped_gtids
                    .as_deref()
                    .map(|s| format!("; SKIPPED {s}"))
                    .unwrap_or_default()
            );
            if let Some(h) = &p.handoff {
                let _ = writeln!(o, "    handover: {h}");
            }
            if let Some(f) = &p.frozen_by {
                let _ = writeln!(o, "    received set frozen: {f}");
            }
            if let Some(l) = &p.possibly_lost {
                let _ = writeln!(o, "    ACKNOWLEDGED WRITES MAY BE MISSING: {l}");
            }
        }
        if let Some(r) = &self.last_rejoin {
            let _ = writeln!(
                o,
                "  last rejoin: {}  from {}  took {:.1} ms{}",
                r.time,
                r.peer,
                r.took_ms,
                r.discarded
                    .as_deref()
                    .map(|d| format!(
                        "; {} {d}{}",
                        if r.automatic {
                            "UNACKNOWLEDGED, UNDONE AUTOMATICALLY:"
                        } else {
                            "DISCARDED"
                        },
                        r.undone
                            .as_deref()
                            .map(|u| format!(", {u}"))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default()
            );
        }
        if let Some(e) = &self.errant {
            let _ = writeln!(
                o,
                "  REJOIN BLOCKED since {}: this server has {} ({} transaction(s)) that {} lacks; save them (mysqlbinlog), then run `ha-agent rejoin --force` to give them up",
                e.since, e.gtids, e.transactions, e.peer
            );
            for d in &e.details {
                let _ = writeln!(o, "    {d}");
            }
            if let Some(w) = &e.not_undone_because {
                let _ = writeln!(o, "    not undone automatically: {w}");
            }
        }
        for p in &self.problems {
            let _ = writeln!(o, "  PROBLEM: {p}");
        }
        for e in &self.probe_errors {
            let _ = writeln!(o, "  probe: {e}");
        }
        if let Some(e) = &self.last_error {
            let _ = writeln!(
                o,
                "  last error{}: {e}",
                self.last_error_at
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            );
        }
    }
}
