//! `ha-agent run`: wires the drivers around the election and runs the loop.
//!
//! The loop feeds the election with kernel events (ring buffer), verified
//! control messages (UDP), timeouts, signals and operator commands, and
//! carries out what it asks, in order. Only this module does I/O on behalf of
//! the election.

pub mod services;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_ebpf::{
    Event, EVENT_PEER_DOWN, EVENT_PEER_UP, EVENT_VIP_CONFLICT, EVENT_WITNESS_DOWN, EVENT_WITNESS_UP,
};
use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::daemon::services::Services;
use crate::decisions::election::{
    Control, Election, ElectionConfig, Input, Output, Role, Transition,
};
use crate::drivers::arp::ArpSocket;
use crate::drivers::ebpf::{kernel_link_config, monotonic_now_ns, Liveness, XdpMode};
use crate::drivers::hooks::{HookRunner, HookState};
use crate::drivers::sender::{Sender, SenderLink, Witness};
use crate::drivers::vip::VipDriver;
use crate::operator::config::{Config, Vip};
use crate::operator::status::{
    self, HookStatus, LinkStatus, PeerStatus, Reply, Status, TransitionStatus, VipStatus,
};
use crate::protocol::{self, Key, PROBE_LEN};

/// Accepted probes passed to userspace unchanged once in this many: a
/// periodic full check (HMAC) of what the kernel accepts by token alone.
/// Changes pass at once, so this only costs wakes: 200 ms at 4 ms probes.
const PASS_EVERY: u32 = 50;

/// Everything the loop owns.
struct Agent {
    cfg: Config,
    vips: Vec<Vip>,
    key: Key,
    token: u64,
    ctl_gen: u32,
    election: Election,
    liveness: Liveness,
    vip_driver: VipDriver,
    /// ARP socket per link (index = link).
    arp: Vec<Arc<ArpSocket>>,
    sender: Sender,
    hooks: HookRunner,
    /// The peer's current session token and the newest control generation seen from it.
    peer_session: Option<(u64, u32)>,
    peer_node: String,
    holds: bool,
    /// Wall-clock times of the election's transitions (the election keeps Instants).
    transition_times: VecDeque<(Instant, SystemTime)>,
    started: Instant,
    bad_probes: u64,
    /// MySQL and Atlas, when configured.
    services: Services,
}

/// Runs the agent until SIGTERM/SIGINT (graceful handover) or a fatal error.
pub async fn run(cfg: Config) -> Result<()> {
    let node = cfg.node.name.clone();
    let span = info_span!("agent", node = %node);
    run_inner(cfg).instrument(span).await
}

async fn run_inner(cfg: Config) -> Result<()> {
    crate::drivers::privileges::check()?;
    let key = Key::load(&cfg.node.key_file)?;
    let vips = cfg.vips();
    let token = random_token()?;
    let started = Instant::now();
    // First: the database controller fences the local server at once,
    // before the election has heard the peer.
    let services = Services::start(&cfg).await?;

    let vip_driver = VipDriver::new().await?;
    let mut interfaces = Vec::new();
    for l in &cfg.links {
        let info = vip_driver.interface(&l.interface).await.with_context(|| {
            format!(
                "link {:?}: interface {} (check the [[link]] interface name)",
                l.name, l.interface
            )
        })?;
        if !info.oper_up {
            warn!(link = %l.name, interface = %l.interface, "interface is down (no carrier or admin down): the peer cannot be heard on it");
        }
        interfaces.push(info);
    }

    let mode = match cfg.ebpf.xdp_mode.as_deref() {
        Some(m) => m.parse::<XdpMode>().map_err(anyhow::Error::msg)?,
        None => XdpMode::Native,
    };
    let mut liveness = Liveness::load(cfg.ebpf.object.as_deref())?;
    for (i, l) in cfg.links.iter().enumerate() {
        let kcfg = kernel_link_config(l, cfg.node.port, PASS_EVERY);
        liveness.attach_link(i as u32, &l.interface, &kcfg, mode)?;
    }
    // Loading parsed the kernel's BTF (megabytes, now freed): give the
    // pages back so the agent at rest stays small.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };

    let mut sockets = Vec::new();
    let mut arp = Vec::new();
    for (i, l) in cfg.links.iter().enumerate() {
        sockets.push(
            probe_socket(&l.interface, l.local_ip, cfg.node.port).with_context(|| {
                format!(
                    "link {:?}: cannot open the probe socket on {}:{} ({})",
                    l.name, l.local_ip, cfg.node.port, l.interface
                )
            })?,
        );
        arp.push(Arc::new(ArpSocket::open(
            &l.interface,
            interfaces[i].index,
            interfaces[i].mac,
        )?));
    }

    let election_cfg = election_config(&cfg);
    let now = Instant::now();
    let election = Election::new(election_cfg, now);
    let first = election.control(now);

    let mut sender_links = Vec::new();
    for (i, l) in cfg.links.iter().enumerate() {
        let peer = SocketAddrV4::new(l.peer_ip, cfg.node.port);
        sender_links.push(SenderLink {
            name: l.name.clone(),
            socket: send_socket(&l.interface, l.local_ip, peer).with_context(|| {
                format!(
                    "link {:?}: cannot open the probe send socket on {} ({}) to {peer}",
                    l.name, l.local_ip, l.interface
                )
            })?,
            interval: l.interval(),
            witness: l.witness.map(|target| Witness {
                arp: arp[i].clone(),
                local_ip: l.local_ip,
                target,
                interval: l.witness_interval(),
            }),
        });
    }
    let probes = signed_probes(&cfg, &key, token, 1, &first);
    let sender = Sender::spawn(sender_links, probes, cfg.node.rt_priority)?;

    let hooks = HookRunner::spawn(
        cfg.hooks.clone(),
        cfg.node.group.clone(),
        vips.iter().map(|v| v.instance.clone()).collect(),
        cfg.node.priority,
    );

    let listener = status_listener(&cfg.node.status_socket)?;

    if !cfg.witnesses_configured() {
        warn!("no witness configured on any link: if the two servers lose each other while both stay up (a partition), BOTH will hold the VIPs until it heals; configure `witness` (the gateway) on the outside link");
    }
    info!(
        token = format_args!("{token:016x}"),
        links = cfg.links.len(),
        vips = vips.len(),
        "ha-agent started: listening for the peer"
    );

    let mut agent = Agent {
        cfg,
        vips,
        key,
        token,
        ctl_gen: 1,
        election,
        liveness,
        vip_driver,
        arp,
        sender,
        hooks,
        peer_session: None,
        peer_node: String::new(),
        holds: false,
        transition_times: VecDeque::new(),
        started,
        bad_probes: 0,
        services,
    };

    // One reader task per probe socket feeds the loop.
    let (probe_tx, mut probe_rx) = mpsc::channel::<(usize, [u8; 128], usize)>(256);
    for (i, s) in sockets.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        // Read interest only: the loop is never woken for write space.
        // SAFETY: the AsyncFd owns the socket, whose fd stays open and the
        // same until the AsyncFd is dropped.
        let sock = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let tx = probe_tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            loop {
                let got = match sock.readable().await {
                    Ok(mut guard) => match guard.try_io(|s| s.get_ref().recv(&mut buf)) {
                        Ok(r) => r,
                        Err(_would_block) => continue,
                    },
                    Err(e) => Err(e),
                };
                match got {
                    Ok(n) => {
                        if tx.send((i, buf, n)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(link = i, error = %e, "probe socket receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }

    // Operator commands: a task reads them so a slow client never blocks the loop.
    let (command_tx, mut command_rx) = mpsc::channel::<(String, oneshot::Sender<Reply>)>(8);
    tokio::spawn(serve_commands(listener, command_tx));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let refresh = agent.cfg.garp.refresh_ms;
    let mut garp_refresh = tokio::time::interval(Duration::from_millis(refresh.max(100)));
    garp_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if agent.drain_outputs().await? {
            break;
        }
        agent.services.sync(&agent.election);
        let deadline = agent
            .election
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            events = agent.liveness.next_events() => {
                for e in events? {
                    agent.on_kernel_event(e);
                }
            }
            Some((link, buf, n)) = probe_rx.recv() => agent.on_probe(link, &buf[..n]),
            _ = sleep_until_opt(deadline) => agent.election.handle_timeout(Instant::now()),
            Some((command, reply)) = command_rx.recv() => {
                if command == "rejoin-force" {
                    // Answered by the database controller when done.
                    agent.services.rejoin_force(reply);
                } else if command == "promote-force" {
                    agent.services.promote_force(reply);
                } else {
                    let _ = reply.send(agent.command(&command));
                }
            }
            db = agent.services.next_db_change() => agent.election.handle_input(
                Input::LocalDb { fit: db.fit, replica_ok: db.replica_ok, semisync: db.semisync },
                Instant::now(),
            ),
            _ = sigterm.recv() => agent.begin_shutdown("SIGTERM"),
            _ = sigint.recv() => agent.begin_shutdown("SIGINT"),
            _ = garp_refresh.tick(), if refresh > 0 => {
                if agent.holds {
                    agent.announce(1, Duration::ZERO);
                }
            }
        }
    }
    agent.services.stop().await;
    agent.hooks.drain().await;
    let _ = std::fs::remove_file(&agent.cfg.node.status_socket);
    info!("ha-agent stopped");
    Ok(())
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn election_config(cfg: &Config) -> ElectionConfig {
    let detect = cfg
        .links
        .iter()
        .map(|l| l.detect_time())
        .max()
        .unwrap_or(Duration::from_millis(15));
    let witness_links = cfg
        .links
        .iter()
        .enumerate()
        .filter(|(_, l)| l.witness.is_some())
        .fold(0u8, |m, (i, _)| m | (1 << i));
    ElectionConfig {
        priority: cfg.node.priority,
        nopreempt: cfg.node.nopreempt,
        preempt_delay: Duration::from_millis(cfg.node.preempt_delay_ms),
        init_timeout: cfg.init_timeout(),
        fence_timeout: Duration::from_millis(cfg.node.fence_timeout_ms),
        detect_time: detect,
        contest_delay: detect,
        reclaim_window: (detect * 4).max(Duration::from_millis(50)),
        handover_hold: (detect * 20).max(Duration::from_millis(500)),
        shutdown_wait: (detect * 10).max(Duration::from_millis(300)),
        links: cfg.links.len(),
        witness_links,
        router_id: cfg
            .links
            .first()
            .map_or(Ipv4Addr::UNSPECIFIED, |l| l.local_ip),
    }
}

fn random_token() -> Result<u64> {
    let mut b = [0u8; 8];
    loop {
        getrandom::fill(&mut b)
            .map_err(|e| anyhow::anyhow!("no randomness for the session token: {e}"))?;
        let t = u64::from_ne_bytes(b);
        if t != 0 {
            return Ok(t);
        }
    }
}

fn signed_probes(
    cfg: &Config,
    key: &Key,
    token: u64,
    gen: u32,
    c: &Control,
) -> Vec<[u8; PROBE_LEN]> {
    (0..cfg.links.len())
        .map(|i| protocol::encode(key, i as u8, token, gen, &cfg.node.name, c))
        .collect()
}

/// UDP socket bound to the link's address and interface; marked as network
/// control traffic so queues let it through first.
fn probe_socket(ifname: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_tos_v4(0xC0)?;
    s.set_priority(6)?;
    s.bind(&SocketAddrV4::new(ip, port).into())?;
    Ok(s.into())
}

/// The sender's own socket per link: connected, so the kernel keeps the
/// route instead of looking it up for every probe, and never read, so no
/// one is woken when its send buffer drains. Its source port is ephemeral:
/// the peer accepts probes by destination port.
fn send_socket(ifname: &str, ip: Ipv4Addr, peer: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_tos_v4(0xC0)?;
    s.set_priority(6)?;
    s.bind(&SocketAddrV4::new(ip, 0).into())?;
    s.connect(&peer.into())?;
    // Nothing is ever read here: the smallest receive buffer.
    s.set_recv_buffer_size(0)?;
    // Never block the real-time thread: with the peer's address unresolved
    // (it died), the kernel parks our datagrams in the neighbour queue, and
    // a blocking send waits until ARP gives up (seconds) once they fill
    // the send buffer: no probes and no witness ARP meanwhile. A full
    // buffer is a failed send (counted, logged), never a wait.
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn status_listener(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the status socket directory {}",
                dir.display()
            )
        })?;
    }
    // A socket file left by a previous run (crash) is in the way.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another ha-agent is already running with status socket {} (stop it, or set node.status_socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale status socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot create status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accepts status-socket clients; each sends one command line and gets one
/// JSON line back. Reading and writing happen here, off the election loop.
async fn serve_commands(
    listener: UnixListener,
    to_loop: mpsc::Sender<(String, oneshot::Sender<Reply>)>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let _ = answer_one(stream, to_loop).await;
        });
    }
}

async fn answer_one(
    stream: UnixStream,
    to_loop: mpsc::Sender<(String, oneshot::Sender<Reply>)>,
) -> Option<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    let (tx, rx) = oneshot::channel();
    to_loop.send((line.trim().to_string(), tx)).await.ok()?;
    let reply = rx.await.ok()?;
    let mut text = serde_json::to_string(&reply).ok()?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.ok()
}

impl Agent {
    fn on_kernel_event(&mut self, e: Event) {
        let now = Instant::now();
        let link = e.link as usize;
        let name = self
            .cfg
            .links
            .get(link)
            .map_or("?", |l| l.name.as_str())
            .to_string();
        let age_us = monotonic_now_ns().saturating_sub(e.ts_ns) / 1000;
        let input = match e.kind {
            EVENT_PEER_UP => {
                info!(link = %name, epoch = self.election.epoch(), "peer heard on link");
                Input::PeerLink { link, up: true }
            }
            EVENT_PEER_DOWN => {
                // How long the kernel had heard nothing when it decided.
                let silence_us = e.ts_ns.saturating_sub(e.value) / 1000;
                let others =
                    (0..self.cfg.links.len()).any(|i| i != link && self.election.link_up(i));
                if others {
                    warn!(link = %name, epoch = self.election.epoch(), silence_us, wake_us = age_us, "peer SILENT on this link but heard on another: link degraded, no failover; check cabling/switch");
                } else {
                    warn!(link = %name, epoch = self.election.epoch(), silence_us, wake_us = age_us, "peer silent on its last link");
                }
                Input::PeerLink { link, up: false }
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
                warn!(link = %name, %vip, "another host claims a VIP we hold: re-announcing");
                Input::VipConflict { vip }
            }
            other => {
                debug!(kind = other, "unknown kernel event");
                return;
            }
        };
        self.election.handle_input(input, now);
    }

    fn on_probe(&mut self, link: usize, bytes: &[u8]) {
        let p = match protocol::decode(&self.key, bytes) {
            Ok(p) => p,
            Err(e) => {
                self.bad_probes += 1;
                if self.bad_probes.is_power_of_two() {
                    warn!(link = %self.link_name(link), error = %e, count = self.bad_probes, "rejected a probe");
                }
                return;
            }
        };
        if p.token == self.token {
            return; // our own, looped back
        }
        match self.peer_session {
            Some((session, gen)) if session == p.token => {
                // Replays of older control states of this session are ignored.
                if p.ctl_gen < gen {
                    return;
                }
                self.peer_session = Some((session, p.ctl_gen));
            }
            _ => {
                info!(link = %self.link_name(link), peer = %p.node, token = format_args!("{:016x}", p.token), "new peer session");
                for i in 0..self.cfg.links.len() {
                    if let Err(e) = self.liveness.set_peer_token(i as u32, p.token) {
                        error!(error = %e, "cannot install the peer's token in the kernel");
                    }
                }
                self.peer_session = Some((p.token, p.ctl_gen));
            }
        }
        self.peer_node = p.node;
        self.election.handle_input(
            Input::PeerControl {
                session: p.token,
                control: p.control,
            },
            Instant::now(),
        );
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

    /// Carries out the election's outputs. Returns true when the agent must stop.
    async fn drain_outputs(&mut self) -> Result<bool> {
        while let Some(out) = self.election.poll_output() {
            match out {
                Output::AddVips => self.add_vips().await,
                Output::RemoveVips => self.remove_vips().await,
                Output::AnnounceVips => self.announce(
                    self.cfg.garp.count,
                    Duration::from_millis(self.cfg.garp.spacing_ms),
                ),
                Output::Advertise(c) => {
                    self.ctl_gen = self.ctl_gen.wrapping_add(1).max(1);
                    let probes = signed_probes(&self.cfg, &self.key, self.token, self.ctl_gen, &c);
                    self.sender.publish(probes);
                }
                Output::Transition(t) => self.on_transition(t),
                Output::Stopped => {
                    self.hooks.notify(HookState::Stop);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn add_vips(&mut self) {
        let t = Instant::now();
        for v in &self.vips {
            match self.vip_driver.add(v).await {
                Ok(added) => {
                    debug!(vip = %v.address, interface = %v.interface, added, "VIP present")
                }
                Err(e) => {
                    error!(vip = %v.address, interface = %v.interface, error = %e, "cannot add VIP")
                }
            }
        }
        self.holds = true;
        self.sync_kernel_vips();
        info!(
            epoch = self.election.epoch(),
            took_us = t.elapsed().as_micros() as u64,
            "VIPs added"
        );
    }

    async fn remove_vips(&mut self) {
        let t = Instant::now();
        let mut removed = 0;
        for v in &self.vips {
            match self.vip_driver.remove(v).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    error!(vip = %v.address, interface = %v.interface, error = %e, "cannot remove VIP")
                }
            }
        }
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
            warn!(error = %e, "cannot update the kernel's VIP list (ARP conflict detection)");
        }
    }

    /// Gratuitous ARP for every VIP: the first round now, the rest spaced.
    fn announce(&self, count: u32, spacing: Duration) {
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
            tokio::spawn(async move {
                for _ in 1..count {
                    tokio::time::sleep(spacing).await;
                    send(&targets);
                }
            });
        }
    }

    fn on_transition(&mut self, t: Transition) {
        let wall = SystemTime::now() - t.at.elapsed();
        if self.transition_times.len() == 64 {
            self.transition_times.pop_front();
        }
        self.transition_times.push_back((t.at, wall));
        let since_start_ms = t.at.duration_since(self.started).as_millis() as u64;
        match t.to {
            Role::Master | Role::Backup => {
                info!(from = %t.from, to = %t.to, epoch = t.epoch, since_start_ms, reason = %t.reason, "state change")
            }
            Role::Fault | Role::Init => {
                warn!(from = %t.from, to = %t.to, epoch = t.epoch, since_start_ms, reason = %t.reason, "state change")
            }
        }
        let hook = match t.to {
            Role::Master => Some(HookState::Master),
            Role::Backup => Some(HookState::Backup),
            Role::Fault => Some(HookState::Fault),
            Role::Init => None,
        };
        if let Some(h) = hook {
            self.hooks.notify(h);
        }
    }

    /// Answers one operator command (status socket line protocol).
    fn command(&mut self, command: &str) -> Reply {
        match command {
            "status" => Reply::Status(Box::new(self.status())),
            "switchover" => match self.election.switchover(Instant::now()) {
                Ok(()) => {
                    info!("switchover requested by the operator");
                    Reply::Ok {
                        message: format!(
                            "switchover started: this node is now {}",
                            self.election.role()
                        ),
                    }
                }
                Err(e) => Reply::Error {
                    message: format!("switchover refused: {e}"),
                },
            },
            other => Reply::Error {
                message: format!(
                    "unknown command {other:?} (use status, switchover, rejoin-force or promote-force)"
                ),
            },
        }
    }

    fn status(&self) -> Status {
        let now_ns = monotonic_now_ns();
        let age = |ns: u64| (ns != 0).then(|| now_ns.saturating_sub(ns) / 1_000_000);
        let links = self
            .cfg
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let k = self.liveness.link_state(i as u32).unwrap_or_default();
                LinkStatus {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    peer_up: self.election.link_up(i),
                    last_seen_ms_ago: age(k.peer_last_ns),
                    probes_received: k.rx,
                    probes_lost: k.lost,
                    probes_rejected: k.rejected,
                    witness: l.witness.map(|w| w.to_string()),
                    witness_up: l.witness.map(|_| self.election.witness_up(i)),
                    witness_last_seen_ms_ago: l.witness.and_then(|_| age(k.witness_last_ns)),
                }
            })
            .collect();
        let vip_name = |v: &Vip| format!("{}/{}", v.address, v.prefix_len);
        let mut warnings = self.services.warnings();
        if !self.cfg.witnesses_configured() {
            warnings.push("no witness configured: a partition between the servers can produce two VIP holders".to_string());
        }
        if self.election.degraded() {
            let down: Vec<&str> = self
                .cfg
                .links
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.election.link_up(*i))
                .map(|(_, l)| l.name.as_str())
                .collect();
            warnings.push(format!(
                "peer silent on link(s) {}: degraded, no failover",
                down.join(", ")
            ));
        }
        let transitions = self
            .election
            .history()
            .map(|t| {
                let wall = self
                    .transition_times
                    .iter()
                    .find(|(at, _)| *at == t.at)
                    .map_or_else(|| SystemTime::now() - t.at.elapsed(), |(_, w)| *w);
                TransitionStatus {
                    time: status::rfc3339(wall),
                    from: t.from.to_string(),
                    to: t.to.to_string(),
                    epoch: t.epoch,
                    reason: t.reason.clone(),
                }
            })
            .collect();
        let hooks = self
            .hooks
            .recent()
            .into_iter()
            .map(|h| HookStatus {
                ok: h.succeeded(),
                detail: match (&h.error, h.timed_out, h.exit) {
                    (Some(e), _, _) => e.clone(),
                    (None, true, _) => "timed out".into(),
                    (None, false, Some(c)) => format!("exit {c} in {} ms", h.duration.as_millis()),
                    (None, false, None) => "killed".into(),
                },
                command: h.command,
                state: h.state.to_string(),
            })
            .collect();
        Status {
            node: self.cfg.node.name.clone(),
            state: self.election.role().to_string(),
            epoch: self.election.epoch(),
            priority: self.cfg.node.priority,
            nopreempt: self.cfg.node.nopreempt,
            degraded: self.election.degraded(),
            fencing_in_ms: self
                .election
                .fencing_at()
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            peer: self.election.peer_control().map(|c| PeerStatus {
                node: self.peer_node.clone(),
                state: c.role.to_string(),
                epoch: c.epoch,
                priority: c.priority,
                eligible: c.eligible,
                witness_reach: c.witness_reach,
                alive: self.election.peer_alive(),
            }),
            links,
            vips: self
                .vips
                .iter()
                .map(|v| VipStatus {
                    address: vip_name(v),
                    interface: v.interface.clone(),
                    held: self.holds,
                })
                .collect(),
            vips_held: if self.holds {
                self.vips.iter().map(vip_name).collect()
            } else {
                Vec::new()
            },
            warnings,
            transitions,
            hooks,
            database: self.services.database_status(),
            atlas: self.services.atlas_status(),
        }
    }
}
