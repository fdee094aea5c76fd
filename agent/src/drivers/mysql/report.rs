//! What each driver call reports: for the log, and for `ha-agent status`
//! (all of it serializes to JSON; durations as milliseconds).

use std::time::Duration;

use serde::Serialize;

use super::flashback::Undone;
use super::flavor::{Flavor, Version};
use super::gtid::{Errant, GtidSet};
use super::replica::ReplicaState;
use super::semisync::SemisyncState;

pub(crate) fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(super::ms(*d))
}

/// One step of a call, with how long it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub name: String,
    #[serde(serialize_with = "ms", rename = "took_ms")]
    pub took: Duration,
}

/// The local server's state, probed every `check_interval_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub server: String,
    /// It answered a query.
    pub up: bool,
    /// Why it is down, or what could not be read although it is up.
    pub errors: Vec<String>,
    pub flavor: Option<Flavor>,
    pub version: Option<Version>,
    /// `VERSION()` as the server prints it.
    pub version_text: Option<String>,
    pub server_id: Option<u32>,
    pub read_only: bool,
    pub super_read_only: bool,
    /// Up and accepting application writes.
    pub writable: bool,
    pub replica: Option<ReplicaState>,
    /// Up, but its replication status could not be read: whether it
    /// replicates from the peer is unknown.
    pub replica_unknown: bool,
    /// Everything it has (MySQL `gtid_executed`; MariaDB the binlog state
    /// merged with `gtid_slave_pos`, as a position).
    pub executed_gtids: Option<GtidSet>,
    /// With `semisync = true`: the server's semi-sync state.
    pub semisync: Option<SemisyncState>,
    /// Settings that break the failover (binary log off, GTIDs off, ...).
    pub problems: Vec<String>,
    #[serde(serialize_with = "ms", rename = "took_ms")]
    pub took: Duration,
}

impl Health {
    pub(crate) fn down(server: String, error: String, took: Duration) -> Health {
        Health {
            server,
            up: false,
            errors: vec![error],
            flavor: None,
            version: None,
            version_text: None,
            server_id: None,
            read_only: false,
            super_read_only: false,
            writable: false,
            replica: None,
            replica_unknown: false,
            executed_gtids: None,
            semisync: None,
            problems: Vec::new(),
            took,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FenceReport {
    pub server: String,
    /// It was already read-only (nothing was changed).
    pub was_read_only: bool,
    /// Connections closed because their commit waited for a semi-sync
    /// acknowledgement (those commits were not acknowledged).
    pub closed_waiting_commits: u32,
    #[serde(serialize_with = "ms", rename = "took_ms")]
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromotionReport {
    pub server: String,
    /// It was replicating (false: it already was a primary, only unfenced).
    pub was_replica: bool,
    /// What the replica had received from the old primary when its IO thread stopped.
    pub received: Option<GtidSet>,
    /// How long it waited for the applier.
    #[serde(serialize_with = "ms", rename = "waited_ms")]
    pub waited: Duration,
    /// Everything received was applied before it became writable.
    pub caught_up: bool,
    /// With `catchup_policy = "promote"` and a timeout: received transactions
    /// that were NOT applied and are now lost to this server.
    pub skipped: Option<GtidSet>,
    /// Semi-sync on the new primary (relaxed until its replica rejoins).
    pub semisync: Option<SemisyncState>,
    /// A planned handover (the old primary's agent still spoke): what was
    /// done to receive the old primary's last transactions first.
    pub handoff: Option<String>,
    /// That handover applied everything the old primary had.
    pub drained: bool,
    /// How "received" was frozen before the wait: `io_thread_killed`
    /// (MariaDB), `io_thread_stopped` (MySQL), `io_thread_already_stopped`
    /// or `io_thread_gone`. None: it was no replica.
    pub frozen_by: Option<&'static str>,
    pub steps: Vec<Step>,
    #[serde(serialize_with = "ms", rename = "took_ms")]
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejoinReport {
    pub server: String,
    pub peer: String,
    /// It already replicated from the peer with both threads running: nothing was changed.
    pub already_replicating: bool,
    /// Replication from the peer was only interrupted: the stopped thread
    /// was restarted, the relay log (what was received) kept.
    pub resumed: bool,
    /// The errant transactions given up, removed from its GTID history and
    /// binary logs (and, on MariaDB, from its tables: `undone`).
    pub discarded: Option<Errant>,
    /// MariaDB: how their row changes were undone first (see `flashback`).
    pub undone: Option<Undone>,
    /// They were given up without an operator: proved never acknowledged.
    pub automatic: bool,
    /// Where replication started (MariaDB `gtid_slave_pos`; MySQL the kept `gtid_executed`).
    pub start_position: Option<GtidSet>,
    pub io_running: bool,
    pub sql_running: bool,
    pub replica: Option<ReplicaState>,
    pub steps: Vec<Step>,
    #[serde(serialize_with = "ms", rename = "took_ms")]
    pub took: Duration,
}

impl RejoinReport {
    /// Nothing done yet.
    pub fn new(server: String, peer: String) -> RejoinReport {
        RejoinReport {
            server,
            peer,
            already_replicating: false,
            resumed: false,
            discarded: None,
            undone: None,
            automatic: false,
            start_position: None,
            io_running: false,
            sql_running: false,
            replica: None,
            steps: Vec::new(),
            took: Duration::ZERO,
        }
    }
}
