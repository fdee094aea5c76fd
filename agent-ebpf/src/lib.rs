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
/// probe slot, and only while the agent's decision loop is alive, by
/// storing into the map mapped into the agent (`until_ns` only grows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// CLOCK_MONOTONIC deadline (ns).
    pub until_ns: u64,
    /// When the senders last renewed (the anchor of `until_ns`).
    pub renewed_ns: u64,
}

/// What the kernel last heard from a link's witness (map `WITNESS_SEEN`,
/// index = link), mapped into the agent. The senders ask a witness that
/// answered its last request by unicast to the MAC it answered from (as
/// Linux's own neighbour probes do), and by broadcast otherwise: a request
/// every few ms flooded to every host of the LAN is a load on all of them.
/// The kernel stores `mac` first and `last_ns` last; the senders read
/// `last_ns` first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WitnessSeen {
    /// `bpf_ktime_get_ns()` of the witness's last ARP reply (0 = never).
    pub last_ns: u64,
    /// The MAC it came from, in the low 48 bits ([`mac_to_word`]).
    pub mac: u64,
}

/// A MAC as the low 48 bits of a word (first byte most significant).
pub const fn mac_to_word(m: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// The MAC in the low 48 bits of `w`.
pub const fn word_to_mac(w: u64) -> [u8; 6] {
    let b = w.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

impl WitnessSeen {
    /// Where a witness request sent at `now_ns` goes: the MAC that answered,
    /// when it answered within the last `interval_ns` and a half (so the
    /// request before this one was answered), else None (broadcast). A
    /// witness that stops answering its unicast (a replaced gateway, a new
    /// MAC) costs one request, not its detection.
    pub const fn unicast_to(&self, now_ns: u64, interval_ns: u64) -> Option<[u8; 6]> {
        let fresh = interval_ns.saturating_add(interval_ns / 2);
        if self.last_ns == 0 || self.mac == 0 || now_ns.saturating_sub(self.last_ns) >= fresh {
            None
        } else {
            Some(word_to_mac(self.mac))
        }
    }
}

/// Probe sender threads (one per CPU) whose beats the kernel watches.
pub const MAX_SENDERS: u32 = 4;

/// How old a sender's beat may be while its CPU runs: beats come every probe
/// interval, and a thread up to one interval late is common on a VM (it
/// is no reason to delay a detection). Both the senders (recording a
/// stall's end) and the kernel use it.
pub const fn beat_gap(interval_ns: u64) -> u64 {
    interval_ns.saturating_mul(2)
}

/// One probe sender thread's beat (map `BEATS`, index = thread). Each thread
/// is pinned to its own CPU and writes its beat on every slot, whether it
/// sent the slot or a sibling did: a beat older than
/// `LinkConfig::beat_gap_ns` means that CPU is not running our thread now,
/// so a probe may be waiting on it, unprocessed.
///
/// Only its own thread writes an entry: each pair of fields is stored in
/// one order and read in the other, so a reader never sees a new time with
/// an old companion (two writers of one pair could interleave their stores).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderBeat {
    /// CLOCK_MONOTONIC ns of the thread's last beat; 0 = no such thread.
    pub beat_ns: u64,
    /// The last beat that came more than `beat_gap_ns` after the one
    /// before it: when that CPU's last stall ended (0 = never).
    pub stall_end_ns: u64,
    /// When this thread last woke to find a slot that no thread had sent in
    /// time: every CPU of ours was held, this machine stalled (0 = never).
    /// The peer's probes may have waited behind the same stall, and on a
    /// machine shared with the peer (the lab) its senders too.
    pub machine_stall_ns: u64,
    /// How long that stall was (how late this thread woke).
    pub machine_stall_len_ns: u64,
}

impl SenderBeat {
    /// The beat its thread writes when it runs at `now_ns`: a run later
    /// than `gap_ns` after the last one ends a stall.
    pub const fn next(self, now_ns: u64, gap_ns: u64) -> SenderBeat {
        SenderBeat {
            beat_ns: now_ns,
            stall_end_ns: if self.stalled_at(now_ns, gap_ns) {
                now_ns
            } else {
                self.stall_end_ns
            },
            ..self
        }
    }

    /// Its CPU has not run the thread for longer than `gap_ns`.
    pub const fn stalled_at(&self, now_ns: u64, gap_ns: u64) -> bool {
        self.beat_ns != 0 && now_ns.saturating_sub(self.beat_ns) > gap_ns
    }

    /// Its CPU ran the thread again, after a stall, less than `window_ns` ago.
    pub const fn resumed_within(&self, now_ns: u64, window_ns: u64) -> bool {
        self.stall_end_ns != 0 && now_ns.saturating_sub(self.stall_end_ns) < window_ns
    }

    /// This beat, also saying that at `at_ns` the thread found the whole
    /// machine had stalled for `len_ns`.
    pub const fn with_machine_stall(self, at_ns: u64, len_ns: u64) -> SenderBeat {
        SenderBeat {
            machine_stall_ns: at_ns,
            machine_stall_len_ns: len_ns,
            ..self
        }
    }

    /// The length of the machine stall this thread found less than
    /// `window_ns` before `now_ns` (0 = none).
    pub const fn machine_stall_within(&self, now_ns: u64, window_ns: u64) -> u64 {
        if self.machine_stall_ns != 0 && now_ns.saturating_sub(self.machine_stall_ns) < window_ns {
            self.machine_stall_len_ns
        } else {
            0
        }
    }
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
    /// A sender beat ([`SenderBeat`]) older than this: that CPU is stalled
    /// now. Beats come every probe interval.
    pub beat_gap_ns: u64,
    /// Grace for the stalls of our other CPUs ends when the silence reaches
    /// `detect_ns` + this: a CPU that keeps stalling delays a detection by
    /// at most this much, never forever.
    pub beat_grace_max_ns: u64,
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
    /// PEER_DOWN / WITNESS_DOWN: the graces the silence got before it was
    /// called a death, by cause (0 otherwise): how much our own stalls
    /// delayed the detection.
    pub late_timer_graces: u32,
    pub our_cpu_graces: u32,
    pub our_machine_graces: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding-dependent invariants.
    unsafe impl aya::Pod for super::LinkConfig {}
    unsafe impl aya::Pod for super::LinkState {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Global {}
    unsafe impl aya::Pod for super::Lease {}
    unsafe impl aya::Pod for super::SenderBeat {}
    unsafe impl aya::Pod for super::WitnessSeen {}
}

/// What a peer or witness detection timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerVerdict {
    /// Not silent for the detection time yet: look again in this many ns.
    Rearm(u64),
    /// Silent, but this machine is stalling or just stalled: look again
    /// after the grace.
    Grace(GraceCause),
    /// Silent: the peer (or witness) is down on this link.
    Down,
}

/// Why a silent link got a grace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraceCause {
    /// The timer fired late: its own CPU stalled.
    LateTimer,
    /// Another CPU of ours is stalled or just ran again.
    OurCpu,
    /// This whole machine stalled a moment ago (no sender thread ran).
    OurMachine,
}

/// Our own stalls as the kernel sees them when a timer fires, from the
/// sender threads' beats (one thread per CPU) and the lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OurStalls {
    /// One of our CPUs has not run its sender thread for longer than a
    /// beat gap: it is stalled now, and a probe may be queued on it.
    pub in_progress: bool,
    /// One of them ran again less than a stall (`stall_ns`) ago.
    pub just_ended: bool,
    /// Length of a stall of the whole machine (no sender thread ran) noticed
    /// within the detection time (0 = none).
    pub machine_len: u64,
}

/// The verdict of a detection timer. `elapsed`: the silence so far; `late`:
/// how late this timer fired; `stall_ns` (0 = no grace at all), `grace_ns`,
/// `grace_max` (`beat_grace_max_ns`) and `detect` from the link's config.
///
/// A timer that fired late ran on a CPU that just stalled: the probes
/// queued behind that stall come first when it looks again after the grace.
/// A stall of the whole machine (no sender thread of ours ran) that is over
/// stretches the silence by its own length and one grace: the peer's probes
/// waited behind it, and on a machine shared with the peer (the lab) the
/// peer's senders were held too and speak again a moment after ours. A CPU
/// of ours that is stalled now may hold a probe, and one whose stall just
/// ended may not have handed it over yet: grace then as well, but only up
/// to `grace_max` past the detection, so that a CPU that keeps stalling
/// cannot hide a death. A stall of one CPU that ended earlier, while the
/// others ran, is no reason: counted (by its length, as before), it
/// stretched the detections after it by tens of ms.
pub const fn timer_verdict(
    elapsed: u64,
    detect: u64,
    late: u64,
    stall_ns: u64,
    grace_ns: u64,
    grace_max: u64,
    ours: OurStalls,
) -> TimerVerdict {
    if elapsed < detect {
        return TimerVerdict::Rearm(detect - elapsed);
    }
    if stall_ns == 0 {
        return TimerVerdict::Down;
    }
    if late > stall_ns {
        return TimerVerdict::Grace(GraceCause::LateTimer);
    }
    if ours.machine_len > 0
        && elapsed
            < detect
                .saturating_add(ours.machine_len)
                .saturating_add(grace_ns)
    {
        return TimerVerdict::Grace(GraceCause::OurMachine);
    }
    if (ours.in_progress || ours.just_ended) && elapsed < detect.saturating_add(grace_max) {
        return TimerVerdict::Grace(GraceCause::OurCpu);
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
    const GRACE_MAX: u64 = 20 * MS;
    const NONE: OurStalls = OurStalls {
        in_progress: false,
        just_ended: false,
        machine_len: 0,
    };
    const STALLED: OurStalls = OurStalls {
        in_progress: true,
        ..NONE
    };
    const RESUMED: OurStalls = OurStalls {
        just_ended: true,
        ..NONE
    };

    fn verdict(elapsed: u64, late: u64, cpus: OurStalls) -> TimerVerdict {
        timer_verdict(elapsed, DETECT, late, STALL, GRACE, GRACE_MAX, cpus)
    }

    #[test]
    fn a_mac_survives_the_word() {
        let m = [0x02, 0x11, 0x22, 0x33, 0x44, 0xff];
        assert_eq!(word_to_mac(mac_to_word(m)), m);
        assert_eq!(mac_to_word(m), 0x0211_2233_44ff);
    }

    #[test]
    fn a_witness_that_answered_the_last_request_is_asked_by_unicast() {
        let m = [0x02, 0, 0, 0, 0, 1];
        let i = 16 * MS;
        let seen = WitnessSeen {
            last_ns: 100 * MS,
            mac: mac_to_word(m),
        };
        // The last reply came 16 ms ago (a request ago, answered at once),
        // or within the next request's jitter.
        assert_eq!(seen.unicast_to(116 * MS, i), Some(m));
        assert_eq!(seen.unicast_to(123 * MS, i), Some(m));
        // A reply stored after the sender read its clock is fresh too.
        assert_eq!(seen.unicast_to(99 * MS, i), Some(m));
        // The request before was not answered: ask everyone.
        assert_eq!(seen.unicast_to(124 * MS, i), None);
        assert_eq!(seen.unicast_to(u64::MAX, i), None);
        // Never heard, or no MAC: broadcast.
        assert_eq!(WitnessSeen::default().unicast_to(116 * MS, i), None);
        let no_mac = WitnessSeen { mac: 0, ..seen };
        assert_eq!(no_mac.unicast_to(116 * MS, i), None);
        // No overflow at the extremes.
        assert_eq!(seen.unicast_to(116 * MS, u64::MAX), Some(m));
    }

    #[test]
    fn a_beat_later_than_the_gap_ends_a_stall() {
        let gap = beat_gap(2 * MS);
        let b = SenderBeat::default().next(10 * MS, gap);
        assert_eq!(b.stall_end_ns, 0, "the first beat ends nothing");
        let b = b.next(12 * MS, gap).next(14 * MS + MS / 2, gap);
        assert_eq!(b.stall_end_ns, 0, "half an interval late is no stall");
        assert!(!b.stalled_at(14 * MS + MS / 2 + gap, gap));
        assert!(b.stalled_at(14 * MS + MS / 2 + gap + 1, gap));
        let b = b.next(30 * MS, gap);
        assert_eq!(b.stall_end_ns, 30 * MS);
        assert!(b.resumed_within(31 * MS, STALL));
        assert!(!b.resumed_within(32 * MS, STALL));
        // An unused slot (no such thread) is never stalled.
        assert!(!SenderBeat::default().stalled_at(u64::MAX, gap));
        assert!(!SenderBeat::default().resumed_within(0, STALL));
    }

    #[test]
    fn a_machine_stall_counts_within_the_window_and_survives_the_next_beats() {
        let gap = beat_gap(2 * MS);
        let b = SenderBeat::default()
            .next(10 * MS, gap)
            .with_machine_stall(40 * MS, 24 * MS)
            .next(40 * MS, gap)
            .next(42 * MS, gap);
        assert_eq!(b.machine_stall_within(42 * MS, DETECT), 24 * MS);
        assert_eq!(
            b.machine_stall_within(40 * MS + DETECT - 1, DETECT),
            24 * MS
        );
        assert_eq!(b.machine_stall_within(40 * MS + DETECT, DETECT), 0);
        assert_eq!(SenderBeat::default().machine_stall_within(MS, DETECT), 0);
    }

    #[test]
    fn silence_shorter_than_detection_rearms_for_the_rest() {
        assert_eq!(verdict(4 * MS, 0, NONE), TimerVerdict::Rearm(2 * MS));
    }

    #[test]
    fn a_late_timer_gets_the_grace_however_long_its_stall() {
        // This CPU stalled 50 ms: its queued probes come before it looks again.
        assert_eq!(
            verdict(56 * MS, 50 * MS, NONE),
            TimerVerdict::Grace(GraceCause::LateTimer)
        );
        assert_eq!(
            verdict(500 * MS, 490 * MS, NONE),
            TimerVerdict::Grace(GraceCause::LateTimer)
        );
    }

    #[test]
    fn a_cpu_stalled_now_or_just_resumed_gets_the_grace() {
        assert_eq!(
            verdict(DETECT, 0, STALLED),
            TimerVerdict::Grace(GraceCause::OurCpu)
        );
        assert_eq!(
            verdict(DETECT + 4 * MS, 0, RESUMED),
            TimerVerdict::Grace(GraceCause::OurCpu)
        );
    }

    #[test]
    fn a_cpu_that_keeps_stalling_delays_a_death_by_a_bounded_time() {
        // The witness (80 ms) of an isolated holder whose CPUs keep
        // stalling: at most 80 + 20 ms, not forever (an isolated holder
        // once kept its VIPs for 3 s on stalls of a few ms).
        let w = |elapsed| timer_verdict(elapsed, 80 * MS, 0, STALL, GRACE, GRACE_MAX, STALLED);
        assert_eq!(w(99 * MS), TimerVerdict::Grace(GraceCause::OurCpu));
        assert_eq!(w(100 * MS), TimerVerdict::Down);
        assert_eq!(w(3_000 * MS), TimerVerdict::Down);
    }

    #[test]
    fn a_machine_stall_that_is_over_stretches_the_silence_by_its_length() {
        // The stall test's case: a 24 ms stall of the whole machine.
        let s = OurStalls {
            machine_len: 24 * MS,
            ..NONE
        };
        assert_eq!(
            verdict(27 * MS, 0, s),
            TimerVerdict::Grace(GraceCause::OurMachine)
        );
        assert_eq!(verdict(DETECT + 24 * MS + GRACE, 0, s), TimerVerdict::Down);
    }

    #[test]
    fn without_a_stall_now_silence_is_a_death() {
        // A stall that ended before is not counted: no tail after it.
        assert_eq!(verdict(DETECT, 0, NONE), TimerVerdict::Down);
        assert_eq!(verdict(DETECT, STALL, NONE), TimerVerdict::Down);
        // Grace off in the config.
        assert_eq!(
            timer_verdict(DETECT, DETECT, 50 * MS, 0, GRACE, GRACE_MAX, STALLED),
            TimerVerdict::Down
        );
    }
}
