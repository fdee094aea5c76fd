//! Undoing a MariaDB server's errant transactions before it rejoins.
//!
//! A rejoin that gives up the transactions only this server has must also
//! remove their rows: a replica that differs from its primary stops at the
//! primary's next row with the same key (an auto-increment id, typically).
//! So `mariadb-binlog --flashback` turns the row events after the kept
//! position into their inverse, and the `mariadb` client applies them with
//! `sql_log_bin = 0` (the undo must not become new history). Needs
//! row-based binary logs with full row images (MariaDB's defaults with
//! `binlog_format = ROW`), read from the local files: the agent runs on the
//! database host (with CAP_DAC_READ_SEARCH: the files belong to mysql).
//!
//! What is undone is recorded first, in a directory of its own: the rows
//! as `mariadb-binlog --verbose` decodes them (`rows.txt`, what an operator
//! needs to write them again), the inverse statements applied
//! (`undo.sql`) and a summary. Everything streams: neither tool's output is
//! held in memory, and the whole undo, both tools included, runs within one
//! time bound. The client's password reaches it through an anonymous
//! in-memory file (memfd), so nothing is left on disk if the agent is
//! killed.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::gtid::GtidSet;
use super::session::{Endpoint, Session};

const BINLOG_TOOLS: &[&str] = &["mariadb-binlog", "mysqlbinlog"];
const CLIENTS: &[&str] = &["mariadb", "mysql"];
/// The last bytes of a tool's stderr kept for the error message.
const STDERR_KEEP: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum FlashbackError {
    #[error("cannot read the binary log index {path}: {source} (the agent must run on the database host, with CAP_DAC_READ_SEARCH to read mysql's files); nothing was undone")]
    Index {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the binary log index {0} lists no file; nothing was undone")]
    NoBinlog(PathBuf),
    #[error("none of {0:?} is installed (apt-get install mariadb-client); nothing was undone")]
    NotInstalled(&'static [&'static str]),
    #[error("cannot run {program}: {source}; nothing was undone")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("the local {0} contains a quote, backslash or newline and cannot go into a client option file; nothing was undone")]
    Unquotable(&'static str),
    #[error("cannot pass the client its options in memory: {0}; nothing was undone")]
    Memfd(std::io::Error),
    #[error("cannot keep the record of the undo in {path}: {source}; nothing was undone")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the binary logs failed ({program}, {status}): {stderr}; nothing was undone")]
    Decode {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error("applying the undo failed ({detail}); it may be PARTLY applied: compare this server with the primary, the statements are in {record}")]
    Apply { detail: String, record: PathBuf },
    #[error("the undo did not finish within {bound:?}; it may be PARTLY applied: compare this server with the primary, the statements are in {record}")]
    Timeout { bound: Duration, record: PathBuf },
}

/// Rows changed per table by the undone transactions (as they were
/// written, before the undo reversed them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RowCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// What the undo did, for the report and the operator.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Undone {
    /// Inverse row-event statements applied (`BINLOG '...'`).
    pub statements: usize,
    /// Per `db`.`table`.
    pub rows: BTreeMap<String, RowCounts>,
    /// Where `rows.txt`, `undo.sql` and `summary.txt` are.
    pub record: PathBuf,
    #[serde(serialize_with = "super::report::ms", rename = "took_ms")]
    pub took: Duration,
}

impl Undone {
    pub fn total_rows(&self) -> u64 {
        self.rows
            .values()
            .map(|r| r.inserted + r.updated + r.deleted)
            .sum()
    }
}

impl fmt::Display for Undone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables: Vec<String> = self
            .rows
            .iter()
            .map(|(t, r)| {
                format!(
                    "{t}: {} inserted, {} updated, {} deleted",
                    r.inserted, r.updated, r.deleted
                )
            })
            .collect();
        write!(
            f,
            "their row changes undone ({} row(s){}{}; {} inverse statement(s), mariadb-binlog --flashback, {:.0} ms; recorded in {})",
            self.total_rows(),
            if tables.is_empty() { "" } else { ": " },
            tables.join("; "),
            self.statements,
            super::ms(self.took),
            self.record.display()
        )
    }
}

/// The binary log files listed in the server's index, in order.
pub(crate) async fn binlog_files(s: &mut Session) -> Result<Vec<PathBuf>, super::MysqlError> {
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
    let undo = |source| super::MysqlError::Undo {
        server: s.server.clone(),
        source,
    };
    let text = tokio::fs::read_to_string(&index).await.map_err(|e| {
        undo(FlashbackError::Index {
            path: index.clone(),
            source: e,
        })
    })?;
    let files = parse_index(&text, &datadir);
    if files.is_empty() {
        return Err(undo(FlashbackError::NoBinlog(index)));
    }
    Ok(files)
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
pub(crate) fn client_options(ep: &Endpoint) -> Result<String, FlashbackError> {
    let pw = ep.password.expose();
    for (name, v) in [("user", ep.user.as_str()), ("password", pw)] {
        if v.contains(['\'', '\\', '\n', '\r']) {
            return Err(FlashbackError::Unquotable(name));
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

/// An anonymous in-memory file holding `text`, mode 0600 (the client
/// ignores world-writable option files), closed on exec: the child that
/// needs it inherits it explicitly (see [`spawn`]).
fn memfd(text: &str) -> Result<OwnedFd, FlashbackError> {
    use std::io::Write;
    // SAFETY: a valid NUL-terminated name; the flags are constants.
    let fd = unsafe { libc::memfd_create(c"ha-agent-client-options".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FlashbackError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid descriptor and mode.
    if unsafe { libc::fchmod(owned.as_raw_fd(), 0o600) } != 0 {
        return Err(FlashbackError::Memfd(std::io::Error::last_os_error()));
    }
    let mut f = std::fs::File::from(owned);
    f.write_all(text.as_bytes())
        .map_err(FlashbackError::Memfd)?;
    Ok(OwnedFd::from(f))
}

/// Starts the first of `names` that is installed. `inherit` is a
/// descriptor the child keeps open across exec (it is close-on-exec in the
/// agent, so no other child ever sees it).
fn spawn(
    names: &'static [&'static str],
    args: &[String],
    stdin: bool,
    inherit: Option<&OwnedFd>,
) -> Result<(Child, &'static str), FlashbackError> {
    for &name in names {
        let mut cmd = Command::new(name);
        cmd.args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if stdin { Stdio::null() } else { Stdio::piped() })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(fd) = inherit {
            let raw = fd.as_raw_fd();
            // SAFETY: between fork and exec only fcntl runs, which is
            // async-signal-safe; it clears close-on-exec in the child only.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        match cmd.spawn() {
            Ok(c) => return Ok((c, name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(FlashbackError::Spawn {
                    program: name,
                    source: e,
                })
            }
        }
    }
    Err(FlashbackError::NotInstalled(names))
}

/// The last [`STDERR_KEEP`] bytes a child writes to stderr.
async fn tail(mut r: impl AsyncRead + Unpin) -> String {
    let mut keep: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        keep.extend_from_slice(&buf[..n]);
        if keep.len() > STDERR_KEEP {
            keep.drain(..keep.len() - STDERR_KEEP);
        }
    }
    String::from_utf8_lossy(&keep).trim().to_string()
}

/// Counts `needle` in a stream read in chunks (matches may span chunks).
#[derive(Default)]
struct Counter {
    carry: Vec<u8>,
    count: usize,
}

impl Counter {
    const NEEDLE: &'static [u8] = b"BINLOG '";

    fn feed(&mut self, chunk: &[u8]) {
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(chunk);
        self.count += joined
            .windows(Self::NEEDLE.len())
            .filter(|w| *w == Self::NEEDLE)
            .count();
        let keep = Self::NEEDLE.len() - 1;
        let from = joined.len().saturating_sub(keep);
        self.carry = joined[from..].to_vec();
    }
}

/// `BINLOG '` statements in mariadb-binlog's output: one per row event group.
pub fn count_row_statements(sql: &[u8]) -> usize {
    let mut c = Counter::default();
    c.feed(sql);
    c.count
}

/// Adds one line of `mariadb-binlog --verbose` output to the row counts:
/// `### INSERT INTO `db`.`t``, `### UPDATE `db`.`t``, `### DELETE FROM `db`.`t``.
pub fn count_row_line(line: &str, rows: &mut BTreeMap<String, RowCounts>) {
    let Some(rest) = line.strip_prefix("### ") else {
        return;
    };
    let (table, field): (&str, fn(&mut RowCounts) -> &mut u64) =
        if let Some(t) = rest.strip_prefix("INSERT INTO ") {
            (t, |r| &mut r.inserted)
        } else if let Some(t) = rest.strip_prefix("UPDATE ") {
            (t, |r| &mut r.updated)
        } else if let Some(t) = rest.strip_prefix("DELETE FROM ") {
            (t, |r| &mut r.deleted)
        } else {
            return;
        };
    let n = field(rows.entry(table.trim().to_string()).or_default());
    *n = n.saturating_add(1);
}

async fn create_private(path: &Path) -> Result<tokio::fs::File, FlashbackError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|source| FlashbackError::Record {
            path: path.to_path_buf(),
            source,
        })
}

/// A new 0700 directory for this undo's record under `base`.
fn record_dir(base: &Path, what: &str) -> Result<PathBuf, FlashbackError> {
    use std::os::unix::fs::DirBuilderExt;
    let time = crate::operator::status::rfc3339(std::time::SystemTime::now()).replace(':', "-");
    let name: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let dir = base.join(format!("undone-{time}-{name}"));
    let record = |source| FlashbackError::Record {
        path: dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(record)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(record)?;
    Ok(dir)
}

fn binlog_args(flashback: bool, keep: &GtidSet, files: &[PathBuf]) -> Vec<String> {
    let mut args = if flashback {
        vec!["--flashback".to_string()]
    } else {
        vec![
            "--verbose".to_string(),
            "--base64-output=decode-rows".to_string(),
        ]
    };
    let keep = keep.to_string();
    if !keep.is_empty() {
        args.push(format!("--start-position={keep}"));
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    args
}

async fn finished(
    child: &mut Child,
    program: &'static str,
    stderr: String,
) -> Result<(), (String, String)> {
    match child.wait().await {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err((st.to_string(), stderr)),
        Err(e) => Err((format!("{program}: {e}"), stderr)),
    }
}

/// Pass 1: the rows as they were written, decoded, into `rows.txt`; counted.
async fn decode_rows(
    files: &[PathBuf],
    keep: &GtidSet,
    dir: &Path,
) -> Result<BTreeMap<String, RowCounts>, FlashbackError> {
    let (mut child, program) = spawn(BINLOG_TOOLS, &binlog_args(false, keep, files), false, None)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = tokio::spawn(tail(child.stderr.take().expect("stderr is piped")));
    let path = dir.join("rows.txt");
    let mut out = create_private(&path).await?;
    let mut rows = BTreeMap::new();
    let mut lines = BufReader::new(stdout).lines();
    let record = |source| FlashbackError::Record {
        path: path.clone(),
        source,
    };
    while let Some(line) = lines.next_line().await.map_err(record)? {
        count_row_line(&line, &mut rows);
        out.write_all(line.as_bytes()).await.map_err(record)?;
        out.write_all(b"\n").await.map_err(record)?;
    }
    out.sync_all().await.map_err(record)?;
    let stderr = stderr.await.unwrap_or_default();
    finished(&mut child, program, stderr)
        .await
        .map_err(|(status, stderr)| FlashbackError::Decode {
            program,
            status,
            stderr,
        })?;
    Ok(rows)
}

/// Copies `from` into both `to` and the record file, counting statements.
async fn tee(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    record: &mut tokio::fs::File,
) -> Result<usize, String> {
    let mut counter = Counter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading mariadb-binlog's output: {e}"))?;
        if n == 0 {
            break;
        }
        counter.feed(&buf[..n]);
        record
            .write_all(&buf[..n])
            .await
            .map_err(|e| format!("recording undo.sql: {e}"))?;
        to.write_all(&buf[..n])
            .await
            .map_err(|e| format!("writing to the client: {e}"))?;
    }
    record
        .sync_all()
        .await
        .map_err(|e| format!("recording undo.sql: {e}"))?;
    // Closing the client's stdin ends its input.
    to.shutdown()
        .await
        .map_err(|e| format!("closing the client's input: {e}"))?;
    Ok(counter.count)
}

/// Pass 2: the inverse statements, streamed from mariadb-binlog into both
/// `undo.sql` and the client.
async fn apply_inverse(
    files: &[PathBuf],
    keep: &GtidSet,
    ep: &Endpoint,
    dir: &Path,
) -> Result<usize, FlashbackError> {
    let opts = memfd(&client_options(ep)?)?;
    let mut path = dir.join("undo.sql");
    let mut record = create_private(&path).await?;
    let (mut binlog, bprog) = spawn(BINLOG_TOOLS, &binlog_args(true, keep, files), false, None)?;
    let client_args = vec![
        format!("--defaults-extra-file=/dev/fd/{}", opts.as_raw_fd()),
        "--init-command=SET SESSION sql_log_bin = 0".into(),
        "--batch".into(),
    ];
    let (mut client, cprog) = spawn(CLIENTS, &client_args, true, Some(&opts))?;
    // The client has its copy of the descriptor now.
    drop(opts);
    let b_err = tokio::spawn(tail(binlog.stderr.take().expect("stderr is piped")));
    let c_err = tokio::spawn(tail(client.stderr.take().expect("stderr is piped")));
    let copied = tee(
        binlog.stdout.take().expect("stdout is piped"),
        client.stdin.take().expect("stdin is piped"),
        &mut record,
    )
    .await;
    let b = finished(&mut binlog, bprog, b_err.await.unwrap_or_default()).await;
    let c = finished(&mut client, cprog, c_err.await.unwrap_or_default()).await;
    path.pop();
    let apply = |detail: String| FlashbackError::Apply {
        detail,
        record: path.clone(),
    };
    match (copied, b, c) {
        (Ok(n), Ok(()), Ok(())) => Ok(n),
        (_, Err((status, stderr)), _) => Err(apply(format!("{bprog} {status}: {stderr}"))),
        (_, _, Err((status, stderr))) => Err(apply(format!("{cprog} {status}: {stderr}"))),
        (Err(e), ..) => Err(apply(e)),
    }
}

/// Undoes every transaction in the local binary logs after `keep` (the
/// errant ones), recording them first under `record_base`, all within
/// `bound`.
pub(crate) async fn undo_after(
    s: &mut Session,
    ep: &Endpoint,
    keep: &GtidSet,
    errant: &GtidSet,
    record_base: &Path,
    bound: Duration,
) -> Result<Undone, super::MysqlError> {
    let start = Instant::now();
    let server = s.server.clone();
    let undo = |source| super::MysqlError::Undo {
        server: server.clone(),
        source,
    };
    let files = binlog_files(s).await?;
    let dir = record_dir(record_base, &errant.to_string()).map_err(undo)?;
    let work = async {
        let rows = decode_rows(&files, keep, &dir).await?;
        let statements = apply_inverse(&files, keep, ep, &dir).await?;
        Ok::<_, FlashbackError>((rows, statements))
    };
    let (rows, statements) = match tokio::time::timeout(bound, work).await {
        Ok(r) => r.map_err(undo)?,
        Err(_) => {
            return Err(undo(FlashbackError::Timeout {
                bound,
                record: dir.clone(),
            }))
        }
    };
    let done = Undone {
        statements,
        rows,
        record: dir.clone(),
        took: start.elapsed(),
    };
    let summary = format!(
        "server: {server}\nerrant transactions undone: {errant}\nkept position: {keep}\n{done}\n\nrows.txt: the rows as they were written (mariadb-binlog --verbose)\nundo.sql: the inverse statements applied (mariadb-binlog --flashback, with sql_log_bin = 0)\n"
    );
    if let Err(e) = tokio::fs::write(dir.join("summary.txt"), summary).await {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot write the undo's summary");
    }
    Ok(done)
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
            assert!(matches!(e, FlashbackError::Unquotable("password")), "{e}");
        }
    }

    #[test]
    fn counts_row_event_statements_across_chunks() {
        let out = b"BINLOG '\nAAA\n'/*!*/;\nBINLOG '\nBBB\n'/*!*/;\nCOMMIT";
        assert_eq!(count_row_statements(out), 2);
        assert_eq!(count_row_statements(b""), 0);
        // Split inside a needle, at every position.
        for cut in 0..out.len() {
            let mut c = Counter::default();
            c.feed(&out[..cut]);
            c.feed(&out[cut..]);
            assert_eq!(c.count, 2, "cut at {cut}");
        }
    }

    #[test]
    fn counts_decoded_rows_per_table() {
        let text = "### INSERT INTO `app`.`t`\n### SET\n###   @1=5\n### INSERT INTO `app`.`t`\n\
                    ### UPDATE `app`.`u`\n### WHERE\n### DELETE FROM `app`.`t`\n# at 400\nBEGIN\n";
        let mut rows = BTreeMap::new();
        for l in text.lines() {
            count_row_line(l, &mut rows);
        }
        assert_eq!(
            rows["`app`.`t`"],
            RowCounts {
                inserted: 2,
                updated: 0,
                deleted: 1
            }
        );
        assert_eq!(rows["`app`.`u`"].updated, 1);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn options_live_in_memory_with_owner_only_access() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let fd = memfd("[client]\nuser='x'\n").unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mut text = String::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "[client]\nuser='x'\n");
        // Closed on exec unless a child inherits it explicitly.
        // SAFETY: a valid descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
