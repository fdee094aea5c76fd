//! Thin loader for the kernel liveness detector (`agent-ebpf`, program `ha_xdp`).
//!
//! The kernel does the detection on its own: it accepts the peer's probes,
//! re-arms a `bpf_timer` per link and emits `EVENT_PEER_DOWN` when the peer
//! stays silent for `detect_ns`, with no help from userspace. This module only
//! loads the object, writes the per-link settings, keeps the VIP set current
//! and hands the kernel's events to the agent.
//!
//! ```ignore
//! let mut live = Liveness::load(cfg.ebpf.object.as_deref())?;
//! live.set_global(&Global { sip_k0, sip_k1, peer_id, lease_enforced: 1 })?;
//! let kcfg = kernel_link_config(&cfg.links[0], cfg.node.port, 40);
//! live.attach_link(0, &cfg.links[0].interface, &kcfg, XdpMode::Native)?;
//! live.set_peer_session(token_of_accepted_session, min_boot)?;
//! let maps = live.sender_maps()?; // for the real-time senders
//! loop { for ev in live.next_events().await? { /* EVENT_* */ } }
//! ```
//!
//! Dropping [`Liveness`] detaches the program from every interface and frees
//! the maps (and with them the timers).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use agent_ebpf::{
    Event, Global, Lease, LinkConfig, LinkState, SenderBeat, WitnessSeen, MAX_LINKS, MAX_SENDERS,
    MAX_VIPS,
};
use aya::maps::{Array, HashMap, Map, MapData, MapError, RingBuf};
use aya::programs::{ProgramError, Xdp, XdpMode as AyaXdpMode};
use aya::Ebpf;
use tokio::io::unix::AsyncFd;

pub use agent_ebpf::{
    EVENT_PEER_DOWN, EVENT_PEER_UP, EVENT_VIP_CONFLICT, EVENT_WITNESS_DOWN, EVENT_WITNESS_UP,
};

/// The object built by `cargo xtask build-ebpf` and embedded by `build.rs`
/// (empty when the agent was built without one).
static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ha-agent.bpf.o"));

const PROGRAM: &str = "ha_xdp";
const MAP_GLOBAL: &str = "GLOBAL";
const MAP_LEASE: &str = "LEASE";
const MAP_BEATS: &str = "BEATS";
const MAP_WITNESS_SEEN: &str = "WITNESS_SEEN";
const MAP_LINK_CONFIG: &str = "LINK_CONFIG";
const MAP_LINK_STATE: &str = "LINK_STATE";
const MAP_VIPS: &str = "VIPS";
const MAP_EVENTS: &str = "EVENTS";

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this ha-agent binary has no built-in eBPF object: build it with `cargo xtask build` \
         or set `[ebpf] object = \"/path/to/agent-ebpf\"` in the config"
    )]
    NoObject,
    #[error("cannot read eBPF object {path}: {source} (check `[ebpf] object` in the config)")]
    ReadObject { path: PathBuf, source: io::Error },
    #[error(
        "cannot load the eBPF object ({origin}): {source}. ha-agent must run as root \
         (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON) on Linux >= 5.15 with BTF"
    )]
    Load {
        origin: String,
        source: Box<aya::EbpfError>,
    },
    #[error(
        "the eBPF object ({origin}) has no {what}: it does not belong to this ha-agent; \
         rebuild it with `cargo xtask build-ebpf`"
    )]
    Missing { origin: String, what: String },
    #[error("the kernel refused program {PROGRAM}: {source}")]
    Program { source: Box<ProgramError> },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<MapError>,
    },
    #[error("link index {link} is out of range: at most {MAX_LINKS} links are supported")]
    BadLink { link: u32 },
    #[error("link {link} is not attached to an interface")]
    NotAttached { link: u32 },
    #[error(
        "network interface {ifname} does not exist (check `interface` in the [[link]] section)"
    )]
    UnknownInterface { ifname: String },
    #[error("cannot read the MAC address of {ifname}: {reason}")]
    Mac { ifname: String, reason: String },
    #[error(
        "cannot attach XDP ({mode}) to {ifname}: {source}. If another XDP program is attached \
         (`ip link show dev {ifname}`), remove it with `ip link set dev {ifname} xdp off`"
    )]
    Attach {
        ifname: String,
        mode: &'static str,
        source: Box<ProgramError>,
    },
    #[error("{count} VIPs configured, the kernel map holds at most {MAX_VIPS}")]
    TooManyVips { count: usize },
    #[error("reading kernel events: {0}")]
    Events(#[source] io::Error),
    #[error(
        "cannot map the {map} map into memory for the probe senders: {source} (the kernel \
         must support BPF_F_MMAPABLE arrays, Linux 5.5 or later)"
    )]
    Mapping {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map {
        map,
        source: Box::new(source),
    }
}

/// How to attach the XDP program (`ebpf.xdp_mode` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) XDP; falls back to generic XDP where the driver has none.
    #[default]
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

impl FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(format!(
                "unknown XDP mode {other:?}: use \"native\" or \"generic\""
            )),
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// IPv4 address as the kernel program compares it (network order).
pub fn ip_to_kernel(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The kernel's form of a session token. On the wire the token is
/// `token.to_be_bytes()` (like `seq` and `ctl_gen`); the kernel compares the
/// 8 wire bytes read as a native u64.
pub fn token_to_kernel(token: u64) -> u64 {
    u64::from_ne_bytes(token.to_be_bytes())
}

/// The kernel settings of one configured link. `ifindex` and `local_mac` are
/// filled in by [`Liveness::attach_link`]; the peer token starts unknown (0).
pub fn kernel_link_config(
    link: &crate::operator::config::LinkConfig,
    port: u16,
    pass_every: u32,
) -> LinkConfig {
    LinkConfig {
        local_ip: ip_to_kernel(link.local_ip),
        peer_ip: ip_to_kernel(link.peer_ip),
        witness_ip: link.witness.map(ip_to_kernel).unwrap_or(0),
        port: port.to_be(),
        pass_every,
        detect_ns: link.detect_time().as_nanos() as u64,
        witness_detect_ns: link.witness_detect_time().as_nanos() as u64,
        unknown_gap_ns: UNKNOWN_SESSION_GAP_NS,
        // A timer later than one probe interval ran on a stalled CPU; two
        // intervals let the probes queued behind the stall through.
        stall_ns: link.interval().as_nanos() as u64,
        grace_ns: 2 * link.interval().as_nanos() as u64,
        beat_gap_ns: agent_ebpf::beat_gap(link.interval().as_nanos() as u64),
        // A CPU of ours that is stalled may hold a probe for as long as
        // vCPUs stall here (up to 37 ms measured); past that (and at least
        // one more detection time) the silence is the peer's.
        beat_grace_max_ns: link
            .detect_time()
            .max(std::time::Duration::from_millis(40))
            .as_nanos() as u64,
        ..LinkConfig::default()
    }
}

/// Probes of a session not accepted yet go up at most once in this
/// interval per link: a flood of replays costs userspace little.
const UNKNOWN_SESSION_GAP_NS: u64 = 100_000;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`, so
/// comparable with `Event::ts_ns` and `LinkState::*_last_ns`.
/// The running kernel's release (`uname -r`).
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: the kernel NUL-terminates the field.
    let r = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(r.to_string_lossy().into_owned())
}

/// "6.18.44-fc-v782" -> (6, 18).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Attached {
    ifname: String,
    id: aya::programs::xdp::XdpLinkId,
}

/// The loaded liveness detector: program, maps and event ring buffer.
pub struct Liveness {
    // Field order = drop order: detach links (held by `ebpf`) before the maps go.
    ebpf: Ebpf,
    global: Array<MapData, Global>,
    lease: MapData,
    beats: MapData,
    witness_seen: MapData,
    link_config: Array<MapData, LinkConfig>,
    link_state: Array<MapData, LinkState>,
    vips: HashMap<MapData, u32, u32>,
    events: AsyncFd<RingBuf<MapData>>,
    configs: [Option<LinkConfig>; MAX_LINKS as usize],
    attached: [Option<Attached>; MAX_LINKS as usize],
}

impl Liveness {
    /// Loads the object (`override_path` if given, else the embedded one) and
    /// verifies the program. Must run inside a tokio runtime (the event ring
    /// buffer is registered with it).
    pub fn load(override_path: Option<&Path>) -> Result<Self, EbpfError> {
        if let Some((major, minor)) = kernel_release().as_deref().and_then(major_minor) {
            if (major, minor) < (6, 7) {
                tracing::warn!(
                    kernel = %format!("{major}.{minor}"),
                    "kernels before 6.7 cannot pin a BPF timer to the CPU of the probe that armed it: a stalled receiving CPU may then look like a dead peer; run 6.7 or later"
                );
            }
        }
        let (bytes, origin): (std::borrow::Cow<'_, [u8]>, String) = match override_path {
            Some(path) => (
                std::fs::read(path)
                    .map_err(|source| EbpfError::ReadObject {
                        path: path.to_owned(),
                        source,
                    })?
                    .into(),
                path.display().to_string(),
            ),
            None if EMBEDDED_OBJECT.is_empty() => return Err(EbpfError::NoObject),
            None => (EMBEDDED_OBJECT.into(), "built-in".to_owned()),
        };
        let mut ebpf = Ebpf::load(&bytes).map_err(|source| EbpfError::Load {
            origin: origin.clone(),
            source: Box::new(source),
        })?;
        let missing = |what: &str| EbpfError::Missing {
            origin: origin.clone(),
            what: what.to_owned(),
        };
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| missing("program ha_xdp"))?
            .try_into()
            .map_err(|_| missing("XDP program ha_xdp"))?;
        prog.load().map_err(|source| EbpfError::Program {
            source: Box::new(source),
        })?;

        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| missing(&format!("map {name}")))
        };
        let global = Array::try_from(take(MAP_GLOBAL)?).map_err(map_err(MAP_GLOBAL))?;
        let lease = match take(MAP_LEASE)? {
            Map::Array(data) => data,
            _ => return Err(missing("array map LEASE")),
        };
        let beats = match take(MAP_BEATS)? {
            Map::Array(data) => data,
            _ => return Err(missing("array map BEATS")),
        };
        let witness_seen = match take(MAP_WITNESS_SEEN)? {
            Map::Array(data) => data,
            _ => return Err(missing("array map WITNESS_SEEN")),
        };
        let link_config =
            Array::try_from(take(MAP_LINK_CONFIG)?).map_err(map_err(MAP_LINK_CONFIG))?;
        let link_state = Array::try_from(take(MAP_LINK_STATE)?).map_err(map_err(MAP_LINK_STATE))?;
        let vips = HashMap::try_from(take(MAP_VIPS)?).map_err(map_err(MAP_VIPS))?;
        let ring = RingBuf::try_from(take(MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
        // SAFETY: the ring buffer owns its map fd and keeps it open (and
        // unchanged) for as long as the AsyncFd owns the ring buffer.
        let events =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| EbpfError::Events(e.into()))?;
        Ok(Self {
            ebpf,
            global,
            lease,
            beats,
            witness_seen,
            link_config,
            link_state,
            vips,
            events,
            configs: Default::default(),
            attached: Default::default(),
        })
    }

    fn prog(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load()")
    }

    fn check_link(link: u32) -> Result<usize, EbpfError> {
        if link < MAX_LINKS {
            Ok(link as usize)
        } else {
            Err(EbpfError::BadLink { link })
        }
    }

    /// Writes `LINK_CONFIG[link]` (with `ifindex` and, when zero, `local_mac`
    /// taken from `ifname`) and attaches `ha_xdp` to `ifname`. Re-attaching a
    /// link first detaches it. `Native` tries driver mode and falls back to
    /// generic (skb) mode, logging which one is in use.
    pub fn attach_link(
        &mut self,
        link: u32,
        ifname: &str,
        cfg: &LinkConfig,
        mode: XdpMode,
    ) -> Result<(), EbpfError> {
        let slot = Self::check_link(link)?;
        self.detach_link(link)?;
        let ifindex = if_index(ifname)?;
        let mut cfg = *cfg;
        cfg.ifindex = ifindex;
        if cfg.local_mac == [0; 6] {
            cfg.local_mac = if_mac(ifname)?;
        }
        self.link_config
            .set(link, cfg, 0)
            .map_err(map_err(MAP_LINK_CONFIG))?;
        self.configs[slot] = Some(cfg);

        let attach = |prog: &mut Xdp, m: AyaXdpMode, name: &'static str| {
            prog.attach_to_if_index(ifindex, m)
                .map_err(|source| EbpfError::Attach {
                    ifname: ifname.to_owned(),
                    mode: name,
                    source: Box::new(source),
                })
        };
        let id = match mode {
            XdpMode::Generic => attach(self.prog(), AyaXdpMode::Skb, "generic")?,
            XdpMode::Native => match attach(self.prog(), AyaXdpMode::Driver, "native") {
                Ok(id) => {
                    tracing::info!(link, ifname, "XDP attached in native (driver) mode");
                    id
                }
                Err(e) => {
                    tracing::warn!(link, ifname, error = %e, "native XDP unavailable, using generic (skb) mode");
                    attach(self.prog(), AyaXdpMode::Skb, "generic")?
                }
            },
        };
        if mode == XdpMode::Generic {
            tracing::info!(link, ifname, "XDP attached in generic (skb) mode");
        }
        self.attached[slot] = Some(Attached {
            ifname: ifname.to_owned(),
            id,
        });
        Ok(())
    }

    /// Detaches `ha_xdp` from the link's interface (if attached) and clears
    /// its `LINK_CONFIG` slot.
    pub fn detach_link(&mut self, link: u32) -> Result<(), EbpfError> {
        let slot = Self::check_link(link)?;
        if let Some(att) = self.attached[slot].take() {
            if let Err(e) = self.prog().detach(att.id) {
                tracing::warn!(link, ifname = %att.ifname, error = %e, "XDP detach failed");
            }
        }
        if self.configs[slot].take().is_some() {
            self.link_config
                .set(link, LinkConfig::default(), 0)
                .map_err(map_err(MAP_LINK_CONFIG))?;
        }
        Ok(())
    }

    /// Writes the global settings: the probe tag key, the peer's sender
    /// id, whether the lease is enforced.
    pub fn set_global(&mut self, g: &Global) -> Result<(), EbpfError> {
        self.global.set(0, *g, 0).map_err(map_err(MAP_GLOBAL))
    }

    /// What the real-time senders write into the kernel (the lease and the
    /// beats) and read from it (each witness as last heard), each map
    /// mapped into the agent.
    pub fn sender_maps(&self) -> Result<SenderMaps, EbpfError> {
        Ok(SenderMaps {
            lease: MappedArray::map(
                self.lease.fd().as_fd(),
                MAP_LEASE,
                std::mem::size_of::<Lease>(),
            )?,
            beats: MappedArray::map(
                self.beats.fd().as_fd(),
                MAP_BEATS,
                MAX_SENDERS as usize * std::mem::size_of::<SenderBeat>(),
            )?,
            witness_seen: MappedArray::map(
                self.witness_seen.fd().as_fd(),
                MAP_WITNESS_SEEN,
                MAX_LINKS as usize * std::mem::size_of::<WitnessSeen>(),
            )?,
        })
    }

    /// Installs the accepted peer session on every attached link (the number
    /// whose big-endian bytes are on the wire; 0 = none) and the oldest boot
    /// of the peer that is not a replay.
    pub fn set_peer_session(&mut self, token: u64, min_boot: u64) -> Result<(), EbpfError> {
        for link in 0..MAX_LINKS {
            let slot = link as usize;
            let Some(cfg) = self.configs[slot].as_mut() else {
                continue;
            };
            cfg.peer_token = token_to_kernel(token);
            cfg.peer_min_boot = min_boot;
            let cfg = *cfg;
            self.link_config
                .set(link, cfg, 0)
                .map_err(map_err(MAP_LINK_CONFIG))?;
        }
        Ok(())
    }

    /// The kernel's counters and liveness for `link`.
    pub fn link_state(&self, link: u32) -> Result<LinkState, EbpfError> {
        Self::check_link(link)?;
        self.link_state
            .get(&link, 0)
            .map_err(map_err(MAP_LINK_STATE))
    }

    /// Replaces the set of VIPs this node holds (VIP, link). ARP from another
    /// MAC claiming one of them raises `EVENT_VIP_CONFLICT`.
    pub fn set_vips(&mut self, vips: &[(Ipv4Addr, u32)]) -> Result<(), EbpfError> {
        if vips.len() > MAX_VIPS as usize {
            return Err(EbpfError::TooManyVips { count: vips.len() });
        }
        let wanted: std::collections::HashMap<u32, u32> =
            vips.iter().map(|&(ip, l)| (ip_to_kernel(ip), l)).collect();
        let current: Vec<u32> = self
            .vips
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(MAP_VIPS))?;
        for key in current {
            if !wanted.contains_key(&key) {
                match self.vips.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(MAP_VIPS)(e)),
                }
            }
        }
        for (ip, link) in wanted {
            self.vips.insert(ip, link, 0).map_err(map_err(MAP_VIPS))?;
        }
        Ok(())
    }

    /// Waits for the next kernel events and returns all queued ones (never an
    /// empty Vec). Cancel-safe: events are only taken after the wait.
    pub async fn next_events(&mut self) -> Result<Vec<Event>, EbpfError> {
        loop {
            let mut guard = self
                .events
                .readable_mut()
                .await
                .map_err(EbpfError::Events)?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<Event>() {
                    // SAFETY: Event is plain #[repr(C)] data; length checked.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// What the real-time sender threads write into the kernel: the hung-agent
/// lease (by the thread that sent the slot) and each thread's beat (every
/// thread on every wake); and what they read from it: each link's witness
/// as last heard. All are loads and stores of kernel memory mapped into the
/// agent: no system call, no lock, no allocation, never blocking (a system
/// call there was one more place a sender could be held).
pub struct SenderMaps {
    lease: MappedArray,
    beats: MappedArray,
    witness_seen: MappedArray,
}

const WITNESS_WORDS: usize = std::mem::size_of::<WitnessSeen>() / 8;
const _: () = assert!(std::mem::size_of::<WitnessSeen>() == 16);
const _: () = assert!(std::mem::offset_of!(WitnessSeen, last_ns) == 0);
const _: () = assert!(std::mem::offset_of!(WitnessSeen, mac) == 8);

const _: () = assert!(std::mem::size_of::<Lease>() == 16);
const _: () = assert!(std::mem::offset_of!(Lease, until_ns) == 0);
const _: () = assert!(std::mem::offset_of!(Lease, renewed_ns) == 8);
const BEAT_WORDS: usize = std::mem::size_of::<SenderBeat>() / 8;
const _: () = assert!(std::mem::size_of::<SenderBeat>() == 32);
const _: () = assert!(std::mem::offset_of!(SenderBeat, beat_ns) == 0);
const _: () = assert!(std::mem::offset_of!(SenderBeat, stall_end_ns) == 8);
const _: () = assert!(std::mem::offset_of!(SenderBeat, machine_stall_ns) == 16);
const _: () = assert!(std::mem::offset_of!(SenderBeat, machine_stall_len_ns) == 24);

impl SenderMaps {
    /// The kernel serves our VIPs until `until_ns` (CLOCK_MONOTONIC), as
    /// renewed at `renewed_ns`.
    ///
    /// Both only grow: a thread held between reading the clock and
    /// renewing cannot shorten a sibling's newer renewal.
    ///
    /// False when the mapping holds no lease (never: it is mapped for one).
    pub fn renew(&self, until_ns: u64, renewed_ns: u64) -> bool {
        use std::sync::atomic::Ordering::Release;
        let Some([until, renewed]) = self.lease.words::<2>(0) else {
            return false;
        };
        renewed.fetch_max(renewed_ns, Release);
        until.fetch_max(until_ns, Release);
        true
    }

    /// Sender thread `thread` (< `MAX_SENDERS`) ran: its CPU is not
    /// stalled. False when there is no such thread slot. Only that thread
    /// may call it (one writer per entry).
    ///
    /// Stores each pair's companion first and its time last: the kernel
    /// reads the times first, so a new time never comes with an old
    /// stall's end or length.
    pub fn beat(&self, thread: u32, beat: &SenderBeat) -> bool {
        use std::sync::atomic::Ordering::Release;
        let Some([beat_word, end_word, machine_word, machine_len_word]) = usize::try_from(thread)
            .ok()
            .filter(|&t| t < MAX_SENDERS as usize)
            .and_then(|t| self.beats.words::<BEAT_WORDS>(t * BEAT_WORDS))
        else {
            return false;
        };
        machine_len_word.store(beat.machine_stall_len_ns, Release);
        machine_word.store(beat.machine_stall_ns, Release);
        end_word.store(beat.stall_end_ns, Release);
        beat_word.store(beat.beat_ns, Release);
        true
    }

    /// The witness of `link` as the kernel last heard it (the default, never
    /// heard, for a link out of range). Reads the time first: the kernel
    /// stores it last.
    pub fn witness_seen(&self, link: usize) -> WitnessSeen {
        use std::sync::atomic::Ordering::Acquire;
        let Some([last, mac]) = link
            .checked_mul(WITNESS_WORDS)
            .filter(|_| link < MAX_LINKS as usize)
            .and_then(|first| self.witness_seen.words::<WITNESS_WORDS>(first))
        else {
            return WitnessSeen::default();
        };
        let last_ns = last.load(Acquire);
        WitnessSeen {
            last_ns,
            mac: mac.load(Acquire),
        }
    }
}

/// The values of an array map made `BPF_F_MMAPABLE`, mapped into the
/// agent: the kernel lays them out back to back from the start of the
/// mapping. Accessed only as atomic `u64` words (the kernel reads them as
/// plain loads).
struct MappedArray {
    base: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    /// Bytes mapped (the values' size rounded up to a page).
    len: usize,
    /// Words of values the mapping holds.
    words: usize,
}

// SAFETY: the mapping is only accessed through atomics and lives until
// drop; it is shared memory meant for concurrent access.
unsafe impl Send for MappedArray {}
// SAFETY: as above.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps the map `fd` (`name`) whose values take `values_len` bytes
    /// (a multiple of 8) in all.
    fn map(
        fd: std::os::fd::BorrowedFd<'_>,
        name: &'static str,
        values_len: usize,
    ) -> Result<Self, EbpfError> {
        use std::os::fd::AsRawFd;
        let failed = |source| EbpfError::Mapping { map: name, source };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = values_len.next_multiple_of(page);
        // SAFETY: a new shared mapping of the map's descriptor; the kernel
        // checks the length against the map and refuses a map that is not
        // mmapable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(failed(io::Error::last_os_error()));
        }
        let base = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| failed(io::Error::other("mmap returned a null address")))?;
        Ok(MappedArray {
            base,
            len,
            words: values_len / 8,
        })
    }

    /// The `N` words from word `first` on; None past the values.
    fn words<const N: usize>(&self, first: usize) -> Option<[&std::sync::atomic::AtomicU64; N]> {
        if first.checked_add(N)? > self.words {
            return None;
        }
        // SAFETY: `first + i` < `self.words`, within the mapping, which
        // lives as long as `self`.
        Some(std::array::from_fn(|i| unsafe {
            &*self.base.as_ptr().add(first + i)
        }))
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn if_index(ifname: &str) -> Result<u32, EbpfError> {
    let unknown = || EbpfError::UnknownInterface {
        ifname: ifname.to_owned(),
    };
    let c = std::ffi::CString::new(ifname).map_err(|_| unknown())?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(unknown()),
        i => Ok(i),
    }
}

/// The interface's MAC, asked of the kernel (SIOCGIFHWADDR) in the calling
/// thread's network namespace (sysfs may show another namespace).
fn if_mac(ifname: &str) -> Result<[u8; 6], EbpfError> {
    let err = |reason: String| EbpfError::Mac {
        ifname: ifname.to_owned(),
        reason,
    };
    let name = ifname.as_bytes();
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(err("interface name too long".into()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(format!("socket: {}", io::Error::last_os_error())));
    }
    // SAFETY: fd was just created and is owned here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of `req`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if rc < 0 {
        return Err(err(format!(
            "SIOCGIFHWADDR: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel filled ifr_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_major_minor() {
        assert_eq!(major_minor("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(major_minor("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(major_minor("5.15"), Some((5, 15)));
        assert_eq!(major_minor("garbage"), None);
        assert!(major_minor("6.1.0").unwrap() < (6, 7));
    }

    #[test]
    fn kernel_byte_orders() {
        let ip = Ipv4Addr::new(198, 51, 100, 1);
        assert_eq!(ip_to_kernel(ip).to_ne_bytes(), [198, 51, 100, 1]);
        let t = 0x0102_0304_0506_0708u64;
        assert_eq!(token_to_kernel(t).to_ne_bytes(), t.to_be_bytes());
        assert_eq!(XdpMode::from_str("native"), Ok(XdpMode::Native));
        assert!(XdpMode::from_str("drv").is_err());
    }

    #[test]
    fn missing_embedded_object_is_reported() {
        if EMBEDDED_OBJECT.is_empty() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = rt.enter();
            assert!(matches!(Liveness::load(None), Err(EbpfError::NoObject)));
        }
    }

    /// `union bpf_attr` for BPF_MAP_LOOKUP_ELEM (the kernel reads this prefix).
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// Runs the map element command `cmd` (BPF_MAP_*_ELEM) on element `key`
    /// of the array map `fd`, with `value` of the map's value size.
    fn array_elem<T: aya::Pod>(
        cmd: libc::c_long,
        fd: std::os::fd::BorrowedFd<'_>,
        key: u32,
        value: *mut T,
    ) {
        use std::os::fd::AsRawFd;
        let attr = MapElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::addr_of!(key) as u64,
            value: value as u64,
            flags: 0,
        };
        // SAFETY: `attr` points to a key and a value of the map's sizes
        // (the caller's `T`), live for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::addr_of!(attr),
                std::mem::size_of::<MapElemAttr>() as libc::c_uint,
            )
        };
        assert!(
            rc == 0,
            "map element command {cmd}: {}",
            io::Error::last_os_error()
        );
    }

    /// The element `key` of the array map `fd`, asked of the kernel
    /// (BPF_MAP_LOOKUP_ELEM), as the program sees it.
    fn lookup_array<T: aya::Pod + Default>(fd: std::os::fd::BorrowedFd<'_>, key: u32) -> T {
        let mut value = T::default();
        array_elem(1, fd, key, &mut value); // BPF_MAP_LOOKUP_ELEM
        value
    }

    /// Writes the element `key` of the array map `fd` (BPF_MAP_UPDATE_ELEM),
    /// as the program would.
    fn update_array<T: aya::Pod>(fd: std::os::fd::BorrowedFd<'_>, key: u32, value: &T) {
        let mut v = *value;
        array_elem(2, fd, key, &mut v); // BPF_MAP_UPDATE_ELEM
    }

    #[test]
    #[ignore = "needs root and the built eBPF object (cargo xtask test)"]
    fn sender_lease_and_beats_are_stored_into_the_kernel_maps() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        // Set by `cargo xtask test`; else where `cargo xtask build` puts it.
        let object = std::env::var_os("HA_TEST_EBPF_OBJECT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/ebpf/bpfel-unknown-none/release/agent-ebpf")
            });
        let live = Liveness::load(Some(&object))
            .unwrap_or_else(|e| panic!("load {}: {e} (run `cargo xtask build`)", object.display()));
        let maps = live.sender_maps().unwrap();
        // Two mappings (one per sender set, as after a restart of the
        // senders) write the same kernel memory.
        let other = live.sender_maps().unwrap();
        for thread in 0..MAX_SENDERS {
            let t = u64::from(thread);
            let beat = SenderBeat {
                beat_ns: 1_000 + t,
                stall_end_ns: 2_000 + t,
                machine_stall_ns: 3_000 + t,
                machine_stall_len_ns: 4_000 + t,
            };
            assert!(maps.beat(thread, &beat));
            let seen: SenderBeat = lookup_array(live.beats.fd().as_fd(), thread);
            assert_eq!(seen, beat, "thread {thread}");
        }
        let later = SenderBeat {
            beat_ns: 9_000,
            stall_end_ns: 8_000,
            machine_stall_ns: 7_000,
            machine_stall_len_ns: 6_000,
        };
        assert!(other.beat(1, &later));
        assert_eq!(
            lookup_array::<SenderBeat>(live.beats.fd().as_fd(), 1),
            later
        );
        assert!(!maps.beat(MAX_SENDERS, &later), "no such thread slot");

        // The lease: the deadline and the renewal only grow (a thread held
        // before renewing cannot shorten a sibling's newer lease).
        assert!(maps.renew(50_000, 26_000));
        let lease = |live: &Liveness| lookup_array::<Lease>(live.lease.fd().as_fd(), 0);
        let want = Lease {
            until_ns: 50_000,
            renewed_ns: 26_000,
        };
        assert_eq!(lease(&live), want);
        assert!(other.renew(48_000, 24_000));
        assert_eq!(lease(&live), want, "an older renewal shortens nothing");
        assert!(maps.renew(52_000, 28_000));
        assert_eq!(
            lease(&live),
            Lease {
                until_ns: 52_000,
                renewed_ns: 28_000,
            }
        );

        // Each witness as the kernel stored it (here: written through the
        // map, as the XDP program does on a reply).
        assert_eq!(maps.witness_seen(1), WitnessSeen::default());
        let heard = WitnessSeen {
            last_ns: 77_000,
            mac: agent_ebpf::mac_to_word([2, 0, 0, 0, 0, 9]),
        };
        update_array(live.witness_seen.fd().as_fd(), 1, &heard);
        assert_eq!(maps.witness_seen(1), heard);
        assert_eq!(other.witness_seen(1), heard);
        assert_eq!(maps.witness_seen(0), WitnessSeen::default());
        assert_eq!(
            maps.witness_seen(MAX_LINKS as usize),
            WitnessSeen::default(),
            "no such link"
        );

        // The mappings outlive the loader (they hold the maps).
        drop(live);
        assert!(maps.beat(0, &later));
        assert!(maps.renew(60_000, 30_000));
    }
}
