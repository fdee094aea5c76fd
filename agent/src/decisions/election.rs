//! The election: who holds the VIPs. A pure state machine (sans-IO).
//!
//! Inputs are facts the drivers observed (peer seen or silent on a link,
//! witness reachable or not, an authenticated control message from the peer,
//! an operator command) together with the current time; outputs are what the
//! drivers must do (add/remove VIPs, announce them, advertise our state, run
//! hooks). No sockets, no clocks: every failover story is a deterministic
//! unit test, modelled on str0m's `Rtc` and quinn-proto's `Connection`:
//! `handle_input` / `handle_timeout` in, `poll_output` / `poll_timeout` out.
//!
//! Rules, in short:
//! - The peer is dead only when it is silent on *all* links.
//! - A backup takes over when the peer is dead and it still reaches a witness
//!   (or none is configured), or when nobody holds the VIPs and it is the
//!   better candidate. Every takeover increments the epoch.
//! - Two holders resolve to the higher epoch (the most recent takeover); a tie
//!   goes to the higher priority, then the higher router id.
//! - A holder never gives the VIPs back to a returning peer (nopreempt) but
//!   yields when the peer reaches more witnesses than it does, when the
//!   operator asks (switchover, shutdown), or, with preemption on, when a
//!   higher-priority peer asks after its `preempt_delay`.
//! - A holder that reaches neither the peer nor any witness fences itself
//!   (drops the VIPs) after `fence_timeout`.
//! - With a managed database: a node whose local database is unfit (down
//!   for `down_handover`) is not eligible, and a holder whose database is
//!   unfit hands the VIPs to a fit, eligible peer like a switchover. Nobody
//!   holding the VIPs is worse than an unfit holder: when the peer is not a
//!   candidate either, an unfit backup still takes them.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::decisions::database::SemisyncAdvert;

/// Transitions kept for `ha-agent status`.
const HISTORY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Init,
    Backup,
    Master,
    Fault,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "INIT",
            Role::Backup => "BACKUP",
            Role::Master => "MASTER",
            Role::Fault => "FAULT",
        }
    }
    pub fn to_wire(self) -> u8 {
        match self {
            Role::Init => 0,
            Role::Backup => 1,
            Role::Master => 2,
            Role::Fault => 3,
        }
    }
    pub fn from_wire(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::Init,
            1 => Role::Backup,
            2 => Role::Master,
            3 => Role::Fault,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one agent advertises to the other in every probe (authenticated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Control {
    pub role: Role,
    pub priority: u8,
    /// Highest epoch this node knows (its own takeover, or one it learned).
    pub epoch: u64,
    /// May be handed the VIPs (false while yielding or shutting down).
    pub eligible: bool,
    /// Asks the holder to hand the VIPs over (preemption or operator request).
    pub want_takeover: bool,
    /// Witnesses this node currently reaches.
    pub witness_reach: u8,
    /// Witnesses configured on this node.
    pub witness_count: u8,
    /// Bit i: this node hears the peer on link i.
    pub links_up: u8,
    /// Tie-breaker: the node's first link address.
    pub router_id: u32,
    /// Its database replicates from the holder and has caught up: the
    /// holder may send reads there (always false without a managed database).
    pub replica_ok: bool,
    /// We replaced a silent holder within the reclaim window and would hand
    /// the VIPs back if it reappeared: the old holder waits for that.
    pub fresh_takeover: bool,
    /// Semi-synchronous replication as the local database controller
    /// reports it (carried, never interpreted here).
    pub semisync: SemisyncAdvert,
}

impl Control {
    fn reach_ok(&self) -> bool {
        self.witness_count == 0 || self.witness_reach > 0
    }
}

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub priority: u8,
    pub nopreempt: bool,
    pub preempt_delay: Duration,
    pub init_timeout: Duration,
    pub fence_timeout: Duration,
    /// Silence on a link after which the kernel declares the peer down there
    /// (the slowest link's). A control message counts as hearing the peer
    /// for this long, whatever order kernel events and messages arrive in.
    pub detect_time: Duration,
    /// A backup that took over from a silent holder and hears that same
    /// holder again within this window hands the VIPs back: the holder was
    /// stalled, not dead (a false detection must not become a preemption).
    /// The old holder, meeting its replacement, waits as long for that
    /// hand-back before yielding to the newer epoch.
    pub reclaim_window: Duration,
    /// How long the weaker of two backups waits before taking VIPs nobody
    /// holds, so that the stronger one (whose newest state may still be in
    /// flight) goes first. About one detection time.
    pub contest_delay: Duration,
    /// How long a node that yielded stays ineligible, waiting for the peer to take over.
    pub handover_hold: Duration,
    /// How long a shutdown waits for the peer to take over before leaving anyway.
    pub shutdown_wait: Duration,
    /// Number of monitored links.
    pub links: usize,
    /// Bit i: a witness is configured on link i.
    pub witness_links: u8,
    pub router_id: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The kernel saw the peer's probes resume (`up`) or stop (`!up`) on a link.
    PeerLink { link: usize, up: bool },
    /// The kernel saw the witness of a link answer again or go silent.
    Witness { link: usize, up: bool },
    /// An authenticated control message from the peer. `session` is the
    /// peer's token: a new value means the peer agent restarted.
    PeerControl { session: u64, control: Control },
    /// Someone else claims one of our VIPs by ARP.
    VipConflict { vip: Ipv4Addr },
    /// Graceful stop (SIGTERM): hand over if we hold the VIPs, then stop.
    Shutdown,
    /// The local database's state. `fit: false` only once it has been down
    /// for the handover threshold; `replica_ok`: it replicates from the
    /// holder and has caught up. Without a managed database this is never
    /// sent and the election assumes fit and not a usable replica.
    /// `semisync` is advertised as is in [`Control::semisync`].
    LocalDb {
        fit: bool,
        replica_ok: bool,
        semisync: SemisyncAdvert,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Take both VIPs (idempotent).
    AddVips,
    /// Drop every VIP (idempotent).
    RemoveVips,
    /// Announce the VIPs by gratuitous ARP (a burst).
    AnnounceVips,
    /// Our advertised control state changed: send it to the peer now.
    Advertise(Control),
    /// A role change, for logs, status and hooks.
    Transition(Transition),
    /// Shutdown finished: the VIPs are released, the process may exit.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: Role,
    pub to: Role,
    pub epoch: u64,
    pub reason: String,
    #[serde(skip)]
    pub at: Instant,
}

/// Why a switchover request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    #[error("the peer is not reachable on any link: nobody could take the VIPs")]
    PeerDead,
    #[error("the peer is in {0} and not eligible (not reaching a witness, or yielding): it cannot take the VIPs")]
    PeerNotCandidate(Role),
    #[error("this node is {0}; only MASTER or BACKUP can switch over")]
    WrongRole(Role),
    #[error(
        "the peer is in {0}: nobody holds the VIPs to hand over (the election will settle it)"
    )]
    NoHolder(Role),
    #[error("a shutdown is in progress")]
    ShuttingDown,
    #[error("the local database is down (unfit): this node must not take the VIPs")]
    LocalDbUnfit,
}

#[derive(Clone, Debug)]
struct Peer {
    session: u64,
    control: Control,
}

pub struct Election {
    cfg: ElectionConfig,
    role: Role,
    epoch: u64,
    links_up: Vec<bool>,
    witness_up: Vec<bool>,
    peer: Option<Peer>,
    /// A control message arrived: the peer counts as heard until then.
    heard_until: Option<Instant>,
    /// Time of the latest input or timeout.
    now: Instant,
    /// While set, we are not eligible (we yielded and wait for the peer).
    yield_until: Option<Instant>,
    /// Operator asked, on a backup, to become master.
    want_takeover: bool,
    init_deadline: Option<Instant>,
    fence_deadline: Option<Instant>,
    preempt_deadline: Option<Instant>,
    /// When the weaker backup may take VIPs nobody holds.
    contest_deadline: Option<Instant>,
    /// Our last takeover from a silent holder: when, and that holder's epoch.
    silent_takeover: Option<(Instant, u64)>,
    /// As holder, when we must yield to a replacement that did not hand back.
    conflict_deadline: Option<Instant>,
    /// The preempt delay ran out: we ask the holder for the VIPs.
    preempt_ready: bool,
    shutdown_deadline: Option<Instant>,
    stopped: bool,
    /// The local database is fit to serve (true when none is managed).
    db_fit: bool,
    /// Advertised as [`Control::replica_ok`].
    replica_ok: bool,
    /// Advertised as [`Control::semisync`].
    semisync: SemisyncAdvert,
    advertised: Option<Control>,
    outputs: VecDeque<Output>,
    history: VecDeque<Transition>,
}

impl Election {
    pub fn new(cfg: ElectionConfig, now: Instant) -> Self {
        let links = cfg.links;
        let mut e = Election {
            role: Role::Init,
            epoch: 0,
            links_up: vec![false; links],
            witness_up: vec![false; links],
            peer: None,
            heard_until: None,
            now,
            yield_until: None,
            want_takeover: false,
            init_deadline: Some(now + cfg.init_timeout),
            fence_deadline: None,
            preempt_deadline: None,
            contest_deadline: None,
            silent_takeover: None,
            conflict_deadline: None,
            preempt_ready: false,
            shutdown_deadline: None,
            stopped: false,
            db_fit: true,
            replica_ok: false,
            semisync: SemisyncAdvert::None,
            advertised: None,
            outputs: VecDeque::new(),
            history: VecDeque::new(),
            cfg,
        };
        // A starting node holds nothing, whatever a previous run left behind.
        e.outputs.push_back(Output::RemoveVips);
        e.advertise();
        e
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn link_up(&self, link: usize) -> bool {
        self.links_up.get(link).copied().unwrap_or(false)
    }
    pub fn witness_up(&self, link: usize) -> bool {
        self.witness_up.get(link).copied().unwrap_or(false)
    }
    /// The peer is heard on at least one link.
    pub fn peer_alive(&self) -> bool {
        self.peer.is_some()
            && (self.links_up.iter().any(|u| *u) || self.heard_until.is_some_and(|t| self.now < t))
    }
    /// Peer heard on some links but not all: an alarm, not a failover.
    pub fn degraded(&self) -> bool {
        self.peer_alive() && self.links_up.iter().any(|u| !*u)
    }
    pub fn peer_control(&self) -> Option<Control> {
        self.peer.as_ref().map(|p| p.control)
    }
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }
    pub fn fencing_at(&self) -> Option<Instant> {
        self.fence_deadline
    }

    /// What we advertise now.
    pub fn control(&self, now: Instant) -> Control {
        Control {
            role: self.role,
            priority: self.cfg.priority,
            epoch: self.epoch,
            eligible: self.eligible(now),
            want_takeover: self.want_takeover || self.preempt_ready,
            witness_reach: self.witness_reach(),
            witness_count: self.cfg.witness_links.count_ones() as u8,
            links_up: self
                .links_up
                .iter()
                .enumerate()
                .fold(0u8, |m, (i, u)| if *u { m | (1 << i) } else { m }),
            router_id: u32::from(self.cfg.router_id),
            replica_ok: self.replica_ok,
            fresh_takeover: self.role == Role::Master && self.fresh_takeover(now),
            semisync: self.semisync,
        }
    }

    /// Within the reclaim window of a takeover from a silent holder.
    fn fresh_takeover(&self, now: Instant) -> bool {
        self.silent_takeover
            .is_some_and(|(at, _)| now < at + self.cfg.reclaim_window)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.init_deadline,
            self.fence_deadline,
            self.preempt_deadline,
            self.contest_deadline,
            self.conflict_deadline,
            self.silent_takeover
                .map(|(at, _)| at + self.cfg.reclaim_window),
            self.shutdown_deadline,
            self.yield_until,
            // Only decides something while no link is up: no wake otherwise.
            self.heard_until
                .filter(|_| !self.links_up.iter().any(|u| *u)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        if self.stopped {
            return;
        }
        self.now = now;
        match input {
            Input::PeerLink { link, up } => {
                if let Some(slot) = self.links_up.get_mut(link) {
                    *slot = up;
                }
            }
            Input::Witness { link, up } => {
                if let Some(slot) = self.witness_up.get_mut(link) {
                    *slot = up;
                }
            }
            Input::PeerControl { session, control } => self.on_peer_control(session, control, now),
            Input::VipConflict { .. } => {
                if self.role == Role::Master {
                    self.outputs.push_back(Output::AnnounceVips);
                }
            }
            Input::Shutdown => {
                if self.shutdown_deadline.is_none() {
                    self.shutdown_deadline = Some(now + self.cfg.shutdown_wait);
                    self.yield_until = None;
                }
            }
            Input::LocalDb {
                fit,
                replica_ok,
                semisync,
            } => {
                self.db_fit = fit;
                self.replica_ok = replica_ok;
                self.semisync = semisync;
            }
        }
        self.evaluate(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.now = now;
        if self.yield_until.is_some_and(|t| now >= t) {
            self.yield_until = None;
        }
        if self.heard_until.is_some_and(|t| now >= t) {
            self.heard_until = None;
        }
        if !self.fresh_takeover(now) {
            self.silent_takeover = None;
        }
        self.evaluate(now);
    }

    /// Operator request: on the holder, hand the VIPs to the peer; on the
    /// backup, ask the holder for them.
    pub fn switchover(&mut self, now: Instant) -> Result<(), SwitchoverError> {
        self.now = now;
        if self.shutdown_deadline.is_some() {
            return Err(SwitchoverError::ShuttingDown);
        }
        if !self.peer_alive() {
            return Err(SwitchoverError::PeerDead);
        }
        match self.role {
            Role::Master => {
                let peer = self.peer_control().expect("peer_alive implies a control");
                if !(peer.eligible && peer.reach_ok() && peer.role == Role::Backup) {
                    return Err(SwitchoverError::PeerNotCandidate(peer.role));
                }
                self.yield_to_peer("switchover requested by the operator", now);
            }
            Role::Backup => {
                let peer = self.peer_control().expect("peer_alive implies a control");
                if peer.role != Role::Master {
                    return Err(SwitchoverError::NoHolder(peer.role));
                }
                if !self.db_fit {
                    return Err(SwitchoverError::LocalDbUnfit);
                }
                self.want_takeover = true;
            }
            other => return Err(SwitchoverError::WrongRole(other)),
        }
        self.evaluate(now);
        Ok(())
    }

    fn on_peer_control(&mut self, session: u64, control: Control, now: Instant) {
        self.heard_until = Some(now + self.cfg.detect_time);
        let new_session = self.peer.as_ref().is_none_or(|p| p.session != session);
        // A peer that held the VIPs beside us and just let go announced them
        // while it held them: point the clients back at us.
        let peer_let_go = !new_session
            && self.role == Role::Master
            && self.peer_control().is_some_and(|p| p.role == Role::Master)
            && control.role != Role::Master;
        if peer_let_go {
            self.outputs.push_back(Output::AnnounceVips);
        }
        if new_session {
            // A restarted peer: what it said before is void.
            self.peer = Some(Peer { session, control });
        } else if let Some(p) = self.peer.as_mut() {
            p.control = control;
        }
        if self.role == Role::Master && control.role == Role::Master {
            // Our epoch is our claim: adopting theirs here would turn the
            // comparison into a priority tie-break on the next message.
            self.resolve_two_holders(&control, now);
        } else {
            self.conflict_deadline = None;
            self.epoch = self.epoch.max(control.epoch);
        }
    }

    /// Two holders: the most recent takeover (higher epoch) wins, except
    /// that a replacement made moments ago from a merely stalled holder is
    /// handed back (see `reclaim_window`).
    fn resolve_two_holders(&mut self, control: &Control, now: Instant) {
        let mine = (self.epoch, self.cfg.priority, u32::from(self.cfg.router_id));
        let theirs = (control.epoch, control.priority, control.router_id);
        let fresh = self.fresh_takeover(now)
            && self
                .silent_takeover
                .is_some_and(|(_, replaced)| replaced == control.epoch);
        if theirs < mine && fresh {
            self.silent_takeover = None;
            self.yield_to_peer(
                "the holder we replaced was only briefly silent: handing the VIPs back",
                now,
            );
            return;
        }
        if theirs < mine {
            // We stay: repair the ARP caches the stale holder confused.
            self.outputs.push_back(Output::AnnounceVips);
            return;
        }
        // Our direct replacement, made moments ago, will hand back.
        if control.epoch == self.epoch + 1 && control.fresh_takeover {
            let deadline = *self
                .conflict_deadline
                .get_or_insert(now + self.cfg.reclaim_window);
            if now < deadline {
                return;
            }
        }
        self.conflict_deadline = None;
        let ours = self.epoch;
        self.epoch = self.epoch.max(control.epoch);
        self.enter(
            Role::Backup,
            format!(
                "peer holds the VIPs with a more recent takeover (epoch {} > ours {ours})",
                control.epoch
            ),
            now,
        );
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.outputs.push_back(Output::RemoveVips);
        self.outputs.push_back(Output::Stopped);
        self.shutdown_deadline = None;
        self.init_deadline = None;
        self.fence_deadline = None;
        self.preempt_deadline = None;
        self.contest_deadline = None;
        self.conflict_deadline = None;
        self.yield_until = None;
    }

    /// May be handed the VIPs: available, and its database is fit.
    fn eligible(&self, now: Instant) -> bool {
        self.available(now) && self.db_fit
    }

    /// Neither shutting down nor yielding (database fitness aside).
    fn available(&self, now: Instant) -> bool {
        self.shutdown_deadline.is_none() && self.yield_until.is_none_or(|t| now >= t)
    }

    fn witness_reach(&self) -> u8 {
        self.witness_up
            .iter()
            .enumerate()
            .filter(|(i, up)| **up && self.cfg.witness_links & (1 << i) != 0)
            .count() as u8
    }

    fn reach_ok(&self) -> bool {
        self.cfg.witness_links == 0 || self.witness_reach() > 0
    }

    /// Our candidacy key against the peer's: more witnesses, then priority, then router id.
    fn beats(&self, peer: &Control) -> bool {
        (
            self.witness_reach(),
            self.cfg.priority,
            u32::from(self.cfg.router_id),
        ) > (peer.witness_reach, peer.priority, peer.router_id)
    }

    fn evaluate(&mut self, now: Instant) {
        self.update_preempt_timer(now);
        match self.role {
            Role::Init => self.evaluate_init(now),
            Role::Backup => self.evaluate_backup(now),
            Role::Master => self.evaluate_master(now),
            Role::Fault => self.evaluate_fault(now),
        }
        if let Some(deadline) = self.shutdown_deadline {
            if self.role == Role::Master {
                // Still holding: evaluate_master found no peer to hand over to.
                self.enter(
                    Role::Backup,
                    "shutting down: no peer able to take the VIPs".into(),
                    now,
                );
            }
            let handed_over =
                !self.peer_alive() || self.peer_control().is_some_and(|p| p.role == Role::Master);
            if handed_over || now >= deadline {
                self.stop();
            }
        }
        self.advertise_if_changed(now);
    }

    fn evaluate_init(&mut self, now: Instant) {
        // Leave early only for a peer that holds the VIPs: otherwise wait the
        // whole init timeout so witness states settle before an election.
        if self.peer_alive() && self.peer_control().is_some_and(|p| p.role == Role::Master) {
            self.init_deadline = None;
            self.enter(Role::Backup, "the peer holds the VIPs".into(), now);
        } else if self.init_deadline.is_some_and(|t| now >= t) {
            self.init_deadline = None;
            if self.peer_alive() {
                self.enter(
                    Role::Backup,
                    "heard the peer; nobody holds the VIPs".into(),
                    now,
                );
                self.evaluate_backup(now);
            } else if self.reach_ok() {
                self.enter(
                    Role::Backup,
                    "peer not heard on any link during start-up".into(),
                    now,
                );
                self.evaluate_backup(now);
            } else {
                self.enter(
                    Role::Fault,
                    "neither the peer nor any witness answers: refusing to take the VIPs".into(),
                    now,
                );
            }
        }
    }

    fn evaluate_backup(&mut self, now: Instant) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        if !self.peer_alive() {
            if self.reach_ok() {
                self.take_over(
                    if self.peer.is_some() {
                        "peer silent on all links"
                    } else {
                        "no peer: first start alone"
                    },
                    now,
                );
            } else {
                self.enter(
                    Role::Fault,
                    "peer silent on all links and no witness answers: we may be the isolated one"
                        .into(),
                    now,
                );
            }
            return;
        }
        let peer = self.peer_control().expect("peer_alive implies a control");
        // Nobody holds the VIPs: the better eligible candidate takes them.
        let peer_candidate =
            peer.eligible && peer.reach_ok() && matches!(peer.role, Role::Backup | Role::Init);
        // An unfit database yields to a fit candidate, but does not leave
        // the VIPs unheld when the peer is no candidate either.
        let contest = peer.role != Role::Master
            && self.available(now)
            && self.reach_ok()
            && (!peer_candidate || (self.db_fit && self.beats(&peer)));
        if !contest {
            self.contest_deadline = None;
            return;
        }
        // The statically stronger node goes at once; the weaker one waits so
        // a stale view of the peer cannot make both take the VIPs. A peer
        // that yielded said so on purpose: no need to wait. An unfit node
        // waits anyway: the peer may be unfit too, and contesting as well.
        let stronger =
            (self.cfg.priority, u32::from(self.cfg.router_id)) > (peer.priority, peer.router_id);
        if !stronger && (peer.eligible || !self.db_fit) {
            match self.contest_deadline {
                None => {
                    self.contest_deadline = Some(now + self.cfg.contest_delay);
                    return;
                }
                Some(t) if now < t => return,
                Some(_) => {}
            }
        }
        self.contest_deadline = None;
        let reason = if !peer_candidate {
            "nobody holds the VIPs and the peer is not a candidate"
        } else {
            "nobody holds the VIPs and we are the better candidate"
        };
        self.take_over(reason, now);
    }

    fn evaluate_master(&mut self, now: Instant) {
        if self.conflict_deadline.is_some_and(|t| now >= t) {
            match self.peer_control() {
                Some(c) if self.peer_alive() && c.role == Role::Master => {
                    self.resolve_two_holders(&c, now)
                }
                _ => self.conflict_deadline = None,
            }
            if self.role != Role::Master {
                return;
            }
        }
        if self.peer_alive() {
            self.fence_deadline = None;
            let peer = self.peer_control().expect("peer_alive implies a control");
            let peer_candidate = peer.eligible && peer.reach_ok() && peer.role == Role::Backup;
            if self.shutdown_deadline.is_some() && peer_candidate {
                self.yield_to_peer("shutting down: handing the VIPs to the peer", now);
            } else if peer_candidate && peer.witness_reach > self.witness_reach() {
                let reason = format!(
                    "the peer reaches {} witness(es), we reach {}",
                    peer.witness_reach,
                    self.witness_reach()
                );
                self.yield_to_peer(&reason, now);
            } else if peer_candidate && peer.want_takeover {
                self.yield_to_peer("the peer asked for the VIPs", now);
            } else if peer_candidate && !self.db_fit {
                self.yield_to_peer(
                    "the local database is down: handing the VIPs to the peer, whose database is fit",
                    now,
                );
            }
            return;
        }
        if self.reach_ok() {
            self.fence_deadline = None;
            return;
        }
        match self.fence_deadline {
            None => self.fence_deadline = Some(now + self.cfg.fence_timeout),
            Some(t) if now >= t => {
                self.fence_deadline = None;
                self.enter(
                    Role::Fault,
                    "isolated: neither the peer nor any witness answered for the fence timeout"
                        .into(),
                    now,
                );
            }
            Some(_) => {}
        }
    }

    fn evaluate_fault(&mut self, now: Instant) {
        if self.peer_alive() {
            self.enter(Role::Backup, "the peer is reachable again".into(), now);
            self.evaluate_backup(now);
        } else if self.reach_ok() {
            // Listen for the peer before deciding: if it took over while we
            // were cut off, its probes will arrive within the init timeout.
            self.init_deadline = Some(now + self.cfg.init_timeout);
            self.enter(
                Role::Init,
                "a witness answers again: listening for the peer".into(),
                now,
            );
        }
    }

    fn update_preempt_timer(&mut self, now: Instant) {
        let wants = self.role == Role::Backup
            && !self.cfg.nopreempt
            && self.eligible(now)
            && self.peer_alive()
            && self.peer_control().is_some_and(|p| {
                p.role == Role::Master
                    && self.cfg.priority > p.priority
                    && self.witness_reach() >= p.witness_reach
            });
        if !wants {
            self.preempt_deadline = None;
            self.preempt_ready = false;
        } else if self.preempt_ready {
        } else if let Some(t) = self.preempt_deadline {
            if now >= t {
                self.preempt_deadline = None;
                self.preempt_ready = true;
            }
        } else if self.cfg.preempt_delay.is_zero() {
            self.preempt_ready = true;
        } else {
            self.preempt_deadline = Some(now + self.cfg.preempt_delay);
        }
    }

    fn take_over(&mut self, reason: &str, now: Instant) {
        let peer_epoch = self.peer_control().map_or(0, |p| p.epoch);
        self.silent_takeover = match self.peer_control() {
            Some(p) if !self.peer_alive() && p.role == Role::Master => Some((now, p.epoch)),
            _ => None,
        };
        self.epoch = self.epoch.max(peer_epoch) + 1;
        self.want_takeover = false;
        self.preempt_deadline = None;
        self.preempt_ready = false;
        self.contest_deadline = None;
        self.enter(Role::Master, reason.to_string(), now);
    }

    fn yield_to_peer(&mut self, reason: &str, now: Instant) {
        self.yield_until = Some(now + self.cfg.handover_hold);
        self.enter(Role::Backup, reason.to_string(), now);
    }

    fn enter(&mut self, to: Role, reason: String, now: Instant) {
        let from = self.role;
        if from == to {
            return;
        }
        self.role = to;
        if from == Role::Master {
            self.outputs.push_back(Output::RemoveVips);
        }
        if to == Role::Master {
            self.fence_deadline = None;
            self.outputs.push_back(Output::AddVips);
            self.outputs.push_back(Output::AnnounceVips);
        }
        if to != Role::Master {
            self.fence_deadline = None;
            self.conflict_deadline = None;
        }
        let t = Transition {
            from,
            to,
            epoch: self.epoch,
            reason,
            at: now,
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        self.outputs.push_back(Output::Transition(t));
    }

    fn advertise_if_changed(&mut self, now: Instant) {
        let c = self.control(now);
        if self.advertised != Some(c) {
            self.advertised = Some(c);
            self.outputs.push_back(Output::Advertise(c));
        }
    }

    fn advertise(&mut self) {
        let c = Control {
            role: self.role,
            priority: self.cfg.priority,
            epoch: self.epoch,
            eligible: true,
            want_takeover: false,
            witness_reach: 0,
            witness_count: self.cfg.witness_links.count_ones() as u8,
            links_up: 0,
            router_id: u32::from(self.cfg.router_id),
            replica_ok: false,
            fresh_takeover: false,
            semisync: SemisyncAdvert::None,
        };
        self.advertised = Some(c);
        self.outputs.push_back(Output::Advertise(c));
    }
}

#[cfg(test)]
mod tests;
