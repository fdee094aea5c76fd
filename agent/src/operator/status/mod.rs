//! `ha-agent status` and `ha-agent switchover`: a line protocol over a local
//! Unix socket (mode 0600). The client sends one command line (`status`,
//! `switchover` or `rejoin-force`), the daemon answers one JSON line and closes.

pub mod atlas;
pub mod database;
pub mod server;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use atlas::AtlasSection;
pub use database::DatabaseStatus;

/// Everything `ha-agent status` shows (and the metrics are made from).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub state: String,
    pub epoch: u64,
    pub priority: u8,
    pub nopreempt: bool,
    pub degraded: bool,
    /// MASTER after a takeover from a silent holder that may still be
    /// handed back: hooks, database and proxy wait for its confirmation.
    #[serde(default)]
    pub provisional: bool,
    /// How long this node's kernel serves the VIPs if the agent hangs.
    #[serde(default)]
    pub lease_ms: u64,
    /// When the isolated holder will fence itself, if it is counting down.
    pub fencing_in_ms: Option<u64>,
    pub peer: Option<PeerStatus>,
    pub links: Vec<LinkStatus>,
    pub vips: Vec<VipStatus>,
    pub vips_held: Vec<String>,
    pub warnings: Vec<String>,
    pub transitions: Vec<TransitionStatus>,
    /// Takeovers handed back inside the reclaim window since start (the
    /// holder was only stalled): no hook ran, nothing else was touched.
    #[serde(default)]
    pub false_alarms: u64,
    #[serde(default)]
    pub recent_false_alarms: Vec<FalseAlarmStatus>,
    /// The real-time probe senders.
    #[serde(default)]
    pub sender: Option<SenderStatus>,
    /// Probes that verified but were refused (replays, old sessions, wrong
    /// link or source) or did not verify, since start.
    #[serde(default)]
    pub probes_refused: u64,
    pub hooks: Vec<HookStatus>,
    /// The local MySQL/MariaDB (absent without `[mysql]`).
    #[serde(default)]
    pub database: Option<DatabaseStatus>,
    /// The local Atlas proxy (absent without `[atlas]`).
    #[serde(default)]
    pub atlas: Option<AtlasSection>,
    /// Role changes since start, counted by from, to and reason (`reason`
    /// a short fixed label, not the free text of `transitions`).
    #[serde(default)]
    pub transition_counts: Vec<TransitionCount>,
    /// Hook commands run since start, and how many failed, by state.
    #[serde(default)]
    pub hook_totals: Vec<HookTotal>,
}

/// A histogram as counts per bucket (not cumulative): `counts[i]` holds the
/// observations above `bounds_us[i - 1]` and at most `bounds_us[i]`; the
/// last entry, `counts[bounds_us.len()]`, holds those above every bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistogramStatus {
    /// Upper bounds in microseconds, ascending.
    pub bounds_us: Vec<u64>,
    /// One more entry than `bounds_us`.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TransitionCount {
    pub from: String,
    pub to: String,
    /// A short fixed label ("peer_silent", "operator", ...).
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HookTotal {
    /// MASTER, BACKUP, FAULT or STOP.
    pub state: String,
    pub runs: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub node: String,
    pub state: String,
    pub epoch: u64,
    pub priority: u8,
    pub eligible: bool,
    pub witness_reach: u8,
    pub alive: bool,
    /// The peer's own report of its worst sender lateness in the last second.
    #[serde(default)]
    pub lateness_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    pub name: String,
    pub interface: String,
    #[serde(default = "yes")]
    pub carrier: bool,
    pub peer_up: bool,
    pub last_seen_ms_ago: Option<u64>,
    pub probes_received: u64,
    pub probes_lost: u64,
    pub probes_rejected: u64,
    /// Redundant copies and replays of slots already counted (dropped).
    #[serde(default)]
    pub probes_duplicate: u64,
    /// Frames to our VIPs the kernel dropped while our lease had lapsed.
    #[serde(default)]
    pub lease_drops: u64,
    /// Our probes that failed to leave on this link.
    #[serde(default)]
    pub send_errors: u64,
    pub witness: Option<String>,
    pub witness_up: Option<bool>,
    pub witness_last_seen_ms_ago: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FalseAlarmStatus {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    pub epoch: u64,
    /// The holder's silence that made us take over.
    pub silence_ms: f64,
    /// How long we held the VIPs before handing them back.
    pub held_ms: f64,
    /// The holder's report of its sender lateness when it spoke again.
    pub peer_lateness_ms: f64,
    /// Our senders' worst lateness in the last second, then.
    pub own_lateness_ms: f64,
}

/// The probe senders' counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SenderStatus {
    pub threads: u64,
    pub realtime_threads: u64,
    pub pinned_threads: u64,
    /// Slots sent, and slots no thread sent in time.
    pub slots: u64,
    pub missed_slots: u64,
    /// Per-slot lateness of the best sender.
    pub lateness: HistogramStatus,
    pub lateness_p50_us: Option<u64>,
    pub lateness_p99_us: Option<u64>,
    pub lateness_max_us: u64,
    pub send_errors: u64,
    pub witness_errors: u64,
    /// Witness ARP requests sent, and those of them broadcast (to every
    /// host of the LAN: the witness had not answered the request before;
    /// the others went to its MAC only).
    #[serde(default)]
    pub witness_requests: u64,
    #[serde(default)]
    pub witness_broadcasts: u64,
    /// Failed writes of the lease or of a sender's beat to the kernel.
    pub lease_errors: u64,
    /// Wakes at which the decision loop looked hung (nothing sent).
    pub loop_stale: u64,
    /// The longest time one sender wake's own work took (sends, lease;
    /// us): held inside system calls, not before waking.
    #[serde(default)]
    pub work_max_us: u64,
    /// Sender wakes whose own work took longer than a probe interval.
    #[serde(default)]
    pub long_work: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub address: String,
    pub interface: String,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransitionStatus {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookStatus {
    pub command: String,
    pub state: String,
    pub ok: bool,
    pub detail: String,
}

/// What the services runtime adds to the election thread's status.
pub struct ServicesStatus {
    pub hooks: Vec<HookStatus>,
    pub hook_totals: Vec<HookTotal>,
    pub database: Option<DatabaseStatus>,
    pub atlas: Option<AtlasSection>,
    pub warnings: Vec<String>,
}

impl Status {
    /// The whole status: the election's, with the services' part.
    pub fn with_services(mut self, p: ServicesStatus) -> Status {
        self.hooks = p.hooks;
        self.hook_totals = p.hook_totals;
        self.database = p.database;
        self.atlas = p.atlas;
        self.warnings.extend(p.warnings);
        self
    }
}

/// The daemon's answer to one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<Status>),
    Ok { message: String },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent's status socket {path}: {source} (is ha-agent running, and are you root?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent on {path} sent an answer this client does not understand: {message}")]
    BadReply { path: String, message: String },
    #[error("no answer from the agent on {path} within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
}

/// Sends one command to the daemon and returns its reply (within 5 s).
pub async fn request(socket: &Path, command: &str) -> Result<Reply, ClientError> {
    request_within(socket, command, Duration::from_secs(5)).await
}

/// Like [`request`], for commands that take longer (a forced rejoin).
pub async fn request_within(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let path = socket.display().to_string();
    let work = async {
        let mut stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: path.clone(),
                    source,
                })?;
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(io)?;
        serde_json::from_str::<Reply>(&line).map_err(|e| ClientError::BadReply {
            path: path.clone(),
            message: e.to_string(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { path, timeout }),
    }
}

/// Human-readable rendering of a status.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {}  state {}  epoch {}  priority {}{}",
        s.node,
        s.state,
        s.epoch,
        s.priority,
        if s.nopreempt { "  nopreempt" } else { "" }
    );
    let held = if s.vips_held.is_empty() {
        "none".to_string()
    } else {
        s.vips_held.join(", ")
    };
    let _ = writeln!(o, "VIPs held: {held}");
    match &s.peer {
        Some(p) => {
            let _ = writeln!(
                o,
                "peer {}: {} epoch {} priority {}{}{}",
                p.node,
                p.state,
                p.epoch,
                p.priority,
                if p.alive {
                    ""
                } else {
                    " (silent on all links)"
                },
                if p.eligible { "" } else { " (not eligible)" }
            );
        }
        None => {
            let _ = writeln!(o, "peer: never heard");
        }
    }
    let _ = writeln!(o, "links:");
    for l in &s.links {
        let age = l
            .last_seen_ms_ago
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let _ = writeln!(
            o,
            "  {:<10} {:<8} peer {:<4} last seen {:<12} rx {} lost {} rejected {}",
            l.name,
            l.interface,
            if l.peer_up { "UP" } else { "DOWN" },
            age,
            l.probes_received,
            l.probes_lost,
            l.probes_rejected
        );
        if let Some(w) = &l.witness {
            let wage = l
                .witness_last_seen_ms_ago
                .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
            let _ = writeln!(
                o,
                "  {:<10} witness {} {} (last reply {})",
                "",
                w,
                if l.witness_up == Some(true) {
                    "reachable"
                } else {
                    "UNREACHABLE"
                },
                wage
            );
        }
    }
    if s.degraded {
        let _ = writeln!(
            o,
            "DEGRADED: the peer is silent on some links (no failover while one link still works)"
        );
    }
    if let Some(ms) = s.fencing_in_ms {
        let _ = writeln!(
            o,
            "ISOLATED: neither peer nor witness answers; dropping the VIPs in {ms} ms"
        );
    }
    for w in &s.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    if !s.transitions.is_empty() {
        let _ = writeln!(o, "transitions (oldest first):");
        for t in &s.transitions {
            let _ = writeln!(
                o,
                "  {}  {} -> {}  epoch {}  {}",
                t.time, t.from, t.to, t.epoch, t.reason
            );
        }
    }
    render_false_alarms(s, &mut o);
    if let Some(t) = &s.sender {
        t.render(&mut o);
    }
    if let Some(d) = &s.database {
        d.render(&mut o);
    }
    if let Some(a) = &s.atlas {
        a.render(&mut o);
    }
    if !s.hooks.is_empty() {
        let _ = writeln!(o, "recent hooks:");
        for h in &s.hooks {
            let _ = writeln!(
                o,
                "  {} [{}] {} {}",
                h.state,
                if h.ok { "ok" } else { "FAILED" },
                h.command,
                h.detail
            );
        }
    }
    o
}

/// The count, and the recent ones with what each saw.
fn render_false_alarms(s: &Status, o: &mut String) {
    if s.false_alarms == 0 {
        return;
    }
    let _ = writeln!(
        o,
        "false alarms: {} (took over from a holder that was only silent, handed back; no hook ran)",
        s.false_alarms
    );
    for f in &s.recent_false_alarms {
        let _ = writeln!(
            o,
            "  {}  epoch {}  silence {} ms  held {} ms  lateness: holder {} ms, ours {} ms",
            f.time, f.epoch, f.silence_ms, f.held_ms, f.peer_lateness_ms, f.own_lateness_ms
        );
    }
}

impl SenderStatus {
    /// Two lines: the threads and slots, then how late the best sender was
    /// (what the peer sees) and anything that failed.
    pub fn render(&self, o: &mut String) {
        let us = |q: Option<u64>| q.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            o,
            "senders: {} threads ({} real-time, {} pinned)  slots {}  missed {}",
            self.threads, self.realtime_threads, self.pinned_threads, self.slots, self.missed_slots
        );
        if self.witness_requests > 0 {
            let _ = writeln!(
                o,
                "  witness requests {} ({} broadcast)",
                self.witness_requests, self.witness_broadcasts
            );
        }
        let _ = writeln!(
            o,
            "  best sender late p50 {} us  p99 {} us  max {} us  own work max {} us  errors: send {} witness {} lease {}  loop stale {}",
            us(self.lateness_p50_us),
            us(self.lateness_p99_us),
            self.lateness_max_us,
            self.work_max_us,
            self.send_errors,
            self.witness_errors,
            self.lease_errors,
            self.loop_stale
        );
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds. A clock
/// set before 1970 or after 9999 is shown at that end (the formatter would
/// panic on either).
pub fn rfc3339(t: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last)).to_string()
}

/// A duration in milliseconds, to the microsecond, for logs and the status:
/// `2.623`, not the `2.6229999999999998` of `as_secs_f64() * 1000.0`.
pub fn millis(d: Duration) -> f64 {
    // Exact below 2^53 us (285 years); the division rounds once.
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_print_as_written() {
        assert_eq!(millis(Duration::from_micros(2_623)).to_string(), "2.623");
        assert_eq!(millis(Duration::from_nanos(4_475_900)).to_string(), "4.475");
        assert_eq!(millis(Duration::ZERO).to_string(), "0");
        assert_eq!(millis(Duration::from_secs(3)).to_string(), "3000");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_031_256_789);
        assert_eq!(rfc3339(t), "2025-11-25T00:40:56.789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let after = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(after), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn reply_round_trips_and_renders() {
        let s = Status {
            node: "server1".into(),
            state: "MASTER".into(),
            epoch: 3,
            priority: 101,
            nopreempt: true,
            degraded: true,
            provisional: false,
            lease_ms: 48,
            fencing_in_ms: None,
            peer: None,
            links: vec![LinkStatus {
                name: "inside".into(),
                interface: "eth1".into(),
                carrier: true,
                peer_up: false,
                last_seen_ms_ago: Some(1200),
                probes_received: 10,
                probes_lost: 2,
                probes_rejected: 0,
                probes_duplicate: 0,
                lease_drops: 0,
                send_errors: 0,
                witness: None,
                witness_up: None,
                witness_last_seen_ms_ago: None,
            }],
            vips: vec![],
            vips_held: vec!["198.51.100.100/24".into()],
            warnings: vec!["no witness".into()],
            transitions: vec![],
            false_alarms: 0,
            recent_false_alarms: vec![],
            sender: None,
            probes_refused: 0,
            hooks: vec![],
            database: None,
            atlas: None,
            ..Default::default()
        };
        let json = serde_json::to_string(&Reply::Status(Box::new(s.clone()))).unwrap();
        match serde_json::from_str::<Reply>(&json).unwrap() {
            Reply::Status(back) => assert_eq!(*back, s),
            other => panic!("{other:?}"),
        }
        let text = render(&s);
        assert!(text.contains("state MASTER"));
        assert!(text.contains("DEGRADED"));
        assert!(text.contains("inside     eth1     peer DOWN"));
        assert!(text.contains("WARNING: no witness"));
        assert!(!text.contains("false alarms"), "none to show:\n{text}");
        assert!(!text.contains("senders:"), "none to show:\n{text}");
    }

    #[test]
    fn false_alarms_and_senders_render() {
        let s = Status {
            false_alarms: 2,
            recent_false_alarms: vec![FalseAlarmStatus {
                time: "2026-12-03T16:16:26.612Z".into(),
                epoch: 2,
                silence_ms: 7.121,
                held_ms: 6.086,
                peer_lateness_ms: 2.1,
                own_lateness_ms: 2.095,
            }],
            sender: Some(SenderStatus {
                threads: 2,
                realtime_threads: 2,
                pinned_threads: 2,
                slots: 900_000,
                missed_slots: 12,
                lateness_p50_us: Some(14),
                lateness_p99_us: None,
                lateness_max_us: 4_600,
                work_max_us: 2_100,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&s);
        for want in [
            "false alarms: 2 (took over from a holder that was only silent, handed back; no hook ran)",
            "  2026-12-03T16:16:26.612Z  epoch 2  silence 7.121 ms  held 6.086 ms  lateness: holder 2.1 ms, ours 2.095 ms",
            "senders: 2 threads (2 real-time, 2 pinned)  slots 900000  missed 12",
            "  best sender late p50 14 us  p99 - us  max 4600 us  own work max 2100 us  errors: send 0 witness 0 lease 0  loop stale 0",
        ] {
            assert!(text.lines().any(|l| l == want), "{want:?} in:\n{text}");
        }
    }

    #[test]
    fn database_and_atlas_sections_round_trip_and_render() {
        use database::{ErrantStatus, PromotionStatus, ReplicationStatus};
        let s = Status {
            node: "server1".into(),
            state: "BACKUP".into(),
            epoch: 2,
            priority: 101,
            nopreempt: true,
            degraded: false,
            provisional: false,
            lease_ms: 48,
            fencing_in_ms: None,
            peer: None,
            links: vec![],
            vips: vec![],
            vips_held: vec![],
            warnings: vec![],
            transitions: vec![],
            false_alarms: 0,
            recent_false_alarms: vec![],
            sender: None,
            probes_refused: 0,
            hooks: vec![],
            database: Some(DatabaseStatus {
                server: "203.0.113.11:3306".into(),
                wanted: "replica of 203.0.113.12:3306".into(),
                role: "replica".into(),
                up: true,
                read_only: true,
                fit: true,
                fitness: "fit".into(),
                replication: Some(ReplicationStatus {
                    source: "203.0.113.12:3306".into(),
                    io_running: "Yes".into(),
                    sql_running: true,
                    seconds_behind: Some(0),
                    all_relay_applied: true,
                    ..Default::default()
                }),
                executed_gtids: Some("0-2-7".into()),
                semisync_effective: Some(false),
                last_promotion: Some(PromotionStatus {
                    time: "2026-01-01T00:00:00.000Z".into(),
                    took_ms: 17.5,
                    caught_up: true,
                    ..Default::default()
                }),
                errant: Some(ErrantStatus {
                    peer: "203.0.113.12:3306".into(),
                    gtids: "0-1-12".into(),
                    transactions: 2,
                    details: vec![],
                    since: "2026-01-01T00:00:01.000Z".into(),
                    not_undone_because: None,
                }),
                ..Default::default()
            }),
            atlas: Some(AtlasSection {
                admin_address: "127.0.0.1:2345".into(),
                reachable: true,
                in_sync: true,
                wanted_rw: Some("203.0.113.100:3306".into()),
                wanted_ro: vec!["203.0.113.11:3306".into()],
                table: vec!["1 203.0.113.100:3306 rw up".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&Reply::Status(Box::new(s.clone()))).unwrap();
        match serde_json::from_str::<Reply>(&json).unwrap() {
            Reply::Status(back) => assert_eq!(*back, s),
            other => panic!("{other:?}"),
        }
        let text = render(&s);
        for want in [
            "database 203.0.113.11:3306: replica, read-only  [wanted: replica of 203.0.113.12:3306]  fit",
            "replication from 203.0.113.12:3306: IO Yes  SQL Yes  lag 0 s",
            "executed GTIDs: 0-2-7",
            "semi-sync: NOT effective",
            "last promotion: 2026-01-01T00:00:00.000Z  took 17.5 ms",
            "REJOIN BLOCKED since 2026-01-01T00:00:01.000Z: this server has 0-1-12 (2 transaction(s))",
            "ha-agent rejoin --force",
            "atlas 127.0.0.1:2345: reachable, in sync",
            "wanted: rw 203.0.113.100:3306  ro [203.0.113.11:3306]",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // An agent without these sections still parses (older agents).
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("database");
        v.as_object_mut().unwrap().remove("atlas");
        assert!(serde_json::from_value::<Reply>(v).is_ok());
    }
}
