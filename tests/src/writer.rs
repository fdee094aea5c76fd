//! A client that writes continuously, as an application does, and keeps
//! the receipt of every write the server acknowledged: one thread inside a
//! lab namespace with its own single-threaded runtime, one connection at a
//! time (reopened after any failure), one auto-committed INSERT per row.
//!
//! What it proves: every acknowledged row (tag) must be found on whichever
//! server is primary afterwards; an acknowledged write that is missing was
//! lost. The server that acknowledged each row is recorded (`@@server_id`
//! of the connection), so a failover shows as the first acknowledgement
//! from the new primary.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::mariadb::{APP_PASSWORD, APP_USER};
use crate::netns::enter_netns;

/// Pause after a refused connect or a refused write (read-only): keeps the
/// loop from spinning while the failover is under way.
const RETRY_PAUSE: Duration = Duration::from_millis(2);

/// How the client behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterMode {
    /// Bound on a connect attempt: a peer that died keeps SYNs unanswered.
    pub connect_timeout: Duration,
    /// Bound on one INSERT (a commit waiting for a semi-sync ack included).
    pub write_timeout: Duration,
    /// A new connection for every write: measures when the target became
    /// writable, free of a stale connection's timeout.
    pub fresh_connections: bool,
}

impl WriterMode {
    /// An application: one long-lived connection, generous timeouts.
    pub const APP: WriterMode = WriterMode {
        connect_timeout: Duration::from_millis(100),
        write_timeout: Duration::from_millis(300),
        fresh_connections: false,
    };
    /// A prober: a fresh connection per write, short timeouts.
    pub const PROBE: WriterMode = WriterMode {
        connect_timeout: Duration::from_millis(20),
        write_timeout: Duration::from_millis(50),
        fresh_connections: true,
    };
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub tag: u64,
    pub server_id: u32,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    acks: Vec<Ack>,
    attempts: u64,
    last_error: Option<String>,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<Result<()>>>,
    prefix: String,
}

impl Writer {
    /// Starts writing `'<prefix><n>'` rows into `app.t` at `target` from
    /// namespace `ns`, for at most `bound`.
    pub fn start(
        ns: &str,
        target: SocketAddrV4,
        prefix: &str,
        mode: WriterMode,
        bound: Duration,
    ) -> Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ns2, stop2, shared2, prefix2) = (
            ns.to_string(),
            stop.clone(),
            shared.clone(),
            prefix.to_string(),
        );
        let thread = std::thread::Builder::new()
            .name("lab-writer".into())
            .spawn(move || -> Result<()> {
                enter_netns(&ns2)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(write_loop(target, &prefix2, mode, &stop2, &shared2, bound));
                Ok(())
            })?;
        Ok(Writer {
            stop,
            shared,
            thread: Some(thread),
            prefix: prefix.to_string(),
        })
    }

    /// The tag of row `n` as stored in `app.t.v`.
    pub fn tag(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.shared.lock().unwrap().acks.clone()
    }

    /// The first write acknowledged by `server_id` at or after `t`.
    pub fn first_ack_from(&self, server_id: u32, t: Instant) -> Option<Ack> {
        self.shared
            .lock()
            .unwrap()
            .acks
            .iter()
            .find(|a| a.server_id == server_id && a.at >= t)
            .copied()
    }

    /// Waits (bounded) until at least `n` writes were acknowledged.
    pub fn wait_acks(&self, n: usize, bound: Duration) -> Result<()> {
        crate::wait_until(
            bound,
            format!("{n} writes acknowledged ({})", self.prefix),
            || self.shared.lock().unwrap().acks.len() >= n,
        )
        .map(|_| ())
        .with_context(|| format!("last error: {:?}", self.last_error()))
    }

    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().unwrap().last_error.clone()
    }

    /// Stops the thread; returns every acknowledged write and the attempts.
    pub fn finish(mut self) -> Result<(Vec<Ack>, u64)> {
        self.shutdown()?;
        let s = self.shared.lock().unwrap();
        Ok((s.acks.clone(), s.attempts))
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the writer thread panicked"))?
                .context("the writer thread failed")?;
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

async fn write_loop(
    target: SocketAddrV4,
    prefix: &str,
    mode: WriterMode,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    bound: Duration,
) {
    let deadline = Instant::now() + bound;
    let mut conn: Option<(Conn, u32)> = None;
    let mut n: u64 = 0;
    let note = |e: String| shared.lock().unwrap().last_error = Some(e);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Some((c, server_id)) = conn.as_mut() else {
            match connect(target, mode).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    note(e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            continue;
        };
        let sql = format!("INSERT INTO app.t (v, origin) VALUES ('{prefix}{n}', @@server_id)");
        shared.lock().unwrap().attempts += 1;
        match tokio::time::timeout(mode.write_timeout, c.query_drop(sql)).await {
            Ok(Ok(())) => {
                shared.lock().unwrap().acks.push(Ack {
                    tag: n,
                    server_id: *server_id,
                    at: Instant::now(),
                });
                n += 1;
                if mode.fresh_connections {
                    conn = None;
                }
            }
            Ok(Err(mysql_async::Error::Server(e))) => {
                // Refused (read-only, ...): the connection is fine. The row
                // was not written, so its tag is used again.
                note(format!("{} {}", e.code, e.message));
                if mode.fresh_connections {
                    conn = None;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(e)) => {
                note(e.to_string());
                conn = None;
            }
            Err(_) => {
                // No answer: the server may have committed it or not; the
                // tag is not reused (it is not acknowledged either way).
                note(format!("no answer within {:?}", mode.write_timeout));
                n += 1;
                conn = None;
            }
        }
    }
}

async fn connect(
    target: SocketAddrV4,
    mode: WriterMode,
) -> std::result::Result<(Conn, u32), String> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(target.ip().to_string())
        .resolved_ips(Some(vec![std::net::IpAddr::V4(*target.ip())]))
        .tcp_port(target.port())
        .user(Some(APP_USER))
        .pass(Some(APP_PASSWORD))
        .prefer_socket(false)
        .tcp_nodelay(true)
        .stmt_cache_size(0);
    let mut c = match tokio::time::timeout(mode.connect_timeout, Conn::new(opts)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => {
            return Err(format!(
                "connect: no answer within {:?}",
                mode.connect_timeout
            ))
        }
    };
    match tokio::time::timeout(
        mode.write_timeout,
        c.query_first::<u32, _>("SELECT @@server_id"),
    )
    .await
    {
        Ok(Ok(Some(id))) => Ok((c, id)),
        Ok(Ok(None)) => Err("SELECT @@server_id returned nothing".into()),
        Ok(Err(e)) => Err(format!("SELECT @@server_id: {e}")),
        Err(_) => Err("SELECT @@server_id: no answer".into()),
    }
}
