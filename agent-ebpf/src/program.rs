//! `ha_xdp`: the kernel-side liveness detector.
//!
//! Attached (XDP) to every monitored interface. For each link it:
//! - accepts the peer's probes (IPv4/UDP to `LinkConfig::port`, from
//!   `peer_ip` to `local_ip`, `ProbeHeader` with the known token), keeps
//!   counters in `LINK_STATE`, re-arms the link's peer timer and drops the
//!   probe unless userspace needs its body (control generation changed, a
//!   periodic refresh, or the peer just came up);
//! - passes probes with an unknown token up (userspace verifies the HMAC and
//!   installs the token), counting them as `rejected`;
//! - tracks the witness's ARP replies with a second timer;
//! - reports ARP from another MAC claiming one of our VIPs (`VIPS`).
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
    Event, LinkConfig, LinkState, EVENT_PEER_DOWN, EVENT_PEER_UP, EVENT_VIP_CONFLICT,
    EVENT_WITNESS_DOWN, EVENT_WITNESS_UP, MAX_LINKS, MAX_VIPS, PROBE_HEADER_LEN, PROBE_KIND_PROBE,
    PROBE_MAGIC, PROBE_VERSION,
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
}

/// Index in `TIMERS`: `link * TIMERS_PER_LINK + TIMER_PEER / TIMER_WITNESS`.
const TIMERS_PER_LINK: u32 = 2;
const TIMER_PEER: u32 = 0;
const TIMER_WITNESS: u32 = 1;

const CLOCK_MONOTONIC: u64 = 1;
/// At most one VIP conflict event per VIP in this window.
const CONFLICT_INTERVAL_NS: u64 = 100_000_000;

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
const PROBE_OFF: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
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
        [0x08, 0x06] => {
            on_arp(&ctx, data, end);
            xdp_action::XDP_PASS
        }
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

#[inline(always)]
fn on_ipv4(ctx: &XdpContext, data: usize, end: usize) -> u32 {
    // One bounds check covers Ethernet + IPv4 + UDP + ProbeHeader; anything
    // shorter is not a probe.
    if data + PROBE_END > end {
        return xdp_action::XDP_PASS;
    }
    let ip = data + ETH_HLEN;
    // SAFETY: all reads below are within [data, data + PROBE_END).
    unsafe {
        let ver_ihl = *(ip as *const u8);
        let proto = *((ip + 9) as *const u8);
        let frag = *((ip + 6) as *const [u8; 2]);
        // IPv4 without options, UDP, not a fragment (MF clear, offset 0).
        if ver_ihl != 0x45 || proto != 17 || frag[0] & 0x3f != 0 || frag[1] != 0 {
            return xdp_action::XDP_PASS;
        }
    }
    let Some((link, cfg)) = find_link(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let saddr = u32::from_ne_bytes(read4(ip + 12));
    let daddr = u32::from_ne_bytes(read4(ip + 16));
    // SAFETY: within the checked range.
    let dport = u16::from_ne_bytes(unsafe { *((ip + IPV4_HLEN + 2) as *const [u8; 2]) });
    if saddr != cfg.peer_ip || daddr != cfg.local_ip || dport != cfg.port {
        return xdp_action::XDP_PASS;
    }
    let p = data + PROBE_OFF;
    // SAFETY: within the checked range; ProbeHeader has alignment 1.
    let hdr = unsafe { &*(p as *const agent_ebpf::ProbeHeader) };
    if hdr.magic != PROBE_MAGIC || hdr.version != PROBE_VERSION || hdr.kind != PROBE_KIND_PROBE {
        return xdp_action::XDP_PASS;
    }
    let token = u64::from_ne_bytes(hdr.token);
    let Some(st) = LINK_STATE.get_ptr_mut(link) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `st` points into the array map's value for `link`.
    let st = unsafe { &mut *st };
    if cfg.peer_token == 0 || token != cfg.peer_token {
        st.rejected += 1;
        return xdp_action::XDP_PASS;
    }

    let seq = u32::from_be_bytes(hdr.seq);
    let ctl_gen = u32::from_be_bytes(hdr.ctl_gen);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    st.peer_last_ns = now;
    if st.rx == 0 {
        st.last_seq = seq;
    } else {
        let delta = seq.wrapping_sub(st.last_seq) as i32;
        if delta > 0 {
            let gap = (delta - 1) as u64;
            // A huge jump is a restart of the sender, not loss.
            if gap < 100_000 {
                st.lost += gap;
            }
            st.last_seq = seq;
        } else if delta < -1024 {
            // Sender restarted with a lower sequence number.
            st.last_seq = seq;
        } // else: duplicate or reordered, ignore.
    }
    st.rx += 1;

    if cfg.detect_ns != 0 {
        arm_timer(link * TIMERS_PER_LINK + TIMER_PEER, cfg.detect_ns);
    }

    let mut pass = false;
    if st.peer_up == 0 {
        st.peer_up = 1;
        emit(EVENT_PEER_UP, link, now, seq as u64);
        // Userspace wants the control body of the first probe after an outage.
        pass = true;
    }
    if ctl_gen != st.passed_ctl_gen {
        st.passed_ctl_gen = ctl_gen;
        pass = true;
    }
    if cfg.pass_every != 0 && seq % cfg.pass_every == 0 {
        pass = true;
    }
    if pass {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn on_arp(ctx: &XdpContext, data: usize, end: usize) {
    if data + ARP_END > end {
        return;
    }
    let arp = data + ETH_HLEN;
    // SAFETY: all reads below are within [data, data + ARP_END).
    let (hdr, op, sha, spa) = unsafe {
        (
            *(arp as *const [u8; 6]),
            *((arp + 6) as *const [u8; 2]),
            *((arp + 8) as *const [u8; 6]),
            u32::from_ne_bytes(read4(arp + 14)),
        )
    };
    // Ethernet/IPv4 ARP only.
    if hdr != [0, 1, 0x08, 0x00, 6, 4] || spa == 0 {
        return;
    }
    let Some((link, cfg)) = find_link(ctx) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    if op == [0, 2] && cfg.witness_ip != 0 && spa == cfg.witness_ip {
        if let Some(st) = LINK_STATE.get_ptr_mut(link) {
            // SAFETY: `st` points into the array map's value for `link`.
            let st = unsafe { &mut *st };
            st.witness_last_ns = now;
            st.witness_rx += 1;
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
                    return;
                }
                *last = now;
            }
        } else {
            let _ = VIP_CONFLICT_TS.insert(spa, now, 0);
        }
        emit(EVENT_VIP_CONFLICT, link, now, spa as u64);
    }
}

#[inline(always)]
fn emit(kind: u32, link: u32, ts_ns: u64, value: u64) {
    let _ = EVENTS.output(
        Event {
            kind,
            link,
            ts_ns,
            value,
        },
        0,
    );
}

/// (Re)starts timer `key` to fire in `ns`, initializing it on first use.
#[inline(always)]
fn arm_timer(key: u32, ns: u64) {
    let Some(t) = TIMERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `t` points into the TIMERS value for `key`; the helpers get the
    // timer field of that value and the TIMERS map itself, as the verifier requires.
    unsafe {
        let timer = core::ptr::addr_of_mut!((*t).timer);
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
        bpf_timer_start(timer, ns, 0);
    }
}

/// Timer callback (peer or witness of one link): declares the link's peer or
/// witness down when it stayed silent for the detection time, else re-arms
/// for the remainder (a probe may have arrived just as the timer fired).
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
    if elapsed >= detect {
        if *up == 1 {
            *up = 0;
            emit(kind, link, now, last);
        }
    } else {
        // SAFETY: re-arming the timer of the element the kernel passed in.
        unsafe {
            bpf_timer_start(core::ptr::addr_of_mut!((*value).timer), detect - elapsed, 0);
        }
    }
    0
}
