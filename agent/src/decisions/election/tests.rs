//! Failover stories, told with two state machines on a simulated network.
//!
//! `World` models what the drivers do around the election: a kernel per node
//! that timestamps the peer's probes (every 5 ms per link, 15 ms detection)
//! and the witness's ARP replies (every 20 ms, 60 ms detection), the probe
//! sender that carries each node's advertised control, and the VIPs. Time
//! advances in 1 ms ticks; nothing here sleeps.

use super::*;

const LINKS: usize = 2;
const OUTSIDE: usize = 0;
const INSIDE: usize = 1;
const PROBE_MS: u64 = 5;
const DETECT_MS: u64 = 15;
const WITNESS_MS: u64 = 20;
const WITNESS_DETECT_MS: u64 = 60;
const REFRESH_MS: u64 = 100;
const RECLAIM_MS: u64 = 4 * DETECT_MS;
const LEASE_MS: u64 = 4 * DETECT_MS;
const CARRIER_SETTLE_MS: u64 = 5;

fn config(priority: u8, router_id: [u8; 4]) -> ElectionConfig {
    ElectionConfig {
        priority,
        nopreempt: true,
        preempt_delay: Duration::ZERO,
        init_timeout: Duration::from_millis(100),
        fence_timeout: Duration::from_millis(300),
        detect_time: Duration::from_millis(DETECT_MS),
        reclaim_window: Duration::from_millis(RECLAIM_MS),
        contest_delay: Duration::from_millis(DETECT_MS),
        handover_hold: Duration::from_millis(1000),
        shutdown_wait: Duration::from_millis(500),
        carrier_settle: Duration::from_millis(CARRIER_SETTLE_MS),
        links: LINKS,
        // The seed: the outside gateway is the only witness.
        witness_links: 1 << OUTSIDE,
        router_id: Ipv4Addr::from(router_id),
    }
}

#[derive(Default, Clone, Copy)]
struct Kernel {
    token: u64,
    last_heard: [Option<u64>; LINKS],
    up: [bool; LINKS],
    witness_last: [Option<u64>; LINKS],
    witness_up: [bool; LINKS],
}

struct Node {
    cfg: ElectionConfig,
    e: Election,
    session: u64,
    alive: bool,
    hung: bool,
    stopped: bool,
    holds: bool,
    advertised: Control,
    dirty: bool,
    kernel: Kernel,
    inbox: VecDeque<Input>,
    transitions: Vec<Transition>,
    announces: usize,
    confirmed: usize,
    false_alarms: Vec<FalseAlarm>,
    refused: usize,
}

impl Node {
    fn new(cfg: ElectionConfig, session: u64, now: Instant) -> Self {
        let e = Election::new(cfg.clone(), now);
        let advertised = e.control(now);
        Node {
            cfg,
            e,
            session,
            alive: true,
            hung: false,
            stopped: false,
            holds: false,
            advertised,
            dirty: true,
            kernel: Kernel::default(),
            inbox: VecDeque::new(),
            transitions: Vec::new(),
            announces: 0,
            confirmed: 0,
            false_alarms: Vec::new(),
            refused: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.e.poll_output() {
            match o {
                Output::AddVips => self.holds = true,
                Output::RemoveVips => self.holds = false,
                Output::AnnounceVips | Output::ReannounceVips => self.announces += 1,
                Output::Advertise(c) => {
                    self.advertised = c;
                    self.dirty = true;
                }
                Output::Transition(t) => self.transitions.push(t),
                Output::TakeoverConfirmed { .. } => self.confirmed += 1,
                Output::FalseAlarm(f) => self.false_alarms.push(f),
                Output::Refused(_) => self.refused += 1,
                Output::Stopped => self.stopped = true,
            }
        }
    }
}

struct World {
    t0: Instant,
    ms: u64,
    nodes: [Node; 2],
    /// Path between the servers per link (the switch forwards s1 <-> s2).
    path: [bool; LINKS],
    /// Whether node n's port on link i forwards anything at all.
    port: [[bool; LINKS]; 2],
    /// Whether the witness answers node n on link i (besides the port).
    witness: [[bool; LINKS]; 2],
    /// Random probe loss in percent on every port, with a fixed seed.
    loss_pct: u64,
    rng: u64,
    next_session: u64,
    /// Ticks during which both nodes held the VIPs while both were running.
    double_holder_ms: u64,
    /// The lease each node advertises.
    lease_ms: u64,
}

impl World {
    fn new() -> Self {
        Self::with(config(101, [10, 0, 0, 1]), config(100, [10, 0, 0, 2]))
    }

    fn with(c1: ElectionConfig, c2: ElectionConfig) -> Self {
        let t0 = Instant::now();
        World {
            t0,
            ms: 0,
            nodes: [Node::new(c1, 11, t0), Node::new(c2, 22, t0)],
            path: [true; LINKS],
            port: [[true; LINKS]; 2],
            witness: [[true; LINKS]; 2],
            loss_pct: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            next_session: 100,
            double_holder_ms: 0,
            lease_ms: LEASE_MS,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.ms)
    }

    fn lost(&mut self) -> bool {
        if self.loss_pct == 0 {
            return false;
        }
        // xorshift64: deterministic loss pattern.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100 < self.loss_pct
    }

    fn sending(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.alive && !node.hung && !node.stopped
    }

    fn tick(&mut self) {
        self.ms += 1;
        let now = self.now();
        let ms = self.ms;
        let t0 = self.t0;
        let lease_ms = self.lease_ms;
        // Userspace: timers, then queued kernel/socket input.
        for n in 0..2 {
            let node = &mut self.nodes[n];
            if !node.alive || node.hung {
                continue;
            }
            if node.e.poll_timeout().is_some_and(|t| t <= now) {
                node.e.handle_timeout(now);
            }
            // The daemon's loop takes the kernel's events before the
            // probes that arrived with them (a biased select).
            let (kernel, rest): (Vec<Input>, Vec<Input>) = node
                .inbox
                .drain(..)
                .partition(|i| !matches!(i, Input::PeerControl(_)));
            node.inbox.extend(kernel.into_iter().chain(rest));
            while let Some(input) = node.inbox.pop_front() {
                if let Input::PeerControl(m) = &input {
                    // The daemon installs a verified peer token in the kernel.
                    node.kernel.token = m.session;
                }
                node.e.handle_input(input, now);
            }
            node.drain();
        }
        // Probes from a to b.
        for a in 0..2 {
            let b = 1 - a;
            let periodic = ms.is_multiple_of(PROBE_MS);
            let send = self.sending(a) && (periodic || self.nodes[a].dirty);
            if send {
                let dirty = self.nodes[a].dirty;
                let session = self.nodes[a].session;
                let control = self.nodes[a].advertised;
                for i in 0..LINKS {
                    let ok = self.path[i] && self.port[a][i] && self.port[b][i] && !self.lost();
                    if !ok || !self.nodes[b].alive {
                        continue;
                    }
                    let nb = &mut self.nodes[b];
                    let known = nb.kernel.token == session;
                    // The kernel passes a probe up when the peer's token is
                    // new, its control changed, the link just came back, or
                    // for the periodic refresh.
                    let came_back = !nb.kernel.up[i];
                    if !known || dirty || came_back || ms.is_multiple_of(REFRESH_MS) {
                        nb.inbox.push_back(Input::PeerControl(PeerMessage {
                            session,
                            control,
                            lease: Duration::from_millis(lease_ms),
                            lateness: Duration::ZERO,
                        }));
                    }
                    if known {
                        nb.kernel.last_heard[i] = Some(ms);
                        if !nb.kernel.up[i] {
                            nb.kernel.up[i] = true;
                            nb.inbox.push_back(Input::PeerLink {
                                link: i,
                                up: true,
                                last_heard: now,
                            });
                        }
                    }
                }
                self.nodes[a].dirty = false;
            }
        }
        // Kernel timers and witness ARP, per node.
        for n in 0..2 {
            let reach: [bool; LINKS] =
                std::array::from_fn(|i| self.port[n][i] && self.witness[n][i]);
            let node = &mut self.nodes[n];
            if !node.alive {
                continue;
            }
            for (i, reach) in reach.into_iter().enumerate() {
                if node.kernel.up[i]
                    && node.kernel.last_heard[i].is_some_and(|t| ms - t >= DETECT_MS)
                {
                    node.kernel.up[i] = false;
                    let last = node.kernel.last_heard[i].unwrap_or(ms);
                    node.inbox.push_back(Input::PeerLink {
                        link: i,
                        up: false,
                        last_heard: t0 + Duration::from_millis(last),
                    });
                }
                // The RT sender thread probes the witness; a hung agent's does not.
                if !node.hung && ms.is_multiple_of(WITNESS_MS) && reach {
                    node.kernel.witness_last[i] = Some(ms);
                    if !node.kernel.witness_up[i] {
                        node.kernel.witness_up[i] = true;
                        node.inbox.push_back(Input::Witness { link: i, up: true });
                    }
                }
                if node.kernel.witness_up[i]
                    && node.kernel.witness_last[i].is_some_and(|t| ms - t >= WITNESS_DETECT_MS)
                {
                    node.kernel.witness_up[i] = false;
                    node.inbox.push_back(Input::Witness { link: i, up: false });
                }
            }
        }
        if std::env::var_os("ELECTION_TRACE").is_some() {
            for (n, node) in self.nodes.iter().enumerate() {
                if let Some(t) = node.transitions.last().filter(|t| t.at == now) {
                    eprintln!(
                        "{ms} ms: server{} {} -> {} epoch {}: {}",
                        n + 1,
                        t.from,
                        t.to,
                        t.epoch,
                        t.reason
                    );
                }
            }
        }
        let running = |n: &Node| n.alive && !n.hung && !n.stopped;
        let connected = (0..LINKS).any(|i| self.path[i] && self.port[0][i] && self.port[1][i]);
        if connected
            && running(&self.nodes[0])
            && running(&self.nodes[1])
            && self.nodes[0].holds
            && self.nodes[1].holds
        {
            self.double_holder_ms += 1;
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.tick();
        }
    }

    /// Runs until `cond` holds (at most `limit` ms); returns the ms it took.
    fn run_until(&mut self, limit: u64, what: &str, cond: impl Fn(&World) -> bool) -> u64 {
        let start = self.ms;
        for _ in 0..limit {
            if cond(self) {
                return self.ms - start;
            }
            self.tick();
        }
        assert!(cond(self), "{what}: did not happen within {limit} ms");
        self.ms - start
    }

    fn role(&self, n: usize) -> Role {
        self.nodes[n].e.role()
    }

    fn holders(&self) -> Vec<usize> {
        (0..2)
            .filter(|n| self.nodes[*n].alive && self.nodes[*n].holds)
            .collect()
    }

    fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.alive = false;
        node.holds = false; // the machine is gone, and its addresses with it
        node.kernel = Kernel::default();
        node.inbox.clear();
    }

    /// Pulls node n's cable on `link`: nothing crosses, and its kernel
    /// reports the carrier loss.
    fn unplug(&mut self, n: usize, link: usize) {
        self.port[n][link] = false;
        self.carrier(n, link, false);
    }

    fn plug(&mut self, n: usize, link: usize) {
        self.port[n][link] = true;
        self.carrier(n, link, true);
    }

    fn carrier(&mut self, n: usize, link: usize, up: bool) {
        let now = self.now();
        let node = &mut self.nodes[n];
        if node.alive && !node.hung {
            node.e.handle_input(Input::Carrier { link, up }, now);
            node.drain();
        }
    }

    fn boot(&mut self, n: usize) {
        self.next_session += 1;
        let now = self.now();
        let cfg = self.nodes[n].cfg.clone();
        self.nodes[n] = Node::new(cfg, self.next_session, now);
    }

    /// Both nodes started together and settled.
    fn started() -> Self {
        let mut w = World::new();
        w.run_until(500, "server1 master", |w| {
            w.role(0) == Role::Master && w.role(1) == Role::Backup
        });
        w.run(50);
        w
    }

    fn moves(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                n.transitions
                    .iter()
                    .filter(|t| t.to == Role::Master)
                    .count()
            })
            .sum()
    }
}

#[test]
fn start_elects_the_higher_priority_and_holds_once() {
    let mut w = World::new();
    let took = w.run_until(500, "election", |w| w.holders() == vec![0]);
    w.run(1000);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.role(1), Role::Backup);
    assert_eq!(w.nodes[0].e.epoch(), 1);
    assert_eq!(w.nodes[1].e.epoch(), 1, "the backup learns the epoch");
    assert!(took <= 150, "election took {took} ms");
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn starting_node_removes_leftover_vips_first() {
    let mut e = Election::new(config(100, [10, 0, 0, 1]), Instant::now());
    assert_eq!(e.poll_output(), Some(Output::RemoveVips));
}

#[test]
fn death_of_the_holder_moves_vips_within_detection_time() {
    let mut w = World::started();
    w.kill(0);
    let took = w.run_until(100, "server2 takes over", |w| w.holders() == vec![1]);
    assert!(
        (DETECT_MS - PROBE_MS..=DETECT_MS + 2).contains(&took),
        "took {took} ms"
    );
    assert_eq!(w.nodes[1].e.epoch(), 2);
    assert!(w.nodes[1].announces >= 1, "takeover announces the VIPs");
    let reason = &w.nodes[1].transitions.last().unwrap().reason;
    assert!(reason.contains("silent on all links"), "{reason}");
}

#[test]
fn nopreempt_after_reboot() {
    let mut w = World::started();
    w.kill(0);
    w.run(500);
    w.boot(0);
    w.run(2000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.role(0), Role::Backup);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn one_cut_link_moves_nothing_and_is_degraded() {
    for link in [OUTSIDE, INSIDE] {
        let mut w = World::started();
        let moves = w.moves();
        w.path[link] = false;
        w.run(3000);
        assert_eq!(w.holders(), vec![0], "link {link}");
        assert_eq!(w.moves(), moves, "link {link}");
        assert!(w.nodes[0].e.degraded() && w.nodes[1].e.degraded());
        assert!(!w.nodes[1].e.link_up(link));
        w.path[link] = true;
        w.run(100);
        assert!(!w.nodes[1].e.degraded());
    }
}

#[test]
fn inside_port_down_on_holder_moves_nothing() {
    // keepalived's sync group dropped both VIPs here: a 3.35 s outside outage.
    let mut w = World::started();
    w.port[0][INSIDE] = false;
    w.run(3000);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.moves(), 1);
}

#[test]
fn holder_losing_its_outside_uplink_hands_over() {
    let mut w = World::started();
    w.port[0][OUTSIDE] = false; // silent: carrier up, frames dropped
    let took = w.run_until(200, "server2 takes over", |w| w.holders() == vec![1]);
    assert!(took <= 100, "took {took} ms");
    assert_eq!(w.role(0), Role::Backup);
    assert_eq!(
        w.double_holder_ms, 0,
        "the holder yields before the peer takes"
    );
    // The uplink comes back: no move back (nopreempt, equal reach).
    w.port[0][OUTSIDE] = true;
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn isolated_holder_fences_itself_and_peer_keeps_vips_after_heal() {
    let mut w = World::started();
    w.port[0] = [false; LINKS];
    let took = w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    assert!(took <= DETECT_MS + 2, "took {took}");
    let fenced = w.run_until(1000, "server1 fences", |w| !w.nodes[0].holds);
    assert!(
        (WITNESS_DETECT_MS..=WITNESS_DETECT_MS + 300 + 25).contains(&fenced),
        "fenced after {fenced} ms"
    );
    assert_eq!(w.role(0), Role::Fault);
    w.port[0] = [true; LINKS];
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.role(0), Role::Backup);
    assert_eq!(
        w.double_holder_ms, 0,
        "never two holders while both reach each other"
    );
}

#[test]
fn short_isolation_heals_to_the_most_recent_takeover() {
    let mut w = World::started();
    w.port[0] = [false; LINKS];
    w.run(100); // shorter than detection + fence: server1 still holds
    assert_eq!(w.holders(), vec![0, 1]);
    w.port[0] = [true; LINKS];
    let took = w.run_until(200, "one holder", |w| w.holders() == vec![1]);
    // The replacement is past its reclaim window: the stale side yields at
    // the first probe it hears.
    assert!(took <= PROBE_MS + 2, "agreed after {took} ms");
    w.run(2000);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn brief_stall_of_the_holder_is_not_a_preemption() {
    // The holder's probes stop for a little more than the detection time
    // (a scheduling stall): the backup takes over, hears the holder again
    // and hands the VIPs back at once; the holder never lets go.
    let mut w = World::started();
    w.nodes[0].hung = true;
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    w.run(3);
    w.nodes[0].hung = false;
    let took = w.run_until(50, "server2 hands back", |w| !w.nodes[1].holds);
    assert!(took <= PROBE_MS + 2, "handed back after {took} ms");
    w.run(3000);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.role(1), Role::Backup);
    assert!(
        w.nodes[0]
            .transitions
            .iter()
            .all(|t| t.from != Role::Master),
        "the holder never stepped down"
    );
}

#[test]
fn holder_reannounces_when_a_brief_replacement_lets_go() {
    // The replacement's gratuitous ARPs moved the clients; the holder must
    // move them back once the replacement hands the VIPs back.
    let mut w = World::started();
    let before = w.nodes[0].announces;
    w.nodes[0].hung = true;
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    w.nodes[0].hung = false;
    w.run_until(50, "server2 hands back", |w| !w.nodes[1].holds);
    w.run(20);
    assert!(w.nodes[0].announces > before, "server1 did not re-announce");
}

#[test]
fn silent_partition_between_servers_heals_to_one_holder() {
    // Both still reach the gateway: both hold during the partition (no quorum
    // can be had with two nodes); on heal the most recent takeover wins.
    let mut w = World::started();
    w.path = [false; LINKS];
    w.run(2000);
    assert_eq!(w.holders(), vec![0, 1]);
    w.path = [true; LINKS];
    let took = w.run_until(200, "one holder", |w| w.holders() == vec![1]);
    // The replacement is past its reclaim window: the stale side yields at
    // the first probe it hears.
    assert!(took <= PROBE_MS + 2, "agreed after {took} ms");
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
    assert!(w.nodes[1].announces >= 2, "the winner repairs ARP caches");
}

#[test]
fn hung_holder_resumes_without_taking_vips_back() {
    let mut w = World::started();
    w.nodes[0].hung = true; // SIGSTOP
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    w.run(5000);
    // SIGCONT. The replacement is seconds old (not fresh): server1 yields at once.
    w.nodes[0].hung = false;
    let took = w.run_until(50, "server1 drops", |w| !w.nodes[0].holds);
    assert!(took <= 2, "dropped after {took} ms");
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.role(0), Role::Backup);
}

#[test]
fn hung_backup_resumes_as_backup() {
    let mut w = World::started();
    w.nodes[1].hung = true;
    w.run(3000);
    w.nodes[1].hung = false;
    w.run(3000);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.moves(), 1);
}

#[test]
fn switchover_hands_over_without_two_holders() {
    let mut w = World::started();
    let now = w.now();
    w.nodes[0].e.switchover(now).unwrap();
    w.nodes[0].drain();
    assert!(!w.nodes[0].holds, "the holder drops first");
    let took = w.run_until(20, "server2 takes over", |w| w.nodes[1].holds);
    assert!(took <= 2, "took {took} ms");
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn switchover_from_the_backup_asks_the_holder() {
    let mut w = World::started();
    let now = w.now();
    w.nodes[1].e.switchover(now).unwrap();
    w.nodes[1].drain();
    w.run_until(20, "server2 takes over", |w| w.holders() == vec![1]);
    w.run(2000);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn a_backup_that_cannot_take_is_refused_a_switchover() {
    let mut w = World::started();
    // server2's witness stops answering: it is no candidate.
    w.witness[1] = [false; LINKS];
    w.run(200);
    let now = w.now();
    assert_eq!(
        w.nodes[1].e.switchover(now),
        Err(SwitchoverError::NotCandidate)
    );
    w.witness[1] = [true; LINKS];
    w.run(200);
    // Once it reaches its witness again, the request goes through, and is
    // gone with the role it was made in.
    let now = w.now();
    w.nodes[1].e.switchover(now).unwrap();
    w.run_until(20, "server2 takes over", |w| w.holders() == vec![1]);
    assert!(!w.nodes[1].e.control(w.now()).want_takeover);
}

#[test]
fn switchover_refused_when_peer_cannot_take() {
    let mut w = World::started();
    w.kill(1);
    w.run(50);
    let now = w.now();
    assert_eq!(w.nodes[0].e.switchover(now), Err(SwitchoverError::PeerDead));
    assert_eq!(w.holders(), vec![0]);
}

#[test]
fn shutdown_of_holder_hands_over_then_stops() {
    let mut w = World::started();
    let now = w.now();
    w.nodes[0].e.handle_input(Input::Shutdown, now);
    w.nodes[0].drain();
    assert!(!w.nodes[0].holds);
    w.run_until(20, "server1 stopped", |w| w.nodes[0].stopped);
    w.run_until(20, "server2 holds", |w| w.nodes[1].holds);
    w.run(1000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn shutdown_without_peer_releases_and_stops_at_once() {
    let mut w = World::started();
    w.kill(1);
    w.run(50);
    let now = w.now();
    w.nodes[0].e.handle_input(Input::Shutdown, now);
    w.nodes[0].drain();
    assert!(w.nodes[0].stopped);
    assert!(!w.nodes[0].holds);
}

#[test]
fn preemption_after_delay_when_enabled() {
    let mut c1 = config(101, [10, 0, 0, 1]);
    c1.nopreempt = false;
    c1.preempt_delay = Duration::from_millis(200);
    let mut w = World::with(c1, config(100, [10, 0, 0, 2]));
    w.run_until(500, "server1 master", |w| w.holders() == vec![0]);
    w.kill(0);
    w.run_until(100, "server2 master", |w| w.holders() == vec![1]);
    w.boot(0);
    w.run(150);
    assert_eq!(w.holders(), vec![1], "not before the delay");
    w.run_until(400, "server1 preempts", |w| w.holders() == vec![0]);
    w.run(2000);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn alone_without_witness_refuses_vips() {
    let mut w = World::new();
    w.kill(1);
    w.witness[0] = [false; LINKS];
    w.run(1000);
    assert_eq!(w.role(0), Role::Fault);
    assert!(w.holders().is_empty());
    // The gateway answers again: it listens for a peer, then takes over.
    w.witness[0] = [true; LINKS];
    w.run_until(300, "server1 master", |w| w.holders() == vec![0]);
}

#[test]
fn without_witnesses_takeover_still_works_and_never_fences() {
    let mut c1 = config(101, [10, 0, 0, 1]);
    let mut c2 = config(100, [10, 0, 0, 2]);
    c1.witness_links = 0;
    c2.witness_links = 0;
    let mut w = World::with(c1, c2);
    w.run_until(500, "server1 master", |w| w.holders() == vec![0]);
    w.port[0] = [false; LINKS];
    w.run(2000);
    // No witness: both hold (the status warns about this), and heal resolves.
    assert_eq!(w.holders(), vec![0, 1]);
    w.port[0] = [true; LINKS];
    w.run(100);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn vip_conflict_triggers_announce_only_on_holder() {
    let mut w = World::started();
    let now = w.now();
    let before = (w.nodes[0].announces, w.nodes[1].announces);
    for n in 0..2 {
        w.nodes[n].e.handle_input(
            Input::VipConflict {
                vip: Ipv4Addr::new(198, 51, 100, 100),
            },
            now,
        );
        w.nodes[n].drain();
    }
    assert_eq!(w.nodes[0].announces, before.0 + 1);
    assert_eq!(w.nodes[1].announces, before.1);
}

#[test]
fn equal_epoch_tie_goes_to_priority() {
    let now = Instant::now();
    let mut e = Election::new(config(100, [10, 0, 0, 2]), now);
    // Alone at start: becomes master with epoch 1.
    e.handle_input(Input::Witness { link: 0, up: true }, now);
    e.handle_timeout(now + Duration::from_millis(100));
    assert_eq!(e.role(), Role::Master);
    let peer = Control {
        priority: 101,
        router_id: u32::from(Ipv4Addr::new(10, 0, 0, 1)),
        ..Control::for_tests(Role::Master)
    };
    let later = now + Duration::from_millis(101);
    e.handle_input(
        Input::PeerLink {
            link: 0,
            up: true,
            last_heard: later,
        },
        later,
    );
    e.handle_input(
        Input::PeerControl(PeerMessage {
            session: 7,
            control: peer,
            lease: Duration::from_millis(LEASE_MS),
            lateness: Duration::ZERO,
        }),
        later,
    );
    assert_eq!(e.role(), Role::Backup);
    let outs: Vec<_> = std::iter::from_fn(|| e.poll_output()).collect();
    assert!(outs.contains(&Output::RemoveVips));
}

#[test]
fn timers_never_report_a_past_deadline_twice() {
    // A deadline that stays in the past would spin the daemon's loop.
    let mut c1 = config(101, [10, 0, 0, 1]);
    c1.nopreempt = false;
    c1.preempt_delay = Duration::from_millis(50);
    let mut w = World::with(c1, config(100, [10, 0, 0, 2]));
    w.run(300);
    for _ in 0..2000 {
        w.tick();
        for n in &w.nodes {
            if let Some(t) = n.e.poll_timeout() {
                assert!(t >= w.now() - Duration::from_millis(1), "stale deadline");
            }
        }
    }
}

#[test]
fn ten_minutes_of_two_percent_loss_give_no_false_failover() {
    let mut w = World::started();
    w.loss_pct = 2;
    w.run(600_000);
    assert_eq!(w.moves(), 1, "false failovers under 2% loss");
    assert_eq!(w.holders(), vec![0]);
}

// -- the local database (issue 4) -------------------------------------------

const DB_DOWN: Input = Input::LocalDb {
    fit: false,
    replica_ok: false,
    semisync: SemisyncAdvert::None,
};

impl World {
    /// The daemon's report of node n's database, as it arrives in its loop.
    fn db(&mut self, n: usize, fit: bool, replica_ok: bool) {
        self.nodes[n].inbox.push_back(Input::LocalDb {
            fit,
            replica_ok,
            semisync: SemisyncAdvert::None,
        });
    }
}

#[test]
fn holders_database_down_hands_the_vips_to_the_peer() {
    let mut w = World::started();
    w.nodes[0].inbox.push_back(DB_DOWN);
    let took = w.run_until(50, "server2 takes over", |w| w.holders() == vec![1]);
    assert!(took <= PROBE_MS + 2, "took {took} ms");
    assert_eq!(w.nodes[1].e.epoch(), 2);
    let reason = &w.nodes[0].transitions.last().unwrap().reason;
    assert!(reason.contains("database"), "{reason}");
    w.run(3000);
    assert_eq!(w.holders(), vec![1], "the unfit node does not come back");
    assert_eq!(
        w.double_holder_ms, 0,
        "the holder drops before the peer takes"
    );
    // Its database recovers: nopreempt, nothing moves.
    w.db(0, true, false);
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.moves(), 2);
}

#[test]
fn holder_keeps_the_vips_when_both_databases_are_down() {
    let mut w = World::started();
    w.db(1, false, false);
    w.run(100);
    w.db(0, false, false);
    w.run(3000);
    assert_eq!(w.holders(), vec![0], "no handover to an unfit peer");
    assert_eq!(w.moves(), 1);
    // The backup's recovers: now the holder hands over.
    w.db(1, true, false);
    w.run_until(50, "server2 takes over", |w| w.holders() == vec![1]);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn backup_with_a_dead_database_is_not_elected() {
    // server1 would win on priority, but its database is down from the start.
    let mut w = World::new();
    w.db(0, false, false);
    w.run_until(500, "server2 elected", |w| w.holders() == vec![1]);
    w.run(2000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.role(0), Role::Backup);
    assert_eq!(w.moves(), 1);
    assert!(!w.nodes[1].e.peer_control().unwrap().eligible);
    // And a switchover to it is refused, from either side.
    let now = w.now();
    assert_eq!(
        w.nodes[1].e.switchover(now),
        Err(SwitchoverError::PeerNotCandidate(Role::Backup))
    );
    assert_eq!(
        w.nodes[0].e.switchover(now),
        Err(SwitchoverError::LocalDbUnfit)
    );
    w.run(1000);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn both_databases_down_at_start_still_elects_exactly_one_holder() {
    // The web tier needs its VIPs even when no database works.
    let mut w = World::new();
    w.db(0, false, false);
    w.db(1, false, false);
    w.run_until(500, "one holder", |w| w.holders().len() == 1);
    w.run(2000);
    assert_eq!(w.holders().len(), 1);
    assert_eq!(w.moves(), 1);
    assert_eq!(w.double_holder_ms, 0);
}

#[test]
fn without_a_database_the_defaults_change_nothing() {
    let now = Instant::now();
    let e = Election::new(config(101, [10, 0, 0, 1]), now);
    let c = e.control(now);
    assert!(c.eligible, "fit by default");
    assert!(!c.replica_ok, "no usable replica by default");
    // Reporting the defaults explicitly changes neither role nor advertisement.
    let mut w = World::started();
    let before = (w.nodes[0].advertised, w.nodes[1].advertised);
    w.db(0, true, false);
    w.db(1, true, false);
    w.run(1000);
    assert_eq!((w.nodes[0].advertised, w.nodes[1].advertised), before);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.moves(), 1);
}

#[test]
fn replica_ok_reaches_the_holder_and_moves_nothing() {
    let mut w = World::started();
    w.db(1, true, true);
    w.run_until(20, "holder sees replica_ok", |w| {
        w.nodes[0].e.peer_control().is_some_and(|c| c.replica_ok)
    });
    w.db(1, true, false);
    w.run_until(20, "holder sees it cleared", |w| {
        w.nodes[0].e.peer_control().is_some_and(|c| !c.replica_ok)
    });
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(w.moves(), 1);
}

#[test]
fn unplugged_uplink_of_the_holder_hands_over_at_once() {
    let mut w = World::started();
    w.unplug(0, OUTSIDE);
    let took = w.run_until(50, "server2 takes over", |w| w.holders() == vec![1]);
    assert!(
        took <= CARRIER_SETTLE_MS + 2,
        "took {took} ms (the carrier settle, no witness timeout)"
    );
    assert_eq!(w.double_holder_ms, 0);
    // A handover, not a death: the new holder is confirmed at once.
    let t = w.nodes[1].transitions.last().unwrap();
    assert!(t.hooks, "{t:?}");
    w.plug(0, OUTSIDE);
    w.run(3000);
    assert_eq!(w.holders(), vec![1]);
}

#[test]
fn unplugged_inside_cable_moves_nothing() {
    for n in 0..2 {
        let mut w = World::started();
        w.unplug(n, INSIDE);
        w.run(3000);
        assert_eq!(w.holders(), vec![0]);
        assert_eq!(w.moves(), 1);
        assert!(w.nodes[n].e.degraded());
    }
}

#[test]
fn cables_pulled_together_are_one_event_not_a_handover() {
    // Both of the holder's cables go within the settle time: it is cut
    // off, not handing over through a link it is about to lose.
    let mut w = World::started();
    w.unplug(0, OUTSIDE);
    w.run(3);
    w.unplug(0, INSIDE);
    assert!(!w.nodes[0].holds);
    assert_eq!(w.role(0), Role::Fault);
    let t: Vec<_> = w.nodes[0]
        .transitions
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(t.last(), Some(&(Role::Master, Role::Fault)), "{t:?}");
    // server2 replaces a silent holder (the database's death path).
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    assert!(w.nodes[1].e.provisional());
}

#[test]
fn holder_without_carrier_anywhere_drops_the_vips_at_once() {
    let mut w = World::started();
    w.unplug(0, OUTSIDE);
    w.unplug(0, INSIDE);
    assert!(!w.nodes[0].holds);
    assert_eq!(w.role(0), Role::Fault);
}

#[test]
fn a_stall_handed_back_is_a_false_alarm_that_runs_no_hook() {
    let mut w = World::started();
    let before = w.nodes[1].transitions.len();
    w.nodes[0].hung = true;
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    w.run(3);
    w.nodes[0].hung = false;
    w.run_until(50, "server2 hands back", |w| !w.nodes[1].holds);
    w.run(1000);
    let n1 = &w.nodes[1];
    let new: Vec<_> = n1.transitions[before..].iter().collect();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(
        new.iter().all(|t| !t.hooks),
        "no hook for a false alarm: {new:?}"
    );
    assert_eq!(n1.confirmed, 0);
    assert_eq!(n1.false_alarms.len(), 1);
    assert_eq!(n1.e.false_alarms(), 1);
    let f = &n1.false_alarms[0];
    assert!(
        f.silence >= Duration::from_millis(DETECT_MS - PROBE_MS),
        "{f:?}"
    );
    assert!(f.held <= Duration::from_millis(RECLAIM_MS), "{f:?}");
    assert!(!n1.e.provisional());
}

#[test]
fn a_death_is_confirmed_once_the_reclaim_window_and_the_lease_are_over() {
    let mut w = World::started();
    w.kill(0);
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    let t = w.nodes[1].transitions.last().unwrap().clone();
    assert!(!t.hooks, "a provisional takeover waits for its hooks");
    assert!(w.nodes[1].e.provisional());
    let took = w.run_until(200, "confirmed", |w| w.nodes[1].confirmed == 1);
    assert!(
        (RECLAIM_MS - 1..=RECLAIM_MS + 1).contains(&took),
        "confirmed after {took} ms"
    );
    assert!(!w.nodes[1].e.provisional());
    assert!(w.nodes[1].false_alarms.is_empty());
}

#[test]
fn confirmation_waits_for_a_lease_longer_than_the_reclaim_window() {
    let mut w = World::started();
    w.lease_ms = 300;
    w.run(200); // the peers learn the new lease
    w.kill(0);
    let heard = w.ms;
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    w.run_until(500, "confirmed", |w| w.nodes[1].confirmed == 1);
    // Counted from the last probe heard: lease + margin (1 ms + lease/1000).
    let at = w.ms - heard;
    assert!(
        (300..=300 + PROBE_MS + 2).contains(&at),
        "confirmed {at} ms after the last probe"
    );
}

#[test]
fn an_absurd_epoch_is_refused_and_never_overflows() {
    let mut w = World::started();
    let now = w.now();
    let mut c = w.nodes[0].advertised;
    c.epoch = u64::MAX;
    w.nodes[1].e.handle_input(
        Input::PeerControl(PeerMessage {
            session: w.nodes[0].session,
            control: c,
            lease: Duration::from_millis(LEASE_MS),
            lateness: Duration::ZERO,
        }),
        now,
    );
    w.nodes[1].drain();
    assert_eq!(w.nodes[1].refused, 1);
    assert_eq!(w.nodes[1].e.epoch(), 1);
    // The holder dies: the takeover's epoch is the next one, not a wrap.
    w.kill(0);
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    assert_eq!(w.nodes[1].e.epoch(), 2);
    // A plausible jump is taken: epochs can only grow by takeovers, but a
    // peer may have made many while we did not hear it.
    let mut e = Election::new(config(100, [10, 0, 0, 2]), now);
    let mut c2 = c;
    c2.epoch = MAX_EPOCH_JUMP;
    e.handle_input(
        Input::PeerControl(PeerMessage {
            session: 1,
            control: c2,
            lease: Duration::ZERO,
            lateness: Duration::ZERO,
        }),
        now,
    );
    assert_eq!(e.epoch(), MAX_EPOCH_JUMP);
    assert!(std::iter::from_fn(|| e.poll_output()).all(|o| !matches!(o, Output::Refused(_))));
}

#[test]
fn the_timer_table_is_the_only_source_of_deadlines() {
    let mut w = World::started();
    w.kill(0);
    w.run_until(100, "server2 takes over", |w| w.nodes[1].holds);
    let e = &w.nodes[1].e;
    let due = e.poll_timeout().expect("the reclaim window is a deadline");
    assert!(due > w.now());
}

#[test]
fn after_a_silence_the_peers_old_state_decides_nothing() {
    // server1 was isolated (FAULT, epoch 1) while server2 took over (epoch
    // 2). At the heal the kernel reports the peer heard and the witness
    // back before the peer's first probe reaches userspace: server1 must
    // wait for that probe, not act on the state it had before the silence
    // (server2 BACKUP) and take the VIPs back.
    let mut w = World::started();
    w.port[0] = [false; LINKS];
    w.run_until(1000, "server1 fences", |w| w.role(0) == Role::Fault);
    w.run(1000);
    // Heal on the tick the witness answers too.
    while !(w.ms + 1).is_multiple_of(WITNESS_MS) {
        w.run(1);
    }
    let moves = w.moves();
    w.port[0] = [true; LINKS];
    w.run(2000);
    assert_eq!(w.holders(), vec![1]);
    assert_eq!(w.moves(), moves, "{:?}", w.nodes[0].transitions);
    assert_eq!(w.role(0), Role::Backup);
}

/// The kernel's events a backup reads at once when the holder's probes
/// stop on both links and come back a moment later (0.2 ms in the log of
/// a false alarm): both links declared down, then heard again.
fn silence_that_ended(now: Instant) -> Vec<Input> {
    let down = |link| Input::PeerLink {
        link,
        up: false,
        last_heard: now - Duration::from_millis(6),
    };
    let up = |link| Input::PeerLink {
        link,
        up: true,
        last_heard: now,
    };
    vec![down(0), down(1), up(0), up(1)]
}

#[test]
fn a_silence_that_ended_within_one_batch_of_events_moves_nothing() {
    let mut w = World::started();
    let now = w.now();
    let backup = &mut w.nodes[1];
    assert_eq!(backup.e.role(), Role::Backup);
    backup.e.handle_inputs(silence_that_ended(now), now);
    backup.drain();
    assert_eq!(backup.e.role(), Role::Backup);
    assert!(!backup.holds, "no VIP was added");
    assert!(backup.transitions.iter().all(|t| t.to != Role::Master));
}

#[test]
fn the_same_events_one_at_a_time_take_over() {
    // What the daemon did before it handed the election a whole read.
    let mut w = World::started();
    let now = w.now();
    let backup = &mut w.nodes[1];
    for input in silence_that_ended(now) {
        backup.e.handle_input(input, now);
    }
    backup.drain();
    assert!(backup.holds, "the takeover went ahead");
    assert!(backup.transitions.iter().any(|t| t.to == Role::Master));
}

#[test]
fn a_silence_on_every_link_within_one_batch_still_takes_over() {
    let mut w = World::started();
    let now = w.now();
    let backup = &mut w.nodes[1];
    let mut events = silence_that_ended(now);
    events.truncate(2);
    backup.e.handle_inputs(events, now);
    backup.drain();
    assert_eq!(backup.e.role(), Role::Master);
    assert!(backup.holds);
}
