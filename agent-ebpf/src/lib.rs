//! Types shared by the eBPF liveness program and the agent that loads it.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side reads it from
//! maps and packets, the agent writes and reads the same bytes. Addresses and
//! ports are kept in network byte order (`u32::from_ne_bytes(ip.octets())`),
//! so the kernel compares them with packet fields without swapping.
#![no_std]

/// Links (interfaces) one agent can monitor.
pub const MAX_LINKS: u32 = 4;
/// VIPs the kernel watches for conflicting ARP claims.
pub const MAX_VIPS: u32 = 16;

/// First bytes of every probe's UDP payload.
pub const PROBE_MAGIC: [u8; 4] = *b"HAP1";
pub const PROBE_VERSION: u8 = 1;
/// Probe kinds (`ProbeHeader::kind`).
pub const PROBE_KIND_PROBE: u8 = 1;

/// Wire header of a probe: the part the kernel parses. The authenticated
/// control body follows it (see the agent's `protocol` module). Multi-byte
/// fields are big-endian byte arrays so the struct has no padding and no
/// alignment needs inside a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeHeader {
    pub magic: [u8; 4],
    pub version: u8,
    pub kind: u8,
    /// Sender's link index (0-based, same order in both configs).
    pub link: u8,
    pub flags: u8,
    /// Sender's session token: random per agent start.
    pub token: [u8; 8],
    /// Per-link probe sequence number, for loss counting.
    pub seq: [u8; 4],
    /// Generation of the sender's control state; changes whenever the body does.
    pub ctl_gen: [u8; 4],
}

pub const PROBE_HEADER_LEN: usize = core::mem::size_of::<ProbeHeader>();

/// Per-link settings written by the agent (map `LINK_CONFIG`, index = link).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface the program is attached to for this link; 0 = unused slot.
    pub ifindex: u32,
    /// Our address on the link (network order).
    pub local_ip: u32,
    /// The peer's address on the link (network order).
    pub peer_ip: u32,
    /// Witness address on the link (network order); 0 = none.
    pub witness_ip: u32,
    /// Probe UDP port (network order).
    pub port: u16,
    pub _pad0: u16,
    /// Pass one accepted probe in `pass_every` to userspace even when its
    /// control generation did not change (refresh); 0 = never.
    pub pass_every: u32,
    /// Session token the peer currently uses (wire bytes as u64, native
    /// reading); 0 = not known yet: every probe is passed up and counted in
    /// `LinkState::rejected` until userspace installs the token.
    pub peer_token: u64,
    /// Silence longer than this marks the peer down on this link.
    pub detect_ns: u64,
    /// Silence longer than this marks the witness down on this link.
    pub witness_detect_ns: u64,
    /// Our MAC on the link: ARP from another MAC claiming one of our VIPs is a conflict.
    pub local_mac: [u8; 6],
    pub _pad1: [u8; 2],
}

/// Per-link counters and liveness kept by the kernel (map `LINK_STATE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last accepted probe.
    pub peer_last_ns: u64,
    /// `bpf_ktime_get_ns()` of the last ARP reply from the witness.
    pub witness_last_ns: u64,
    pub peer_up: u32,
    pub witness_up: u32,
    /// Accepted probes.
    pub rx: u64,
    /// Probes missing according to sequence gaps.
    pub lost: u64,
    /// Probes whose token is not `LinkConfig::peer_token` (or no token is
    /// known yet); they are passed to userspace, which verifies them.
    pub rejected: u64,
    pub witness_rx: u64,
    pub last_seq: u32,
    /// Control generation of the last probe passed to userspace. An accepted
    /// probe is passed up when its `ctl_gen` differs, when it brings the peer
    /// up, or when `seq % pass_every == 0`; otherwise the kernel drops it.
    pub passed_ctl_gen: u32,
}

/// Event kinds (`Event::kind`).
pub const EVENT_PEER_UP: u32 = 1;
pub const EVENT_PEER_DOWN: u32 = 2;
pub const EVENT_WITNESS_UP: u32 = 3;
pub const EVENT_WITNESS_DOWN: u32 = 4;
/// Someone else answered/announced ARP for one of our VIPs. `value` = the VIP (network order).
pub const EVENT_VIP_CONFLICT: u32 = 5;

/// Ring buffer record (map `EVENTS`). `value` by kind: PEER_UP = the probe's
/// seq; PEER_DOWN / WITNESS_DOWN = `*_last_ns` (last accepted probe / witness
/// reply, so `ts_ns - value` >= the detection time); WITNESS_UP = the witness
/// IP; VIP_CONFLICT = the VIP (IPv4 in network order, in the low 32 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub link: u32,
    /// `bpf_ktime_get_ns()` when the kernel decided.
    pub ts_ns: u64,
    pub value: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding-dependent invariants.
    unsafe impl aya::Pod for super::LinkConfig {}
    unsafe impl aya::Pod for super::LinkState {}
    unsafe impl aya::Pod for super::Event {}
}
