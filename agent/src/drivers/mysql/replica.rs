//! One row of `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS`, read by column
//! name (the names differ per dialect and the column order per version).

use std::collections::BTreeMap;

use super::flavor::{Flavor, ServerKind};
use super::gtid::{GtidError, GtidSet, MariadbGtids, MysqlGtidSet};

/// A replication thread's last error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreadError {
    pub code: u32,
    pub message: String,
}

/// The replica side of a server, as `ha-agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaState {
    /// The source's host:port.
    pub source: String,
    /// The IO thread is connected and receiving (`Yes`).
    pub io_running: bool,
    /// The raw IO state: `Yes`, `No` or `Connecting`.
    pub io_state: String,
    pub sql_running: bool,
    /// The applier's own words (`Slave has read all relay log; ...`).
    pub sql_state: String,
    pub seconds_behind: Option<u64>,
    /// What the IO thread received (MariaDB `Gtid_IO_Pos`, MySQL
    /// `Retrieved_Gtid_Set`); None when replication does not use GTIDs.
    pub received: Option<GtidSet>,
    /// What the applier applied (MariaDB `@@gtid_slave_pos`, which the
    /// driver adds to the row as `Gtid_Slave_Pos`; MySQL `Executed_Gtid_Set`).
    pub executed: GtidSet,
    pub last_io_error: Option<ThreadError>,
    pub last_sql_error: Option<ThreadError>,
    /// Everything received has been applied (by GTID, not by the state text).
    pub all_relay_applied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaParseError {
    #[error("replica status has no column {0} (unexpected server version?)")]
    Missing(&'static str),
    #[error("replica status column {column}: {source}")]
    Gtid {
        column: &'static str,
        source: GtidError,
    },
}

/// Column values by name; NULL is None.
pub type Columns = BTreeMap<String, Option<String>>;

fn get<'c>(cols: &'c Columns, names: &[&'static str]) -> Option<&'c str> {
    names
        .iter()
        .find_map(|n| cols.get(*n))
        .and_then(|v| v.as_deref())
}

fn required<'c>(cols: &'c Columns, names: &[&'static str]) -> Result<&'c str, ReplicaParseError> {
    get(cols, names).ok_or(ReplicaParseError::Missing(names[0]))
}

fn thread_error(cols: &Columns, errno: &'static str, error: &'static str) -> Option<ThreadError> {
    let code: u32 = get(cols, &[errno])?.trim().parse().ok()?;
    (code != 0).then(|| ThreadError {
        code,
        message: get(cols, &[error]).unwrap_or_default().to_string(),
    })
}

impl ReplicaState {
    pub fn from_columns(kind: &ServerKind, cols: &Columns) -> Result<Self, ReplicaParseError> {
        let io_state = required(cols, &["Slave_IO_Running", "Replica_IO_Running"])?.to_string();
        let sql = required(cols, &["Slave_SQL_Running", "Replica_SQL_Running"])?;
        let host = get(cols, &["Master_Host", "Source_Host"]).unwrap_or_default();
        let port = get(cols, &["Master_Port", "Source_Port"]).unwrap_or_default();
        let gtid = |column: &'static str,
                    parse: fn(&str) -> Result<GtidSet, GtidError>|
         -> Result<GtidSet, ReplicaParseError> {
            parse(required(cols, &[column])?)
                .map_err(|source| ReplicaParseError::Gtid { column, source })
        };
        let (received, executed) = match kind.flavor {
            Flavor::Mariadb => {
                let pos = |s: &str| MariadbGtids::parse_position(s).map(GtidSet::Mariadb);
                let using = get(cols, &["Using_Gtid"]).unwrap_or("No");
                let received = if using.eq_ignore_ascii_case("no") {
                    None
                } else {
                    Some(gtid("Gtid_IO_Pos", pos)?)
                };
                (received, gtid("Gtid_Slave_Pos", pos)?)
            }
            Flavor::Mysql => {
                let set = |s: &str| MysqlGtidSet::parse(s).map(GtidSet::Mysql);
                (
                    Some(gtid("Retrieved_Gtid_Set", set)?),
                    gtid("Executed_Gtid_Set", set)?,
                )
            }
        };
        let all_relay_applied = received
            .as_ref()
            .is_some_and(|r| missing(r, &executed).is_empty());
        Ok(ReplicaState {
            // As a SocketAddr prints (an IPv6 host in brackets), to be
            // compared with the configured peer.
            source: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            io_running: io_state.eq_ignore_ascii_case("yes"),
            io_state,
            sql_running: sql.eq_ignore_ascii_case("yes"),
            sql_state: get(
                cols,
                &["Slave_SQL_Running_State", "Replica_SQL_Running_State"],
            )
            .unwrap_or_default()
            .to_string(),
            seconds_behind: get(cols, &["Seconds_Behind_Master", "Seconds_Behind_Source"])
                .and_then(|s| s.trim().parse().ok()),
            received,
            executed,
            last_io_error: thread_error(cols, "Last_IO_Errno", "Last_IO_Error"),
            last_sql_error: thread_error(cols, "Last_SQL_Errno", "Last_SQL_Error"),
            all_relay_applied,
        })
    }
}

/// What was received but not applied: MySQL `received - executed`; MariaDB
/// the received position of each domain the applier has not reached.
pub fn missing(received: &GtidSet, executed: &GtidSet) -> GtidSet {
    match (received, executed) {
        (GtidSet::Mysql(r), GtidSet::Mysql(e)) => GtidSet::Mysql(r.subtract(e)),
        (GtidSet::Mariadb(r), GtidSet::Mariadb(e)) => GtidSet::Mariadb(MariadbGtids::from_gtids(
            super::gtid::errant_positions(r, e)
                .into_iter()
                .map(|x| x.gtid),
        )),
        // Mixed flavors cannot happen on one server; report everything missing.
        (r, _) => r.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(pairs: &[(&str, Option<&str>)]) -> Columns {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    fn mariadb() -> ServerKind {
        ServerKind::detect("10.11.19-MariaDB-log", "").unwrap()
    }

    #[test]
    fn mariadb_row() {
        let c = cols(&[
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("No")),
            ("Master_Host", Some("192.168.1.100")),
            ("Master_Port", Some("3306")),
            ("Seconds_Behind_Master", None),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some("0-1-120")),
            ("Gtid_Slave_Pos", Some("0-1-100")),
            ("Last_IO_Errno", Some("0")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Errno", Some("1062")),
            ("Last_SQL_Error", Some("Duplicate entry")),
            ("Slave_SQL_Running_State", Some("")),
        ]);
        let r = ReplicaState::from_columns(&mariadb(), &c).unwrap();
        assert!(r.io_running && !r.sql_running);
        assert_eq!(r.source, "192.168.1.100:3306");
        assert_eq!(r.seconds_behind, None);
        assert_eq!(r.received.as_ref().unwrap().to_string(), "0-1-120");
        assert!(!r.all_relay_applied);
        assert_eq!(r.last_io_error, None);
        assert_eq!(r.last_sql_error.as_ref().unwrap().code, 1062);
        assert_eq!(
            missing(r.received.as_ref().unwrap(), &r.executed).to_string(),
            "0-1-120"
        );
    }

    #[test]
    fn mysql_replica_words_row() {
        let k = ServerKind::detect("8.0.36", "MySQL Community Server - GPL").unwrap();
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let c = cols(&[
            ("Replica_IO_Running", Some("Connecting")),
            ("Replica_SQL_Running", Some("Yes")),
            ("Source_Host", Some("10.0.0.1")),
            ("Source_Port", Some("3306")),
            ("Seconds_Behind_Source", Some("0")),
            ("Retrieved_Gtid_Set", Some(&format!("{u}:1-10"))),
            ("Executed_Gtid_Set", Some(&format!("{u}:1-10,\n{u}:11"))),
            (
                "Replica_SQL_Running_State",
                Some("Replica has read all relay log; waiting for more updates"),
            ),
        ]);
        let r = ReplicaState::from_columns(&k, &c).unwrap();
        assert!(!r.io_running && r.sql_running);
        assert_eq!(r.io_state, "Connecting");
        assert_eq!(r.seconds_behind, Some(0));
        assert!(r.all_relay_applied);
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        let k = mariadb();
        assert_eq!(
            ReplicaState::from_columns(&k, &cols(&[])),
            Err(ReplicaParseError::Missing("Slave_IO_Running"))
        );
        let c = cols(&[
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("Yes")),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some("0-1-x")),
            ("Gtid_Slave_Pos", Some("0-1-1")),
        ]);
        let e = ReplicaState::from_columns(&k, &c).unwrap_err();
        assert!(e.to_string().contains("Gtid_IO_Pos"), "{e}");
        // Not using GTIDs: nothing received is known.
        let c = cols(&[
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("Yes")),
            ("Using_Gtid", Some("No")),
            ("Gtid_IO_Pos", Some("")),
            ("Gtid_Slave_Pos", Some("")),
        ]);
        let r = ReplicaState::from_columns(&k, &c).unwrap();
        assert_eq!(r.received, None);
        assert!(!r.all_relay_applied);
    }
}
