//! A minimal MySQL-protocol client that speaks exactly what Atlas's admin
//! port accepts.
//!
//! Why not `mysql_async` (which the MySQL driver uses for real servers)? On
//! connect it runs `SELECT @@max_allowed_packet, @@wait_timeout`, and its pool
//! pings with COM_PING; Atlas's admin port answers both with an error, so a
//! stock connection fails. It can be tamed with options (fixed
//! max_allowed_packet and wait_timeout, no socket preference, no pool), but
//! then correctness rests on a dependency's internals staying tame across
//! upgrades. The admin port speaks a tiny, fixed subset of the protocol, and
//! the few hundred lines below do exactly that subset, nothing else:
//!
//! - handshake v10 (Atlas sends `5.0.99-agent-admin`, charset 8, capabilities
//!   PROTOCOL_41 | SECURE_CONNECTION | LONG_PASSWORD, a 20-byte scramble);
//! - a protocol-4.1 handshake response with exactly those three capabilities
//!   (no CONNECT_WITH_DB, no plugin auth, no SSL) and the
//!   `mysql_native_password` scramble;
//! - COM_QUERY only (never COM_PING, never a session-variable query), text
//!   result sets (column definitions, EOF, rows with NULLs, EOF), OK and ERR
//!   packets; COM_QUIT to leave;
//! - a timeout on connect + login, and on every query.
//!
//! The reconciler opens one short-lived connection per reconciliation, so
//! there is no pool, no keep-alive and no reconnect logic here. Nothing in a
//! reply can make this code panic or hold much memory: every length is
//! checked, packet sequence numbers are verified, and a whole reply is
//! capped at [`MAX_REPLY`] bytes (values and their bookkeeping included).
//! Text must be UTF-8 (Atlas answers ASCII): invalid bytes are an error,
//! never expanded into replacement characters; the text of an ERR packet
//! and the server version are cut to a few hundred bytes.
//!
//! Before the password scramble is sent, the connection's server side must
//! belong to `admin_uid` (see [`super::owner`]): while Atlas is down, any
//! local user can bind its admin port, and a scramble it collects can be
//! attacked offline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::owner::{self, Owner};
use super::secret::Password;
use super::table::{parse_backends, Backend, TableError};

pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
/// What the client announces: exactly what Atlas offers.
const CAPABILITIES: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD;
const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
/// latin1, what Atlas announces; every admin command is ASCII.
const CHARSET_LATIN1: u8 = 8;
/// The admin port's replies are a few hundred bytes; anything this big is not Atlas.
const MAX_PAYLOAD: usize = 1 << 20;
/// The most one reply may cost: its packets plus [`VALUE_COST`] per value.
pub const MAX_REPLY: usize = 1 << 20;
/// What a value costs besides its bytes (its `Option<String>` and allocation).
const VALUE_COST: usize = 32;
const MAX_COLUMNS: u64 = 64;
const MAX_ROWS: usize = 10_000;
/// The longest ERR message or server version kept (the rest is cut).
const MAX_TEXT: usize = 512;

pub const SELECT_BACKENDS: &str = "SELECT * FROM backends";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect + handshake + login.
    pub connect: Duration,
    /// Sending one query and reading its whole reply.
    pub query: Duration,
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error {code} ({sqlstate}): {message}")]
pub struct ServerError {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the Atlas admin port {addr}: {source} (is Atlas running with admin-address = {addr}?)")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("Atlas admin port {addr}: no complete answer within {} ms during {during}", .timeout.as_millis())]
    Timeout {
        addr: SocketAddr,
        during: String,
        timeout: Duration,
    },
    #[error("Atlas admin port {addr} closed the connection during {during}")]
    Closed { addr: SocketAddr, during: String },
    #[error("Atlas admin port {addr}: connection failed during {during}: {source}")]
    Io {
        addr: SocketAddr,
        during: String,
        source: io::Error,
    },
    #[error("Atlas admin port {addr}: malformed reply during {during}: {detail} (is {addr} really Atlas's admin port?)")]
    Protocol {
        addr: SocketAddr,
        during: String,
        detail: String,
    },
    #[error("Atlas admin port {addr} refused the login as {user:?}: {error} (check [atlas] user and password_file against admin-username and admin-password in Atlas's .cnf)")]
    Login {
        addr: SocketAddr,
        user: String,
        error: ServerError,
    },
    #[error("Atlas admin port {addr} refused `{command}`: {error}")]
    Refused {
        addr: SocketAddr,
        command: String,
        error: ServerError,
    },
    #[error("Atlas admin port {addr}: `SELECT * FROM backends` returned a table the agent cannot use: {source}")]
    Table {
        addr: SocketAddr,
        source: TableError,
    },
    #[error("Atlas admin port {addr}: this connection is unusable after an earlier error (open a new one)")]
    Broken { addr: SocketAddr },
    #[error("Atlas admin port {addr} is served by a process of uid {uid}, not of uid {expected} (Atlas's): not logging in, so that no password scramble goes to another user's listener (is Atlas down and the port taken? if Atlas runs as uid {uid}, set [atlas] admin_uid = {uid})")]
    NotAtlasOwner {
        addr: SocketAddr,
        uid: u32,
        expected: u32,
    },
    #[error("Atlas admin port {addr}: cannot tell which user serves this local connection ({detail}); not logging in")]
    OwnerUnknown { addr: SocketAddr, detail: String },
}

/// A column definition (only what the agent needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// MYSQL_TYPE_* (3 = LONG, 254 = STRING).
    pub type_code: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    /// Text values; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok { affected_rows: u64 },
    Rows(ResultSet),
}

/// One logged-in connection to the admin port.
#[derive(Debug)]
pub struct AdminConnection {
    stream: TcpStream,
    addr: SocketAddr,
    query_timeout: Duration,
    server_version: String,
    /// The next packet sequence number, sent or expected.
    seq: u8,
    /// Set after a timeout or I/O error: the stream's position in the
    /// protocol is unknown, so it must not be reused.
    broken: bool,
}

/// Why a wire operation failed, before it is given its context.
enum Wire {
    Io(io::Error),
    Closed,
    Malformed(String),
    Server(ServerError),
    Owner(ClientError),
}

impl From<io::Error> for Wire {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Wire::Closed
        } else {
            Wire::Io(e)
        }
    }
}

impl From<String> for Wire {
    fn from(s: String) -> Self {
        Wire::Malformed(s)
    }
}

impl AdminConnection {
    /// Connects, reads the greeting, checks that the server side belongs to
    /// `admin_uid` (when the connection is local) and logs in, all within
    /// `timeouts.connect`.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        password: &Password,
        admin_uid: u32,
        timeouts: Timeouts,
    ) -> Result<AdminConnection, ClientError> {
        let during = format!("login as {user:?}");
        let attempt = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
            // Each command is one small packet: do not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let mut conn = AdminConnection {
                stream,
                addr,
                query_timeout: timeouts.query,
                server_version: String::new(),
                seq: 0,
                broken: false,
            };
            match conn.login(user, password, admin_uid).await {
                Ok(()) => Ok(conn),
                Err(Wire::Server(error)) => Err(ClientError::Login {
                    addr,
                    user: user.to_string(),
                    error,
                }),
                Err(Wire::Owner(e)) => Err(e),
                Err(w) => Err(wire_error(addr, &during, w)),
            }
        };
        match tokio::time::timeout(timeouts.connect, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                during: format!("connect and {during}"),
                timeout: timeouts.connect,
            }),
        }
    }

    async fn login(&mut self, user: &str, password: &Password, admin_uid: u32) -> Result<(), Wire> {
        let greeting = self.read_packet().await?;
        if greeting.first() == Some(&0xFF) {
            // e.g. "too many connections", sent instead of a greeting.
            return Err(Wire::Server(parse_err(&greeting)?));
        }
        let g = parse_greeting(&greeting)?;
        // Only now: the server has accepted the connection (it sent the
        // greeting), so its socket carries the accepting process's uid.
        self.check_owner(admin_uid)?;
        self.server_version = g.server_version;
        let auth = native_password_scramble(password.expose(), &g.scramble);
        self.write_packet(&handshake_response(user, &auth)?).await?;
        let reply = self.read_packet().await?;
        match reply.first() {
            Some(0x00) => Ok(()),
            Some(0xFF) => Err(Wire::Server(parse_err(&reply)?)),
            Some(0xFE) => Err(Wire::Malformed(
                "the server asked to switch the authentication method (Atlas never does)".into(),
            )),
            _ => Err(Wire::Malformed(format!(
                "login answered with an unknown packet {:02x?}",
                &reply[..reply.len().min(8)]
            ))),
        }
    }

    fn check_owner(&self, expected: u32) -> Result<(), Wire> {
        let addr = self.addr;
        let local = self.stream.local_addr().map_err(Wire::Io)?;
        let unknown = |detail: String| Wire::Owner(ClientError::OwnerUnknown { addr, detail });
        match owner::of_connection(addr, local) {
            Ok(Owner::Uid(uid)) if uid == expected => Ok(()),
            Ok(Owner::Uid(uid)) => Err(Wire::Owner(ClientError::NotAtlasOwner {
                addr,
                uid,
                expected,
            })),
            // Atlas on another host: its users are not ours to check.
            Ok(Owner::Remote) => Ok(()),
            Ok(Owner::NotFound) => Err(unknown(
                "its server side is not in /proc/net/tcp or tcp6".into(),
            )),
            Err(e) => Err(unknown(format!("reading /proc/net/tcp: {e}"))),
        }
    }

    /// The greeting's server version (`5.0.99-agent-admin` for Atlas).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one COM_QUERY and reads its whole reply, within the query timeout.
    /// An ERR reply is [`ClientError::Refused`] and leaves the connection usable.
    pub async fn query(&mut self, sql: &str) -> Result<Reply, ClientError> {
        let addr = self.addr;
        if self.broken {
            return Err(ClientError::Broken { addr });
        }
        let timeout = self.query_timeout;
        match tokio::time::timeout(timeout, self.query_inner(sql)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(Wire::Server(error))) => Err(ClientError::Refused {
                addr,
                command: sql.to_string(),
                error,
            }),
            Ok(Err(w)) => {
                self.broken = true;
                Err(wire_error(addr, &format!("`{sql}`"), w))
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    addr,
                    during: format!("`{sql}`"),
                    timeout,
                })
            }
        }
    }

    /// `SELECT * FROM backends`, parsed.
    pub async fn backends(&mut self) -> Result<Vec<Backend>, ClientError> {
        let addr = self.addr;
        match self.query(SELECT_BACKENDS).await? {
            Reply::Rows(rs) => {
                let names: Vec<String> = rs.columns.into_iter().map(|c| c.name).collect();
                parse_backends(&names, &rs.rows)
                    .map_err(|source| ClientError::Table { addr, source })
            }
            Reply::Ok { .. } => Err(ClientError::Table {
                addr,
                source: TableError::Columns { found: vec![] },
            }),
        }
    }

    /// Sends COM_QUIT (best effort: Atlas closes without answering) and closes.
    pub async fn quit(mut self) {
        if !self.broken {
            self.seq = 0;
            let t = self.query_timeout;
            let _ = tokio::time::timeout(t, self.write_packet(&[COM_QUIT])).await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn query_inner(&mut self, sql: &str) -> Result<Reply, Wire> {
        self.seq = 0;
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.write_packet(&payload).await?;
        let first = self.read_packet().await?;
        match first.first() {
            None => Err(Wire::Malformed("empty reply packet".into())),
            Some(0x00) => {
                let mut r = Reader::new(&first[1..]);
                Ok(Reply::Ok {
                    affected_rows: r.lenenc_int()?,
                })
            }
            Some(0xFF) => Err(Wire::Server(parse_err(&first)?)),
            Some(0xFB) => Err(Wire::Malformed(
                "a LOCAL INFILE request (never sent by Atlas's admin port)".into(),
            )),
            Some(_) => self.read_result_set(&first).await.map(Reply::Rows),
        }
    }

    async fn read_result_set(&mut self, first: &[u8]) -> Result<ResultSet, Wire> {
        let mut r = Reader::new(first);
        let n = r.lenenc_int()?;
        r.end("the column count packet")?;
        if n == 0 || n > MAX_COLUMNS {
            return Err(Wire::Malformed(format!("a result set with {n} columns")));
        }
        let mut budget = Budget::new(first.len());
        let mut rs = ResultSet::default();
        for _ in 0..n {
            let p = self.read_packet().await?;
            budget.charge(p.len())?;
            rs.columns.push(parse_column(&p)?);
        }
        let p = self.read_packet().await?;
        if !is_eof(&p) {
            return Err(Wire::Malformed(
                "no EOF packet after the column definitions".into(),
            ));
        }
        loop {
            let p = self.read_packet().await?;
            if is_eof(&p) {
                return Ok(rs);
            }
            if p.first() == Some(&0xFF) {
                return Err(Wire::Server(parse_err(&p)?));
            }
            if rs.rows.len() >= MAX_ROWS {
                return Err(Wire::Malformed(format!("more than {MAX_ROWS} rows")));
            }
            // Charged before the row is decoded: the packet is the biggest
            // allocation, and the decoded row at most as big plus VALUE_COST each.
            budget.charge(p.len() + rs.columns.len() * VALUE_COST)?;
            let row = rs.rows.len() + 1;
            rs.rows
                .push(parse_row(&p, rs.columns.len()).map_err(|e| format!("row {row}: {e}"))?);
        }
    }

    async fn read_packet(&mut self) -> Result<Vec<u8>, Wire> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        if header[3] != self.seq {
            return Err(Wire::Malformed(format!(
                "packet number {} where {} was expected",
                header[3], self.seq
            )));
        }
        self.seq = self.seq.wrapping_add(1);
        if len > MAX_PAYLOAD {
            return Err(Wire::Malformed(format!(
                "a packet of {len} bytes (refusing more than {MAX_PAYLOAD})"
            )));
        }
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await?;
        Ok(payload)
    }

    async fn write_packet(&mut self, payload: &[u8]) -> Result<(), Wire> {
        if payload.len() >= 0xFF_FFFF {
            return Err(Wire::Malformed(format!(
                "refusing to send a {}-byte command",
                payload.len()
            )));
        }
        let mut buf = Vec::with_capacity(payload.len() + 4);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
        buf.push(self.seq);
        buf.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.stream.write_all(&buf).await?;
        Ok(())
    }
}

/// What is left of [`MAX_REPLY`] while one reply is read.
struct Budget {
    used: usize,
}

impl Budget {
    fn new(first: usize) -> Budget {
        Budget { used: first }
    }

    fn charge(&mut self, n: usize) -> Result<(), Wire> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_REPLY {
            return Err(Wire::Malformed(format!(
                "a reply larger than {MAX_REPLY} bytes (Atlas's are a few hundred)"
            )));
        }
        Ok(())
    }
}

fn wire_error(addr: SocketAddr, during: &str, w: Wire) -> ClientError {
    let during = during.to_string();
    match w {
        Wire::Io(source) => ClientError::Io {
            addr,
            during,
            source,
        },
        Wire::Closed => ClientError::Closed { addr, during },
        Wire::Malformed(detail) => ClientError::Protocol {
            addr,
            during,
            detail,
        },
        // Callers map server errors themselves; this keeps the match total.
        Wire::Server(error) => ClientError::Refused {
            addr,
            command: during,
            error,
        },
        Wire::Owner(e) => e,
    }
}

/// `SHA1(password) XOR SHA1(challenge + SHA1(SHA1(password)))`.
pub fn native_password_scramble(password: &[u8], challenge: &[u8]) -> [u8; 20] {
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(challenge);
    h.update(stage2);
    let mix = h.finalize();
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = stage1[i] ^ mix[i];
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Greeting {
    server_version: String,
    capabilities: u32,
    scramble: [u8; 20],
}

fn parse_greeting(p: &[u8]) -> Result<Greeting, String> {
    let mut r = Reader::new(p);
    let protocol = r.u8()?;
    if protocol != 10 {
        return Err(format!("handshake protocol {protocol}, expected 10"));
    }
    let server_version = cut_text(r.nul_terminated()?);
    let _thread_id = r.u32()?;
    let part1 = r.bytes(8)?;
    let _filler = r.u8()?;
    let low = r.u16()? as u32;
    let _charset = r.u8()?;
    let _status = r.u16()?;
    let high = r.u16()? as u32;
    let _auth_data_len = r.u8()?;
    let _reserved = r.bytes(10)?;
    // The rest of the 20-byte scramble (then a NUL, which is not part of it).
    let part2 = r.bytes(12)?;
    let capabilities = low | (high << 16);
    let needed = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
    if capabilities & needed != needed {
        return Err(format!(
            "the server does not offer protocol 4.1 with secure authentication (capabilities {capabilities:#x})"
        ));
    }
    let mut scramble = [0u8; 20];
    scramble[..8].copy_from_slice(part1);
    scramble[8..].copy_from_slice(part2);
    Ok(Greeting {
        server_version,
        capabilities,
        scramble,
    })
}

fn handshake_response(user: &str, auth: &[u8; 20]) -> Result<Vec<u8>, String> {
    if user.as_bytes().contains(&0) {
        return Err("the user name contains a NUL byte".into());
    }
    let mut p = Vec::with_capacity(64 + user.len());
    p.extend_from_slice(&CAPABILITIES.to_le_bytes());
    p.extend_from_slice(&(1u32 << 24).to_le_bytes()); // max packet size
    p.push(CHARSET_LATIN1);
    p.extend_from_slice(&[0u8; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    // SECURE_CONNECTION: a length-prefixed auth response.
    p.push(auth.len() as u8);
    p.extend_from_slice(auth);
    Ok(p)
}

fn parse_err(p: &[u8]) -> Result<ServerError, String> {
    let mut r = Reader::new(p);
    if r.u8()? != 0xFF {
        return Err("not an ERR packet".into());
    }
    let code = r.u16()?;
    let mut sqlstate = "HY000".to_string();
    if r.peek() == Some(b'#') {
        r.u8()?;
        sqlstate = String::from_utf8_lossy(r.bytes(5)?).into_owned();
    }
    let message = cut_text(r.rest());
    Ok(ServerError {
        code,
        sqlstate,
        message,
    })
}

/// Text from the server for messages: at most [`MAX_TEXT`] bytes of it
/// (with the full length when cut), invalid UTF-8 replaced.
fn cut_text(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_TEXT {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&bytes[..MAX_TEXT]),
        bytes.len()
    )
}

/// A value as text: UTF-8 or an error that does not quote it (Atlas sends
/// ASCII; lossy decoding would triple a hostile megabyte of 0xFF bytes).
fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    std::str::from_utf8(bytes).map(str::to_string).map_err(|e| {
        format!(
            "{what}: {} bytes that are not UTF-8 (invalid at byte {}; Atlas answers ASCII)",
            bytes.len(),
            e.valid_up_to()
        )
    })
}

fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xFE) && p.len() < 9
}

fn parse_column(p: &[u8]) -> Result<Column, String> {
    let mut r = Reader::new(p);
    for _ in 0..4 {
        r.lenenc_bytes()?; // catalog, schema, table, org_table
    }
    let name = utf8(r.lenenc_bytes()?, "a column name")?;
    r.lenenc_bytes()?; // org_name
    let _fixed_len = r.lenenc_int()?;
    let _charset = r.u16()?;
    let _length = r.u32()?;
    let type_code = r.u8()?;
    Ok(Column { name, type_code })
}

fn parse_row(p: &[u8], columns: usize) -> Result<Vec<Option<String>>, String> {
    let mut r = Reader::new(p);
    let mut row = Vec::with_capacity(columns);
    for i in 0..columns {
        if r.peek() == Some(0xFB) {
            r.u8()?;
            row.push(None);
        } else {
            let what = format!("value {}", i + 1);
            row.push(Some(utf8(r.lenenc_bytes()?, &what)?));
        }
    }
    r.end("a row")?;
    Ok(row)
}

/// Bounds-checked reading of a packet payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "packet too short: needed {n} bytes at offset {} of {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn nul_terminated(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("a string without its NUL terminator")?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn lenenc_int(&mut self) -> Result<u64, String> {
        let first = self.u8()?;
        let n = |r: &mut Self, k: usize| -> Result<u64, String> {
            let mut v = [0u8; 8];
            v[..k].copy_from_slice(r.bytes(k)?);
            Ok(u64::from_le_bytes(v))
        };
        match first {
            0..=0xFA => Ok(first as u64),
            0xFC => n(self, 2),
            0xFD => n(self, 3),
            0xFE => n(self, 8),
            _ => Err(format!(
                "invalid length-encoded integer prefix {first:#04x}"
            )),
        }
    }

    fn lenenc_bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.lenenc_int()?;
        let len = usize::try_from(len).map_err(|_| format!("a string of {len} bytes"))?;
        self.bytes(len)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes at the end of {what}",
                self.buf.len() - self.pos
            ))
        }
    }
}

/// The packet parsers, reachable without a socket for the fuzz targets
/// (`fuzz/`); the agent itself only uses them through [`AdminConnection`].
#[doc(hidden)]
pub mod parsers {
    use super::{Column, Reader, ServerError};

    /// A handshake v10 greeting: the server version and capabilities.
    pub fn greeting(p: &[u8]) -> Result<(String, u32), String> {
        super::parse_greeting(p).map(|g| (g.server_version, g.capabilities))
    }
    /// An OK packet's affected-rows count (after its 0x00 byte).
    pub fn ok(p: &[u8]) -> Result<u64, String> {
        Reader::new(p.get(1..).unwrap_or_default()).lenenc_int()
    }
    pub fn err(p: &[u8]) -> Result<ServerError, String> {
        super::parse_err(p)
    }
    /// A result set's first packet: its column count.
    pub fn column_count(p: &[u8]) -> Result<u64, String> {
        let mut r = Reader::new(p);
        let n = r.lenenc_int()?;
        r.end("the column count packet")?;
        Ok(n)
    }
    pub fn column(p: &[u8]) -> Result<Column, String> {
        super::parse_column(p)
    }
    pub fn is_eof(p: &[u8]) -> bool {
        super::is_eof(p)
    }
    pub fn row(p: &[u8], columns: usize) -> Result<Vec<Option<String>>, String> {
        super::parse_row(p, columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Atlas's greeting, byte for byte as mysql-proxy builds it.
    fn atlas_greeting(scramble: &[u8; 20]) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.0.99-agent-admin\0");
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&scramble[..8]);
        p.push(0);
        p.extend_from_slice(&(CAPABILITIES as u16).to_le_bytes());
        p.push(8);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&[0u8; 13]);
        p.extend_from_slice(&scramble[8..]);
        p.push(0);
        p
    }

    #[test]
    fn scramble_matches_a_known_vector() {
        // Computed independently with Python's hashlib:
        // s1 = sha1(b"secret"); s1 XOR sha1(b"abcdefghijklmnopqrst" + sha1(s1)).
        let got = native_password_scramble(b"secret", b"abcdefghijklmnopqrst");
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8817c50fa779daef010ee7577825b0847df9842e");
    }

    #[test]
    fn greeting_parses_and_requires_protocol_41() {
        let s = *b"ABCDEFGHIJKLMNOPQRST";
        let g = parse_greeting(&atlas_greeting(&s)).unwrap();
        assert_eq!(g.server_version, "5.0.99-agent-admin");
        assert_eq!(g.capabilities, CAPABILITIES);
        assert_eq!(&g.scramble, &s);
        let mut old = atlas_greeting(&s);
        let caps_at = 1 + 19 + 4 + 8 + 1;
        old[caps_at + 1] &= !0x02; // clear PROTOCOL_41 (0x0200)
        assert!(parse_greeting(&old).unwrap_err().contains("protocol 4.1"));
    }

    #[test]
    fn truncated_greetings_are_errors_not_panics() {
        let full = atlas_greeting(b"ABCDEFGHIJKLMNOPQRST");
        for n in 0..full.len() - 1 {
            // The trailing NUL is optional; anything shorter must fail cleanly.
            assert!(parse_greeting(&full[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn handshake_response_has_exactly_the_three_capabilities() {
        let p = handshake_response("admin", &[7u8; 20]).unwrap();
        assert_eq!(u32::from_le_bytes([p[0], p[1], p[2], p[3]]), 0x8201);
        assert_eq!(p[8], 8);
        assert_eq!(&p[32..38], b"admin\0");
        assert_eq!(p[38], 20);
        assert_eq!(&p[39..], &[7u8; 20]);
        assert!(handshake_response("a\0b", &[0; 20]).is_err());
    }

    #[test]
    fn err_packets_parse_with_and_without_sqlstate() {
        let mut p = vec![0xFF, 0x51, 0x04, b'#'];
        p.extend_from_slice(b"07000use 'SELECT * FROM help' to see the supported commands");
        let e = parse_err(&p).unwrap();
        assert_eq!(e.code, 1105);
        assert_eq!(e.sqlstate, "07000");
        assert!(e.message.starts_with("use 'SELECT"));
        let old = parse_err(b"\xff\xd7\x074.0 protocol is not supported").unwrap();
        assert_eq!((old.code, old.sqlstate.as_str()), (2007, "HY000"));
        assert!(parse_err(&[0xFF, 0x01]).is_err());
    }

    #[test]
    fn rows_with_nulls_parse_and_bad_rows_fail() {
        let mut p = vec![1, b'1', 0xFB];
        p.extend_from_slice(&[2, b'u', b'p']);
        assert_eq!(
            parse_row(&p, 3).unwrap(),
            vec![Some("1".into()), None, Some("up".into())]
        );
        assert!(parse_row(&p, 2).is_err(), "trailing bytes");
        assert!(parse_row(&p, 4).is_err(), "missing value");
        assert!(parse_row(&[0xFE, 0xFF], 1).is_err(), "length past the end");
        assert!(parse_row(&[0xFF], 1).is_err(), "invalid prefix");
    }

    // ---- a scripted server, for what a real Atlas never sends -------------

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        b.push(seq);
        b.extend_from_slice(payload);
        b
    }

    fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).ok()?;
        let mut p = vec![0u8; u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize];
        s.read_exact(&mut p).ok()?;
        Some(p)
    }

    /// A server that greets, accepts any login, and answers the first
    /// query with `reply` (frames from sequence 1 on). Returns its address
    /// and a handle telling whether it received a login packet.
    fn scripted(reply: Vec<Vec<u8>>) -> (SocketAddr, std::thread::JoinHandle<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&frame(0, &atlas_greeting(b"ABCDEFGHIJKLMNOPQRST")));
            if read_frame(&mut s).is_none() {
                return false; // no login: what the owner check must cause
            }
            let _ = s.write_all(&frame(2, &[0, 0, 0, 2, 0, 0, 0]));
            if read_frame(&mut s).is_some() {
                for (i, p) in reply.iter().enumerate() {
                    // The client may stop reading (and close) at any point.
                    if s.write_all(&frame(i as u8 + 1, p)).is_err() {
                        break;
                    }
                }
            }
            true
        });
        (addr, t)
    }

    fn me() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    const T: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        query: Duration::from_secs(20),
    };

    fn column(name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        for f in ["def", "", "", "", name, name] {
            p.push(f.len() as u8);
            p.extend_from_slice(f.as_bytes());
        }
        p.extend_from_slice(&[0x0c, 8, 0, 32, 0, 0, 0, 254, 0, 0, 0, 0, 0]);
        p
    }

    fn long_value(v: &[u8]) -> Vec<u8> {
        let mut p = vec![0xFD];
        p.extend_from_slice(&(v.len() as u32).to_le_bytes()[..3]);
        p.extend_from_slice(v);
        p
    }

    const EOF: [u8; 5] = [0xFE, 0, 0, 2, 0];

    #[tokio::test]
    async fn a_reply_over_the_total_cap_is_refused_after_about_a_megabyte() {
        // 100 rows of 1 MB each (every packet under the 1 MiB packet cap):
        // the client used to keep all of them (and peaked near 1 GB).
        let mut reply = vec![vec![1], column("v"), EOF.to_vec()];
        let row = long_value(&vec![b'x'; 1_000_000]);
        reply.extend(std::iter::repeat_n(row, 100));
        reply.push(EOF.to_vec());
        let (addr, server) = scripted(reply);
        let mut c = AdminConnection::connect(addr, "admin", &Password::new("pw"), me(), T)
            .await
            .unwrap();
        let err = c.query("SELECT * FROM help").await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ClientError::Protocol { .. })
                && text.contains("larger than 1048576 bytes"),
            "{text}"
        );
        drop(c);
        assert!(server.join().unwrap());
    }

    #[tokio::test]
    async fn invalid_utf8_is_an_error_that_does_not_quote_it() {
        let mut reply = vec![vec![1], column("v"), EOF.to_vec()];
        reply.push(long_value(&vec![0xFF; 500_000]));
        reply.push(EOF.to_vec());
        let (addr, _server) = scripted(reply);
        let mut c = AdminConnection::connect(addr, "admin", &Password::new("pw"), me(), T)
            .await
            .unwrap();
        let text = c.query("SELECT * FROM help").await.unwrap_err().to_string();
        assert!(
            text.contains("row 1: value 1: 500000 bytes that are not UTF-8"),
            "{text}"
        );
        assert!(text.len() < 400, "{} bytes", text.len());
    }

    #[tokio::test]
    async fn a_huge_err_message_is_cut() {
        let mut err = vec![0xFF, 0x51, 0x04, b'#'];
        err.extend_from_slice(b"07000");
        err.extend(std::iter::repeat_n(0xFFu8, 1_000_000));
        let (addr, _server) = scripted(vec![err]);
        let mut c = AdminConnection::connect(addr, "admin", &Password::new("pw"), me(), T)
            .await
            .unwrap();
        let e = c.query("SAVE CONFIG").await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ClientError::Refused { .. }), "{text}");
        assert!(text.contains("(1000000 bytes)"), "{}", &text[..200]);
        assert!(text.len() < 2000, "{} bytes", text.len());
        // And the connection is still usable after a refusal.
        assert!(!c.broken);
    }

    #[tokio::test]
    async fn no_scramble_goes_to_a_port_served_by_another_user() {
        let (addr, server) = scripted(vec![]);
        let err = AdminConnection::connect(addr, "admin", &Password::new("pw"), me() + 1, T)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ClientError::NotAtlasOwner { uid, .. } if uid == me()),
            "{text}"
        );
        assert!(text.contains("admin_uid"), "{text}");
        assert!(
            !server.join().unwrap(),
            "the server received a login packet"
        );
    }

    #[test]
    fn lenenc_integers() {
        let v = |b: &[u8]| Reader::new(b).lenenc_int();
        assert_eq!(v(&[0xFA]).unwrap(), 250);
        assert_eq!(v(&[0xFC, 0x34, 0x12]).unwrap(), 0x1234);
        assert_eq!(v(&[0xFD, 1, 2, 3]).unwrap(), 0x030201);
        assert_eq!(v(&[0xFE, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap(), 1);
        assert!(v(&[0xFE, 1]).is_err());
        assert!(v(&[]).is_err());
    }
}
