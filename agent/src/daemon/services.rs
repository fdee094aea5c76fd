//! The services the agent drives besides the VIPs: the local MySQL (through
//! [`crate::decisions::database`]) and the local Atlas proxy (through [`crate::drivers::atlas`]),
//! each only when its section is configured. The daemon calls [`Services::sync`]
//! after every event; it recomputes what each service should be from the
//! election's view and hands it over without ever waiting for either.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::daemon::election_loop::ElectionView;
use crate::decisions::database::{wish_for, ForceError, LocalDb, PeerView};
use crate::decisions::proxy::{self, ProxyAddresses};
use crate::drivers::atlas::{AtlasHandle, AtlasReconciler, Password, Settings};
use crate::drivers::mysql::runner::DbHandle;
use crate::drivers::mysql::MysqlDriver;
use crate::operator::config::{AtlasConfig, Config, MysqlConfig, MysqlPasswords, WithSecret};
use crate::operator::status::{millis, AtlasSection, DatabaseStatus, Reply};

fn no_database() -> Reply {
    Reply::Error {
        message: "no [mysql] section: this agent does not manage a database".into(),
    }
}

/// How long a stopping agent waits for its last fence.
const STOP_FENCE_BOUND: Duration = Duration::from_secs(3);

struct Atlas {
    handle: AtlasHandle,
    addrs: ProxyAddresses,
    admin_address: String,
}

pub struct Services {
    db: Option<DbHandle>,
    db_events: Option<mpsc::UnboundedReceiver<LocalDb>>,
    atlas: Option<Atlas>,
    /// The local database as last reported (defaults without `[mysql]`).
    local_db: LocalDb,
}

impl Services {
    /// Starts what is configured: the sections that came with their
    /// passwords, read and checked by [`Checked::load`]. The local database
    /// is fenced first (within `mysql.timeout_ms`), before the election
    /// starts listening for the peer: the rest of the start-up would
    /// otherwise delay it.
    ///
    /// [`Checked::load`]: crate::operator::config::Checked::load
    pub async fn start(
        cfg: &Config,
        mysql: Option<WithSecret<MysqlConfig, MysqlPasswords>>,
        atlas: Option<WithSecret<AtlasConfig, Password>>,
    ) -> Result<Services> {
        let (db, db_events) = match mysql {
            Some(WithSecret {
                section: m,
                secret: pw,
            }) => {
                let driver = MysqlDriver::with_passwords(&m, pw.admin, pw.replication)
                    .context("[mysql]: cannot prepare the driver")?;
                let (h, rx) = DbHandle::spawn(driver);
                info!(server = %m.address, peer = %m.peer_address, "mysql: managing the local server (fencing it until the election decides)");
                if let Err(e) = h.fence_now(m.timeout()).await {
                    warn!("mysql: not fenced at start: {e}; fencing it as soon as a probe finds it writable");
                }
                (Some(h), Some(rx))
            }
            None => (None, None),
        };
        let atlas = match atlas {
            Some(WithSecret {
                section: a,
                secret: password,
            }) => {
                let settings = Settings::with_password(&a, password);
                let addrs = ProxyAddresses::from_config(cfg).context("[atlas] rw_backend")?;
                info!(admin = %a.admin_address, rw = %addrs.rw, "atlas: managing the local proxy's backends");
                Some(Atlas {
                    handle: AtlasReconciler::spawn(settings),
                    addrs,
                    admin_address: a.admin_address.to_string(),
                })
            }
            None => None,
        };
        Ok(Services {
            db,
            db_events,
            atlas,
            local_db: LocalDb::default(),
        })
    }

    /// The next change of the local database's state (never, without one).
    /// The caller gives it to the election as `Input::LocalDb`.
    pub async fn next_db_change(&mut self) -> LocalDb {
        let next = match self.db_events.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        };
        match next {
            Some(s) => {
                self.local_db = s;
                s
            }
            // The controller is gone (it never stops while the handle lives).
            None => std::future::pending().await,
        }
    }

    /// Hands each service what it should be now (never waits). While a
    /// takeover is provisional (it may still be handed back: a false
    /// alarm), neither the database nor the proxy is changed.
    pub fn sync(&self, election: &ElectionView) {
        let role = election.role();
        let peer = election
            .peer_alive()
            .then(|| election.peer_control())
            .flatten();
        if election.provisional() {
            return;
        }
        if let Some(db) = &self.db {
            db.set_peer(PeerView::from_control(peer.as_ref()));
            let wish = wish_for(role, false, peer.as_ref(), db.peer());
            db.set_wish(wish);
        }
        if let Some(a) = &self.atlas {
            let d = proxy::desired(&a.addrs, role, peer.as_ref(), self.local_db.replica_ok);
            let ro: Vec<String> = d.ro.iter().map(|a| a.to_string()).collect();
            let rw = d.rw;
            if a.handle.set_desired(d) {
                info!(%role, rw = %rw, ro = ?ro, "atlas: wanted backends changed");
            }
        }
    }

    /// `ha-agent rejoin --force`: the answer arrives on `reply` when done.
    pub fn rejoin_force(&self, reply: oneshot::Sender<Reply>) {
        let Some(db) = &self.db else {
            let _ = reply.send(no_database());
            return;
        };
        warn!("mysql: forced rejoin requested by the operator");
        let done = db.rejoin_force();
        tokio::spawn(async move {
            let answer = match done.await.unwrap_or(Err(ForceError::Stopped)) {
                Ok(rep) => Reply::Ok {
                    message: match (&rep.discarded, &rep.undone) {
                        (Some(e), Some(u)) => format!(
                            "rejoined {} in {:.0} ms; DISCARDED {e}: {u}, gone from its GTID history and binary logs",
                            rep.peer,
                            millis(rep.took)
                        ),
                        (Some(e), None) => format!(
                            "rejoined {} in {:.0} ms; DISCARDED {e} (still in this server's tables, gone from its GTID history and binary logs)",
                            rep.peer,
                            millis(rep.took)
                        ),
                        (None, _) => format!(
                            "rejoined {} in {:.0} ms; nothing had to be discarded",
                            rep.peer,
                            millis(rep.took)
                        ),
                    },
                },
                Err(e) => Reply::Error {
                    message: format!("forced rejoin failed: {e}"),
                },
            };
            let _ = reply.send(answer);
        });
    }

    /// `ha-agent promote --force`: the answer arrives on `reply` when done.
    pub fn promote_force(&self, reply: oneshot::Sender<Reply>) {
        let Some(db) = &self.db else {
            let _ = reply.send(no_database());
            return;
        };
        let done = db.promote_force();
        tokio::spawn(async move {
            let answer = match done.await.unwrap_or(Err(ForceError::Stopped)) {
                Ok(rep) => Reply::Ok {
                    message: format!(
                        "promoted in {:.0} ms{}; writes the old primary acknowledged without this server may be lost: they are in its binary log",
                        millis(rep.took),
                        rep.received
                            .as_ref()
                            .map(|g| format!(" (with everything received: {g})"))
                            .unwrap_or_default()
                    ),
                },
                Err(e) => Reply::Error {
                    message: format!("forced promotion failed: {e}"),
                },
            };
            let _ = reply.send(answer);
        });
    }

    pub fn database_status(&self) -> Option<DatabaseStatus> {
        self.db.as_ref().map(DbHandle::status)
    }

    pub fn atlas_status(&self) -> Option<AtlasSection> {
        self.atlas
            .as_ref()
            .map(|a| AtlasSection::new(a.admin_address.clone(), &a.handle.status()))
    }

    /// Lines for the status's warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(d) = self.database_status() {
            if !d.fit {
                w.push(format!(
                    "the local database is unfit ({}): this node will not take the VIPs from a fit peer",
                    d.fitness
                ));
            }
            if let Some(e) = &d.errant {
                w.push(format!(
                    "rejoin blocked: this database has {} that {} lacks (see `ha-agent rejoin --force`)",
                    e.gtids, e.peer
                ));
            }
            if let Some(h) = d.semisync.as_ref().and_then(|s| s.promotion_held.as_ref()) {
                w.push(format!(
                    "promotion held: {h} (see `ha-agent promote --force`)"
                ));
            }
            if d.up && d.writable && d.wanted != "primary" {
                w.push("the local database is writable although this node is not MASTER (being fenced)".into());
            }
        }
        if let Some(a) = self.atlas_status() {
            if !a.reachable && a.consecutive_failures > 0 {
                w.push(format!("Atlas admin port {} unreachable", a.admin_address));
            }
            w.extend(a.warnings());
        }
        w
    }

    /// On the way out: fence the local server (the peer may be promoting it).
    pub async fn stop(&self) {
        if let Some(db) = &self.db {
            match db.stop_fenced(STOP_FENCE_BOUND).await {
                Ok(r) => info!(already = r.was_read_only, "mysql: fenced on the way out"),
                Err(e) => error!("mysql: {e}"),
            }
        }
    }
}
