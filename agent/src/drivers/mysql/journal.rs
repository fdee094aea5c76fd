//! The semi-sync journal: what this server promised about its commits
//! while it was a primary, kept on disk (`<mysql.state_dir>/semisync.json`)
//! so that the decision to undo its unreplicated tail after a crash, made
//! by an agent that has just restarted, rests on a record and not on
//! memory.
//!
//! The order of writes is the whole point: "asynchronous" is written (and
//! synced) before the server may acknowledge a commit without its replica;
//! "effective" only after the server waits for the replica on every
//! commit. A crash in between leaves the more cautious record.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::MysqlError;

pub const FILE_NAME: &str = "semisync.json";

/// What the server was, as far as its commits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalRole {
    /// A primary: the state below says what its acknowledgements meant.
    Primary,
    /// A replica of the peer (its own history was reconciled with the
    /// primary's when it rejoined).
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalSemisync {
    /// Every commit waited for the peer's acknowledgement, from `position` on.
    Effective,
    /// Commits may have been acknowledged without the peer.
    Asynchronous,
    /// Semi-sync is not configured.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The server this was written for: a journal left by another data
    /// directory (a re-cloned server) is ignored.
    pub server_id: u32,
    pub role: JournalRole,
    pub semisync: JournalSemisync,
    /// When this state began (UTC, RFC 3339).
    pub since: String,
    /// With `effective`: the server's binary log position (GTIDs) when it
    /// began; every later commit was acknowledged only by the replica.
    pub position: Option<String>,
}

/// What the controller asks the driver to record (the driver adds the
/// server id, the time and the position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalUpdate {
    PrimaryAsynchronous,
    PrimaryEffective,
    PrimaryOff,
    Replica,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

fn err(path: &Path, message: impl ToString) -> MysqlError {
    MysqlError::Journal {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads the journal; `Ok(None)` when there is none yet.
pub async fn read(state_dir: &Path) -> Result<Option<Journal>, MysqlError> {
    let p = path(state_dir);
    match tokio::fs::read(&p).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| err(&p, format!("unreadable ({e})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&p, e)),
    }
}

/// Replaces the journal atomically and durably: a temporary file, synced,
/// renamed over the old one, then the directory synced.
pub async fn write(state_dir: &Path, j: &Journal) -> Result<(), MysqlError> {
    let dir = state_dir.to_path_buf();
    let p = path(state_dir);
    let text = serde_json::to_vec_pretty(j).map_err(|e| err(&p, e))?;
    let target = p.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(|e| err(&p, e))?
    .map_err(|e| err(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_a_missing_journal_is_none() {
        let dir = std::env::temp_dir().join(format!("ha-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read(&dir).await.unwrap(), None);
        let j = Journal {
            server_id: 1,
            role: JournalRole::Primary,
            semisync: JournalSemisync::Effective,
            since: "2026-01-01T00:00:00.000Z".into(),
            position: Some("0-1-42".into()),
        };
        write(&dir, &j).await.unwrap();
        assert_eq!(read(&dir).await.unwrap(), Some(j.clone()));
        let again = Journal {
            semisync: JournalSemisync::Asynchronous,
            position: None,
            ..j
        };
        write(&dir, &again).await.unwrap();
        assert_eq!(read(&dir).await.unwrap(), Some(again));
        std::fs::write(path(&dir), b"{not json").unwrap();
        assert!(matches!(read(&dir).await, Err(MysqlError::Journal { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
