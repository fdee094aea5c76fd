//! A faithful stand-in for Atlas (Qihoo360 Atlas 2.2.2), for tests: its
//! admin port as `../shared/atlas-admin.md` documents it, rejections
//! included, its checker thread, and its proxy port's routing.
//!
//! - Handshake: protocol 10, `5.0.99-agent-admin`, charset 8, capabilities
//!   PROTOCOL_41 | SECURE_CONNECTION | LONG_PASSWORD, a random 20-byte
//!   scramble of printable characters (as mysql-proxy makes it).
//! - Login: a client without PROTOCOL_41 gets ERR 2007 "4.0 protocol is not
//!   supported" (sequence 2, no SQLSTATE marker) and is dropped; a wrong
//!   user gets 1045 / 28000 "unknown user", a wrong password 1045 "password
//!   doesn't match", and the connection is closed after either.
//! - Commands: COM_QUERY and COM_QUIT. Every other command (COM_PING,
//!   COM_INIT_DB, COM_STATISTICS, COM_FIELD_LIST, ...) gets 1105 / 07000
//!   "[admin] we only handle text-based queries (COM_QUERY)" from the admin
//!   script. An empty COM_QUERY gets 1105 "need a resultset +
//!   proxy.PROXY_SEND_RESULT ... got something else", after which the admin
//!   plugin closes the connection.
//! - Queries are matched like the admin Lua script does: on the whole
//!   lower-cased query, anchored, words separated by runs of whitespace
//!   (`%s+`). So a trailing `;`, a leading or trailing space, a host name or
//!   an `@weight` gets error 1105 / 07000 "use 'SELECT * FROM help' to see
//!   the supported commands". Atlas's quirks are kept: `SAVE CONFIGGG` is
//!   accepted (`config+`), `ADD SLAVE 999.1.1.1:3306` is answered with
//!   success and adds nothing, and `SAVE CONFIG` answers success even when
//!   the file cannot be written (see [`AtlasFixture::save_errors`]).
//!   `SELECT * FROM help` has Atlas 2.2.2's 16 rows.
//! - The table: new and re-onlined backends are `unknown`; the checker
//!   thread ([`FixtureConfig::checker`], Atlas's 4 s by default; tests use
//!   less) probes `unknown` and `down` backends and marks them `up` or
//!   `down`; [`AtlasFixture::set_state`] stands in for it where a test wants
//!   full control. An add of an address already listed with the same type is
//!   ignored with the same success reply; an rw backend added while ro
//!   backends exist takes the first ro entry's index and that entry moves to
//!   the end; `REMOVE BACKEND n` shifts later indices down. Backends added at
//!   run time have weight 1.
//! - The `.cnf` (if configured) is written 0600 at construction, is where
//!   the table comes from at every [`AtlasFixture::start`] (host names
//!   resolved, `@weight` read), and is what `SAVE CONFIG` rewrites as GLib
//!   does ([`glib`]): the whole file, `key=value`, weights dropped, host
//!   names as IPs, mode 0644.
//! - The proxy port ([`FixtureConfig::proxy_address`]) routes reads and
//!   writes by the table's states and weights ([`proxy`]).
//!
//! Not emulated (the agent never sends them, so they get the generic error):
//! the client allow-list and proxy-user commands (`clients`, `pwds`).
//!
//! The server runs on plain threads, so tests on any runtime (or none) can
//! use it; [`AtlasFixture::stop`] closes the listeners and every connection
//! (an Atlas that is down), [`AtlasFixture::start`] brings it back on the
//! same ports.

pub mod glib;
pub mod proxy;
pub mod wire;

use crate::port::ReservedPort;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ha_agent::drivers::atlas::{Backend, Kind, State};

pub use proxy::FakeBackend;
pub use wire::{
    scramble, CLIENT_LONG_PASSWORD, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, COM_FIELD_LIST,
    COM_INIT_DB, COM_PING, COM_QUERY, COM_QUIT, COM_STATISTICS,
};
use wire::{Reply, MYSQL_TYPE_LONG, MYSQL_TYPE_STRING};

pub const SERVER_VERSION: &str = "5.0.99-agent-admin";
/// What `SELECT VERSION` answers.
pub const ATLAS_VERSION: &str = "2.2.2";
const CAPABILITIES: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD;
/// Atlas's checker period (`sleep(4)` in its check_state thread).
pub const ATLAS_CHECKER_PERIOD: Duration = Duration::from_secs(4);
/// ER_UNKNOWN_ERROR / "07000": what mysql-proxy uses for every command error.
pub const ERR_COMMAND: u16 = 1105;
pub const SQLSTATE_COMMAND: &str = "07000";
pub const ERR_ACCESS: u16 = 1045;
pub const SQLSTATE_ACCESS: &str = "28000";
/// CR_VERSION_ERROR, sent to a client without PROTOCOL_41.
pub const ERR_OLD_PROTOCOL: u16 = 2007;
pub const MSG_OLD_PROTOCOL: &str = "4.0 protocol is not supported";
pub const MSG_UNMATCHED: &str = "use 'SELECT * FROM help' to see the supported commands";
pub const MSG_NOT_QUERY: &str = "[admin] we only handle text-based queries (COM_QUERY)";
pub const MSG_EMPTY_QUERY: &str =
    "need a resultset + proxy.PROXY_SEND_RESULT ... got something else";
pub const MSG_BAD_INDEX: &str = "invalid backend_id";
pub const MSG_NO_SUCH_ID: &str = "backend id is not exsit";
pub const MSG_BAD_OPERATION: &str = "invalid operation";
pub const MSG_UNKNOWN_USER: &str = "unknown user";
pub const MSG_BAD_PASSWORD: &str = "password doesn't match";
const RW_KEY: &str = "proxy-backend-addresses";
const RO_KEY: &str = "proxy-read-only-backend-addresses";

/// How the fixture Atlas is set up.
#[derive(Debug, Clone)]
pub struct FixtureConfig {
    pub user: String,
    pub password: String,
    /// The table at start (written into the `.cnf` when there is one).
    pub rw: Vec<SocketAddrV4>,
    pub ro: Vec<SocketAddrV4>,
    /// `@weight` of ro backends in the initial `.cnf` (and table).
    pub ro_weights: BTreeMap<SocketAddrV4, u32>,
    /// Atlas's `.cnf`: written (0600) at construction, loaded at every
    /// start, rewritten by `SAVE CONFIG`.
    pub cnf_path: Option<PathBuf>,
    /// The checker thread's period (None: no checker; states change only
    /// through [`AtlasFixture::set_state`] and the proxy's failures).
    pub checker: Option<Duration>,
    /// When the checker's first pass comes after the start (None: Atlas's
    /// 1 s). A real Atlas has been running for a while when a failover
    /// comes, so the phase of its checker against the failover is anyone's:
    /// the benchmark spreads it over the trials.
    pub checker_first_pass: Option<Duration>,
    /// The proxy port (None: none).
    pub proxy_address: Option<SocketAddr>,
    /// `pwds`: the users the proxy port accepts (plain passwords) and that
    /// it and the checker log in to backends as.
    pub proxy_users: Vec<(String, String)>,
}

impl Default for FixtureConfig {
    fn default() -> Self {
        FixtureConfig {
            user: "admin".into(),
            password: "admin-secret".into(),
            rw: vec![],
            ro: vec![],
            ro_weights: BTreeMap::new(),
            cnf_path: None,
            checker: Some(ATLAS_CHECKER_PERIOD),
            checker_first_pass: None,
            proxy_address: None,
            proxy_users: vec![],
        }
    }
}

/// One backend, without its index (the index is its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub address: SocketAddrV4,
    pub state: State,
    pub kind: Kind,
    /// Reads are shared among `up` ro backends by weight (1 unless the
    /// `.cnf` said `@weight`).
    pub weight: u32,
}

/// The backend table, with Atlas's semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends(Vec<Entry>);

impl Backends {
    /// `network_backends_add`: ignored (false) if the address is listed with
    /// the same type; an rw entry takes the first ro entry's place, which
    /// moves to the end.
    pub fn add(&mut self, address: SocketAddrV4, kind: Kind) -> bool {
        self.add_weighted(address, kind, 1)
    }

    pub fn add_weighted(&mut self, address: SocketAddrV4, kind: Kind, weight: u32) -> bool {
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
            weight,
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

    /// What `SAVE CONFIG` writes: addresses only (no weights).
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
    /// Any other command byte (COM_PING, COM_INIT_DB, ...).
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
    /// The ERR message, if refused.
    pub error: Option<String>,
}

/// The table after a change, and what changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub cause: String,
    pub table: Vec<Backend>,
    pub at: Instant,
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

pub(crate) struct Inner {
    pub(crate) backends: Backends,
    received: Vec<Received>,
    logins: Vec<Login>,
    history: Vec<Change>,
    save_errors: Vec<String>,
    hooks: Vec<(String, Hook)>,
    connections: u32,
    /// The round-robin position of reads.
    rr: u64,
    /// Queries the proxy relayed, by backend.
    served: HashMap<SocketAddrV4, u64>,
}

impl Inner {
    fn push_change(&mut self, cause: String) {
        let table = self.backends.rows();
        self.history.push(Change {
            cause,
            table,
            at: Instant::now(),
        });
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: FixtureConfig,
    inner: Mutex<Inner>,
    /// Notified whenever a command is recorded, and at stop.
    received: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_connection_id(&self) -> u32 {
        let mut g = self.lock();
        g.connections += 1;
        g.connections
    }

    /// Sets the state of the entry `address`/`kind` if `pred` holds for its
    /// current state (it may have been removed or set offline meanwhile).
    pub(crate) fn set_state_if(
        &self,
        address: SocketAddrV4,
        kind: Kind,
        pred: impl Fn(State) -> bool,
        state: State,
        who: &str,
    ) {
        let mut g = self.lock();
        let Some(i) = g
            .backends
            .0
            .iter()
            .position(|e| e.address == address && e.kind == kind)
        else {
            return;
        };
        let cur = g.backends.0[i].state;
        if cur != state && pred(cur) {
            g.backends.0[i].state = state;
            g.push_change(format!("{who}: backend {} {state}", i + 1));
        }
    }

    /// A connection to a backend failed: Atlas marks it down (unless offline).
    pub(crate) fn mark_down(&self, address: SocketAddrV4, kind: Kind, why: &str) {
        self.set_state_if(address, kind, |s| s != State::Offline, State::Down, why);
    }

    /// Where the proxy sends a query: reads to the `up` ro backends by
    /// weight, else (and writes) to the first `up` rw backend.
    pub(crate) fn route(&self, read: bool) -> Option<(SocketAddrV4, Kind)> {
        let mut g = self.lock();
        if read {
            let ups: Vec<Entry> = g
                .backends
                .0
                .iter()
                .filter(|e| e.kind == Kind::Ro && e.state == State::Up)
                .copied()
                .collect();
            let total: u64 = ups.iter().map(|e| u64::from(e.weight.max(1))).sum();
            if total > 0 {
                let mut pick = g.rr % total;
                g.rr = g.rr.wrapping_add(1);
                for e in ups {
                    let w = u64::from(e.weight.max(1));
                    if pick < w {
                        return Some((e.address, e.kind));
                    }
                    pick -= w;
                }
            }
        }
        g.backends
            .0
            .iter()
            .find(|e| e.kind == Kind::Rw && e.state == State::Up)
            .map(|e| (e.address, e.kind))
    }

    pub(crate) fn count_query(&self, addr: SocketAddrV4) {
        *self.lock().served.entry(addr).or_default() += 1;
    }

    /// Waits `d` unless `stop` is set (returns true then).
    pub(crate) fn sleep_unless_stopped(&self, stop: &AtomicBool, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .received
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Each client connection: a handle to shut its socket down, and its thread.
pub(crate) type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// Accepts on `listener` until `stop` is set (a connection wakes it); each
/// connection is served by `serve` on its own thread, kept in `conns` so
/// that [`close_all`] can close it.
pub(crate) fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    conns: Connections,
    serve: impl Fn(&TcpStream) + Send + Clone + 'static,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let serve = serve.clone();
        let t = std::thread::spawn(move || {
            serve(&stream);
            // The clone kept for close_all() holds the socket open: close
            // it explicitly, as the server would.
            let _ = stream.shutdown(Shutdown::Both);
        });
        let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|(_, t)| !t.is_finished());
        c.push((handle, t));
    }
}

/// Closes every connection of `conns` and waits for its thread.
pub(crate) fn close_all(conns: &Connections) {
    let all: Vec<_> = conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for (stream, t) in all {
        let _ = stream.shutdown(Shutdown::Both);
        let _ = t.join();
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    conns: Connections,
}

/// The fixture Atlas. Stops (closing every connection) when dropped.
pub struct AtlasFixture {
    /// The admin port, held while Atlas is down (see [`ReservedPort`]).
    admin: ReservedPort,
    addr: SocketAddr,
    /// The proxy port: held when the fixture chose it, else the address
    /// the config gave (bound at each start).
    proxy: Option<ReservedPort>,
    proxy_addr: Option<SocketAddr>,
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

    /// A fixture whose ports are chosen but not listening yet (Atlas is down
    /// until [`start`](Self::start)).
    pub fn new_stopped(cfg: FixtureConfig) -> io::Result<AtlasFixture> {
        // Held, not listening: connections are refused until start.
        let admin = ReservedPort::new(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = admin.addr();
        let proxy = match cfg.proxy_address {
            Some(a) if a.port() == 0 => Some(ReservedPort::new(a)?),
            _ => None,
        };
        let proxy_addr = proxy.as_ref().map(ReservedPort::addr).or(cfg.proxy_address);
        if let Some(path) = &cfg.cnf_path {
            fs::write(path, initial_cnf(&cfg))?;
            // As an operator keeps it: it holds the admin password.
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(AtlasFixture {
            admin,
            addr,
            proxy,
            proxy_addr,
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
                    rr: 0,
                    served: HashMap::new(),
                }),
                received: Condvar::new(),
            }),
            running: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy port, if configured.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
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
            g.backends = backends;
            g.push_change("start".into());
        }
        let listener = self.admin.listen()?;
        let proxy_listener = match (&self.proxy, self.proxy_addr) {
            (Some(p), _) => Some(p.listen()?),
            // std sets SO_REUSEADDR, so the port binds again after a stop.
            (None, Some(a)) => Some(TcpListener::bind(a)?),
            (None, None) => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Connections = Arc::default();
        let mut threads = Vec::new();
        {
            let (stop, conns, shared) = (stop.clone(), conns.clone(), self.shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("atlas-fixture".into())
                    .spawn(move || {
                        accept_loop(listener, stop, conns, move |s| {
                            let _ = serve(&shared, s);
                        })
                    })?,
            );
        }
        if let Some(l) = proxy_listener {
            let (stop, conns, shared) = (stop.clone(), conns.clone(), self.shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("atlas-proxy".into())
                    .spawn(move || {
                        accept_loop(l, stop, conns, move |s| {
                            let _ = proxy::serve_client(&shared, s);
                        })
                    })?,
            );
        }
        if let Some(period) = self.shared.cfg.checker {
            let first = self
                .shared
                .cfg
                .checker_first_pass
                .unwrap_or(period.min(Duration::from_secs(1)));
            threads.push(proxy::checker(
                self.shared.clone(),
                first,
                period,
                stop.clone(),
            )?);
        }
        *running = Some(Running {
            stop,
            threads,
            conns,
        });
        Ok(())
    }

    /// Closes the listeners and every client connection (Atlas is down).
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
        // Wake the accept loops and the checker so they see the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(p) = self.proxy_addr {
            let _ = TcpStream::connect(p);
        }
        {
            let _g = self.shared.lock();
            self.shared.received.notify_all();
        }
        for t in r.threads {
            let _ = t.join();
        }
        close_all(&r.conns);
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

    /// The entries with their weights.
    pub fn entries(&self) -> Vec<Entry> {
        self.shared.lock().backends.0.clone()
    }

    /// Stands in for Atlas's checker (or an operator's SET OFFLINE).
    pub fn set_state(&self, ndx: u64, state: State) -> Result<(), String> {
        let mut g = self.shared.lock();
        g.backends.set_state(ndx, state).map_err(String::from)?;
        g.push_change(format!("test: backend {ndx} {state}"));
        Ok(())
    }

    /// One pass of the checker now (what its thread does every period).
    pub fn check_now(&self) {
        proxy::check_once(&self.shared);
    }

    /// Changes the table directly (an operator, or a restarted Atlas's
    /// config), recorded in the history as `cause`.
    pub fn edit(&self, cause: &str, f: impl FnOnce(&mut Backends)) {
        let mut g = self.shared.lock();
        f(&mut g.backends);
        g.push_change(cause.into());
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

    /// Queries the proxy port relayed to `backend`.
    pub fn served_by(&self, backend: SocketAddrV4) -> u64 {
        self.shared
            .lock()
            .served
            .get(&backend)
            .copied()
            .unwrap_or(0)
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
            None => (
                cfg.rw.iter().map(|&a| (a, 1)).collect(),
                cfg.ro
                    .iter()
                    .map(|&a| (a, cfg.ro_weights.get(&a).copied().unwrap_or(1)))
                    .collect(),
            ),
        };
        // Atlas adds the rw backends first, then the ro ones.
        let mut b = Backends::default();
        for (a, _) in rw {
            b.add(a, Kind::Rw);
        }
        for (a, w) in ro {
            b.add_weighted(a, Kind::Ro, w);
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
    let join = |v: &[SocketAddrV4], weights: bool| {
        v.iter()
            .map(|a| match cfg.ro_weights.get(a).filter(|_| weights) {
                Some(w) => format!("{a}@{w}"),
                None => a.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let pwds: Vec<String> = cfg
        .proxy_users
        .iter()
        .map(|(u, _)| format!("{u}:qtyU1btXOo074Itvx0UR9Q=="))
        .collect();
    format!(
        "[mysql-proxy]\n\
# written by the ha-lab Atlas fixture\n\
admin-username = {}\n\
admin-password = {}\n\
{RW_KEY} = {}\n\
{RO_KEY} = {}\n\
pwds = {}\n\
event-threads = 8\n",
        cfg.user,
        cfg.password,
        join(&cfg.rw, false),
        join(&cfg.ro, true),
        if pwds.is_empty() {
            "root:qtyU1btXOo074Itvx0UR9Q==".to_string()
        } else {
            pwds.join(",")
        }
    )
}

/// The rw and ro lists of a `.cnf`, as Atlas loads them: `ip:port@weight`
/// allowed for ro, host names resolved (Atlas shows them as addresses).
#[allow(clippy::type_complexity)]
pub fn read_cnf_backends(
    path: &Path,
) -> io::Result<(Vec<(SocketAddrV4, u32)>, Vec<(SocketAddrV4, u32)>)> {
    let text = fs::read_to_string(path)?;
    let kf = glib::KeyFile::parse(&text);
    let list = |key: &str| -> io::Result<Vec<(SocketAddrV4, u32)>> {
        let Some(v) = kf.get("mysql-proxy", key) else {
            return Ok(vec![]);
        };
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (addr, weight) = match item.rsplit_once('@') {
                    Some((a, w)) => (a, w.trim().parse().unwrap_or(1)),
                    None => (item, 1),
                };
                let resolved = addr.parse::<SocketAddrV4>().ok().or_else(|| {
                    addr.to_socket_addrs().ok()?.find_map(|a| match a {
                        SocketAddr::V4(a) => Some(a),
                        SocketAddr::V6(_) => None,
                    })
                });
                resolved.map(|a| (a, weight)).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {item:?} is not ip:port or host:port", path.display()),
                    )
                })
            })
            .collect()
    };
    Ok((list(RW_KEY)?, list(RO_KEY)?))
}

// ---- the admin protocol, server side ----------------------------------------

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

fn record(shared: &Shared, command: Command, error: Option<String>) {
    shared.lock().received.push(Received { command, error });
    shared.received.notify_all();
}

fn serve(shared: &Shared, s: &TcpStream) -> io::Result<()> {
    let (challenge, seq, auth) =
        wire::greet(s, SERVER_VERSION, shared.next_connection_id(), CAPABILITIES)?;
    let Some(auth) = auth else {
        return Ok(()); // malformed: Atlas drops the connection
    };
    let mut login = Login {
        user: auth.user.clone(),
        capabilities: auth.capabilities,
        error: None,
    };
    if auth.capabilities & CLIENT_PROTOCOL_41 == 0 {
        // server_read_auth: a raw ERR (no SQLSTATE marker) with the
        // connection's next packet number, then the connection is dropped.
        let mut p = vec![0xFF];
        p.extend_from_slice(&ERR_OLD_PROTOCOL.to_le_bytes());
        p.extend_from_slice(MSG_OLD_PROTOCOL.as_bytes());
        login.error = Some(MSG_OLD_PROTOCOL.into());
        shared.lock().logins.push(login);
        return wire::write_packet(s, seq.wrapping_add(1), &p);
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
        wire::write_reply(s, seq.wrapping_add(1), &reply)?;
        return Ok(()); // and close
    }
    wire::write_reply(s, seq.wrapping_add(1), &Reply::Ok)?;
    loop {
        let Ok((seq, p)) = wire::read_packet(s) else {
            return Ok(());
        };
        let Some(&com) = p.first() else {
            return Ok(());
        };
        let (command, reply, close) = match com {
            COM_QUIT => {
                record(shared, Command::Quit, None);
                return Ok(());
            }
            // The admin plugin answers an empty query itself, then closes.
            COM_QUERY if p.len() == 1 => (
                Command::Query(String::new()),
                command_error(MSG_EMPTY_QUERY),
                true,
            ),
            COM_QUERY => {
                let q = String::from_utf8_lossy(&p[1..]).into_owned();
                let reply = execute(shared, &q);
                (Command::Query(q), reply, false)
            }
            // The admin script's read_query: anything but COM_QUERY.
            other => (Command::Other(other), command_error(MSG_NOT_QUERY), false),
        };
        let error = match &reply {
            Reply::Err { message, .. } => Some(message.clone()),
            _ => None,
        };
        record(shared, command, error);
        wire::write_reply(s, seq.wrapping_add(1), &reply)?;
        if close {
            let _ = (&*s).flush();
            return Ok(());
        }
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
        g.push_change("operator (concurrent)".into());
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
                let (rw, ro) = (g.backends.list(Kind::Rw), g.backends.list(Kind::Ro));
                if let Err(e) = glib::save_config(path, &rw, &ro) {
                    // Atlas: g_critical("g_key_file_load_from_file: ...") and success.
                    g.save_errors.push(format!("{}: {e}", path.display()));
                }
            }
            status_reply()
        }
        _ => command_error(MSG_UNMATCHED),
    };
    if changed {
        g.push_change(query.to_string());
    }
    reply
}

/// Atlas 2.2.2's help table (16 rows).
pub const HELP: [(&str, &str); 16] = [
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
    (
        "ADD ENPWD $pwd",
        "example: \"add enpwd user:encrypted_password\", ...",
    ),
    ("REMOVE PWD $pwd", "example: \"remove pwd user\", ..."),
    ("SAVE CONFIG", "save the backends to config file"),
    ("SELECT VERSION", "display the version of Atlas"),
];

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
