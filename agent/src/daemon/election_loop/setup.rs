//! Setting the election thread up: interfaces, the eBPF program, sockets,
//! the senders, the first probes.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_ebpf::Global;
use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{ElectionLoop, ElectionView, Notice};
use crate::decisions::election::{Control, Election, ElectionConfig, Input};
use crate::decisions::reannounce::{Reannounce, REANNOUNCE_MIN};
use crate::decisions::session::{SessionConfig, Sessions};
use crate::drivers::arp::ArpSocket;
use crate::drivers::carrier::CarrierWatch;
use crate::drivers::ebpf::{ip_to_kernel, kernel_link_config, Liveness};
use crate::drivers::probe_socket::{receive_socket, send_socket};
use crate::drivers::sender::{SenderConfig, SenderLink, SenderStats, Senders, Witness};
use crate::drivers::vip::VipDriver;
use crate::operator::config::Config;
use crate::protocol::{Key, Origin, Signer, Template};

/// Accepted probes passed to userspace unchanged once in this many slots: a
/// periodic full check (HMAC) of what the kernel accepts by its tag alone.
/// Changes pass at once, so this only costs wakes.
const PASS_EVERY: u32 = 100;

impl ElectionLoop {
    pub(super) async fn start(
        cfg: Arc<Config>,
        key: Key,
        boot: u64,
        view: watch::Sender<ElectionView>,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<(ElectionLoop, Vec<UdpSocket>)> {
        let started = Instant::now();
        let token = random_token()?;
        let signer = Signer::new(&key);
        let vips = cfg.vips();
        let mut vip_driver = VipDriver::new().await?;
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
        vip_driver.remember(&interfaces_of(&cfg, &interfaces));

        let mode = cfg.ebpf.xdp_mode;
        let mut liveness = Liveness::load(cfg.ebpf.object.as_deref())?;
        let (sip_k0, sip_k1) = signer.kernel_key();
        let router_id = cfg
            .links
            .first()
            .map_or(Ipv4Addr::UNSPECIFIED, |l| l.local_ip);
        let peer_id = cfg
            .links
            .first()
            .map_or(Ipv4Addr::UNSPECIFIED, |l| l.peer_ip);
        liveness.set_global(&Global {
            sip_k0,
            sip_k1,
            peer_id: ip_to_kernel(peer_id),
            lease_enforced: 1,
        })?;
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
        let mut sender_links = Vec::new();
        let threads = crate::drivers::sender::thread_count(cfg.node.senders);
        for (i, l) in cfg.links.iter().enumerate() {
            sockets.push(
                receive_socket(&l.interface, l.local_ip, cfg.node.port).with_context(|| {
                    format!(
                        "link {:?}: cannot open the probe socket on {}:{} ({})",
                        l.name, l.local_ip, cfg.node.port, l.interface
                    )
                })?,
            );
            let sock = Arc::new(ArpSocket::open(
                &l.interface,
                interfaces[i].index,
                interfaces[i].mac,
            )?);
            let peer = SocketAddrV4::new(l.peer_ip, cfg.node.port);
            let sockets = (0..threads)
                .map(|_| send_socket(&l.interface, l.local_ip, peer))
                .collect::<std::io::Result<Vec<_>>>()
                .with_context(|| {
                    format!(
                        "link {:?}: cannot open the probe send sockets on {} ({}) to {peer}",
                        l.name, l.local_ip, l.interface
                    )
                })?;
            sender_links.push(SenderLink {
                sockets,
                witness: l.witness.map(|target| Witness {
                    arp: sock.clone(),
                    local_ip: l.local_ip,
                    target,
                    interval: l.witness_interval(),
                }),
            });
            arp.push(sock);
        }

        let now = Instant::now();
        let election = Election::new(election_config(&cfg), now);
        let sessions = Sessions::new(SessionConfig {
            our_token: token,
            peer_id,
            peer_ips: cfg.links.iter().map(|l| l.peer_ip).collect(),
        });
        let origin = Origin {
            sender: router_id,
            token,
            boot,
            node: cfg.node.name.clone(),
            lease_ms: u16::try_from(cfg.lease().as_millis()).unwrap_or(u16::MAX),
        };
        let first = templates(&cfg, &origin, 1, 0, &election.control(now));
        let stats = Arc::new(SenderStats::default());
        let senders = Senders::spawn(
            SenderConfig {
                interval: cfg.probe_interval(),
                rt_priority: cfg.node.rt_priority,
                threads: cfg.node.senders,
                lease: cfg.lease(),
            },
            signer.clone(),
            sender_links,
            &first,
            Some(liveness.sender_maps()?),
            stats.clone(),
        )?;
        let heartbeat = senders.heartbeat();
        let carrier = CarrierWatch::open(
            interfaces.iter().map(|i| i.index).collect(),
            interfaces.iter().map(|i| i.oper_up).collect(),
        )?;

        if !cfg.witnesses_configured() {
            warn!("no witness configured on any link: if the two servers lose each other while both stay up (a partition), BOTH will hold the VIPs until it heals; configure `witness` (the gateway) on the outside link");
        }
        info!(
            token = format_args!("{token:016x}"),
            boot,
            links = cfg.links.len(),
            vips = vips.len(),
            lease_ms = cfg.lease().as_millis() as u64,
            "ha-agent started: listening for the peer"
        );
        let mut l = ElectionLoop {
            vips,
            signer,
            origin,
            ctl_gen: 1,
            election,
            sessions,
            liveness,
            vip_driver,
            arp,
            senders,
            heartbeat,
            stats,
            carrier,
            view,
            notices,
            peer_node: String::new(),
            holds: false,
            transition_times: VecDeque::new(),
            false_alarms: VecDeque::new(),
            started,
            bad_probes: 0,
            rejected: Default::default(),
            refused: 0,
            reported_missed: 0,
            reported_send_errors: 0,
            last_garp_refresh: now,
            vip_retry_at: None,
            garp_rounds: None,
            reannounce: Reannounce::new(REANNOUNCE_MIN),
            cfg,
        };
        for (i, info) in interfaces.iter().enumerate() {
            if !info.oper_up {
                l.election
                    .handle_input(Input::Carrier { link: i, up: false }, now);
            }
        }
        Ok((l, sockets))
    }
}

/// Each link's interface index, for the VIP driver.
fn interfaces_of(cfg: &Config, infos: &[crate::drivers::vip::InterfaceInfo]) -> Vec<(String, u32)> {
    cfg.links
        .iter()
        .zip(infos)
        .map(|(l, i)| (l.interface.clone(), i.index))
        .collect()
}

/// The probe templates of every link.
pub(super) fn templates(
    cfg: &Config,
    origin: &Origin,
    ctl_gen: u32,
    echo: u64,
    c: &Control,
) -> Vec<Template> {
    (0..cfg.links.len())
        .map(|i| Template::new(origin, i as u8, ctl_gen, echo, c))
        .collect()
}

/// A holder silent for less than this after we took its VIPs gets them
/// back (a false alarm), and the database stays fenced until it ends: it is
/// longer than the stalls measured on a 2-vCPU VM (a real-time thread up to
/// 37 ms late, both vCPUs at once up to 25 ms under a 10 kHz frame flood),
/// and every ms of it is a ms more before a dead primary's replica takes
/// writes (fault -> writable: 6 ms detection + this + the promotion). The
/// old holder's lease (24 ms at the default timers) holds the promotion
/// back by itself when it is the longer (`Timer::Settle`).
pub const RECLAIM_WINDOW_MIN: Duration = Duration::from_millis(40);

fn election_config(cfg: &Config) -> ElectionConfig {
    let detect = cfg.detect_time();
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
        reclaim_window: (detect * 4).max(RECLAIM_WINDOW_MIN),
        handover_hold: (detect * 20).max(Duration::from_millis(500)),
        shutdown_wait: (detect * 10).max(Duration::from_millis(300)),
        // Cables pulled together reach the agent a few ms apart (3.4 ms
        // measured for two ports set down in one `ip -batch`).
        carrier_settle: detect.max(Duration::from_millis(5)),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{election_config, RECLAIM_WINDOW_MIN};
    use crate::operator::config::Config;

    /// The shipped example config, at the default timers.
    fn shipped() -> Config {
        let text = include_str!("../../../../config/server1.toml");
        Config::parse(text, Path::new("config/server1.toml")).expect("the shipped config parses")
    }

    #[test]
    fn at_the_default_timers_the_reclaim_window_outlasts_the_lease() {
        let cfg = shipped();
        let e = election_config(&cfg);
        assert_eq!(e.reclaim_window, RECLAIM_WINDOW_MIN);
        // A stalled holder whose lease has not lapsed yet is never replaced
        // for good: the window (the false-alarm hand-back) covers it.
        assert!(
            e.reclaim_window > cfg.lease(),
            "{:?} vs {:?}",
            e.reclaim_window,
            cfg.lease()
        );
    }
}
