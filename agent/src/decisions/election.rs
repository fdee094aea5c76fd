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
//! - Carrier loss on a link is instant evidence: neither the peer nor that
//!   link's witness can be reached there, at once (a holder that unplugged
//!   its uplink hands over without waiting for the witness to time out). A
//!   holder with no carrier on any link drops the VIPs at once.
//! - A takeover from a holder that fell silent is provisional until the
//!   reclaim window is over and the old holder's lease (its kernel stops
//!   serving the VIPs without its agent) has surely lapsed: hooks, the
//!   database and the proxy act only when it is confirmed; a hand-back
//!   inside the window is a false alarm, counted with its cause.
//! - Epochs are checked arithmetic; a peer epoch implausibly far ahead of
//!   what both sides have seen is refused.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

mod timers;
use timers::{Timer, TimerTable};

use crate::decisions::database::SemisyncAdvert;

/// Transitions kept for `ha-agent status`.
const HISTORY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
    /// Bit i: this node reaches the witness of link i.
    pub witness_links: u8,
    /// Tie-breaker and identity: the node's first link address.
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
    /// A plausible peer for tests: eligible, reaching its one witness,
    /// heard on both links, no database.
    #[cfg(test)]
    pub(crate) fn for_tests(role: Role) -> Control {
        Control {
            role,
            priority: 100,
            epoch: 1,
            eligible: true,
            want_takeover: false,
            witness_reach: 1,
            witness_count: 1,
            links_up: 3,
            witness_links: 1,
            router_id: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
            replica_ok: false,
            fresh_takeover: false,
            semisync: SemisyncAdvert::None,
        }
    }

    fn reach_ok(&self) -> bool {
        self.witness_count == 0 || self.witness_reach > 0
    }
}

/// How far ahead of every epoch this node has seen a peer's epoch may be.
/// Epochs grow by one per takeover; this bound only keeps a signed but
/// absurd epoch (a broken or hostile peer with the key) from driving ours
/// towards overflow.
pub const MAX_EPOCH_JUMP: u64 = 1 << 32;

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
    /// A carrier loss on some links is acted on after this (losses on
    /// every link at once: at once).
    pub carrier_settle: Duration,
    /// Number of monitored links.
    pub links: usize,
    /// Bit i: a witness is configured on link i.
    pub witness_links: u8,
    pub router_id: Ipv4Addr,
}

/// An authenticated, fresh control message from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMessage {
    /// The peer's session token: a new value means the peer agent restarted.
    pub session: u64,
    pub control: Control,
    /// The peer's lease: how long its kernel keeps serving its VIPs after
    /// its agent stops renewing.
    pub lease: Duration,
    /// The peer's worst probe-sender lateness in the last second (its report).
    pub lateness: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The kernel saw the peer's probes resume (`up`) or stop (`!up`) on a
    /// link; `last_heard` is when it accepted the peer's latest probe there.
    PeerLink {
        link: usize,
        up: bool,
        last_heard: Instant,
    },
    /// The kernel saw the witness of a link answer again or go silent.
    Witness { link: usize, up: bool },
    /// The interface of a link gained or lost carrier.
    Carrier { link: usize, up: bool },
    /// An authenticated control message from the peer.
    PeerControl(PeerMessage),
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
    /// Another host claimed one of our VIPs: announce them again (the
    /// driver paces these: one claim per VIP may come at once).
    ReannounceVips,
    /// Our advertised control state changed: send it to the peer now.
    Advertise(Control),
    /// A role change, for logs, status and (when `hooks`) the notify hooks.
    Transition(Transition),
    /// A provisional takeover is now a real failover: run the MASTER hooks,
    /// promote the database, change the proxy.
    TakeoverConfirmed { epoch: u64 },
    /// A provisional takeover was handed back: the holder had only stalled.
    FalseAlarm(FalseAlarm),
    /// A peer message was refused; for the log (rate-limit there).
    Refused(Refusal),
    /// Shutdown finished: the VIPs are released, the process may exit.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: Role,
    pub to: Role,
    pub epoch: u64,
    pub cause: Cause,
    pub reason: String,
    /// Whether the notify hooks run for it now. A provisional takeover runs
    /// them at [`Output::TakeoverConfirmed`]; leaving it (a false alarm)
    /// runs none.
    pub hooks: bool,
    #[serde(skip)]
    pub at: Instant,
}

/// A takeover handed back inside the reclaim window, with its cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FalseAlarm {
    pub at: Instant,
    pub epoch: u64,
    /// The holder's silence that made us take over (last probe -> takeover).
    pub silence: Duration,
    /// How long we held the VIPs.
    pub held: Duration,
    /// The holder's own report of its sender lateness when it spoke again.
    pub peer_lateness: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's epoch is more than [`MAX_EPOCH_JUMP`] ahead of every epoch seen.
    ImplausibleEpoch { theirs: u64, known: u64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ImplausibleEpoch { theirs, known } => write!(
                f,
                "the peer's epoch {theirs} is implausibly far ahead of the newest known ({known}): epochs grow by one per takeover"
            ),
        }
    }
}

/// Why a transition happened, as a fixed label (for counters and metrics;
/// the transition's reason says it in words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Startup,
    FirstAlone,
    PeerHolds,
    PeerSilent,
    Contest,
    NewerHolder,
    FalseAlarm,
    WitnessReach,
    PeerAsked,
    Operator,
    DatabaseDown,
    Shutdown,
    Isolated,
    FenceTimeout,
    NoCarrier,
    PeerBack,
    WitnessBack,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::FirstAlone => "first_alone",
            Cause::PeerHolds => "peer_holds",
            Cause::PeerSilent => "peer_silent",
            Cause::Contest => "contest",
            Cause::NewerHolder => "newer_holder",
            Cause::FalseAlarm => "false_alarm",
            Cause::WitnessReach => "witness_reach",
            Cause::PeerAsked => "peer_asked",
            Cause::Operator => "operator",
            Cause::DatabaseDown => "database_down",
            Cause::Shutdown => "shutdown",
            Cause::Isolated => "isolated",
            Cause::FenceTimeout => "fence_timeout",
            Cause::NoCarrier => "no_carrier",
            Cause::PeerBack => "peer_back",
            Cause::WitnessBack => "witness_back",
        }
    }
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
    #[error("the peer was just heard again and has not said its state yet: retry in a moment")]
    PeerUnknown,
    #[error("a shutdown is in progress")]
    ShuttingDown,
    #[error("the local database is down (unfit): this node must not take the VIPs")]
    LocalDbUnfit,
    #[error(
        "this node is not eligible (not reaching a witness, or yielding): it cannot take the VIPs"
    )]
    NotCandidate,
}

#[derive(Clone, Debug)]
struct Peer {
    session: u64,
    control: Control,
    lease: Duration,
    lateness: Duration,
    /// The peer was silent on every link since `control` came: what it
    /// said is history until it speaks again (its first probe after an
    /// outage may reach us after the kernel's "heard again").
    stale: bool,
}

/// Our takeover from a holder that fell silent.
#[derive(Clone, Copy, Debug)]
struct SilentTakeover {
    at: Instant,
    /// The epoch of the holder we replaced.
    replaced: u64,
    /// Its silence when we took over.
    silence: Duration,
}

pub struct Election {
    cfg: ElectionConfig,
    role: Role,
    epoch: u64,
    links_up: Vec<bool>,
    witness_up: Vec<bool>,
    carrier: Vec<bool>,
    peer: Option<Peer>,
    /// When the kernel (or a control message) last had the peer's probe.
    last_heard: Option<Instant>,
    timers: TimerTable,
    /// Operator asked, on a backup, to become master.
    want_takeover: bool,
    /// Our last takeover from a silent holder, while it may be handed back
    /// or is not yet confirmed.
    silent_takeover: Option<SilentTakeover>,
    /// The preempt delay ran out: we ask the holder for the VIPs.
    preempt_ready: bool,
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
    /// Transitions since start by (from, to, cause).
    counts: std::collections::BTreeMap<(Role, Role, Cause), u64>,
    false_alarms: u64,
}

/// Margin on the old holder's lease: its clock and ours may run at slightly
/// different rates (ppm), and the lease was anchored before its last probe left.
fn lease_margin(lease: Duration) -> Duration {
    Duration::from_millis(1) + lease / 1000
}

impl Election {
    pub fn new(cfg: ElectionConfig, now: Instant) -> Self {
        let links = cfg.links;
        let mut timers = TimerTable::default();
        timers.set(Timer::Init, now + cfg.init_timeout);
        let mut e = Election {
            role: Role::Init,
            epoch: 0,
            links_up: vec![false; links],
            witness_up: vec![false; links],
            carrier: vec![true; links],
            peer: None,
            last_heard: None,
            timers,
            want_takeover: false,
            silent_takeover: None,
            preempt_ready: false,
            stopped: false,
            db_fit: true,
            replica_ok: false,
            semisync: SemisyncAdvert::None,
            advertised: None,
            outputs: VecDeque::new(),
            history: VecDeque::new(),
            counts: Default::default(),
            false_alarms: 0,
            cfg,
        };
        // A starting node holds nothing, whatever a previous run left behind.
        e.outputs.push_back(Output::RemoveVips);
        let first = e.control(now);
        e.advertised = Some(first);
        e.outputs.push_back(Output::Advertise(first));
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
    pub fn carrier(&self, link: usize) -> bool {
        self.carrier.get(link).copied().unwrap_or(false)
    }
    /// The peer is heard on at least one link.
    pub fn peer_alive(&self) -> bool {
        self.peer.is_some()
            && (self.links_up.iter().any(|u| *u) || self.timers.is_set(Timer::Heard))
    }
    /// Peer heard on some links but not all: an alarm, not a failover.
    pub fn degraded(&self) -> bool {
        self.peer_alive() && self.links_up.iter().any(|u| !*u)
    }
    /// What the peer last said (for the status; may be from before a silence).
    pub fn peer_control(&self) -> Option<Control> {
        self.peer.as_ref().map(|p| p.control)
    }
    /// What the peer says now: heard, and speaking since its last silence.
    pub fn peer_now(&self) -> Option<Control> {
        self.peer
            .as_ref()
            .filter(|p| !p.stale && self.peer_alive())
            .map(|p| p.control)
    }
    /// The peer's own report of its sender lateness (latest message).
    pub fn peer_lateness(&self) -> Option<Duration> {
        self.peer.as_ref().map(|p| p.lateness)
    }
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }
    pub fn fencing_at(&self) -> Option<Instant> {
        self.timers.get(Timer::Fence)
    }
    /// Transitions since start, by from, to and cause.
    pub fn transition_counts(&self) -> impl Iterator<Item = (Role, Role, Cause, u64)> + '_ {
        self.counts.iter().map(|((f, t, c), n)| (*f, *t, *c, *n))
    }
    /// Takeovers handed back inside the reclaim window since start.
    pub fn false_alarms(&self) -> u64 {
        self.false_alarms
    }
    /// We hold the VIPs after a takeover from a silent holder that is not
    /// confirmed yet: the database, the proxy and the hooks wait.
    pub fn provisional(&self) -> bool {
        self.role == Role::Master && self.timers.is_set(Timer::Settle)
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
            links_up: bits(&self.links_up),
            witness_links: bits(&self.witness_up) & self.cfg.witness_links,
            router_id: u32::from(self.cfg.router_id),
            replica_ok: self.replica_ok,
            fresh_takeover: self.role == Role::Master && self.fresh_takeover(now),
            semisync: self.semisync,
        }
    }

    /// Within the reclaim window of a takeover from a silent holder.
    fn fresh_takeover(&self, now: Instant) -> bool {
        self.silent_takeover.is_some() && self.timers.running(Timer::Reclaim, now)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // `Heard` only decides something while no link is up: no wake otherwise.
        let links_up = self.links_up.iter().any(|u| *u);
        self.timers.next(|t| !(t == Timer::Heard && links_up))
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.handle_inputs([input], now);
    }

    /// Takes in inputs that arrived together (one read of the kernel's
    /// events) and decides once, on the state after all of them: a silence
    /// that ended within the batch moves nothing. (A false alarm's log
    /// showed the holder heard again on both links 0.2 ms after its
    /// silence was declared, most likely in the same read, and the
    /// takeover went ahead.)
    pub fn handle_inputs(&mut self, inputs: impl IntoIterator<Item = Input>, now: Instant) {
        if self.stopped {
            return;
        }
        // Time has moved: what expired meanwhile counts before these inputs.
        self.expire(now);
        let mut decide = false;
        for input in inputs {
            decide |= self.apply(input, now);
        }
        if decide {
            self.evaluate(now);
        }
    }

    /// Applies one input to the state. False when there is nothing to
    /// decide on (a refused peer message).
    fn apply(&mut self, input: Input, now: Instant) -> bool {
        match input {
            Input::PeerLink {
                link,
                up,
                last_heard,
            } => {
                if let Some(slot) = self.links_up.get_mut(link) {
                    *slot = up;
                }
                self.heard(last_heard);
            }
            Input::Witness { link, up } => {
                if let Some(slot) = self.witness_up.get_mut(link) {
                    *slot = up;
                }
            }
            Input::Carrier { link, up } => {
                if let Some(slot) = self.carrier.get_mut(link) {
                    *slot = up;
                }
                if !up {
                    if self.carrier.iter().any(|c| *c) {
                        // Other links still carry: wait a moment before
                        // acting, so that cables pulled together (or a
                        // switch that died) read as one event, not as a
                        // handover to a peer we are about to lose too.
                        self.timers
                            .get_or_set(Timer::Carrier, now + self.cfg.carrier_settle);
                    } else {
                        self.apply_carrier_loss();
                    }
                }
            }
            Input::PeerControl(m) => {
                if !self.on_peer_control(m, now) {
                    return false;
                }
            }
            Input::VipConflict { .. } => {
                if self.role == Role::Master {
                    self.outputs.push_back(Output::ReannounceVips);
                }
            }
            Input::Shutdown => {
                if !self.timers.is_set(Timer::Shutdown) {
                    self.timers
                        .set(Timer::Shutdown, now + self.cfg.shutdown_wait);
                    self.timers.stop(Timer::Yield);
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
        true
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.expire(now);
        self.evaluate(now);
    }

    /// Dispatches every expired timer that is not decided by `evaluate`.
    fn expire(&mut self, now: Instant) {
        for t in Timer::ALL {
            if !self.timers.expired(t, now) {
                continue;
            }
            match t {
                // Decided by `evaluate`, which reads them.
                Timer::Init
                | Timer::Fence
                | Timer::Preempt
                | Timer::Contest
                | Timer::Conflict
                | Timer::Shutdown => {}
                Timer::Yield | Timer::Heard => self.timers.stop(t),
                Timer::Switchover => {
                    self.timers.stop(t);
                    self.want_takeover = false;
                }
                Timer::Carrier => {
                    self.timers.stop(t);
                    self.apply_carrier_loss();
                }
                Timer::Reclaim => {
                    self.timers.stop(t);
                    if !self.timers.is_set(Timer::Settle) {
                        self.silent_takeover = None;
                    }
                }
                Timer::Settle => {
                    self.timers.stop(t);
                    self.silent_takeover = None;
                    if self.role == Role::Master {
                        self.outputs
                            .push_back(Output::TakeoverConfirmed { epoch: self.epoch });
                    }
                }
            }
        }
    }

    /// Operator request: on the holder, hand the VIPs to the peer; on the
    /// backup, ask the holder for them.
    pub fn switchover(&mut self, now: Instant) -> Result<(), SwitchoverError> {
        if self.timers.is_set(Timer::Shutdown) {
            return Err(SwitchoverError::ShuttingDown);
        }
        if !self.peer_alive() {
            return Err(SwitchoverError::PeerDead);
        }
        let Some(peer) = self.peer_now() else {
            return Err(SwitchoverError::PeerUnknown);
        };
        match self.role {
            Role::Master => {
                if !(peer.eligible && peer.reach_ok() && peer.role == Role::Backup) {
                    return Err(SwitchoverError::PeerNotCandidate(peer.role));
                }
                self.yield_to_peer(Cause::Operator, "switchover requested by the operator", now);
            }
            Role::Backup => {
                if peer.role != Role::Master {
                    return Err(SwitchoverError::NoHolder(peer.role));
                }
                if !self.db_fit {
                    return Err(SwitchoverError::LocalDbUnfit);
                }
                let me = self.control(now);
                if !(me.eligible && me.reach_ok()) {
                    // The holder would not yield to us now, and a request
                    // kept for later would preempt it without reason.
                    return Err(SwitchoverError::NotCandidate);
                }
                self.want_takeover = true;
                self.timers
                    .set(Timer::Switchover, now + self.cfg.handover_hold);
            }
            other => return Err(SwitchoverError::WrongRole(other)),
        }
        self.evaluate(now);
        Ok(())
    }

    /// Nothing crosses a link without carrier: neither the peer nor its
    /// witness is reached there (the kernel's timers would say so only
    /// after their detection times).
    fn apply_carrier_loss(&mut self) {
        self.timers.stop(Timer::Carrier);
        for (i, c) in self.carrier.iter().enumerate() {
            if !*c {
                if let Some(slot) = self.links_up.get_mut(i) {
                    *slot = false;
                }
                if let Some(slot) = self.witness_up.get_mut(i) {
                    *slot = false;
                }
            }
        }
    }

    fn heard(&mut self, at: Instant) {
        if self.last_heard.is_none_or(|t| at > t) {
            self.last_heard = Some(at);
        }
    }

    /// Takes a peer message in; false if it was refused.
    fn on_peer_control(&mut self, m: PeerMessage, now: Instant) -> bool {
        let control = m.control;
        let known = self.epoch.max(self.peer_control().map_or(0, |p| p.epoch));
        if control.epoch > known.saturating_add(MAX_EPOCH_JUMP) {
            self.outputs
                .push_back(Output::Refused(Refusal::ImplausibleEpoch {
                    theirs: control.epoch,
                    known,
                }));
            return false;
        }
        self.timers.set(Timer::Heard, now + self.cfg.detect_time);
        self.heard(now);
        let new_session = self.peer.as_ref().is_none_or(|p| p.session != m.session);
        // A peer that held the VIPs beside us and just let go announced them
        // while it held them: point the clients back at us.
        let peer_let_go = !new_session
            && self.role == Role::Master
            && self.peer_control().is_some_and(|p| p.role == Role::Master)
            && control.role != Role::Master;
        if peer_let_go {
            self.outputs.push_back(Output::AnnounceVips);
        }
        // A restarted peer: what it said before is void.
        self.peer = Some(Peer {
            session: m.session,
            control,
            lease: m.lease,
            lateness: m.lateness,
            stale: false,
        });
        if self.role == Role::Master && control.role == Role::Master {
            // Our epoch is our claim: adopting theirs here would turn the
            // comparison into a priority tie-break on the next message.
            self.resolve_two_holders(&control, now);
        } else {
            self.timers.stop(Timer::Conflict);
            self.epoch = self.epoch.max(control.epoch);
        }
        true
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
                .is_some_and(|s| s.replaced == control.epoch);
        if theirs < mine && fresh {
            if let Some(s) = self.silent_takeover.take() {
                self.false_alarms = self.false_alarms.saturating_add(1);
                self.outputs.push_back(Output::FalseAlarm(FalseAlarm {
                    at: now,
                    epoch: self.epoch,
                    silence: s.silence,
                    held: now.saturating_duration_since(s.at),
                    peer_lateness: self.peer_lateness().unwrap_or_default(),
                }));
            }
            self.yield_to_peer(
                Cause::FalseAlarm,
                "the holder we replaced was only briefly silent: handing the VIPs back (false alarm)",
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
        if self.epoch.checked_add(1) == Some(control.epoch) && control.fresh_takeover {
            let deadline = self
                .timers
                .get_or_set(Timer::Conflict, now + self.cfg.reclaim_window);
            if now < deadline {
                return;
            }
        }
        self.timers.stop(Timer::Conflict);
        let ours = self.epoch;
        self.epoch = self.epoch.max(control.epoch);
        self.enter(
            Role::Backup,
            Cause::NewerHolder,
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
        self.timers = TimerTable::default();
    }

    /// May be handed the VIPs: available, and its database is fit.
    fn eligible(&self, now: Instant) -> bool {
        self.available(now) && self.db_fit
    }

    /// Neither shutting down nor yielding (database fitness aside).
    fn available(&self, now: Instant) -> bool {
        !self.timers.is_set(Timer::Shutdown) && !self.timers.running(Timer::Yield, now)
    }

    fn witness_reach(&self) -> u8 {
        (bits(&self.witness_up) & self.cfg.witness_links).count_ones() as u8
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
        if !self.peer_alive() {
            if let Some(p) = self.peer.as_mut() {
                p.stale = true;
            }
        }
        self.update_preempt_timer(now);
        match self.role {
            Role::Init => self.evaluate_init(now),
            Role::Backup => self.evaluate_backup(now),
            Role::Master => self.evaluate_master(now),
            Role::Fault => self.evaluate_fault(now),
        }
        if let Some(deadline) = self.timers.get(Timer::Shutdown) {
            if self.role == Role::Master {
                // Still holding: evaluate_master found no peer to hand over to.
                self.enter(
                    Role::Backup,
                    Cause::Shutdown,
                    "shutting down: no peer able to take the VIPs".into(),
                    now,
                );
            }
            let handed_over =
                !self.peer_alive() || self.peer_now().is_some_and(|p| p.role == Role::Master);
            if handed_over || now >= deadline {
                self.stop();
            }
        }
        self.advertise_if_changed(now);
    }

    fn evaluate_init(&mut self, now: Instant) {
        // Leave early only for a peer that holds the VIPs: otherwise wait the
        // whole init timeout so witness states settle before an election.
        if self.peer_now().is_some_and(|p| p.role == Role::Master) {
            self.timers.stop(Timer::Init);
            self.enter(
                Role::Backup,
                Cause::PeerHolds,
                "the peer holds the VIPs".into(),
                now,
            );
        } else if self.timers.expired(Timer::Init, now) {
            self.timers.stop(Timer::Init);
            if self.peer_alive() {
                self.enter(
                    Role::Backup,
                    Cause::Startup,
                    "heard the peer; nobody holds the VIPs".into(),
                    now,
                );
                self.evaluate_backup(now);
            } else if self.reach_ok() {
                self.enter(
                    Role::Backup,
                    Cause::Startup,
                    "peer not heard on any link during start-up".into(),
                    now,
                );
                self.evaluate_backup(now);
            } else {
                self.enter(
                    Role::Fault,
                    Cause::Isolated,
                    "neither the peer nor any witness answers: refusing to take the VIPs".into(),
                    now,
                );
            }
        }
    }

    fn evaluate_backup(&mut self, now: Instant) {
        if self.timers.is_set(Timer::Shutdown) {
            return;
        }
        if !self.peer_alive() {
            if self.reach_ok() {
                let (cause, reason) = if self.peer.is_some() {
                    (Cause::PeerSilent, "peer silent on all links")
                } else {
                    (Cause::FirstAlone, "no peer: first start alone")
                };
                self.take_over(cause, reason, now);
            } else {
                self.enter(
                    Role::Fault,
                    Cause::Isolated,
                    "peer silent on all links and no witness answers: we may be the isolated one"
                        .into(),
                    now,
                );
            }
            return;
        }
        let Some(peer) = self.peer_now() else {
            // Heard again after a silence: wait for what it says now.
            self.timers.stop(Timer::Contest);
            return;
        };
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
            self.timers.stop(Timer::Contest);
            return;
        }
        // The statically stronger node goes at once; the weaker one waits so
        // a stale view of the peer cannot make both take the VIPs. A peer
        // that yielded said so on purpose: no need to wait. An unfit node
        // waits anyway: the peer may be unfit too, and contesting as well.
        let stronger =
            (self.cfg.priority, u32::from(self.cfg.router_id)) > (peer.priority, peer.router_id);
        if !stronger && (peer.eligible || !self.db_fit) {
            let deadline = self
                .timers
                .get_or_set(Timer::Contest, now + self.cfg.contest_delay);
            if now < deadline {
                return;
            }
        }
        self.timers.stop(Timer::Contest);
        let reason = if !peer_candidate {
            "nobody holds the VIPs and the peer is not a candidate"
        } else {
            "nobody holds the VIPs and we are the better candidate"
        };
        self.take_over(Cause::Contest, reason, now);
    }

    fn evaluate_master(&mut self, now: Instant) {
        if self.timers.expired(Timer::Conflict, now) {
            match self.peer_now() {
                Some(c) if c.role == Role::Master => self.resolve_two_holders(&c, now),
                _ => self.timers.stop(Timer::Conflict),
            }
            if self.role != Role::Master {
                return;
            }
        }
        if self.peer_alive() {
            self.timers.stop(Timer::Fence);
            let Some(peer) = self.peer_now() else {
                return; // heard again after a silence: wait for what it says
            };
            let peer_candidate = peer.eligible && peer.reach_ok() && peer.role == Role::Backup;
            if self.timers.is_set(Timer::Shutdown) && peer_candidate {
                self.yield_to_peer(
                    Cause::Shutdown,
                    "shutting down: handing the VIPs to the peer",
                    now,
                );
            } else if peer_candidate && peer.witness_reach > self.witness_reach() {
                let reason = format!(
                    "the peer reaches {} witness(es), we reach {}",
                    peer.witness_reach,
                    self.witness_reach()
                );
                self.yield_to_peer(Cause::WitnessReach, &reason, now);
            } else if peer_candidate && peer.want_takeover {
                self.yield_to_peer(Cause::PeerAsked, "the peer asked for the VIPs", now);
            } else if peer_candidate && !self.db_fit {
                self.yield_to_peer(
                    Cause::DatabaseDown,
                    "the local database is down: handing the VIPs to the peer, whose database is fit",
                    now,
                );
            }
            return;
        }
        if self.reach_ok() {
            self.timers.stop(Timer::Fence);
            return;
        }
        if !self.carrier.iter().any(|c| *c) {
            self.timers.stop(Timer::Fence);
            self.enter(
                Role::Fault,
                Cause::NoCarrier,
                "no carrier on any link: nobody can reach us, dropping the VIPs".into(),
                now,
            );
            return;
        }
        let deadline = self
            .timers
            .get_or_set(Timer::Fence, now + self.cfg.fence_timeout);
        if now >= deadline {
            self.timers.stop(Timer::Fence);
            self.enter(
                Role::Fault,
                Cause::FenceTimeout,
                "isolated: neither the peer nor any witness answered for the fence timeout".into(),
                now,
            );
        }
    }

    fn evaluate_fault(&mut self, now: Instant) {
        if self.peer_alive() {
            self.enter(
                Role::Backup,
                Cause::PeerBack,
                "the peer is reachable again".into(),
                now,
            );
            self.evaluate_backup(now);
        } else if self.reach_ok() {
            // Listen for the peer before deciding: if it took over while we
            // were cut off, its probes will arrive within the init timeout.
            self.timers.set(Timer::Init, now + self.cfg.init_timeout);
            self.enter(
                Role::Init,
                Cause::WitnessBack,
                "a witness answers again: listening for the peer".into(),
                now,
            );
        }
    }

    fn update_preempt_timer(&mut self, now: Instant) {
        let wants = self.role == Role::Backup
            && !self.cfg.nopreempt
            && self.eligible(now)
            && self.peer_now().is_some_and(|p| {
                p.role == Role::Master
                    && self.cfg.priority > p.priority
                    && self.witness_reach() >= p.witness_reach
            });
        if !wants {
            self.timers.stop(Timer::Preempt);
            self.preempt_ready = false;
        } else if self.preempt_ready {
        } else if self.timers.expired(Timer::Preempt, now) || self.cfg.preempt_delay.is_zero() {
            self.timers.stop(Timer::Preempt);
            self.preempt_ready = true;
        } else {
            self.timers
                .get_or_set(Timer::Preempt, now + self.cfg.preempt_delay);
        }
    }

    fn take_over(&mut self, cause: Cause, reason: &str, now: Instant) {
        let peer = self.peer.clone();
        let peer_epoch = peer.as_ref().map_or(0, |p| p.control.epoch);
        // Bounded by MAX_EPOCH_JUMP on the way in: saturation is unreachable
        // in practice and keeps "the most recent takeover wins" ordered.
        self.epoch = self.epoch.max(peer_epoch).saturating_add(1);
        let from_silent_holder = peer
            .as_ref()
            .is_some_and(|p| p.control.role == Role::Master)
            && !self.peer_alive();
        self.silent_takeover = None;
        self.timers.stop(Timer::Reclaim);
        self.timers.stop(Timer::Settle);
        if from_silent_holder {
            let lease = peer.map_or(Duration::ZERO, |p| p.lease);
            let last_heard = self.last_heard.unwrap_or(now);
            let reclaim_end = now + self.cfg.reclaim_window;
            // The old holder's kernel serves the VIPs until at most its
            // lease after its last probe left, which was before we heard it.
            let lease_end = last_heard + lease + lease_margin(lease);
            self.silent_takeover = Some(SilentTakeover {
                at: now,
                replaced: peer_epoch,
                silence: now.saturating_duration_since(last_heard),
            });
            self.timers.set(Timer::Reclaim, reclaim_end);
            self.timers.set(Timer::Settle, reclaim_end.max(lease_end));
        }
        self.want_takeover = false;
        self.timers.stop(Timer::Preempt);
        self.preempt_ready = false;
        self.timers.stop(Timer::Contest);
        self.enter(Role::Master, cause, reason.to_string(), now);
    }

    fn yield_to_peer(&mut self, cause: Cause, reason: &str, now: Instant) {
        self.timers.set(Timer::Yield, now + self.cfg.handover_hold);
        self.enter(Role::Backup, cause, reason.to_string(), now);
    }

    fn enter(&mut self, to: Role, cause: Cause, reason: String, now: Instant) {
        let from = self.role;
        if from == to {
            return;
        }
        *self.counts.entry((from, to, cause)).or_default() += 1;
        // A provisional takeover runs the hooks when confirmed; leaving it
        // before that (a false alarm) runs none.
        let hooks = if to == Role::Master {
            !self.timers.is_set(Timer::Settle)
        } else {
            !(from == Role::Master && self.timers.is_set(Timer::Settle))
        };
        self.role = to;
        // A switchover request is for the role it was made in.
        self.want_takeover = false;
        self.timers.stop(Timer::Switchover);
        if from == Role::Master {
            self.outputs.push_back(Output::RemoveVips);
            self.timers.stop(Timer::Settle);
            self.timers.stop(Timer::Reclaim);
            self.silent_takeover = None;
        }
        if to == Role::Master {
            self.outputs.push_back(Output::AddVips);
            self.outputs.push_back(Output::AnnounceVips);
        }
        self.timers.stop(Timer::Fence);
        if to != Role::Master {
            self.timers.stop(Timer::Conflict);
        }
        let t = Transition {
            from,
            to,
            epoch: self.epoch,
            cause,
            reason,
            hooks,
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
}

/// Bit i set when `flags[i]`.
fn bits(flags: &[bool]) -> u8 {
    flags
        .iter()
        .take(8)
        .enumerate()
        .fold(0u8, |m, (i, on)| if *on { m | (1 << i) } else { m })
}

#[cfg(test)]
mod tests;
