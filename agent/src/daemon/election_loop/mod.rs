//! The election's own thread and runtime: kernel events, verified probes,
//! carrier changes, timers, signals and operator commands in; VIPs, ARP,
//! probe templates, the services' view and hook requests out.
//!
//! Nothing slow runs here: the database, Atlas, hooks and status rendering
//! live on the services runtime and talk to this thread through channels,
//! so no query, hook or status request can delay a decision. The loop marks
//! itself alive for the probe senders after each pass ([`Heartbeat`]): if
//! it hangs, the senders fall silent and the lease lapses.

mod report;
mod setup;

use setup::templates;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_ebpf::{
    Event, EVENT_PEER_DOWN, EVENT_PEER_UP, EVENT_VIP_CONFLICT, EVENT_WITNESS_DOWN, EVENT_WITNESS_UP,
};
use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::decisions::database::LocalDb;
use crate::decisions::election::{
    Control, Election, FalseAlarm, Input, Output, PeerMessage, Role, Transition,
};
use crate::decisions::reannounce::Reannounce;
use crate::decisions::session::{Rejection, Sessions, Verdict};
use crate::drivers::arp::ArpSocket;
use crate::drivers::carrier::CarrierWatch;
use crate::drivers::ebpf::{monotonic_now_ns, Liveness};
use crate::drivers::hooks::HookState;
use crate::drivers::sender::{Heartbeat, SenderStats, Senders};
use crate::drivers::vip::VipDriver;
use crate::operator::config::{Config, Vip};
use crate::operator::status::{millis, Status};
use crate::protocol::{self, Key, Origin, Signer};

/// The loop wakes at least this often: heartbeat (well within the
/// senders' `LOOP_STALE`), counters, GARP refresh. Each wake costs tens of
/// microseconds on a VM.
const TICK: Duration = Duration::from_millis(40);
/// A VIP that could not be added or removed is tried again this often.
const VIP_RETRY: Duration = Duration::from_secs(1);
/// False alarms kept for the status.
const FALSE_ALARMS_KEPT: usize = 16;

/// What the services need to know of the election, published on change.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionView {
    pub role: Role,
    pub epoch: u64,
    /// The peer's control while it is heard.
    pub peer: Option<Control>,
    /// We hold the VIPs after a takeover that may still be handed back:
    /// the database and the proxy do not move yet.
    pub provisional: bool,
}

impl Default for ElectionView {
    fn default() -> Self {
        ElectionView {
            role: Role::Init,
            epoch: 0,
            peer: None,
            provisional: false,
        }
    }
}

impl ElectionView {
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn peer_alive(&self) -> bool {
        self.peer.is_some()
    }
    pub fn peer_control(&self) -> Option<Control> {
        self.peer
    }
    pub fn provisional(&self) -> bool {
        self.provisional
    }
}

/// Requests from the services side.
pub enum Command {
    /// The election's part of the status.
    Status(oneshot::Sender<Box<Status>>),
    /// Operator switchover: Ok(message) or Err(message).
    Switchover(oneshot::Sender<Result<String, String>>),
    LocalDb(LocalDb),
}

/// What the election thread tells the services side.
#[derive(Debug)]
pub enum Notice {
    Hook(HookState),
}

/// The running election thread.
pub struct ElectionThread {
    join: std::thread::JoinHandle<Result<()>>,
}

impl ElectionThread {
    /// Starts the thread and waits until it is set up (eBPF loaded and
    /// attached, sockets open, senders running), so start-up errors are
    /// the caller's.
    pub fn spawn(
        cfg: Arc<Config>,
        key: Key,
        boot: u64,
        commands: mpsc::Receiver<Command>,
        view: watch::Sender<ElectionView>,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<ElectionThread> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let span = tracing::Span::current();
        let join = std::thread::Builder::new()
            .name("ha-election".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the election's runtime")?;
                rt.block_on(
                    async move {
                        let setup = ElectionLoop::start(cfg, key, boot, view, notices).await;
                        let ok = setup.is_ok();
                        let _ = ready_tx.send(
                            setup
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| anyhow::anyhow!("{e:#}")),
                        );
                        if !ok {
                            return Ok(());
                        }
                        let (l, sockets) = setup?;
                        l.run(commands, sockets).await
                    }
                    .instrument(span),
                )
            })
            .context("cannot start the election thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ElectionThread { join }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => match join.join() {
                Ok(Err(e)) => Err(e),
                _ => anyhow::bail!("the election thread died during start-up"),
            },
        }
    }

    /// Waits for the thread's end (after a shutdown).
    pub fn join(self) -> Result<()> {
        self.join
            .join()
            .map_err(|_| anyhow::anyhow!("the election thread panicked"))?
    }
}

struct ElectionLoop {
    cfg: Arc<Config>,
    vips: Vec<Vip>,
    signer: Signer,
    origin: Origin,
    ctl_gen: u32,
    election: Election,
    sessions: Sessions,
    liveness: Liveness,
    vip_driver: VipDriver,
    /// ARP socket per link (index = link).
    arp: Vec<Arc<ArpSocket>>,
    senders: Senders,
    heartbeat: Heartbeat,
    stats: Arc<SenderStats>,
    carrier: CarrierWatch,
    view: watch::Sender<ElectionView>,
    notices: mpsc::UnboundedSender<Notice>,
    peer_node: String,
    holds: bool,
    /// Wall-clock times of the election's transitions (the election keeps Instants).
    transition_times: VecDeque<(Instant, SystemTime)>,
    false_alarms: VecDeque<(SystemTime, FalseAlarm, Duration)>,
    started: Instant,
    bad_probes: u64,
    rejected: std::collections::BTreeMap<&'static str, u64>,
    refused: u64,
    /// Sender counters at the last report (for rate-limited logs).
    reported_missed: u64,
    reported_send_errors: u64,
    last_garp_refresh: Instant,
    /// Some VIP could not be added (holding) or removed (not holding):
    /// tried again then.
    vip_retry_at: Option<Instant>,
    /// The spaced gratuitous ARP rounds still to come: stopped when the
    /// VIPs go, or late rounds would pull traffic from the new holder.
    garp_rounds: Option<tokio::task::JoinHandle<()>>,
    /// Claims of our VIPs by other hosts since the last re-announcement,
    /// with the last one seen (link name, VIP).
    reannounce: Reannounce,
}

impl ElectionLoop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        sockets: Vec<UdpSocket>,
    ) -> Result<()> {
        // Decisions must not wait behind CPU hogs either (keepalived's
        // vrrp_rt_priority): just below the senders.
        let rt = self.cfg.node.rt_priority;
        if rt > 0 {
            if let Err(e) = crate::drivers::sender::set_realtime(rt.saturating_sub(1).max(1)) {
                warn!(error = %e, "cannot run the election under SCHED_FIFO (CAP_SYS_NICE): a busy CPU can delay decisions");
            }
        }
        let mut probes = crate::drivers::probe_socket::spawn_readers(sockets)?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.drain_outputs().await {
                break;
            }
            self.reannounce();
            self.publish_view();
            self.heartbeat.beat();
            let deadline = self
                .election
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            // Biased: after a stall, what the kernel and the peer said comes
            // before anything else.
            tokio::select! {
                biased;
                events = self.liveness.next_events() => {
                    match events {
                        Ok(events) => self.on_kernel_events(events),
                        Err(e) => {
                            // Without the kernel's events we are blind and
                            // the peer takes over: hold nothing meanwhile.
                            error!(error = %e, "cannot read the kernel's liveness events: releasing the VIPs and stopping");
                            self.remove_vips().await;
                            return Err(e.into());
                        }
                    }
                }
                Some(got) = probes.recv() => self.on_probe(got.link, got.source, got.payload()),
                (link, up) = self.carrier.next() => self.on_carrier(link, up),
                _ = sleep_until_opt(deadline) => self.election.handle_timeout(Instant::now()),
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                _ = tick.tick() => {
                    self.on_tick();
                    self.retry_vips().await;
                }
            }
        }
        let stopped = std::mem::replace(&mut self.holds, false);
        if stopped {
            warn!("stopped while holding the VIPs");
        }
        info!("election stopped");
        Ok(())
    }

    fn publish_view(&self) {
        let peer = self.election.peer_now();
        let v = ElectionView {
            role: self.election.role(),
            epoch: self.election.epoch(),
            peer,
            provisional: self.election.provisional(),
        };
        self.view.send_if_modified(|old| {
            if *old == v {
                false
            } else {
                *old = v;
                true
            }
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let refresh = self.cfg.garp.refresh_ms;
        if refresh > 0
            && self.holds
            && now >= self.last_garp_refresh + Duration::from_millis(refresh)
        {
            self.last_garp_refresh = now;
            self.announce(1, Duration::ZERO);
        }
        self.report_senders();
    }

    /// Rate-limited (by the tick) reports of what the real-time senders counted.
    fn report_senders(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let missed = self.stats.missed.load(Relaxed);
        if missed > self.reported_missed {
            warn!(
                slots = missed - self.reported_missed,
                worst_ms = millis(self.stats.recent_late()),
                worst_work_ms = millis(self.stats.recent_work()),
                "probe slots no sender could send in time (every sender thread was late): the peer saw silence"
            );
            self.reported_missed = missed;
        }
        let errors: u64 = self.stats.send_errors.iter().map(|c| c.load(Relaxed)).sum();
        if errors > self.reported_send_errors && (errors - self.reported_send_errors) >= 1 {
            let per_link: Vec<String> = self
                .cfg
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    format!(
                        "{}: {} (errno {})",
                        l.name,
                        self.stats.send_errors[i].load(Relaxed),
                        self.stats.last_errno[i].load(Relaxed)
                    )
                })
                .collect();
            if self.reported_send_errors == 0 || (errors - self.reported_send_errors) > 100 {
                warn!(total = errors, links = %per_link.join(", "), "probe sends failed (no route or carrier to the peer on that link?)");
                self.reported_send_errors = errors;
            }
        }
    }

    /// One read of the kernel's events, decided on together: a silence
    /// that ended within it moves nothing.
    fn on_kernel_events(&mut self, events: Vec<Event>) {
        let now = Instant::now();
        // The links as the events leave them, for the logs (the election
        // sees them all at once).
        let mut up: Vec<bool> = (0..self.cfg.links.len())
            .map(|i| self.election.link_up(i))
            .collect();
        let inputs: Vec<Input> = events
            .into_iter()
            .filter_map(|e| self.kernel_input(e, now, &mut up))
            .collect();
        self.election.handle_inputs(inputs, now);
    }

    /// The election's input for one kernel event, logged.
    fn kernel_input(&mut self, e: Event, now: Instant, up: &mut [bool]) -> Option<Input> {
        let link = e.link as usize;
        let name = self.link_name(link).to_string();
        let age_us = monotonic_now_ns().saturating_sub(e.ts_ns) / 1000;
        let epoch = self.election.epoch();
        let input = match e.kind {
            EVENT_PEER_UP => {
                if let Some(u) = up.get_mut(link) {
                    *u = true;
                }
                info!(link = %name, epoch, "peer heard on link");
                Input::PeerLink {
                    link,
                    up: true,
                    last_heard: now,
                }
            }
            EVENT_PEER_DOWN => {
                // How long the kernel had heard nothing when it decided.
                let silence_us = e.ts_ns.saturating_sub(e.value) / 1000;
                if let Some(u) = up.get_mut(link) {
                    *u = false;
                }
                let others = up.iter().enumerate().any(|(i, u)| i != link && *u);
                // Graces the kernel gave the silence for stalls of ours
                // (each one more `grace`: the detection came that much later).
                let graces_late_timer = e.late_timer_graces;
                let graces_our_cpu = e.our_cpu_graces;
                let graces_our_machine = e.our_machine_graces;
                if others {
                    warn!(link = %name, epoch, silence_us, wake_us = age_us, graces_late_timer, graces_our_cpu, graces_our_machine, "peer SILENT on this link but heard on another: link degraded, no failover; check cabling/switch");
                } else {
                    warn!(link = %name, epoch, silence_us, wake_us = age_us, graces_late_timer, graces_our_cpu, graces_our_machine, "peer silent on its last link");
                }
                Input::PeerLink {
                    link,
                    up: false,
                    last_heard: instant_of(e.value),
                }
            }
            EVENT_WITNESS_UP => {
                info!(link = %name, "witness answers");
                Input::Witness { link, up: true }
            }
            EVENT_WITNESS_DOWN => {
                warn!(link = %name, "witness does not answer");
                Input::Witness { link, up: false }
            }
            EVENT_VIP_CONFLICT => {
                let vip = Ipv4Addr::from((e.value as u32).to_ne_bytes());
                // Logged once per re-announcement (`reannounce`), not per claim.
                debug!(link = %name, %vip, "another host claims a VIP we hold");
                self.reannounce.claimed(name.to_string(), vip);
                Input::VipConflict { vip }
            }
            other => {
                debug!(kind = other, "unknown kernel event");
                return None;
            }
        };
        Some(input)
    }

    fn on_carrier(&mut self, link: usize, up: bool) {
        let now = Instant::now();
        let name = self.link_name(link).to_string();
        if up {
            info!(link = %name, "carrier back");
        } else {
            warn!(link = %name, "carrier LOST: the peer and the witness are unreachable on this link");
        }
        self.election.handle_input(Input::Carrier { link, up }, now);
        if up {
            // A blip shorter than the detection times: the kernel never saw
            // the peer or the witness go, so it will not say they are back.
            if let Ok(k) = self.liveness.link_state(link as u32) {
                let fresh = |last: u64, detect: Duration| {
                    last != 0 && monotonic_now_ns().saturating_sub(last) < detect.as_nanos() as u64
                };
                let l = &self.cfg.links[link];
                if k.peer_up == 1 && fresh(k.peer_last_ns, l.detect_time()) {
                    self.election.handle_input(
                        Input::PeerLink {
                            link,
                            up: true,
                            last_heard: instant_of(k.peer_last_ns),
                        },
                        now,
                    );
                }
                if k.witness_up == 1 && fresh(k.witness_last_ns, l.witness_detect_time()) {
                    self.election
                        .handle_input(Input::Witness { link, up: true }, now);
                }
            }
        }
    }

    fn on_probe(&mut self, link: usize, source: Ipv4Addr, bytes: &[u8]) {
        let p = match protocol::decode(&self.signer, bytes) {
            Ok(p) => p,
            Err(e) => {
                self.bad_probes += 1;
                if self.bad_probes.is_power_of_two() {
                    warn!(link = %self.link_name(link), %source, error = %e, count = self.bad_probes, "rejected a probe");
                }
                return;
            }
        };
        match self.sessions.on_probe(link, source, &p) {
            Verdict::Accept { new_session } => {
                if new_session {
                    info!(link = %self.link_name(link), peer = %p.node, boot = p.boot, token = format_args!("{:016x}", p.token), "peer session accepted (it answered ours)");
                    if p.node == self.cfg.node.name {
                        // A config copied to both servers: logs, status and
                        // hooks would name both the same.
                        warn!(link = %self.link_name(link), peer = %p.node, "the peer has this node's name: set a distinct `node.name` on each server");
                    }
                    self.install_session();
                }
                self.peer_node = p.node;
                self.election.handle_input(
                    Input::PeerControl(PeerMessage {
                        session: p.token,
                        control: p.control,
                        lease: Duration::from_millis(u64::from(p.lease_ms)),
                        lateness: p.lateness,
                    }),
                    Instant::now(),
                );
            }
            Verdict::Pending { echo_changed } => {
                if echo_changed {
                    info!(link = %self.link_name(link), peer = %p.node, boot = p.boot, token = format_args!("{:016x}", p.token), "a new peer session: answering it");
                    self.install_session();
                    self.publish_templates(&self.election.control(Instant::now()));
                }
            }
            // The links' probes reach us in parallel: an older state on
            // one after a newer one on the other is ordinary, not an attack.
            Verdict::Reject(r @ Rejection::StaleControl { .. }) => {
                debug!(link = %self.link_name(link), "{r}");
            }
            Verdict::Reject(r) => {
                let count = self.rejected.entry(r.kind()).or_default();
                *count += 1;
                let count = *count;
                if count.is_power_of_two() {
                    warn!(link = %self.link_name(link), %source, count, "refused a probe that verifies: {r}");
                }
            }
        }
    }

    /// Tells the kernel which peer session counts and which boots are old.
    fn install_session(&mut self) {
        let token = self.sessions.accepted_token().unwrap_or(0);
        if let Err(e) = self
            .liveness
            .set_peer_session(token, self.sessions.min_boot())
        {
            error!(error = %e, "cannot install the peer's session in the kernel");
        }
    }

    fn publish_templates(&mut self, c: &Control) {
        self.ctl_gen = self.ctl_gen.wrapping_add(1).max(1);
        let t = templates(
            &self.cfg,
            &self.origin,
            self.ctl_gen,
            self.sessions.echo(),
            c,
        );
        self.senders.publish(&t);
    }

    fn link_name(&self, link: usize) -> &str {
        self.cfg.links.get(link).map_or("?", |l| l.name.as_str())
    }

    fn begin_shutdown(&mut self, why: &str) {
        info!(
            signal = why,
            "stopping: handing the VIPs to the peer if we hold them"
        );
        self.election.handle_input(Input::Shutdown, Instant::now());
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(Box::new(self.status()));
            }
            Command::Switchover(reply) => {
                let answer = match self.election.switchover(Instant::now()) {
                    Ok(()) => {
                        info!("switchover requested by the operator");
                        Ok(format!(
                            "switchover started: this node is now {}",
                            self.election.role()
                        ))
                    }
                    Err(e) => Err(format!("switchover refused: {e}")),
                };
                let _ = reply.send(answer);
            }
            Command::LocalDb(db) => self.election.handle_input(
                Input::LocalDb {
                    fit: db.fit,
                    replica_ok: db.replica_ok,
                    semisync: db.semisync,
                },
                Instant::now(),
            ),
        }
    }

    /// Carries out the election's outputs. Returns true when the agent must stop.
    async fn drain_outputs(&mut self) -> bool {
        while let Some(out) = self.election.poll_output() {
            match out {
                Output::AddVips => self.add_vips().await,
                Output::RemoveVips => self.remove_vips().await,
                Output::AnnounceVips => self.announce(
                    self.cfg.garp.count,
                    Duration::from_millis(self.cfg.garp.spacing_ms),
                ),
                Output::ReannounceVips => self.reannounce.request(),
                Output::Advertise(c) => self.publish_templates(&c),
                Output::Transition(t) => self.on_transition(t),
                Output::TakeoverConfirmed { epoch } => {
                    info!(epoch, "takeover confirmed: the old holder did not come back within the reclaim window and its lease has lapsed");
                    self.hook(HookState::Master);
                }
                Output::FalseAlarm(f) => self.on_false_alarm(f),
                Output::Refused(r) => {
                    self.refused += 1;
                    if self.refused.is_power_of_two() {
                        warn!(count = self.refused, "refused a peer message: {r}");
                    }
                }
                Output::Stopped => {
                    self.hook(HookState::Stop);
                    return true;
                }
            }
        }
        false
    }

    fn hook(&self, h: HookState) {
        let _ = self.notices.send(Notice::Hook(h));
    }

    async fn add_vips(&mut self) {
        let t = Instant::now();
        let (added, errors) = self.vip_driver.add_all(&self.vips).await;
        for (vip, e) in &errors {
            error!(vip = %vip.address, interface = %vip.interface, error = %e, "cannot add VIP (retried every second)");
        }
        self.vip_retry_at = (!errors.is_empty()).then(|| t + VIP_RETRY);
        self.holds = true;
        self.sync_kernel_vips();
        info!(
            epoch = self.election.epoch(),
            added,
            took_us = t.elapsed().as_micros() as u64,
            "VIPs added"
        );
    }

    async fn remove_vips(&mut self) {
        let t = Instant::now();
        let (removed, errors) = self.vip_driver.remove_all(&self.vips).await;
        if let Some(h) = self.garp_rounds.take() {
            h.abort();
        }
        for (vip, e) in &errors {
            error!(vip = %vip.address, interface = %vip.interface, error = %e, "cannot remove VIP (retried every second)");
        }
        self.vip_retry_at = (!errors.is_empty()).then(|| t + VIP_RETRY);
        let was = std::mem::replace(&mut self.holds, false);
        self.sync_kernel_vips();
        if was || removed > 0 {
            info!(
                removed,
                took_us = t.elapsed().as_micros() as u64,
                "VIPs removed"
            );
        }
    }

    /// One round of gratuitous ARP for claims of our VIPs, paced.
    fn reannounce(&mut self) {
        // Not due yet: the tick comes back for it.
        let Some(claims) = self.reannounce.poll(Instant::now()) else {
            return;
        };
        if self.holds {
            if let Some((link, vip)) = claims.last {
                warn!(claims = claims.count, link = %link, last_vip = %vip, "other hosts claim VIPs we hold: re-announcing them");
            }
            self.announce(1, Duration::ZERO);
        }
    }

    /// Adds or removes again what the last attempt could not.
    async fn retry_vips(&mut self) {
        if self.vip_retry_at.is_none_or(|t| Instant::now() < t) {
            return;
        }
        if self.holds {
            self.add_vips().await;
            if self.vip_retry_at.is_none() {
                self.announce(1, Duration::ZERO);
            }
        } else {
            self.remove_vips().await;
        }
    }

    /// Each VIP with the index of the link (interface) it lives on.
    fn vip_links(&self) -> impl Iterator<Item = (usize, Ipv4Addr)> + '_ {
        self.vips.iter().filter_map(|v| {
            let link = self
                .cfg
                .links
                .iter()
                .position(|l| l.interface == v.interface)?;
            Some((link, v.address))
        })
    }

    fn sync_kernel_vips(&mut self) {
        let held: Vec<(Ipv4Addr, u32)> = if self.holds {
            self.vip_links()
                .map(|(link, ip)| (ip, link as u32))
                .collect()
        } else {
            Vec::new()
        };
        if let Err(e) = self.liveness.set_vips(&held) {
            warn!(error = %e, "cannot update the kernel's VIP list (ARP conflicts, lease)");
        }
    }

    /// Gratuitous ARP for every VIP: the first round now, the rest spaced.
    fn announce(&mut self, count: u32, spacing: Duration) {
        let targets: Vec<(Arc<ArpSocket>, Ipv4Addr)> = self
            .vip_links()
            .map(|(link, ip)| (self.arp[link].clone(), ip))
            .collect();
        let send = |targets: &[(Arc<ArpSocket>, Ipv4Addr)]| {
            for (sock, ip) in targets {
                if let Err(e) = sock.send_gratuitous(*ip) {
                    warn!(vip = %ip, error = %e, "gratuitous ARP failed");
                }
            }
        };
        send(&targets);
        if count > 1 {
            if let Some(h) = self.garp_rounds.take() {
                h.abort();
            }
            self.garp_rounds = Some(tokio::spawn(async move {
                for _ in 1..count {
                    tokio::time::sleep(spacing).await;
                    send(&targets);
                }
            }));
        }
    }

    fn on_transition(&mut self, t: Transition) {
        let wall = SystemTime::now() - t.at.elapsed();
        if self.transition_times.len() == 64 {
            self.transition_times.pop_front();
        }
        self.transition_times.push_back((t.at, wall));
        let since_start_ms = t.at.duration_since(self.started).as_millis() as u64;
        let span = info_span!("transition", epoch = t.epoch);
        let _g = span.enter();
        match t.to {
            Role::Master | Role::Backup => {
                info!(from = %t.from, to = %t.to, epoch = t.epoch, since_start_ms, provisional = !t.hooks && t.to == Role::Master, reason = %t.reason, "state change")
            }
            Role::Fault | Role::Init => {
                warn!(from = %t.from, to = %t.to, epoch = t.epoch, since_start_ms, reason = %t.reason, "state change")
            }
        }
        if !t.hooks {
            return;
        }
        match t.to {
            Role::Master => self.hook(HookState::Master),
            Role::Backup => self.hook(HookState::Backup),
            Role::Fault => self.hook(HookState::Fault),
            Role::Init => {}
        }
    }

    fn on_false_alarm(&mut self, f: FalseAlarm) {
        let own = self.stats.recent_late();
        warn!(
            epoch = f.epoch,
            silence_ms = millis(f.silence),
            held_ms = millis(f.held),
            peer_lateness_ms = millis(f.peer_lateness),
            own_lateness_ms = millis(own),
            "FALSE ALARM: took over from a holder that was only silent, handed the VIPs back; no hook ran, the database and the proxy were not touched"
        );
        if self.false_alarms.len() == FALSE_ALARMS_KEPT {
            self.false_alarms.pop_front();
        }
        self.false_alarms.push_back((SystemTime::now(), f, own));
    }
}

/// The `Instant` of a CLOCK_MONOTONIC reading (the kernel's timestamps).
fn instant_of(ns: u64) -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(monotonic_now_ns().saturating_sub(ns)))
        .unwrap_or(now)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
