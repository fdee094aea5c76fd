//! The fixture Atlas's data side: the proxy port (the seed's 127.0.0.1:1234)
//! and the checker thread, as far as they decide who serves what.
//!
//! - Routing: a `SELECT` outside a transaction goes to the `up` ro backends
//!   (weighted round-robin), or to the rw backend when none is up; anything
//!   else goes to the first `up` rw backend. A backend that is not `up`
//!   (`unknown` after `ADD`, `down`, `offline`) gets nothing. With nowhere
//!   to send a query the client's connection is closed (the client sees
//!   `ERROR 2013 Lost connection to server during query`, as with Atlas).
//! - Clients log in with a user of the fixture's `pwds` (plain passwords
//!   here); the fixture logs in to backends as that user, one connection
//!   per client and backend, and relays each reply packet by packet. A
//!   backend that cannot be reached is marked `down` (unless `offline`).
//! - The checker thread, every period (Atlas: 4 s), probes every backend
//!   that is `unknown` or `down`: connect within 1 s and log in (as the
//!   first `pwds` user, then `SELECT 1`; an access-denied answer counts as
//!   alive, as in Atlas); alive is `up`, anything else `down`.
//!
//! Not emulated: connection pools, `/*master*/` hints, prepared statements,
//! `LOAD DATA LOCAL`, the client allow-list.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ha_agent::drivers::atlas::{Kind, State};

use super::wire::{self, Login, Reply};
use super::Shared;

/// What the proxy port announces (Atlas 2.2 answers clients itself).
pub const PROXY_VERSION: &str = "5.0.81-log";
const PROXY_CAPABILITIES: u32 = wire::CLIENT_LONG_PASSWORD
    | wire::CLIENT_FOUND_ROWS
    | wire::CLIENT_LONG_FLAG
    | wire::CLIENT_CONNECT_WITH_DB
    | wire::CLIENT_PROTOCOL_41
    | wire::CLIENT_TRANSACTIONS
    | wire::CLIENT_SECURE_CONNECTION;
/// Atlas's checker connects with a 1 s timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connecting to a backend for a client.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(1);

/// True if a MySQL server answers at `addr` as Atlas's checker sees it.
pub fn probe(addr: SocketAddrV4, user: Option<&(String, String)>) -> bool {
    let (u, p) = user.map_or(("", ""), |(u, p)| (u.as_str(), p.as_str()));
    match wire::client_login(addr, u, p, None, PROBE_TIMEOUT) {
        Ok(Login::Ok(s)) => {
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            let alive = wire::command(&s, b"\x03SELECT 1").is_ok_and(|r| {
                r.first()
                    .and_then(|(_, p)| p.first())
                    .is_some_and(|&b| b != 0xFF)
            });
            let _ = wire::write_packet(&s, 0, &[wire::COM_QUIT]);
            alive
        }
        // mysql_real_connect's 1045 (access denied) counts as alive.
        Ok(Login::Refused(e)) => e.get(1..3) == Some(&1045u16.to_le_bytes()[..]),
        Err(_) => false,
    }
}

/// One checker pass: probes the `unknown` and `down` backends.
pub(crate) fn check_once(shared: &Shared) {
    let (targets, user) = {
        let g = shared.lock();
        let t: Vec<(SocketAddrV4, Kind)> = g
            .backends
            .entries()
            .iter()
            .filter(|e| matches!(e.state, State::Unknown | State::Down))
            .map(|e| (e.address, e.kind))
            .collect();
        (t, shared.cfg.proxy_users.first().cloned())
    };
    for (address, kind) in targets {
        let alive = probe(address, user.as_ref());
        let state = if alive { State::Up } else { State::Down };
        shared.set_state_if(
            address,
            kind,
            |s| matches!(s, State::Unknown | State::Down),
            state,
            "checker",
        );
    }
}

/// The checker thread: a first pass after `first` (Atlas's thread sleeps
/// 1 s before it), then one every `period`, until `stop`.
pub(crate) fn checker(
    shared: Arc<Shared>,
    first: Duration,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("atlas-checker".into())
        .spawn(move || {
            let mut wait = first;
            loop {
                if shared.sleep_unless_stopped(&stop, wait) {
                    return;
                }
                check_once(&shared);
                wait = period;
            }
        })
}

/// A read: a SELECT (or SHOW) outside a transaction.
fn is_read(sql: &str, in_tx: bool) -> bool {
    let l = sql.trim_start().to_ascii_lowercase();
    !in_tx
        && (l.starts_with("select") || l.starts_with("show"))
        && !l.contains("for update")
        && !l.contains("lock in share mode")
}

pub(crate) fn serve_client(shared: &Shared, s: &TcpStream) -> io::Result<()> {
    let (challenge, seq, auth) = wire::greet(
        s,
        PROXY_VERSION,
        shared.next_connection_id(),
        PROXY_CAPABILITIES,
    )?;
    let Some(auth) = auth else {
        return Ok(());
    };
    let user = shared
        .cfg
        .proxy_users
        .iter()
        .find(|(u, pw)| {
            *u == auth.user && auth.response == wire::scramble(pw.as_bytes(), &challenge)
        })
        .cloned();
    let Some((user, password)) = user else {
        let msg = format!(
            "Access denied for user '{}' (using password: YES)",
            auth.user
        );
        wire::write_packet(
            s,
            seq.wrapping_add(1),
            &wire::err_packet(1045, "28000", &msg),
        )?;
        return Ok(());
    };
    wire::write_packet(s, seq.wrapping_add(1), &wire::ok_packet())?;
    let mut db = auth.db.clone();
    let mut backends: HashMap<SocketAddrV4, TcpStream> = HashMap::new();
    let mut in_tx = false;
    loop {
        let Ok((seq, p)) = wire::read_packet(s) else {
            return Ok(());
        };
        let Some(&com) = p.first() else {
            return Ok(());
        };
        match com {
            wire::COM_QUIT => return Ok(()),
            wire::COM_PING => wire::write_reply(s, seq.wrapping_add(1), &Reply::Ok)?,
            wire::COM_INIT_DB => {
                // Used for the connections opened from now on.
                db = Some(String::from_utf8_lossy(&p[1..]).into_owned());
                backends.clear();
                wire::write_reply(s, seq.wrapping_add(1), &Reply::Ok)?;
            }
            wire::COM_QUERY => {
                let sql = String::from_utf8_lossy(&p[1..]).into_owned();
                let l = sql.trim().to_ascii_lowercase();
                let read = is_read(&sql, in_tx);
                if l == "begin" || l.starts_with("start transaction") || l == "set autocommit=0" {
                    in_tx = true;
                } else if l == "commit" || l == "rollback" || l == "set autocommit=1" {
                    in_tx = false;
                }
                let Some((addr, kind)) = shared.route(read) else {
                    // Nowhere to send it: the client loses its connection.
                    return Ok(());
                };
                let conn = match backends.get(&addr) {
                    Some(c) => c,
                    None => {
                        match wire::client_login(
                            addr,
                            &user,
                            &password,
                            db.as_deref(),
                            BACKEND_TIMEOUT,
                        ) {
                            Ok(Login::Ok(c)) => {
                                // A backend that stops answering must not hang the client forever.
                                c.set_read_timeout(Some(Duration::from_secs(30)))?;
                                backends.entry(addr).or_insert(c)
                            }
                            Ok(Login::Refused(err)) => {
                                wire::write_packet(s, seq.wrapping_add(1), &err)?;
                                continue;
                            }
                            Err(_) => {
                                shared.mark_down(addr, kind, "proxy: connect failed");
                                return Ok(());
                            }
                        }
                    }
                };
                match wire::command(conn, &p) {
                    Ok(reply) => {
                        let mut out = Vec::new();
                        for (i, (_, packet)) in reply.iter().enumerate() {
                            wire::frame(
                                &mut out,
                                &mut (seq.wrapping_add(1).wrapping_add(i as u8)),
                                packet,
                            );
                        }
                        io::Write::write_all(&mut &*s, &out)?;
                        shared.count_query(addr);
                    }
                    Err(_) => {
                        shared.mark_down(addr, kind, "proxy: backend connection failed");
                        return Ok(());
                    }
                }
            }
            _ => wire::write_reply(
                s,
                seq.wrapping_add(1),
                &Reply::Err {
                    code: 1105,
                    state: "07000",
                    message:
                        "the fixture proxy handles COM_QUERY, COM_PING, COM_INIT_DB and COM_QUIT"
                            .into(),
                },
            )?,
        }
    }
}

/// A MySQL server stand-in for tests without MariaDB: greets, accepts its
/// one user (any other login gets 1045), answers `SELECT @@server_id` with
/// its id, `SELECT 1` with 1 and anything else with OK.
pub struct FakeBackend {
    /// Held while stopped (see [`ReservedPort`]).
    port: crate::port::ReservedPort,
    addr: SocketAddrV4,
    server_id: u32,
    running: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    queries: Arc<Mutex<Vec<String>>>,
    conns: super::Connections,
    user: (String, String),
}

impl FakeBackend {
    /// A running fake server on a free loopback port, for `user`.
    pub fn start(server_id: u32, user: (&str, &str)) -> io::Result<FakeBackend> {
        let port = crate::port::ReservedPort::new(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = match port.addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(io::Error::other("no IPv4 loopback")),
        };
        let b = FakeBackend {
            port,
            addr,
            server_id,
            running: Mutex::new(None),
            queries: Arc::default(),
            conns: Arc::default(),
            user: (user.0.to_string(), user.1.to_string()),
        };
        b.resume()?;
        Ok(b)
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The queries it answered (probes included), in order.
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Listens again on the same port (no-op if running).
    pub fn resume(&self) -> io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Ok(());
        }
        let listener = self.port.listen()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, queries, conns, id, user) = (
            stop.clone(),
            self.queries.clone(),
            self.conns.clone(),
            self.server_id,
            self.user.clone(),
        );
        let t = std::thread::spawn(move || {
            super::accept_loop(listener, stop2, conns, move |s| {
                let _ = fake_serve(s, id, &user, &queries);
            })
        });
        *running = Some((stop, t));
        Ok(())
    }

    /// Closes the listener and every connection (the server died).
    pub fn stop(&self) {
        let Some((stop, t)) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        let _ = t.join();
        super::close_all(&self.conns);
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fake_serve(
    s: &TcpStream,
    server_id: u32,
    user: &(String, String),
    queries: &Mutex<Vec<String>>,
) -> io::Result<()> {
    let caps = wire::CLIENT_LONG_PASSWORD
        | wire::CLIENT_LONG_FLAG
        | wire::CLIENT_CONNECT_WITH_DB
        | wire::CLIENT_PROTOCOL_41
        | wire::CLIENT_TRANSACTIONS
        | wire::CLIENT_SECURE_CONNECTION;
    let (challenge, seq, auth) = wire::greet(s, "10.11.99-fake", server_id, caps)?;
    let ok = auth.is_some_and(|a| {
        a.user == user.0 && a.response == wire::scramble(user.1.as_bytes(), &challenge)
    });
    if !ok {
        let e = wire::err_packet(1045, "28000", "Access denied");
        return wire::write_packet(s, seq.wrapping_add(1), &e);
    }
    wire::write_packet(s, seq.wrapping_add(1), &wire::ok_packet())?;
    loop {
        let (seq, p) = wire::read_packet(s)?;
        match p.first() {
            Some(&wire::COM_QUERY) => {
                let q = String::from_utf8_lossy(&p[1..]).into_owned();
                let l = q.trim().to_ascii_lowercase();
                queries.lock().unwrap_or_else(|p| p.into_inner()).push(q);
                let reply = if l == "select @@server_id" {
                    Reply::Rows {
                        columns: vec![("@@server_id", wire::MYSQL_TYPE_LONG)],
                        rows: vec![vec![server_id.to_string()]],
                    }
                } else if l == "select 1" {
                    Reply::Rows {
                        columns: vec![("1", wire::MYSQL_TYPE_LONG)],
                        rows: vec![vec!["1".into()]],
                    }
                } else {
                    Reply::Ok
                };
                wire::write_reply(s, seq.wrapping_add(1), &reply)?;
            }
            Some(&wire::COM_QUIT) | None => return Ok(()),
            Some(_) => wire::write_reply(s, seq.wrapping_add(1), &Reply::Ok)?,
        }
    }
}
