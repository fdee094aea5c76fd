//! Atlas's backend table as `SELECT * FROM backends` shows it, and the parser
//! that turns the reply's text rows into typed [`Backend`]s.
//!
//! A row that does not parse is an error, never skipped: the reconciler
//! removes backends by their index, so acting on a table it only half
//! understood could remove the wrong one.

use std::fmt;
use std::net::SocketAddrV4;

use serde::Serialize;

/// The columns Atlas sends, in this order.
pub const COLUMNS: [&str; 4] = ["backend_ndx", "address", "state", "type"];

/// A backend's health as Atlas's checker last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// New or re-onlined; the checker has not probed it yet (it does every 4 s).
    Unknown,
    Up,
    Down,
    /// Set by `SET OFFLINE n`: never used, never probed.
    Offline,
}

/// What Atlas sends to a backend: writes (`rw`) or reads (`ro`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Unknown,
    Rw,
    Ro,
}

/// One row of `SELECT * FROM backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// 1-based position; `REMOVE BACKEND n` and `SET OFFLINE n` take it.
    pub ndx: u32,
    pub address: SocketAddrV4,
    pub state: State,
    pub kind: Kind,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
            State::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Unknown, State::Up, State::Down, State::Offline]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unknown => "unknown",
            Kind::Rw => "rw",
            Kind::Ro => "ro",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Unknown, Kind::Rw, Kind::Ro]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.ndx, self.address, self.kind, self.state
        )
    }
}

/// A table in one line, for logs and error messages: `[1 10.0.0.1:3306 rw up, ...]`.
pub fn describe(table: &[Backend]) -> String {
    let rows: Vec<String> = table.iter().map(|b| b.to_string()).collect();
    format!("[{}]", rows.join(", "))
}

/// The rw and the ro addresses, each in table order (what `SAVE CONFIG`
/// writes to `proxy-backend-addresses` and `proxy-read-only-backend-addresses`).
pub fn addresses(table: &[Backend]) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
    let of = |k: Kind| {
        table
            .iter()
            .filter(|b| b.kind == k)
            .map(|b| b.address)
            .collect()
    };
    (of(Kind::Rw), of(Kind::Ro))
}

/// Longest value quoted whole in an error message; longer ones are cut.
const PREVIEW_CHARS: usize = 48;

/// `value` quoted for an error message or a log line, cut to
/// [`PREVIEW_CHARS`] characters with its full length in bytes: a reply can
/// carry a megabyte-long value, which must not end up in every log line and
/// in the status.
pub fn preview(value: &str) -> String {
    match value.char_indices().nth(PREVIEW_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// Column names as an error shows them: at most 8, each cut by [`preview`].
pub fn preview_columns(columns: &[String]) -> Vec<String> {
    const SHOWN: usize = 8;
    let mut v: Vec<String> = columns.iter().take(SHOWN).map(|c| preview(c)).collect();
    if columns.len() > SHOWN {
        v.push(format!("... ({} columns)", columns.len()));
    }
    v
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `found` is already cut for display ([`preview_columns`]).
    #[error(
        "the reply has columns [{}], expected {COLUMNS:?} (is this an Atlas 2.x admin port?)",
        .found.join(", ")
    )]
    Columns { found: Vec<String> },
    #[error("row {row}: {detail}")]
    Row { row: usize, detail: String },
}

/// Parses the reply to `SELECT * FROM backends` (column names and text rows).
pub fn parse_backends(
    columns: &[String],
    rows: &[Vec<Option<String>>],
) -> Result<Vec<Backend>, TableError> {
    if columns.len() != COLUMNS.len() || columns.iter().zip(COLUMNS).any(|(c, e)| c != e) {
        return Err(TableError::Columns {
            found: preview_columns(columns),
        });
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            parse_row(i + 1, row).map_err(|detail| TableError::Row { row: i + 1, detail })
        })
        .collect()
}

fn parse_row(position: usize, row: &[Option<String>]) -> Result<Backend, String> {
    if row.len() != COLUMNS.len() {
        return Err(format!("{} values, expected {}", row.len(), COLUMNS.len()));
    }
    let field = |i: usize| {
        row[i]
            .as_deref()
            .ok_or_else(|| format!("{} is NULL", COLUMNS[i]))
    };
    let ndx_text = field(0)?;
    let ndx: u32 = ndx_text
        .parse()
        .map_err(|_| format!("backend_ndx {} is not a number", preview(ndx_text)))?;
    // REMOVE BACKEND n removes the n-th entry: if Atlas numbered rows any
    // other way, removing "by ndx" could hit the wrong backend.
    if ndx as usize != position {
        return Err(format!(
            "backend_ndx {ndx} where {position} was expected (rows must be numbered 1, 2, ...)"
        ));
    }
    let addr = field(1)?;
    let address: SocketAddrV4 = addr.parse().map_err(|_| {
        format!(
            "address {} is not IPv4:port (configure Atlas's backends by IP address, not host name)",
            preview(addr)
        )
    })?;
    let state_text = field(2)?;
    let state =
        State::parse(state_text).ok_or_else(|| format!("unknown state {}", preview(state_text)))?;
    let kind_text = field(3)?;
    let kind =
        Kind::parse(kind_text).ok_or_else(|| format!("unknown type {}", preview(kind_text)))?;
    Ok(Backend {
        ndx,
        address,
        state,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        COLUMNS.iter().map(|s| s.to_string()).collect()
    }

    fn row(v: [&str; 4]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn parses_a_seed_table() {
        let rows = vec![
            row(["1", "192.168.1.150:3306", "up", "rw"]),
            row(["2", "192.168.1.101:3306", "unknown", "ro"]),
        ];
        let t = parse_backends(&cols(), &rows).unwrap();
        assert_eq!(
            t[1],
            Backend {
                ndx: 2,
                address: "192.168.1.101:3306".parse().unwrap(),
                state: State::Unknown,
                kind: Kind::Ro
            }
        );
        assert_eq!(
            describe(&t),
            "[1 192.168.1.150:3306 rw up, 2 192.168.1.101:3306 ro unknown]"
        );
        let (rw, ro) = addresses(&t);
        assert_eq!(rw, vec!["192.168.1.150:3306".parse().unwrap()]);
        assert_eq!(ro, vec!["192.168.1.101:3306".parse().unwrap()]);
    }

    #[test]
    fn empty_table_is_fine() {
        assert_eq!(parse_backends(&cols(), &[]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_rows_are_rejected_with_the_row_and_reason() {
        let cases: Vec<(Vec<Option<String>>, &str)> = vec![
            (row(["x", "10.0.0.1:3306", "up", "rw"]), "not a number"),
            (
                row(["2", "10.0.0.1:3306", "up", "rw"]),
                "where 1 was expected",
            ),
            (row(["1", "db1:3306", "up", "rw"]), "not IPv4:port"),
            (row(["1", "10.0.0.1", "up", "rw"]), "not IPv4:port"),
            (row(["1", "10.0.0.1:3306", "sleepy", "rw"]), "unknown state"),
            (row(["1", "10.0.0.1:3306", "up", "wo"]), "unknown type"),
            (
                vec![Some("1".into()), None, Some("up".into()), Some("rw".into())],
                "address is NULL",
            ),
            (vec![Some("1".into())], "1 values"),
        ];
        for (r, want) in cases {
            let err = parse_backends(&cols(), std::slice::from_ref(&r)).unwrap_err();
            let TableError::Row { row: 1, detail } = &err else {
                panic!("{r:?}: {err}")
            };
            assert!(detail.contains(want), "{r:?}: {detail}");
        }
    }

    #[test]
    fn huge_values_are_cut_in_error_messages() {
        // A 3 MiB address (what a hostile or broken server can send) must not
        // be copied into the error, the log line and the status.
        let huge = "x".repeat(3 << 20);
        let r = vec![
            Some("1".into()),
            Some(huge),
            Some("up".into()),
            Some("rw".into()),
        ];
        let err = parse_backends(&cols(), &[r]).unwrap_err().to_string();
        assert!(err.len() < 300, "{} bytes: {}", err.len(), &err[..300]);
        assert!(err.contains("(3145728 bytes)"), "{err}");
        let many: Vec<String> = (0..64)
            .map(|i| format!("{i}{}", "c".repeat(1 << 16)))
            .collect();
        let err = parse_backends(&many, &[]).unwrap_err().to_string();
        assert!(err.len() < 1000, "{} bytes", err.len());
        assert!(err.contains("(64 columns)"), "{err}");
        assert_eq!(preview("up"), "\"up\"");
        // Cut on a character boundary.
        assert!(preview(&"é".repeat(100)).ends_with("... (200 bytes)"));
    }

    #[test]
    fn wrong_columns_are_rejected() {
        let err = parse_backends(&["status".to_string()], &[]).unwrap_err();
        assert!(matches!(err, TableError::Columns { .. }), "{err}");
    }
}
