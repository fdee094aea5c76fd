//! `ha-agent run`: the wiring. Three kinds of threads:
//!
//! - the election thread ([`election_loop`]): kernel events, probes,
//!   carrier, timers in; VIPs, ARP, probe templates out. Nothing slow;
//! - the probe senders (`drivers::sender`): real-time, one per CPU;
//! - this one, the services runtime: the database controller, Atlas, the
//!   hooks and the status socket, fed by the election's view.

pub mod election_loop;
pub mod services;

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, info_span, warn, Instrument};

use crate::drivers::boot;
use crate::drivers::hooks::HookRunner;
use crate::operator::config::{Checked, Secrets};
use crate::operator::status::server::{shut_out_warning, Request, StatusServer};
use crate::operator::status::{Reply, ServicesStatus};
use election_loop::{Command, ElectionThread, ElectionView, Notice};
use services::Services;

/// Runs the agent until SIGTERM/SIGINT (graceful handover) or a fatal error,
/// from the config as check-config checks it: the secrets and the group
/// read there are the ones used (each is read once).
pub async fn run(checked: Checked) -> Result<()> {
    let span = info_span!("agent", node = %checked.config.node.name);
    run_inner(checked).instrument(span).await
}

async fn run_inner(checked: Checked) -> Result<()> {
    let Checked {
        config,
        secrets: Secrets { key, mysql, atlas },
        status_gid,
    } = checked;
    let cfg = Arc::new(config);
    crate::drivers::privileges::check()?;
    let (boot, previous) = boot::next(&cfg.node.state_dir)?;
    if previous == boot::Previous::Unreadable {
        warn!(dir = %cfg.node.state_dir.display(), "the boot counter was unreadable: continuing from the clock");
    }
    // First: the database controller fences the local server at once,
    // before the election has heard the peer.
    let mut services = Services::start(&cfg, mysql, atlas).await?;
    let hooks = HookRunner::spawn(
        cfg.hooks.clone(),
        cfg.node.group.clone(),
        cfg.vips().iter().map(|v| v.instance.clone()).collect(),
        cfg.node.priority,
    );
    let (to_election, commands) = mpsc::channel(64);
    let (view_tx, mut view) = watch::channel(ElectionView::default());
    let (notice_tx, mut notices) = mpsc::unbounded_channel();
    let election = ElectionThread::spawn(cfg.clone(), key, boot, commands, view_tx, notice_tx)?;
    // After the eBPF load: the megabytes its BTF parsing used are given
    // back first (locked pages could not be).
    lock_memory();
    let server = StatusServer::bind(&cfg.node.status_socket, status_gid)?;
    if let Some(dir) = server.closed_to_group() {
        warn!(socket = %server.path().display(), "{}", shut_out_warning(&dir));
    }
    let (request_tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<Reply>)>(8);
    if let Some(m) = &cfg.metrics {
        // Metrics are made from a status snapshot asked like the socket does.
        crate::operator::metrics::spawn(m.listen, request_tx.clone()).await?;
    }
    tokio::spawn(server.serve(move |req| {
        let request_tx = request_tx.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            if request_tx.send((req, tx)).await.is_err() {
                return stopping();
            }
            rx.await.unwrap_or_else(|_| stopping())
        }
    }));
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    break; // the election thread ended
                }
                // A copy: the election thread (real-time) must never wait
                // on this lock while the services work.
                let v = view.borrow_and_update().clone();
                services.sync(&v);
            }
            db = services.next_db_change() => {
                // The proxy's wish depends on our replica's state too.
                let v = view.borrow().clone();
                services.sync(&v);
                let _ = to_election.send(Command::LocalDb(db)).await;
            }
            notice = notices.recv() => match notice {
                Some(Notice::Hook(h)) => hooks.notify(h),
                None => break,
            },
            Some((req, reply)) = requests.recv() => {
                answer(req, reply, &to_election, &services, &hooks).await;
            }
        }
    }
    // Drain what the election said last (its STOP hook).
    while let Ok(Notice::Hook(h)) = notices.try_recv() {
        hooks.notify(h);
    }
    let ended = election.join();
    services.stop().await;
    hooks.drain().await;
    StatusServer::remove(&cfg.node.status_socket);
    ended?;
    info!("ha-agent stopped");
    Ok(())
}

fn stopping() -> Reply {
    Reply::Error {
        message: "the agent is stopping".into(),
    }
}

/// Answers one operator request: the election's part from its thread, the
/// services' part from here.
async fn answer(
    req: Request,
    reply: oneshot::Sender<Reply>,
    to_election: &mpsc::Sender<Command>,
    services: &Services,
    hooks: &HookRunner,
) {
    match req {
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            if to_election.send(Command::Status(tx)).await.is_err() {
                let _ = reply.send(stopping());
                return;
            }
            let (hooks, hook_totals) = hooks.snapshot();
            let services = ServicesStatus {
                hooks,
                hook_totals,
                database: services.database_status(),
                atlas: services.atlas_status(),
                warnings: services.warnings(),
            };
            tokio::spawn(async move {
                let answer = match rx.await {
                    Ok(s) => Reply::Status(Box::new(s.with_services(services))),
                    Err(_) => stopping(),
                };
                let _ = reply.send(answer);
            });
        }
        Request::Switchover => {
            let (tx, rx) = oneshot::channel();
            if to_election.send(Command::Switchover(tx)).await.is_err() {
                let _ = reply.send(stopping());
                return;
            }
            tokio::spawn(async move {
                let answer = match rx.await {
                    Ok(Ok(message)) => Reply::Ok { message },
                    Ok(Err(message)) => Reply::Error { message },
                    Err(_) => stopping(),
                };
                let _ = reply.send(answer);
            });
        }
        // Answered by the database controller when done.
        Request::RejoinForce => services.rejoin_force(reply),
        Request::PromoteForce => services.promote_force(reply),
    }
}

/// Keeps the agent's pages in memory (the real-time senders must never
/// wait for a page fault to disk). `MCL_ONFAULT`: pages are locked as they
/// are touched, so reserved but unused stacks cost nothing.
fn lock_memory() {
    // SAFETY: plain system call with flags only.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot lock the agent's memory (CAP_IPC_LOCK): a page fault could delay a probe");
    }
}
