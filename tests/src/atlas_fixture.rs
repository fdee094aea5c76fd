//! A faithful stand-in for Atlas's admin port (Qihoo360 Atlas 2.2.x), for
//! tests that need no privileges: a TCP listener on loopback that behaves as
//! `../shared/atlas-admin.md` documents, rejections included.
//!
//! - Handshake: protocol 10, `5.0.99-agent-admin`, charset 8, capabilities
//!   PROTOCOL_41 | SECURE_CONNECTION | LONG_PASSWORD, a random 20-byte
//!   scramble of printable characters (as mysql-proxy makes it).
//! - Login: a client without PROTOCOL_41 is dropped; a wrong user gets 1045
//!   / 28000 "unknown user", a wrong password 1045 "password doesn't match",
//!   and the connection is closed after either.
//! - Commands: COM_QUERY, COM_QUIT and COM_INIT_DB (OK); COM_PING gets
//!   "[admin] we only handle text-based queries (COM_QUERY)", anything else
//!   "unknown COM_*".
//! - Queries are matched like the admin Lua script does: on the whole
//!   lower-cased query, anchored, words separated by runs of whitespace
//!   (`%s+`). So a trailing `;`, a leading or trailing space, a host name or
//!   an `@weight` gets error 1105 / 07000 "use 'SELECT * FROM help' to see
//!   the supported commands". Atlas's quirks are kept: `SAVE CONFIGGG` is
//!   accepted (`config+`), `ADD SLAVE 999.1.1.1:3306` is answered with
//!   success and adds nothing, and `SAVE CONFIG` answers success even when
//!   the file cannot be written (see [`AtlasFixture::save_errors`]).
//! - The table: new backends are `unknown` (the 4 s checker is
//!   [`AtlasFixture::set_state`]); an add of an address already listed with
//!   the same type is ignored with the same success reply; an rw backend added
//!   while ro backends exist takes the first ro entry's index and that entry
//!   moves to the end; `REMOVE BACKEND n` shifts later indices down.
//! - The `.cnf` (if configured) is where the table comes from at every
//!   [`AtlasFixture::start`], and what `SAVE CONFIG` rewrites (its two
//!   backend lines, `key=value` as GLib's key-file writer does), like a real
//!   Atlas restart.
//!
//! Not emulated (the agent never sends them, so they get the generic error):
//! the client allow-list and proxy-user commands (`clients`, `pwds`).
//!
//! The server runs on plain threads, so tests on any runtime (or none) can
//! use it; [`AtlasFixture::stop`] closes the listener and every connection
//! (an Atlas that is down), [`AtlasFixture::start`] brings it back on the
//! same port.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ha_agent::drivers::atlas::{Backend, Kind, State};
use sha1::{Digest, Sha1};

pub const SERVER_VERSION: &str = "5.0.99-agent-admin";
/// What `SELECT VERSION` answers.
pub const ATLAS_VERSION: &str = "2.2.2";
pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CAPABILITIES: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD;
pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_PING: u8 = 0x0e;
/// ER_UNKNOWN_ERROR / "07000": what mysql-proxy uses for every command error.
pub const ERR_COMMAND: u16 = 1105;
pub const SQLSTATE_COMMAND: &str = "07000";
pub const ERR_ACCESS: u16 = 1045;
pub const SQLSTATE_ACCESS: &str = "28000";
pub const MSG_UNMATCHED: &str = "use 'SELECT * FROM help' to see the supported commands";
pub const MSG_PING: &str = "[admin] we only handle text-based queries (COM_QUERY)";
pub const MSG_UNKNOWN_COM: &str = "unknown COM_*";
pub const MSG_BAD_INDEX: &str = "invalid backend_id";
pub const MSG_NO_SUCH_ID: &str = "backend id is not exsit";
pub const MSG_BAD_OPERATION: &str = "invalid operation";
pub const MSG_UNKNOWN_USER: &str = "unknown user";
pub const MSG_BAD_PASSWORD: &str = "password doesn't match";
const RW_KEY: &str = "proxy-backend-addresses";
const RO_KEY: &str = "proxy-read-only-backend-addresses";
const MYSQL_TYPE_LONG: u8 = 3;
const MYSQL_TYPE_STRING: u8 = 254;
const SERVER_STATUS_AUTOCOMMIT: u16 = 2;

/// How the fixture Atlas is set up.
#[derive(Debug, Clone)]
pub struct FixtureConfig {
    pub user: String,
    pub password: String,
    /// The table at start (written into the `.cnf` when there is one).
    pub rw: Vec<SocketAddrV4>,
    pub ro: Vec<SocketAddrV4>,
    /// Atlas's `.cnf`: written at construction, loaded at every start,
    /// rewritten by `SAVE CONFIG`.
    pub cnf_path: Option<PathBuf>,
}

impl Default for FixtureConfig {
    fn default() -> Self {
        FixtureConfig {
            user: "admin".into(),
            password: "admin-secret".into(),
            rw: vec![],
            ro: vec![],
            cnf_path: None,
        }
    }
}

/// One backend, without its index (the index is its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub address: SocketAddrV4,
    pub state: State,
    pub kind: Kind,
}

/// The backend table, with Atlas's semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends(Vec<Entry>);

impl Backends {
    /// `network_backends_add`: ignored (false) if the address is listed with
    /// the same type; an rw entry takes the first ro entry's place, which
    /// moves to the end.
    pub fn add(&mut self, address: SocketAddrV4, kind: Kind) -> bool {
        if self
            .0
            .iter()
            .any(|e| e.address == address && e.kind == kind)
        {
            return false;
        }
        let first_ro = self.0.iter().position(|e| e.kind == Kind::Ro);
        self.0.push(Entry {
            address,
            state: State::Unknown,
            kind,
        });
        if let (Kind::Rw, Some(i)) = (kind, first_ro) {
            let last = self.0.len() - 1;
            self.0.swap(i, last);
        }
        true
    }

    /// `REMOVE BACKEND n`.
    pub fn remove(&mut self, ndx: u64) -> Result<(), &'static str> {
        if ndx == 0 || ndx > self.0.len() as u64 {
            return Err(MSG_BAD_INDEX);
        }
        self.0.remove(ndx as usize - 1);
        Ok(())
    }

    /// The checker's (or `SET OFFLINE/ONLINE`'s) state change.
    pub fn set_state(&mut self, ndx: u64, state: State) -> Result<(), &'static str> {
        match ndx
            .checked_sub(1)
            .and_then(|i| self.0.get_mut(usize::try_from(i).ok()?))
        {
            Some(e) => {
                e.state = state;
                Ok(())
            }
            None => Err(MSG_NO_SUCH_ID),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.0
    }

    /// As `SELECT * FROM backends` numbers them.
    pub fn rows(&self) -> Vec<Backend> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, e)| Backend {
                ndx: i as u32 + 1,
                address: e.address,
                state: e.state,
                kind: e.kind,
            })
            .collect()
    }

    fn list(&self, kind: Kind) -> String {
        self.0
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.address.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a logged-in client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Query(String),
    Quit,
    InitDb,
    Ping,
    Other(u8),
}

/// One command and the fixture's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub command: Command,
    /// The ERR message sent back, if any.
    pub error: Option<String>,
}

/// A login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub capabilities: u32,
    /// The ERR message, if refused; `Some("dropped")` for a dropped client.
    pub error: Option<String>,
}

/// The table after a change, and what changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub cause: String,
    pub table: Vec<Backend>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.cause,
            ha_agent::drivers::atlas::table::describe(&self.table)
        )
    }
}

type Hook = Box<dyn FnOnce(&mut Backends) + Send>;

struct Inner {
    backends: Backends,
    received: Vec<Received>,
    logins: Vec<Login>,
    history: Vec<Change>,
    save_errors: Vec<String>,
    hooks: Vec<(String, Hook)>,
    connections: u32,
}

struct Shared {
    cfg: FixtureConfig,
    inner: Mutex<Inner>,
    /// Notified whenever a command is recorded.
    received: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Each client connection: a handle to shut its socket down, and its thread.
type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Connections,
}

/// The fixture Atlas. Stops (closing every connection) when dropped.
pub struct AtlasFixture {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl AtlasFixture {
    /// A running fixture on a free loopback port.
    pub fn new(cfg: FixtureConfig) -> io::Result<AtlasFixture> {
        let f = Self::new_stopped(cfg)?;
        f.start()?;
        Ok(f)
    }

    /// A fixture whose port is chosen but not listening yet (Atlas is down
    /// until [`start`](Self::start)).
    pub fn new_stopped(cfg: FixtureConfig) -> io::Result<AtlasFixture> {
        // Reserve a free port, then free it: connections are refused until start().
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if let Some(path) = &cfg.cnf_path {
            fs::write(path, initial_cnf(&cfg))?;
        }
        Ok(AtlasFixture {
            addr,
            shared: Arc::new(Shared {
                cfg,
                inner: Mutex::new(Inner {
                    backends: Backends::default(),
                    received: vec![],
                    logins: vec![],
                    history: vec![],
                    save_errors: vec![],
                    hooks: vec![],
                    connections: 0,
                }),
                received: Condvar::new(),
            }),
            running: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn user(&self) -> &str {
        &self.shared.cfg.user
    }

    pub fn password(&self) -> &str {
        &self.shared.cfg.password
    }

    /// Starts listening (no-op if running). Like Atlas starting, the table
    /// is loaded from the `.cnf` if there is one, else from the config.
    pub fn start(&self) -> io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Ok(());
        }
        let backends = self.load_table()?;
        {
            let mut g = self.shared.lock();
            g.history.push(Change {
                cause: "start".into(),
                table: backends.rows(),
            });
            g.backends = backends;
        }
        // std sets SO_REUSEADDR, so the port binds again after a stop.
        let listener = TcpListener::bind(self.addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Connections = Arc::default();
        let accept = {
            let (stop, conns, shared) = (stop.clone(), conns.clone(), self.shared.clone());
            std::thread::Builder::new()
                .name("atlas-fixture".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let Ok(handle) = stream.try_clone() else {
                            continue;
                        };
                        let shared = shared.clone();
                        let t = std::thread::spawn(move || {
                            let _ = serve(&shared, &stream);
                            // The clone kept for stop() holds the socket
                            // open: close it explicitly, as Atlas does.
                            let _ = stream.shutdown(Shutdown::Both);
                        });
                        let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                        c.retain(|(_, t)| !t.is_finished());
                        c.push((handle, t));
                    }
                })?
        };
        *running = Some(Running {
            stop,
            accept,
            conns,
        });
        Ok(())
    }

    /// Closes the listener and every client connection (Atlas is down).
    pub fn stop(&self) {
        let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        r.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        let _ = r.accept.join();
        let conns: Vec<_> = r
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for (stream, t) in conns {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = t.join();
        }
    }

    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The table as `SELECT * FROM backends` would show it.
    pub fn table(&self) -> Vec<Backend> {
        self.shared.lock().backends.rows()
    }

    /// Stands in for Atlas's 4 s checker (or an operator's SET OFFLINE).
    pub fn set_state(&self, ndx: u64, state: State) -> Result<(), String> {
        let mut g = self.shared.lock();
        g.backends.set_state(ndx, state).map_err(String::from)?;
        let table = g.backends.rows();
        g.history.push(Change {
            cause: format!("checker: backend {ndx} {state}"),
            table,
        });
        Ok(())
    }

    /// Changes the table directly (an operator, or a restarted Atlas's
    /// config), recorded in the history as `cause`.
    pub fn edit(&self, cause: &str, f: impl FnOnce(&mut Backends)) {
        let mut g = self.shared.lock();
        f(&mut g.backends);
        let table = g.backends.rows();
        g.history.push(Change {
            cause: cause.into(),
            table,
        });
    }

    /// Runs `f` on the table just before the next query whose lower-cased
    /// text starts with `prefix` is handled: a concurrent operator, e.g. one
    /// who adds the same backend a moment before the agent does. At most one
    /// hook runs per query, the earliest registered that matches, so a
    /// sequence of hooks scripts a sequence of queries.
    pub fn before_next(&self, prefix: &str, f: impl FnOnce(&mut Backends) + Send + 'static) {
        self.shared
            .lock()
            .hooks
            .push((prefix.to_ascii_lowercase(), Box::new(f)));
    }

    /// Every command received after a login, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Just the query texts.
    pub fn queries(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.command {
                Command::Query(q) => Some(q),
                _ => None,
            })
            .collect()
    }

    pub fn commands_received(&self) -> usize {
        self.shared.lock().received.len()
    }

    /// Blocks until at least `n` commands were received (e.g. a COM_QUIT
    /// the client sent without waiting for an answer), or `timeout` passes.
    pub fn wait_for_commands(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        while g.received.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} commands received within {timeout:?}, expected {n}: {:?}",
                    g.received.len(),
                    g.received
                ));
            }
            g = self
                .shared
                .received
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    pub fn logins(&self) -> Vec<Login> {
        self.shared.lock().logins.clone()
    }

    /// The table after every change, starting with each start's table.
    pub fn history(&self) -> Vec<Change> {
        self.shared.lock().history.clone()
    }

    /// Failures of `SAVE CONFIG` to write the `.cnf` (Atlas only logs them).
    pub fn save_errors(&self) -> Vec<String> {
        self.shared.lock().save_errors.clone()
    }

    pub fn cnf_path(&self) -> Option<&Path> {
        self.shared.cfg.cnf_path.as_deref()
    }

    fn load_table(&self) -> io::Result<Backends> {
        let cfg = &self.shared.cfg;
        let (rw, ro) = match &cfg.cnf_path {
            Some(path) => read_cnf_backends(path)?,
            None => (cfg.rw.clone(), cfg.ro.clone()),
        };
        // Atlas adds the rw backends first, then the ro ones.
        let mut b = Backends::default();
        for a in rw {
            b.add(a, Kind::Rw);
        }
        for a in ro {
            b.add(a, Kind::Ro);
        }
        Ok(b)
    }
}

impl Drop for AtlasFixture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn initial_cnf(cfg: &FixtureConfig) -> String {
    let join = |v: &[SocketAddrV4]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "[mysql-proxy]\n\
# written by the ha-lab Atlas fixture\n\
admin-username = {}\n\
admin-password = {}\n\
{RW_KEY} = {}\n\
{RO_KEY} = {}\n\
pwds = root:qtyU1btXOo074Itvx0UR9Q==\n\
event-threads = 8\n",
        cfg.user,
        cfg.password,
        join(&cfg.rw),
        join(&cfg.ro)
    )
}

/// The rw and ro lists of a `.cnf` (`ip:port@weight` allowed for ro).
pub fn read_cnf_backends(path: &Path) -> io::Result<(Vec<SocketAddrV4>, Vec<SocketAddrV4>)> {
    let text = fs::read_to_string(path)?;
    let (mut rw, mut ro) = (vec![], vec![]);
    let mut in_section = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == "[mysql-proxy]";
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let target = match k.trim() {
            RW_KEY if in_section => &mut rw,
            RO_KEY if in_section => &mut ro,
            _ => continue,
        };
        target.clear();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let addr = item.split('@').next().unwrap_or(item);
            target.push(addr.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {item:?} is not ip:port", path.display()),
                )
            })?);
        }
    }
    Ok((rw, ro))
}

/// Sets the two backend keys GLib-style (`key=value`), keeping other lines.
fn save_cnf(path: &Path, b: &Backends) -> io::Result<()> {
    let text = fs::read_to_string(path).unwrap_or_else(|_| "[mysql-proxy]\n".into());
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for (key, value) in [(RW_KEY, b.list(Kind::Rw)), (RO_KEY, b.list(Kind::Ro))] {
        let mut in_section = false;
        let mut section_end = None;
        let mut found = false;
        for (i, line) in lines.iter_mut().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                in_section = t == "[mysql-proxy]";
                continue;
            }
            if in_section {
                section_end = Some(i + 1);
                if t.split_once('=').map(|(k, _)| k.trim()) == Some(key) {
                    *line = format!("{key}={value}");
                    found = true;
                }
            }
        }
        if !found {
            let at = section_end
                .or_else(|| {
                    lines
                        .iter()
                        .position(|l| l.trim() == "[mysql-proxy]")
                        .map(|i| i + 1)
                })
                .unwrap_or_else(|| {
                    lines.push("[mysql-proxy]".into());
                    lines.len()
                });
            lines.insert(at, format!("{key}={value}"));
        }
    }
    // g_file_set_contents: a temp file renamed over the old one.
    let tmp = path.with_extension("fixture-tmp");
    fs::write(&tmp, lines.join("\n") + "\n")?;
    fs::rename(&tmp, path)
}

// ---- the protocol, server side ------------------------------------------

enum Reply {
    Ok,
    Err {
        code: u16,
        state: &'static str,
        message: String,
    },
    Rows {
        columns: Vec<(&'static str, u8)>,
        rows: Vec<Vec<String>>,
    },
}

fn command_error(message: impl Into<String>) -> Reply {
    Reply::Err {
        code: ERR_COMMAND,
        state: SQLSTATE_COMMAND,
        message: message.into(),
    }
}

fn status_reply() -> Reply {
    Reply::Rows {
        columns: vec![("status", MYSQL_TYPE_STRING)],
        rows: vec![],
    }
}

const BACKEND_COLUMNS: [(&str, u8); 4] = [
    ("backend_ndx", MYSQL_TYPE_LONG),
    ("address", MYSQL_TYPE_STRING),
    ("state", MYSQL_TYPE_STRING),
    ("type", MYSQL_TYPE_STRING),
];

fn backend_row(b: &Backend) -> Vec<String> {
    vec![
        b.ndx.to_string(),
        b.address.to_string(),
        b.state.as_str().into(),
        b.kind.as_str().into(),
    ]
}

fn serve(shared: &Shared, s: &TcpStream) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    // mysql-proxy's challenge: 20 printable characters (33..=126).
    let challenge: Vec<u8> = raw.iter().map(|b| 33 + b % 94).collect();
    let thread_id = {
        let mut g = shared.lock();
        g.connections += 1;
        g.connections
    };
    write_packet(s, 0, &greeting(thread_id, &challenge))?;
    let (seq, packet) = read_packet(s)?;
    let Some(auth) = parse_auth(&packet) else {
        return Ok(()); // malformed: Atlas drops the connection
    };
    let mut login = Login {
        user: auth.user.clone(),
        capabilities: auth.capabilities,
        error: None,
    };
    if auth.capabilities & CLIENT_PROTOCOL_41 == 0 {
        login.error = Some("dropped".into());
        shared.lock().logins.push(login);
        return Ok(());
    }
    let cfg = &shared.cfg;
    let refused = if auth.user != cfg.user {
        Some(MSG_UNKNOWN_USER)
    } else if auth.response != scramble(cfg.password.as_bytes(), &challenge) {
        Some(MSG_BAD_PASSWORD)
    } else {
        None
    };
    login.error = refused.map(String::from);
    shared.lock().logins.push(login);
    if let Some(message) = refused {
        let reply = Reply::Err {
            code: ERR_ACCESS,
            state: SQLSTATE_ACCESS,
            message: message.into(),
        };
        write_reply(s, seq.wrapping_add(1), &reply)?;
        return Ok(()); // and close
    }
    write_reply(s, seq.wrapping_add(1), &Reply::Ok)?;
    loop {
        let Ok((seq, p)) = read_packet(s) else {
            return Ok(());
        };
        let Some(&com) = p.first() else {
            return Ok(());
        };
        let (command, reply) = match com {
            COM_QUIT => {
                shared.lock().received.push(Received {
                    command: Command::Quit,
                    error: None,
                });
                shared.received.notify_all();
                return Ok(());
            }
            COM_QUERY => {
                let q = String::from_utf8_lossy(&p[1..]).into_owned();
                let reply = execute(shared, &q);
                (Command::Query(q), reply)
            }
            COM_INIT_DB => (Command::InitDb, Reply::Ok),
            COM_PING => (Command::Ping, command_error(MSG_PING)),
            other => (Command::Other(other), command_error(MSG_UNKNOWN_COM)),
        };
        let error = match &reply {
            Reply::Err { message, .. } => Some(message.clone()),
            _ => None,
        };
        shared.lock().received.push(Received { command, error });
        shared.received.notify_all();
        write_reply(s, seq.wrapping_add(1), &reply)?;
    }
}

/// Lua's `%s`.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// `%d%d?%d?%.%d%d?%d?%.%d%d?%d?%.%d%d?%d?:%d%d?%d?%d?%d?`
fn backend_pattern(s: &str) -> bool {
    let Some((ip, port)) = s.split_once(':') else {
        return false;
    };
    let parts: Vec<&str> = ip.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| digits(p, 1, 3)) && digits(port, 1, 5)
}

/// `config+`: "confi" and one or more "g".
fn config_pattern(s: &str) -> bool {
    s.strip_prefix("confi")
        .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b == b'g'))
}

fn execute(shared: &Shared, query: &str) -> Reply {
    let lower = query.to_ascii_lowercase();
    let mut g = shared.lock();
    // One hook per query: the first registered one whose prefix matches.
    if let Some(i) = g
        .hooks
        .iter()
        .position(|(prefix, _)| lower.starts_with(prefix.as_str()))
    {
        let (_, hook) = g.hooks.remove(i);
        hook(&mut g.backends);
        let table = g.backends.rows();
        g.history.push(Change {
            cause: "operator (concurrent)".into(),
            table,
        });
    }
    // Every pattern is anchored and starts and ends with a non-space.
    if lower.is_empty() || lower.starts_with(is_space) || lower.ends_with(is_space) {
        return command_error(MSG_UNMATCHED);
    }
    let words: Vec<&str> = lower.split(is_space).filter(|w| !w.is_empty()).collect();
    let mut changed = false;
    let reply = match words.as_slice() {
        ["select", "*", "from", "backends"] => Reply::Rows {
            columns: BACKEND_COLUMNS.to_vec(),
            rows: g.backends.rows().iter().map(backend_row).collect(),
        },
        ["select", "*", "from", "help"] => Reply::Rows {
            columns: vec![
                ("command", MYSQL_TYPE_STRING),
                ("description", MYSQL_TYPE_STRING),
            ],
            rows: HELP
                .iter()
                .map(|(c, d)| vec![c.to_string(), d.to_string()])
                .collect(),
        },
        ["select", "version"] => Reply::Rows {
            columns: vec![("version", MYSQL_TYPE_STRING)],
            rows: vec![vec![ATLAS_VERSION.into()]],
        },
        ["set", op, n]
            if op.chars().all(|c| c.is_ascii_alphabetic()) && digits(n, 1, usize::MAX) =>
        {
            // The id is checked first, then the operation (as the script does).
            let ndx = n.parse::<u64>().unwrap_or(u64::MAX);
            let state = match *op {
                "offline" => Some(State::Offline),
                "online" => Some(State::Unknown),
                _ => None,
            };
            if ndx == 0 || ndx > g.backends.0.len() as u64 {
                command_error(MSG_NO_SUCH_ID)
            } else if let Some(state) = state {
                let _ = g.backends.set_state(ndx, state);
                changed = true;
                let row = g.backends.rows()[ndx as usize - 1];
                Reply::Rows {
                    columns: BACKEND_COLUMNS.to_vec(),
                    rows: vec![backend_row(&row)],
                }
            } else {
                command_error(MSG_BAD_OPERATION)
            }
        }
        ["add", which @ ("master" | "slave"), a] if backend_pattern(a) => {
            let kind = if *which == "master" {
                Kind::Rw
            } else {
                Kind::Ro
            };
            // An address Atlas cannot parse (999.1.1.1, port 99999) is only
            // logged, like a duplicate: the reply is success either way.
            if let Ok(addr) = a.parse::<SocketAddrV4>() {
                changed = g.backends.add(addr, kind);
            }
            status_reply()
        }
        ["remove", "backend", n] if digits(n, 1, usize::MAX) => {
            match g.backends.remove(n.parse::<u64>().unwrap_or(u64::MAX)) {
                Ok(()) => {
                    changed = true;
                    status_reply()
                }
                Err(m) => command_error(m),
            }
        }
        ["save", c] if config_pattern(c) => {
            if let Some(path) = &shared.cfg.cnf_path {
                if let Err(e) = save_cnf(path, &g.backends) {
                    g.save_errors.push(format!("{}: {e}", path.display()));
                }
            }
            status_reply()
        }
        _ => command_error(MSG_UNMATCHED),
    };
    if changed {
        let table = g.backends.rows();
        g.history.push(Change {
            cause: query.to_string(),
            table,
        });
    }
    reply
}

const HELP: [(&str, &str); 14] = [
    ("SELECT * FROM help", "shows this help"),
    (
        "SELECT * FROM backends",
        "lists the backends and their state",
    ),
    (
        "SET OFFLINE $backend_id",
        "offline backend server, $backend_id is backend_ndx's id",
    ),
    ("SET ONLINE $backend_id", "online backend server, ..."),
    (
        "ADD MASTER $backend",
        "example: \"add master 127.0.0.1:3306\", ...",
    ),
    (
        "ADD SLAVE $backend",
        "example: \"add slave 127.0.0.1:3306\", ...",
    ),
    (
        "REMOVE BACKEND $backend_id",
        "example: \"remove backend 1\", ...",
    ),
    ("SELECT * FROM clients", "lists the clients"),
    (
        "ADD CLIENT $client",
        "example: \"add client 192.168.1.2\", ...",
    ),
    (
        "REMOVE CLIENT $client",
        "example: \"remove client 192.168.1.2\", ...",
    ),
    ("SELECT * FROM pwds", "lists the pwds"),
    (
        "ADD PWD $pwd",
        "example: \"add pwd user:raw_password\", ...",
    ),
    ("REMOVE PWD $pwd", "example: \"remove pwd user\", ..."),
    ("SAVE CONFIG", "save the backends to config file"),
];

/// `SHA1(password) XOR SHA1(challenge + SHA1(SHA1(password)))`, written
/// here independently of the agent's client so that the two check each other.
pub fn scramble(password: &[u8], challenge: &[u8]) -> Vec<u8> {
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut m = Sha1::new();
    m.update(challenge);
    m.update(h2);
    let h3 = m.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn greeting(thread_id: u32, challenge: &[u8]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(SERVER_VERSION.as_bytes());
    p.push(0);
    p.extend_from_slice(&thread_id.to_le_bytes());
    p.extend_from_slice(&challenge[..8]);
    p.push(0);
    p.extend_from_slice(&(CAPABILITIES as u16).to_le_bytes());
    p.push(8); // latin1
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    // Upper capabilities, auth data length and the reserved bytes: all zero,
    // as mysql-proxy writes them.
    p.extend_from_slice(&[0u8; 13]);
    p.extend_from_slice(&challenge[8..]);
    p.push(0);
    p
}

struct Auth {
    capabilities: u32,
    user: String,
    response: Vec<u8>,
}

fn parse_auth(p: &[u8]) -> Option<Auth> {
    let capabilities = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        // A 4.0 client: Atlas only looks at the flag before dropping it.
        return Some(Auth {
            capabilities,
            user: String::new(),
            response: vec![],
        });
    }
    let rest = p.get(32..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let user = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let rest = &rest[nul + 1..];
    let response = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let len = *rest.first()? as usize;
        rest.get(1..1 + len)?.to_vec()
    } else {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        rest[..end].to_vec()
    };
    Some(Auth {
        capabilities,
        user,
        response,
    })
}

fn read_packet(mut s: &TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[3], p))
}

fn frame(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
    out.push(*seq);
    out.extend_from_slice(payload);
    *seq = seq.wrapping_add(1);
}

fn write_packet(mut s: &TcpStream, seq: u8, payload: &[u8]) -> io::Result<()> {
    let mut out = vec![];
    frame(&mut out, &mut { seq }, payload);
    s.write_all(&out)
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    // Admin values are short; longer ones use the 0xFC form.
    if s.len() < 251 {
        out.push(s.len() as u8);
    } else {
        out.push(0xFC);
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(s);
}

fn eof_packet() -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    p
}

fn write_reply(mut s: &TcpStream, mut seq: u8, reply: &Reply) -> io::Result<()> {
    let mut out = vec![];
    match reply {
        Reply::Ok => {
            let mut p = vec![0x00, 0, 0];
            p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
            p.extend_from_slice(&[0, 0]);
            frame(&mut out, &mut seq, &p);
        }
        Reply::Err {
            code,
            state,
            message,
        } => {
            let mut p = vec![0xFF];
            p.extend_from_slice(&code.to_le_bytes());
            p.push(b'#');
            p.extend_from_slice(state.as_bytes());
            p.extend_from_slice(message.as_bytes());
            frame(&mut out, &mut seq, &p);
        }
        Reply::Rows { columns, rows } => {
            frame(&mut out, &mut seq, &[columns.len() as u8]);
            for (name, ty) in columns {
                let mut p = vec![];
                lenenc_str(&mut p, b"def");
                for _ in 0..3 {
                    lenenc_str(&mut p, b""); // schema, table, org_table
                }
                lenenc_str(&mut p, name.as_bytes());
                lenenc_str(&mut p, name.as_bytes());
                p.push(0x0c);
                p.extend_from_slice(&8u16.to_le_bytes());
                p.extend_from_slice(&32u32.to_le_bytes());
                p.push(*ty);
                p.extend_from_slice(&[0, 0, 0, 0, 0]); // flags, decimals, filler
                frame(&mut out, &mut seq, &p);
            }
            frame(&mut out, &mut seq, &eof_packet());
            for row in rows {
                let mut p = vec![];
                for v in row {
                    lenenc_str(&mut p, v.as_bytes());
                }
                frame(&mut out, &mut seq, &p);
            }
            frame(&mut out, &mut seq, &eof_packet());
        }
    }
    s.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn rw_takes_the_first_ro_place_and_duplicates_are_ignored() {
        let mut b = Backends::default();
        assert!(b.add(a("10.0.0.1:3306"), Kind::Ro));
        assert!(b.add(a("10.0.0.2:3306"), Kind::Ro));
        assert!(b.add(a("10.0.0.9:3306"), Kind::Rw));
        let order: Vec<_> = b.entries().iter().map(|e| (e.address, e.kind)).collect();
        assert_eq!(
            order,
            vec![
                (a("10.0.0.9:3306"), Kind::Rw),
                (a("10.0.0.2:3306"), Kind::Ro),
                (a("10.0.0.1:3306"), Kind::Ro),
            ]
        );
        assert!(
            !b.add(a("10.0.0.2:3306"), Kind::Ro),
            "same address and type"
        );
        assert!(
            b.add(a("10.0.0.2:3306"), Kind::Rw),
            "same address, other type"
        );
        assert_eq!(b.remove(0), Err(MSG_BAD_INDEX));
        assert_eq!(b.remove(5), Err(MSG_BAD_INDEX));
        b.remove(1).unwrap();
        assert_eq!(b.rows()[0].address, a("10.0.0.2:3306"));
    }

    #[test]
    fn patterns_match_like_the_lua_script() {
        assert!(backend_pattern("192.168.1.101:3306"));
        assert!(backend_pattern("999.1.1.1:99999"));
        for bad in [
            "db1:3306",
            "1.2.3.4:3306@2",
            "1.2.3:3306",
            "1.2.3.4",
            "1.2.3.4:123456",
        ] {
            assert!(!backend_pattern(bad), "{bad}");
        }
        assert!(config_pattern("config") && config_pattern("configgg"));
        assert!(!config_pattern("confi") && !config_pattern("configs"));
    }
}
