//! Undoing a MariaDB server's errant transactions before a forced rejoin.
//!
//! A forced rejoin gives up the transactions only this server has. Leaving
//! their rows in its tables would make it a replica that differs from its
//! primary, and the next row the primary writes with the same key (an
//! auto-increment id, typically) would stop replication with a duplicate
//! key. So `mariadb-binlog --flashback` turns the row events after the kept
//! position into their inverse, and the `mariadb` client applies them with
//! `sql_log_bin = 0` (the undo must not become new history). Needs
//! row-based binary logs with full row images (MariaDB's defaults with
//! `binlog_format = ROW`), read from the local files: the agent runs on the
//! database host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::error::MysqlError;
use super::gtid::GtidSet;
use super::session::{Endpoint, Session};

/// What the undo did, for the report and the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Undone {
    /// Row-event statements applied (`BINLOG '...'`).
    pub statements: usize,
    pub took: Duration,
}

impl std::fmt::Display for Undone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "their row changes undone ({} inverse row-event statement(s), mariadb-binlog --flashback, {:.0} ms)",
            self.statements,
            self.took.as_secs_f64() * 1000.0
        )
    }
}

fn failed(server: &str, what: impl std::fmt::Display) -> MysqlError {
    MysqlError::Unreadable {
        server: server.to_string(),
        what: "errant transactions' undo (forced rejoin)",
        message: format!(
            "{what}; nothing was undone or discarded: undo them by hand or re-clone this server"
        ),
    }
}

/// The binary log files listed in the server's index, in order.
pub(crate) async fn binlog_files(s: &mut Session) -> Result<Vec<PathBuf>, MysqlError> {
    let server = s.server.clone();
    let row = s
        .row("locate binary logs", &s.kind().binlog_location())
        .await?
        .unwrap_or_default();
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let (index, datadir) = (PathBuf::from(get(0)), PathBuf::from(get(1)));
    let index = if index.is_relative() {
        datadir.join(index)
    } else {
        index
    };
    let text = tokio::fs::read_to_string(&index).await.map_err(|e| {
        failed(
            &server,
            format!("cannot read the binary log index {}: {e} (the agent must run on the database host)", index.display()),
        )
    })?;
    Ok(parse_index(&text, &datadir))
}

/// One file per line, relative ones against the data directory.
pub fn parse_index(text: &str, datadir: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = PathBuf::from(l);
            if p.is_relative() {
                datadir.join(p)
            } else {
                p
            }
        })
        .collect()
}

/// `[client]` options for the local server: the password stays off the
/// command line. Values are single-quoted; refuse what would break that.
pub(crate) fn client_options(ep: &Endpoint) -> Result<String, String> {
    let pw = ep.password.expose();
    for (name, v) in [("user", ep.user.as_str()), ("password", pw)] {
        if v.contains(['\'', '\\', '\n', '\r']) {
            return Err(format!(
                "the local {name} contains a quote, backslash or newline and cannot go into a client option file"
            ));
        }
    }
    Ok(format!(
        "[client]\nhost='{}'\nport={}\nuser='{}'\npassword='{}'\n",
        ep.address.ip(),
        ep.address.port(),
        ep.user,
        pw
    ))
}

/// Runs `program` (the first of `names` found), feeding `input`, within `bound`.
async fn run(
    names: &[&str],
    args: &[String],
    input: Option<&[u8]>,
    bound: Duration,
) -> Result<std::process::Output, String> {
    for name in names {
        let mut cmd = Command::new(name);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {name}: {e}")),
        };
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(data)
                .await
                .map_err(|e| format!("{name}: writing its input: {e}"))?;
        }
        return match tokio::time::timeout(bound, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(out),
            Ok(Ok(out)) => Err(format!(
                "{name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("{name}: {e}")),
            Err(_) => Err(format!("{name} did not finish within {bound:?}")),
        };
    }
    Err(format!(
        "none of {names:?} is installed (MariaDB client tools)"
    ))
}

/// Undoes every transaction in the local binary logs after `keep`.
pub(crate) async fn undo_after(
    s: &mut Session,
    ep: &Endpoint,
    keep: &GtidSet,
    bound: Duration,
) -> Result<Undone, MysqlError> {
    let start = Instant::now();
    let server = s.server.clone();
    let files = binlog_files(s).await?;
    if files.is_empty() {
        return Err(failed(&server, "the binary log index lists no file"));
    }
    let mut args = vec!["--flashback".to_string()];
    let keep = keep.to_string();
    if !keep.is_empty() {
        args.push(format!("--start-position={keep}"));
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    let inverse = run(&["mariadb-binlog", "mysqlbinlog"], &args, None, bound)
        .await
        .map_err(|e| failed(&server, e))?
        .stdout;
    let statements = count_row_statements(&inverse);
    if statements > 0 {
        let dir = tempfile_dir().map_err(|e| failed(&server, e))?;
        let opts = dir.join("client.cnf");
        let text = client_options(ep).map_err(|e| failed(&server, e))?;
        let written = write_private(&opts, &text).await;
        let applied = match written {
            Ok(()) => {
                run(
                    &["mariadb", "mysql"],
                    &[
                        format!("--defaults-extra-file={}", opts.display()),
                        "--init-command=SET SESSION sql_log_bin = 0".into(),
                        "--batch".into(),
                    ],
                    Some(&inverse),
                    bound,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        applied.map_err(|e| failed(&server, e))?;
    }
    Ok(Undone {
        statements,
        took: start.elapsed(),
    })
}

/// `BINLOG '` statements in mariadb-binlog's output: one per row event group.
pub fn count_row_statements(sql: &[u8]) -> usize {
    sql.windows(8).filter(|w| *w == b"BINLOG '").count()
}

/// A fresh 0700 directory under the runtime or temp directory.
fn tempfile_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness for a temporary name: {e}"))?;
    let nonce = u64::from_le_bytes(b);
    let dir = base.join(format!(
        "ha-agent-flashback-{}-{nonce:016x}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

async fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    let text = text.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mysql::credentials::Secret;

    #[test]
    fn index_lines_resolve_against_the_data_directory() {
        let files = parse_index(
            "./bin.000001\n/abs/bin.000002\n\n",
            Path::new("/var/lib/mysql/"),
        );
        assert_eq!(
            files,
            vec![
                PathBuf::from("/var/lib/mysql/./bin.000001"),
                PathBuf::from("/abs/bin.000002")
            ]
        );
    }

    #[test]
    fn client_options_quote_and_refuse_what_they_cannot_quote() {
        let ep = |pw: &str| Endpoint {
            address: "203.0.113.12:3306".parse().unwrap(),
            user: "ha_agent".into(),
            password: Secret::new(pw),
        };
        let text = client_options(&ep("p#w;x")).unwrap();
        assert!(text.contains("password='p#w;x'\n"), "{text}");
        assert!(text.contains("host='203.0.113.12'\nport=3306\n"), "{text}");
        for bad in ["it's", "back\\slash", "new\nline"] {
            let e = client_options(&ep(bad)).unwrap_err();
            assert!(e.contains("password"), "{e}");
        }
    }

    #[test]
    fn counts_row_event_statements() {
        let out = b"BINLOG '\nAAA\n'/*!*/;\nBINLOG '\nBBB\n'/*!*/;\nCOMMIT";
        assert_eq!(count_row_statements(out), 2);
        assert_eq!(count_row_statements(b""), 0);
    }
}
