//! Types shared by the eBPF liveness program and the agent that loads it,
//! and the one keyed hash both sides compute (SipHash-2-4).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side reads it from
//! maps and packets, the agent writes and reads the same bytes. Addresses and
//! ports are kept in network byte order (`u32::from_ne_bytes(ip.octets())`),
//! so the kernel compares them with packet fields without swapping.
#![no_std]

pub mod siphash;

/// Links (interfaces) one agent can monitor.
pub const MAX_LINKS: u32 = 4;
/// VIPs the kernel watches (ARP conflicts, and the hung-agent lease).
pub const MAX_VIPS: u32 = 256;

/// First bytes of every probe's UDP payload.
pub const PROBE_MAGIC: [u8; 4] = *b"HAP2";
/// Wire format version 2: seq, boot and sender id under a kernel-checked
/// SipHash tag; session echo and replay windows (see the agent's `protocol`).
pub const PROBE_VERSION: u8 = 2;
/// Probe kinds (`ProbeHeader::kind`).
pub const PROBE_KIND_PROBE: u8 = 1;
/// `seq = slot << SEQ_SHIFT | n`: `n` = 0 for the slot's regular probe, 1,
/// 2, ... for probes sent early within the slot because the control state
/// changed. Loss is counted in slots, the refresh pass too.
pub const SEQ_SHIFT: u32 = 8;

/// Wire header of a probe: the part the kernel parses and authenticates.
/// `tag` is SipHash-2-4 under the kernel key over the 40 bytes before it
/// ([`TAGGED_LEN`]), so a frame nobody with the key sent cannot count as
/// liveness, and `seq` lets the kernel refuse any replay. The userspace
/// body (control state, HMAC-SHA256 over everything) follows. Multi-byte
/// fields are big-endian byte arrays: no padding, alignment 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeHeader {
    pub magic: [u8; 4],
    pub version: u8,
    pub kind: u8,
    /// Sender's link index (0-based, same order in both configs).
    pub link: u8,
    pub flags: u8,
    /// Sender's identity: its first link's address (network order bytes).
    pub sender: [u8; 4],
    /// Generation of the sender's control state; changes whenever the body does.
    pub ctl_gen: [u8; 4],
    /// Sender's session token: random per agent start, never 0.
    pub token: [u8; 8],
    /// Slot number in this session: strictly increasing per link. Redundant
    /// senders send a slot with the same `seq`; the first copy counts.
    pub seq: [u8; 8],
    /// Sender's boot counter (kept on disk, grows on every start).
    pub boot: [u8; 8],
    /// SipHash-2-4(kernel key, bytes 0..40), little-endian.
    pub tag: [u8; 8],
}

pub const PROBE_HEADER_LEN: usize = core::mem::size_of::<ProbeHeader>();
/// Bytes of the header covered by `tag`.
pub const TAGGED_LEN: usize = 40;

/// Global settings (map `GLOBAL`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Global {
    /// SipHash key halves for the probe tag (derived from the shared key).
    pub sip_k0: u64,
    pub sip_k1: u64,
    /// The peer's identity as its probes carry it (`ProbeHeader::sender`,
    /// read as a native u32): frames from anyone else are dropped.
    pub peer_id: u32,
    /// While not 0, the lease ([`LEASE`](Lease)) is enforced for the VIPs.
    pub lease_enforced: u32,
}

/// The hung-agent lease (map `LEASE`, one entry): while `until_ns` is in the
/// past, the kernel drops every frame addressed to one of our VIPs (IPv4 to
/// it, ARP asking for it). The agent's real-time senders renew it on every
/// probe slot, and only while the agent's decision loop is alive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// CLOCK_MONOTONIC deadline (ns).
    pub until_ns: u64,
    /// When the senders last renewed (the anchor of `until_ns`).
    pub renewed_ns: u64,
    /// When a sender last found itself later than a probe interval: this
    /// machine stalled. The peer's silence right after that may be ours
    /// (its probes not processed yet), not its: the timers give it grace.
    pub stalled_ns: u64,
    /// How late that sender was then: how long this machine stalled.
    pub stalled_len_ns: u64,
}

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
    /// Session token the peer currently uses (wire bytes read as a native
    /// u64); 0 = none accepted yet. Only probes of this session count as
    /// liveness; others go to userspace (rate limited) to be verified.
    pub peer_token: u64,
    /// Probes of another session older than this boot are old sessions
    /// replayed: dropped here.
    pub peer_min_boot: u64,
    /// Silence longer than this marks the peer down on this link.
    pub detect_ns: u64,
    /// Silence longer than this marks the witness down on this link.
    pub witness_detect_ns: u64,
    /// At most one probe of an unknown session per this interval goes up.
    pub unknown_gap_ns: u64,
    /// A detection timer that fires later than this after it was due saw
    /// a stall of its own CPU (or of the whole machine): probes may be
    /// waiting; it gives them `grace_ns` before declaring anything down.
    pub stall_ns: u64,
    pub grace_ns: u64,
    /// Our own senders renew the lease every slot; a renewal older than
    /// this means they (this machine) stalled for long enough to fake the
    /// peer's death: the timers give grace then too.
    pub renew_gap_ns: u64,
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
    /// Accepted probes (first copy of a slot of the accepted session).
    pub rx: u64,
    /// Slots missing according to sequence gaps.
    pub lost: u64,
    /// Frames to the probe port that are not valid probes of the peer: bad
    /// source, sender, link, tag, or an old session. Dropped.
    pub rejected: u64,
    /// Valid probes of the accepted session with a seq already seen
    /// (redundant copies, replays). Dropped.
    pub duplicates: u64,
    /// Probes of a session not accepted (yet) that went up to userspace.
    pub unknown: u64,
    pub witness_rx: u64,
    /// Highest seq accepted for `seq_token`.
    pub last_seq: u64,
    /// The session `last_seq` belongs to.
    pub seq_token: u64,
    /// When the last unknown-session probe went up (rate limit).
    pub unknown_last_ns: u64,
    /// Control generation of the last probe passed to userspace. An accepted
    /// probe is passed up when its `ctl_gen` differs, when it brings the peer
    /// up, or when `seq % pass_every == 0`; otherwise the kernel drops it.
    pub passed_ctl_gen: u32,
    pub _pad: u32,
    /// Frames to a VIP dropped because the lease had lapsed.
    pub lease_drops: u64,
    /// The last session not accepted (yet) whose probe went up, and that
    /// probe's seq: its older probes (replays) never take the rate-limited
    /// slot from newer ones, nor count once the session is accepted.
    pub unknown_token: u64,
    pub unknown_seq: u64,
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
    unsafe impl aya::Pod for super::Global {}
    unsafe impl aya::Pod for super::Lease {}
}

/// What a peer or witness detection timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerVerdict {
    /// Not silent for the detection time yet: look again in this many ns.
    Rearm(u64),
    /// Silent, but this machine just stalled: look again after the grace.
    Grace,
    /// Silent: the peer (or witness) is down on this link.
    Down,
}

/// Our senders' stalls as the kernel sees them when a timer fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStall {
    /// They have not renewed the lease for longer than a stall: they are
    /// not running now (the peer's probes may be queued behind the same
    /// stall). Ends when they run again.
    pub in_progress: bool,
    /// Length of a stall they noticed within the detection time (0 = none).
    pub recent_len: u64,
}

/// The verdict of a detection timer. `elapsed`: the silence so far; `late`:
/// how late this timer fired; `stall_ns` (0 = no grace at all), `grace_ns`
/// and `detect` from the link's config.
///
/// A timer that fired late ran on a CPU that just stalled, and senders that
/// are not running are a stall in progress: either way the peer's probes
/// may be queued behind it, and the timer looks again after the grace. A
/// stall the senders noticed and that is over stretches the silence by
/// its own length (and one grace for the peer, which may have stalled
/// with us, to speak again), no more. Without that bound a machine whose
/// senders keep running late never declared anything down: an isolated
/// holder kept its VIPs for 3 s because its witness's silence kept
/// getting grace from stalls of a few ms.
pub const fn timer_verdict(
    elapsed: u64,
    detect: u64,
    late: u64,
    stall_ns: u64,
    grace_ns: u64,
    senders: SenderStall,
) -> TimerVerdict {
    if elapsed < detect {
        return TimerVerdict::Rearm(detect - elapsed);
    }
    if stall_ns == 0 {
        return TimerVerdict::Down;
    }
    if late > stall_ns || senders.in_progress {
        return TimerVerdict::Grace;
    }
    if senders.recent_len > 0
        && elapsed
            < detect
                .saturating_add(senders.recent_len)
                .saturating_add(grace_ns)
    {
        return TimerVerdict::Grace;
    }
    TimerVerdict::Down
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DETECT: u64 = 6 * MS;
    const STALL: u64 = 2 * MS;
    const GRACE: u64 = 4 * MS;
    const NONE: SenderStall = SenderStall {
        in_progress: false,
        recent_len: 0,
    };

    fn verdict(elapsed: u64, late: u64, senders: SenderStall) -> TimerVerdict {
        timer_verdict(elapsed, DETECT, late, STALL, GRACE, senders)
    }

    #[test]
    fn silence_shorter_than_detection_rearms_for_the_rest() {
        assert_eq!(verdict(4 * MS, 0, NONE), TimerVerdict::Rearm(2 * MS));
    }

    #[test]
    fn a_late_timer_or_a_stall_in_progress_gets_the_grace() {
        // This CPU stalled 50 ms: its queued probes come before it looks again.
        assert_eq!(verdict(56 * MS, 50 * MS, NONE), TimerVerdict::Grace);
        let running_late = SenderStall {
            in_progress: true,
            recent_len: 0,
        };
        assert_eq!(verdict(30 * MS, 0, running_late), TimerVerdict::Grace);
    }

    #[test]
    fn a_stall_that_is_over_stretches_the_silence_by_its_length() {
        // The stall test's case: a 24 ms stall of the whole machine.
        let s = SenderStall {
            in_progress: false,
            recent_len: 24 * MS,
        };
        assert_eq!(verdict(27 * MS, 0, s), TimerVerdict::Grace);
        assert_eq!(verdict(DETECT + 24 * MS + GRACE, 0, s), TimerVerdict::Down);
    }

    #[test]
    fn short_stalls_over_and_over_never_hide_a_death() {
        // The witness (80 ms) of an isolated holder whose senders keep
        // running a few ms late: at most 80 + 3 + 4 ms, not forever.
        let s = SenderStall {
            in_progress: false,
            recent_len: 3 * MS,
        };
        let w = |elapsed| timer_verdict(elapsed, 80 * MS, 0, STALL, GRACE, s);
        assert_eq!(w(86 * MS), TimerVerdict::Grace);
        assert_eq!(w(87 * MS), TimerVerdict::Down);
        assert_eq!(w(3_000 * MS), TimerVerdict::Down);
    }

    #[test]
    fn without_a_stall_silence_is_a_death() {
        assert_eq!(verdict(DETECT, 0, NONE), TimerVerdict::Down);
        // Grace off in the config.
        assert_eq!(
            timer_verdict(DETECT, DETECT, 50 * MS, 0, GRACE, NONE),
            TimerVerdict::Down
        );
    }
}
