//! `ha_xdp`: the kernel-side liveness detector and the hung-agent lease.
//!
//! Attached (XDP) to every monitored interface. For each link it:
//! - takes every frame to the probe port and lets nothing through but the
//!   peer's valid probes: source `peer_ip`, the peer's sender id, our link
//!   index, and a SipHash-2-4 tag under a key only the two agents know
//!   (`GLOBAL`). Anything else is dropped and counted (`rejected`);
//! - counts the first copy of each slot of the accepted peer session as
//!   liveness (`seq` strictly increasing: the redundant senders' copies and
//!   any replay are dropped), re-arms the link's peer timer and drops the
//!   probe unless userspace needs its body (control generation changed, a
//!   periodic refresh, or the peer just came up);
//! - passes probes of a session not accepted yet to userspace, rate limited,
//!   unless their boot counter is older than the newest the agent knows (an
//!   old session replayed);
//! - tracks the witness's ARP replies with a second timer;
//! - reports ARP from another MAC claiming one of our VIPs (`VIPS`);
//! - drops every frame addressed to one of our VIPs (IPv4 to it, ARP asking
//!   for it) while the agent's lease (`LEASE`) has lapsed: an agent that
//!   hangs with the VIPs stops serving them within the lease, whatever its
//!   threads do.
//!
//! The timers (`bpf_timer`, CLOCK_MONOTONIC) fire `detect_ns` after the last
//! accepted probe / witness reply and emit the DOWN events on `EVENTS`
//! without any help from userspace.
//!
//! Verifier notes: every packet access is preceded by one bounds check
//! against `data_end`; the link lookup is a fixed `MAX_LINKS` loop; nothing
//! can panic (the panic handler is never linked in).

use core::ffi::c_void;

use agent_ebpf::{
    mac_to_word, siphash::siphash24, timer_verdict, Event, Global, GraceCause, Lease, LinkConfig,
    LinkState, OurStalls, ProbeHeader, SenderBeat, TimerVerdict, WitnessSeen, EVENT_PEER_DOWN,
    EVENT_PEER_UP, EVENT_VIP_CONFLICT, EVENT_WITNESS_DOWN, EVENT_WITNESS_UP, MAX_LINKS,
    MAX_SENDERS, MAX_VIPS, PROBE_HEADER_LEN, PROBE_KIND_PROBE, PROBE_MAGIC, PROBE_VERSION,
    SEQ_SHIFT, TAGGED_LEN,
};
use aya_ebpf::{
    bindings::{bpf_timer, xdp_action},
    btf_maps::{Array, HashMap, LruHashMap, RingBuf},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
    },
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// bpf_timer helpers are GPL-only: the program must declare a GPL-compatible license.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Value of the `TIMERS` map. The kernel finds the timer through the value's
/// BTF, which therefore contains the struct `bpf_timer` (from aya's bindings).
#[repr(C)]
pub struct LinkTimer {
    pub timer: bpf_timer,
    /// Set once `bpf_timer_init` + `bpf_timer_set_callback` ran for this slot.
    pub initialized: u32,
    pub _pad: u32,
    /// When the timer was last armed to fire (CLOCK_MONOTONIC ns).
    pub due_ns: u64,
    /// Graces given to the current silence, by cause (reset by a probe).
    pub late_timer_graces: u32,
    pub our_cpu_graces: u32,
    pub our_machine_graces: u32,
    pub _pad2: u32,
}

/// Index in `TIMERS`: `link * TIMERS_PER_LINK + TIMER_PEER / TIMER_WITNESS`.
const TIMERS_PER_LINK: u32 = 2;
const TIMER_PEER: u32 = 0;
const TIMER_WITNESS: u32 = 1;

const CLOCK_MONOTONIC: u64 = 1;
/// `bpf_timer_start` flag (Linux 6.7): keep the timer on the CPU that armed it.
const BPF_F_TIMER_CPU_PIN: u64 = 1 << 1;
/// At most one VIP conflict event per VIP in this window.
const CONFLICT_INTERVAL_NS: u64 = 100_000_000;
/// A seq gap larger than this (slots) is a restarted sender, not loss.
const MAX_GAP_SLOTS: u64 = 100_000;

#[btf_map]
static GLOBAL: Array<Global, 1> = Array::new();

/// `BPF_F_MMAPABLE`: the sender threads store the lease and their beats
/// straight into the maps' memory, with no system call on their real-time
/// path. They store while we read: each field is read once
/// (`read_volatile`), in the order the senders' stores make safe.
const BPF_F_MMAPABLE: usize = 1 << 10;

#[btf_map]
static LEASE: Array<Lease, 1, BPF_F_MMAPABLE> = Array::new();

#[btf_map]
static BEATS: Array<SenderBeat, { MAX_SENDERS as usize }, BPF_F_MMAPABLE> = Array::new();

/// Each link's witness as last heard (see [`WitnessSeen`]): the senders
/// read it to ask the witness by unicast.
#[btf_map]
static WITNESS_SEEN: Array<WitnessSeen, { MAX_LINKS as usize }, BPF_F_MMAPABLE> = Array::new();

#[btf_map]
static LINK_CONFIG: Array<LinkConfig, { MAX_LINKS as usize }> = Array::new();

#[btf_map]
static LINK_STATE: Array<LinkState, { MAX_LINKS as usize }> = Array::new();

#[btf_map]
static TIMERS: Array<LinkTimer, { (MAX_LINKS * TIMERS_PER_LINK) as usize }> = Array::new();

/// VIPs this node holds: IPv4 (network order) -> link.
#[btf_map]
static VIPS: HashMap<u32, u32, { MAX_VIPS as usize }> = HashMap::new();

/// Last VIP conflict event per VIP (rate limit).
#[btf_map]
static VIP_CONFLICT_TS: LruHashMap<u32, u64, { MAX_VIPS as usize }> = LruHashMap::new();

#[btf_map]
static EVENTS: RingBuf<Event, { 64 * 1024 }> = RingBuf::new();

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20; // probes carry no IP options
const UDP_HLEN: usize = 8;
const IP_END: usize = ETH_HLEN + IPV4_HLEN;
const UDP_END: usize = IP_END + UDP_HLEN;
const PROBE_OFF: usize = UDP_END;
const PROBE_END: usize = PROBE_OFF + PROBE_HEADER_LEN;
const ARP_END: usize = ETH_HLEN + 28;

#[xdp]
pub fn ha_xdp(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { *((data + 12) as *const [u8; 2]) };
    match ethertype {
        [0x08, 0x00] => on_ipv4(&ctx, data, end),
        [0x08, 0x06] => on_arp(&ctx, data, end),
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn find_link(ctx: &XdpContext) -> Option<(u32, &'static LinkConfig)> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let mut i = 0;
    while i < MAX_LINKS {
        if let Some(cfg) = LINK_CONFIG.get(i) {
            if cfg.ifindex != 0 && cfg.ifindex == ifindex {
                return Some((i, cfg));
            }
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn read4(addr: usize) -> [u8; 4] {
    // SAFETY: callers bounds-check `addr + 4 <= data_end`.
    unsafe { *(addr as *const [u8; 4]) }
}

/// Whether frames to `ip` must be dropped: it is one of our VIPs and the
/// agent's lease has lapsed (the agent hangs: its peer may already serve it).
#[inline(always)]
fn vip_fenced(link: u32, ip: u32) -> bool {
    let Some(g) = GLOBAL.get(0) else {
        return false;
    };
    if g.lease_enforced == 0 || VIPS.get_ptr(ip).is_none() {
        return false;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let lapsed = LEASE.get_ptr(0).is_none_or(|l| {
        // SAFETY: `l` points to the live, aligned element 0 of LEASE.
        now >= unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*l).until_ns)) }
    });
    if lapsed {
        if let Some(st) = LINK_STATE.get_ptr_mut(link) {
            // SAFETY: `st` points into the array map's value for `link`.
            unsafe { (*st).lease_drops += 1 };
        }
    }
    lapsed
}

/// A UDP datagram with IP options, or the first fragment of one: never a
/// probe. Dropped when it is for the probe port, so that nobody can reach
/// the agent's socket past the source and tag checks below by shaping a
/// frame oddly.
#[inline(always)]
fn odd_udp(link: u32, ip: usize, ver_ihl: u8, end: usize, port: u16) -> u32 {
    if ver_ihl >> 4 != 4 {
        return xdp_action::XDP_PASS;
    }
    // 20..=60 bytes: bounded, so the verifier can follow the offset.
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return xdp_action::XDP_PASS;
    }
    let udp = ip + ihl;
    if udp + 4 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: within [udp, udp + 4), checked above.
    let dport = u16::from_ne_bytes(unsafe { *((udp + 2) as *const [u8; 2]) });
    if dport != port {
        return xdp_action::XDP_PASS;
    }
    if let Some(st) = LINK_STATE.get_ptr_mut(link) {
        // SAFETY: `st` points into the array map's value for `link`.
        unsafe { (*st).rejected += 1 };
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn on_ipv4(ctx: &XdpContext, data: usize, end: usize) -> u32 {
    if data + IP_END > end {
        return xdp_action::XDP_PASS;
    }
    let Some((link, cfg)) = find_link(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let ip = data + ETH_HLEN;
    let saddr = u32::from_ne_bytes(read4(ip + 12));
    let daddr = u32::from_ne_bytes(read4(ip + 16));
    if daddr != cfg.local_ip {
        if vip_fenced(link, daddr) {
            return xdp_action::XDP_DROP;
        }
        return xdp_action::XDP_PASS;
    }
    // SAFETY: all reads below are within [data, data + IP_END).
    let (ver_ihl, proto, frag) = unsafe {
        (
            *(ip as *const u8),
            *((ip + 9) as *const u8),
            *((ip + 6) as *const [u8; 2]),
        )
    };
    // Probes are IPv4 without options, UDP, not fragments (MF clear,
    // offset 0). A later fragment carries no UDP header (and cannot be
    // reassembled without its first, dropped below if it is for us).
    if proto != 17 || frag[0] & 0x1f != 0 || frag[1] != 0 {
        return xdp_action::XDP_PASS;
    }
    if ver_ihl != 0x45 || frag[0] & 0x20 != 0 {
        return odd_udp(link, ip, ver_ihl, end, cfg.port);
    }
    if data + UDP_END > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: within [data, data + UDP_END).
    let dport = u16::from_ne_bytes(unsafe { *((ip + IPV4_HLEN + 2) as *const [u8; 2]) });
    if dport != cfg.port {
        return xdp_action::XDP_PASS;
    }
    let Some(st) = LINK_STATE.get_ptr_mut(link) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: `st` points into the array map's value for `link`.
    let st = unsafe { &mut *st };
    // A frame to the probe port: from here on only a valid probe of the
    // peer goes anywhere, so nobody without the key can make the agent work.
    if saddr != cfg.peer_ip || data + PROBE_END > end {
        st.rejected += 1;
        return xdp_action::XDP_DROP;
    }
    let p = data + PROBE_OFF;
    // SAFETY: within the checked range; ProbeHeader has alignment 1.
    let hdr = unsafe { &*(p as *const ProbeHeader) };
    let Some(g) = GLOBAL.get(0) else {
        return xdp_action::XDP_DROP;
    };
    if hdr.magic != PROBE_MAGIC
        || hdr.version != PROBE_VERSION
        || hdr.kind != PROBE_KIND_PROBE
        || hdr.link as u32 != link
        || u32::from_ne_bytes(hdr.sender) != g.peer_id
    {
        st.rejected += 1;
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the 40 tagged bytes are within the checked range.
    let tagged = unsafe { &*(p as *const [u8; TAGGED_LEN]) };
    if siphash24(g.sip_k0, g.sip_k1, tagged) != u64::from_le_bytes(hdr.tag) {
        st.rejected += 1;
        return xdp_action::XDP_DROP;
    }

    let token = u64::from_ne_bytes(hdr.token);
    let seq = u64::from_be_bytes(hdr.seq);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if cfg.peer_token == 0 || token != cfg.peer_token {
        // Another session: userspace verifies it and accepts it only once
        // its probes echo our own session (a replay of an old session
        // cannot). Old boots are replays: dropped here.
        // A replay of the same session's earlier probes is dropped before
        // the rate limit, so a flood of them cannot starve the newest.
        if u64::from_be_bytes(hdr.boot) < cfg.peer_min_boot
            || (token == st.unknown_token && seq <= st.unknown_seq)
            || now.wrapping_sub(st.unknown_last_ns) < cfg.unknown_gap_ns
        {
            st.rejected += 1;
            return xdp_action::XDP_DROP;
        }
        st.unknown_last_ns = now;
        st.unknown_token = token;
        st.unknown_seq = seq;
        st.unknown += 1;
        return xdp_action::XDP_PASS;
    }

    if st.seq_token != token {
        // First probe of a newly accepted session: not older than what
        // went up before it was accepted (a replay of a pre-acceptance
        // probe is not liveness).
        if token == st.unknown_token && seq <= st.unknown_seq {
            st.duplicates += 1;
            return xdp_action::XDP_DROP;
        }
        st.seq_token = token;
    } else if seq <= st.last_seq {
        // A redundant sender's copy of a slot already counted, or a replay.
        st.duplicates += 1;
        return xdp_action::XDP_DROP;
    } else {
        let gap = (seq >> SEQ_SHIFT).saturating_sub(st.last_seq >> SEQ_SHIFT);
        if gap > 1 && gap < MAX_GAP_SLOTS {
            st.lost += gap - 1;
        }
    }
    st.last_seq = seq;
    st.peer_last_ns = now;
    st.rx += 1;

    if cfg.detect_ns != 0 {
        arm_timer(link * TIMERS_PER_LINK + TIMER_PEER, cfg.detect_ns);
    }

    let mut pass = false;
    if st.peer_up == 0 {
        st.peer_up = 1;
        emit(EVENT_PEER_UP, link, now, seq);
        // Userspace wants the control body of the first probe after an outage.
        pass = true;
    }
    let ctl_gen = u32::from_be_bytes(hdr.ctl_gen);
    if ctl_gen != st.passed_ctl_gen {
        st.passed_ctl_gen = ctl_gen;
        pass = true;
    }
    let slot = seq >> SEQ_SHIFT;
    if cfg.pass_every != 0 && slot % cfg.pass_every as u64 == 0 {
        pass = true;
    }
    if pass {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn on_arp(ctx: &XdpContext, data: usize, end: usize) -> u32 {
    if data + ARP_END > end {
        return xdp_action::XDP_PASS;
    }
    let arp = data + ETH_HLEN;
    // SAFETY: all reads below are within [data, data + ARP_END).
    let (hdr, op, sha, spa, tpa) = unsafe {
        (
            *(arp as *const [u8; 6]),
            *((arp + 6) as *const [u8; 2]),
            *((arp + 8) as *const [u8; 6]),
            u32::from_ne_bytes(read4(arp + 14)),
            u32::from_ne_bytes(read4(arp + 24)),
        )
    };
    // Ethernet/IPv4 ARP only.
    if hdr != [0, 1, 0x08, 0x00, 6, 4] {
        return xdp_action::XDP_PASS;
    }
    let Some((link, cfg)) = find_link(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // A hung agent must not answer for a VIP its peer may hold now.
    if op == [0, 1] && tpa != spa && vip_fenced(link, tpa) {
        return xdp_action::XDP_DROP;
    }
    if spa == 0 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    if op == [0, 2] && cfg.witness_ip != 0 && spa == cfg.witness_ip {
        if let Some(st) = LINK_STATE.get_ptr_mut(link) {
            // SAFETY: `st` points into the array map's value for `link`.
            let st = unsafe { &mut *st };
            st.witness_last_ns = now;
            st.witness_rx += 1;
            if let Some(seen) = WITNESS_SEEN.get_ptr_mut(link) {
                // The MAC first, the time last: the senders read the time
                // first, so a fresh time never comes with a MAC older than
                // it (a torn pair costs one unanswered unicast at worst).
                // SAFETY: `seen` points to the live, aligned element `link`.
                unsafe {
                    core::ptr::write_volatile(
                        core::ptr::addr_of_mut!((*seen).mac),
                        mac_to_word(sha),
                    );
                    core::ptr::write_volatile(core::ptr::addr_of_mut!((*seen).last_ns), now);
                }
            }
            if cfg.witness_detect_ns != 0 {
                arm_timer(
                    link * TIMERS_PER_LINK + TIMER_WITNESS,
                    cfg.witness_detect_ns,
                );
            }
            if st.witness_up == 0 {
                st.witness_up = 1;
                emit(EVENT_WITNESS_UP, link, now, spa as u64);
            }
        }
    }

    if VIPS.get_ptr(spa).is_some() && sha != cfg.local_mac {
        if let Some(last) = VIP_CONFLICT_TS.get_ptr_mut(spa) {
            // SAFETY: value pointer returned by the map lookup.
            unsafe {
                if now.wrapping_sub(*last) < CONFLICT_INTERVAL_NS {
                    return xdp_action::XDP_PASS;
                }
                *last = now;
            }
        } else {
            let _ = VIP_CONFLICT_TS.insert(spa, now, 0);
        }
        emit(EVENT_VIP_CONFLICT, link, now, spa as u64);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn emit(kind: u32, link: u32, ts_ns: u64, value: u64) {
    emit_event(&Event {
        kind,
        link,
        ts_ns,
        value,
        ..Event::default()
    });
}

#[inline(always)]
fn emit_event(e: &Event) {
    let _ = EVENTS.output(*e, 0);
}

/// (Re)starts timer `key` to fire in `ns`, pinned to this CPU, initializing
/// it on first use.
///
/// Why a stall of the receiving side can delay a detection but never fake a
/// death: the timer is pinned to the CPU that processed the latest probe.
/// A vCPU that stalls stops both its timer and the probes queued for it
/// (veth and most NICs process a frame on the CPU it was queued on); when it
/// runs again the kernel handles NET_RX softirqs before HRTIMER ones, so the
/// queued probe re-arms the timer (and the callback re-checks the time of
/// the last probe) before the timer can fire. The peer's sender thread 0
/// sends almost every slot (its siblings wake a moment later and send only
/// the slots it was late for), so its flow's CPU holds both the probes and
/// the timer. A sibling's probe on another flow moves the timer to the CPU
/// that processed it, and the next one of thread 0 moves it back: a timer
/// on a CPU that does run fires only if no CPU processed a probe for
/// `detect_ns`.
#[inline(always)]
fn arm_timer(key: u32, ns: u64) {
    let Some(t) = TIMERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `t` points into the TIMERS value for `key`; the helpers get the
    // timer field of that value and the TIMERS map itself, as the verifier requires.
    unsafe {
        let timer = core::ptr::addr_of_mut!((*t).timer);
        (*t).due_ns = bpf_ktime_get_ns().wrapping_add(ns);
        (*t).late_timer_graces = 0;
        (*t).our_cpu_graces = 0;
        (*t).our_machine_graces = 0;
        if (*t).initialized == 0 {
            // -EBUSY if another CPU won the race: harmless.
            bpf_timer_init(
                timer,
                core::ptr::addr_of!(TIMERS) as *mut c_void,
                CLOCK_MONOTONIC,
            );
            bpf_timer_set_callback(timer, timer_cb as *const () as *mut c_void);
            (*t).initialized = 1;
        }
        start_pinned(timer, ns);
    }
}

/// Starts `timer` pinned to this CPU, or unpinned on kernels older than 6.7.
///
/// # Safety
/// `timer` must point to an initialized `bpf_timer` inside a map value.
#[inline(always)]
unsafe fn start_pinned(timer: *mut bpf_timer, ns: u64) {
    // SAFETY: per the caller's contract.
    unsafe {
        if bpf_timer_start(timer, ns, BPF_F_TIMER_CPU_PIN) != 0 {
            bpf_timer_start(timer, ns, 0);
        }
    }
}

/// Our own stalls, from the sender threads' beats (one thread per CPU): one
/// CPU stalled now (its beat is older than a gap) or one that ran again
/// less than a stall ago, and a stall of the whole machine that a thread
/// noticed within the detection time.
#[inline(always)]
fn our_stalls(now: u64, detect: u64, cfg: &LinkConfig) -> OurStalls {
    let mut s = OurStalls::default();
    let mut i = 0;
    while i < MAX_SENDERS {
        if let Some(p) = BEATS.get_ptr(i) {
            // The senders store into this memory while we read it (it is
            // mapped into the agent): each field is read once, and each
            // pair's time before its companion, as they store it last.
            // SAFETY: `p` points to a live, aligned element of BEATS.
            let b = unsafe {
                let beat_ns = core::ptr::read_volatile(core::ptr::addr_of!((*p).beat_ns));
                let stall_end_ns = core::ptr::read_volatile(core::ptr::addr_of!((*p).stall_end_ns));
                let machine_stall_ns =
                    core::ptr::read_volatile(core::ptr::addr_of!((*p).machine_stall_ns));
                let machine_stall_len_ns =
                    core::ptr::read_volatile(core::ptr::addr_of!((*p).machine_stall_len_ns));
                SenderBeat {
                    beat_ns,
                    stall_end_ns,
                    machine_stall_ns,
                    machine_stall_len_ns,
                }
            };
            s.in_progress |= b.stalled_at(now, cfg.beat_gap_ns);
            s.just_ended |= b.resumed_within(now, cfg.stall_ns);
            let len = b.machine_stall_within(now, detect);
            if len > s.machine_len {
                s.machine_len = len;
            }
        }
        i += 1;
    }
    s
}

/// Timer callback (peer or witness of one link): declares the link's peer or
/// witness down when it stayed silent for the detection time, else re-arms
/// for the remainder (a probe may have arrived just as the timer fired).
///
/// A callback that runs while this machine is stalling or just stalled (it
/// fired late, or `our_stalls`) may be looking at probes not processed
/// yet (on another CPU, or queued behind the stall). It does not declare a
/// death then; it looks again `grace_ns` later. A stall of the receiving
/// side can thus delay a detection, not fake one, and our stalls delay it
/// by a bounded time (`timer_verdict`).
#[inline(never)]
unsafe extern "C" fn timer_cb(_map: *mut c_void, key: *mut u32, value: *mut LinkTimer) -> i32 {
    // SAFETY: the kernel passes the element's key and value.
    let key = unsafe { *key };
    let link = key / TIMERS_PER_LINK;
    let which = key % TIMERS_PER_LINK;
    let (Some(cfg), Some(st)) = (LINK_CONFIG.get(link), LINK_STATE.get_ptr_mut(link)) else {
        return 0;
    };
    // SAFETY: `st` points into the array map's value for `link`.
    let st = unsafe { &mut *st };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the element the kernel passed in.
    let due = unsafe { (*value).due_ns };
    let (last, detect, up, kind) = if which == TIMER_PEER {
        (
            st.peer_last_ns,
            cfg.detect_ns,
            &mut st.peer_up,
            EVENT_PEER_DOWN,
        )
    } else {
        (
            st.witness_last_ns,
            cfg.witness_detect_ns,
            &mut st.witness_up,
            EVENT_WITNESS_DOWN,
        )
    };
    let elapsed = now.saturating_sub(last);
    let (rearm, down) = match timer_verdict(
        elapsed,
        detect,
        now.saturating_sub(due),
        cfg.stall_ns,
        cfg.grace_ns,
        cfg.beat_grace_max_ns,
        our_stalls(now, detect, cfg),
    ) {
        TimerVerdict::Rearm(ns) => (ns, false),
        TimerVerdict::Grace(cause) => {
            // SAFETY: the element the kernel passed in.
            let v = unsafe { &mut *value };
            match cause {
                GraceCause::LateTimer => {
                    v.late_timer_graces = v.late_timer_graces.saturating_add(1)
                }
                GraceCause::OurCpu => v.our_cpu_graces = v.our_cpu_graces.saturating_add(1),
                GraceCause::OurMachine => {
                    v.our_machine_graces = v.our_machine_graces.saturating_add(1)
                }
            }
            (cfg.grace_ns, false)
        }
        TimerVerdict::Down => (0, true),
    };
    if down {
        if *up == 1 {
            *up = 0;
            // SAFETY: the element the kernel passed in.
            let v = unsafe { &*value };
            emit_event(&Event {
                kind,
                link,
                ts_ns: now,
                value: last,
                late_timer_graces: v.late_timer_graces,
                our_cpu_graces: v.our_cpu_graces,
                our_machine_graces: v.our_machine_graces,
                _pad: 0,
            });
        }
    } else {
        // SAFETY: re-arming the timer of the element the kernel passed in.
        unsafe {
            (*value).due_ns = now.wrapping_add(rearm);
            start_pinned(core::ptr::addr_of_mut!((*value).timer), rearm);
        }
    }
    0
}
