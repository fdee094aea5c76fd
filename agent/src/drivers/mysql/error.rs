//! What can go wrong talking to MySQL: what failed, on which server, and
//! what to do about it. No message ever holds a password.

use std::path::PathBuf;
use std::time::Duration;

use super::credentials::PasswordFileError;
use super::flashback::FlashbackError;
use super::flavor::{Flavor, FlavorError, SqlValueError};
use super::gtid::{Errant, GtidSet};

#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    #[error("[mysql] replication_password_file: {0}")]
    ReplicationPassword(SqlValueError),
    #[error("cannot connect to MySQL at {server} as {user}: {message}; check that the server runs and listens there, and the account and its password file")]
    Connect {
        server: String,
        user: String,
        message: String,
    },
    #[error("MySQL at {server}: {step} failed: {}{message}", code.map(|c| format!("error {c}: ")).unwrap_or_default())]
    Statement {
        server: String,
        step: String,
        code: Option<u16>,
        message: String,
    },
    #[error("MySQL at {server}: {step} did not finish within {timeout:?}; the server may be hung or blocked by a lock (look at SHOW PROCESSLIST); the connection was dropped")]
    Timeout {
        server: String,
        step: String,
        timeout: Duration,
    },
    #[error("MySQL at {server}: {source}")]
    Flavor { server: String, source: FlavorError },
    #[error("MySQL at {server}: {what} is unreadable: {message}")]
    Unreadable {
        server: String,
        what: &'static str,
        message: String,
    },
    #[error("MySQL at {server} is NOT promoted: it received {missing} from the old primary but has not applied it after {waited:?}{}. With catchup_policy = \"stay_read_only\" it stays read-only; promote again to finish once the applier has caught up, or fix the applier (SHOW SLAVE STATUS), or set catchup_policy = \"promote\" to give those transactions up", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NotCaughtUp {
        server: String,
        waited: Duration,
        missing: GtidSet,
        /// Why the applier did not finish (its error, or why it was not started).
        reason: Option<String>,
    },
    #[error("MySQL at {server} replicates without GTIDs: what it received cannot be checked, so it is NOT promoted (catchup_policy = \"stay_read_only\"); configure GTID replication (MASTER_USE_GTID / MASTER_AUTO_POSITION)")]
    NoGtidReplication { server: String },
    #[error("MySQL at {server} was fenced while being promoted: promotion abandoned, it stays read-only")]
    FencedDuringPromotion { server: String },
    #[error("MySQL at {server} is NOT promoted: the old primary {peer} did not hand over its last transactions ({handoff}), and it last said that semi-sync was not effective, so it may have acknowledged writes this server lacks (durability = \"strict\"). Bring the old primary back, or run `ha-agent promote --force` to accept the loss")]
    NotDrained {
        server: String,
        peer: String,
        handoff: String,
    },
    #[error("MySQL at {server}: semi-sync: {message}")]
    Semisync { server: String, message: String },
    #[error("MySQL at {server}: {source}")]
    Undo {
        server: String,
        source: FlashbackError,
    },
    #[error("the semi-sync journal {path}: {message}; check the directory (mysql.state_dir, else node.state_dir) exists and is writable by the agent")]
    Journal { path: PathBuf, message: String },
}

impl MysqlError {
    /// The server's error code, when the server refused a statement.
    pub fn code(&self) -> Option<u16> {
        match self {
            MysqlError::Statement { code, .. } => *code,
            _ => None,
        }
    }

    /// The statement did not finish in time: its connection is unusable.
    pub fn is_timeout(&self) -> bool {
        matches!(self, MysqlError::Timeout { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    #[error("MySQL at {server} will not replicate from {peer}: it holds {errant}, which {peer} does not have (written while this server was cut off?). Replicating would hide or lose them; save them (mysqlbinlog) and rejoin with force to give them up, or re-clone this server")]
    Errant {
        server: String,
        peer: String,
        errant: Errant,
    },
    #[error("MySQL at {server} will not undo its errant transactions automatically: they are now {now}, not the {expected} judged unacknowledged; retrying the decision")]
    ErrantChanged {
        server: String,
        expected: GtidSet,
        now: GtidSet,
    },
    #[error("{peer} is read-only, so it is not (yet) the primary: MySQL at {server} will not replicate from it; retry once it is promoted")]
    PeerNotPrimary { server: String, peer: String },
    #[error("{peer} has server_id {server_id}, like MySQL at {server}: peer_address points back at this server, or the two servers share a server_id")]
    SameServer {
        server: String,
        peer: String,
        server_id: u32,
    },
    #[error("MySQL at {server} is {local} but {peer} is {remote}: replication between flavors is not supported")]
    FlavorMismatch {
        server: String,
        peer: String,
        local: Flavor,
        remote: Flavor,
    },
    #[error("MySQL at {server}: replication from {peer} stopped with {thread} error {code}: {message}{}", if *code == 1236 { " (the peer cannot serve this server's GTID position: the two histories diverged or the peer purged its binary logs; re-clone this server)" } else { "" })]
    Replication {
        server: String,
        peer: String,
        thread: &'static str,
        code: u32,
        message: String,
    },
    #[error("the replication password cannot be used: {0}")]
    Value(SqlValueError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
}

impl RejoinError {
    /// A statement timed out: the connection is unusable.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RejoinError::Mysql(e) if e.is_timeout())
    }
}
