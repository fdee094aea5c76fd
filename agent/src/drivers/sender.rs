//! The probe senders: one real-time thread per CPU, all on one time grid,
//! each sending the slot's probe on every link (the first copy counts, the
//! kernel drops the rest), the witness ARP requests, and renewing the
//! hung-agent lease.
//!
//! Why several: on a VM one vCPU can stall for tens of milliseconds (a
//! SCHED_FIFO thread with locked memory at a 4 ms period was up to 37 ms
//! late here), but two vCPUs rarely stall together (the earlier of two
//! threads pinned one per CPU was never more than 0.73 ms late in 15,000
//! cycles). A single sender would make the peer see a false death.
//!
//! Every thread wakes for every slot and sends it unless a sibling already
//! did (per-link atomics): a slot is late only when every CPU is late at
//! once. Taking turns (one wake per slot in all) was tried and measured
//! worse: the slot then rests on one CPU, and on a kernel without
//! preemption (this VM's: `PREEMPT_NONE`) any long system call or softirq
//! on that CPU delays it; a sibling could only cover from its own next
//! slot on. Over five runs of the replay test, turns missed 45-736 slots
//! per agent and every-slot wakes 9-105 (the rest: stalls of both vCPUs).
//!
//! Thread j wakes [`stagger`] x j after the slot's start, not with thread
//! 0: woken together, both found the slot unsent and both sent it (the
//! peer dropped 59-86% of the slots' probes as copies), which doubled the
//! costliest part of the rest, the sends (and the peer's receiving of
//! them). Staggered, a sibling sends only when thread 0 was later than the
//! stagger, and the slot is then later by at most the stagger.
//!
//! Nothing here blocks, locks, allocates or logs once running: the probe
//! bytes come from a seqlock of atomics written by the decision loop, the
//! counters are atomics the async side reads and reports.
//!
//! The lease: before sending a slot's probes a thread reads the clock
//! (`anchor`); after sending them it sets the kernel's lease to `anchor +
//! lease`. Every lease deadline is thus anchored before a probe the peer
//! could hear: the peer, counting the lease from the last probe it heard,
//! knows when our kernel stops serving the VIPs if we hang. The threads
//! renew (and send) only while the decision loop is alive: a deadlocked
//! agent falls silent, its peer takes over, its lease lapses.
//!
//! The beats: every thread, on every wake, whether it sent the slot or not
//! and whether the decision loop is alive or not, stores its beat (when
//! its CPU's last stall ended, and when it last found that every thread
//! ran late: this machine stalled, no thread sent a slot in time) into
//! kernel memory mapped into the agent (no system call). A thread is
//! pinned to its CPU, so a stale beat is a CPU of ours that is stalled now,
//! and the kernel's timers take neither a probe held there nor one held
//! behind a stall of the whole machine for the peer's death. Each thread
//! writes only its own beat: one writer per record, so the kernel never
//! reads one thread's stall time with another's length.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_ebpf::SEQ_SHIFT;

use crate::drivers::arp::ArpSocket;
use crate::drivers::ebpf::{monotonic_now_ns, SenderMaps};
use crate::operator::status::{HistogramStatus, SenderStatus};
use crate::protocol::{lateness_units, Signer, Template, PROBE_LEN};

pub use crate::operator::config::MAX_SENDERS;
/// The decision loop is considered hung when it has not marked itself alive
/// for this long: the senders then stop sending and renewing the lease.
pub const LOOP_STALE: Duration = Duration::from_millis(100);
/// Upper bounds (us) of the lateness histogram's buckets; one more bucket
/// holds everything later.
pub const LATENESS_BUCKETS_US: [u64; 20] = [
    25, 50, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000, 12_000,
    16_000, 24_000, 32_000, 64_000,
];

/// What the senders need for one link.
pub struct SenderLink {
    /// One per sender thread (see [`thread_count`]), each connected to the
    /// peer's probe address from its own port, non-blocking: each thread's
    /// probes are a flow of their own (NICs with several queues spread them
    /// over CPUs on the receiving side), so a slot a sibling covers does not
    /// wait on the receiving CPU of thread 0's flow.
    pub sockets: Vec<UdpSocket>,
    pub witness: Option<Witness>,
}

pub struct Witness {
    pub arp: Arc<ArpSocket>,
    pub local_ip: Ipv4Addr,
    pub target: Ipv4Addr,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct SenderConfig {
    pub interval: Duration,
    /// SCHED_FIFO priority (1..=99), 0 = normal scheduling.
    pub rt_priority: u8,
    /// Threads wanted; 0 = one per CPU the process may run on.
    pub threads: usize,
    /// How long our kernel serves the VIPs after the last renewal.
    pub lease: Duration,
}

/// One probe template per link behind a seqlock of atomics: one writer (the
/// decision loop), readers that never wait (a torn read is retried, and
/// after a few tries the previous copy is sent: it is still signed, only
/// older by a moment).
struct TemplateCell {
    version: AtomicU64,
    words: [AtomicU64; WORDS],
}

const WORDS: usize = PROBE_LEN.div_ceil(8);

impl TemplateCell {
    fn new(t: &Template) -> Self {
        let cell = TemplateCell {
            version: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        cell.store(t);
        cell
    }

    fn store(&self, t: &Template) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, w) in self.words.iter().enumerate() {
            let mut b = [0u8; 8];
            let from = i * 8;
            let to = (from + 8).min(PROBE_LEN);
            b[..to - from].copy_from_slice(&t.0[from..to]);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.version.store(v.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy, or None after a few torn reads.
    fn load(&self) -> Option<Template> {
        for _ in 0..4 {
            let v1 = self.version.load(Ordering::Acquire);
            if v1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut t = [0u8; PROBE_LEN];
            for (i, w) in self.words.iter().enumerate() {
                let b = w.load(Ordering::Relaxed).to_ne_bytes();
                let from = i * 8;
                let to = (from + 8).min(PROBE_LEN);
                t[from..to].copy_from_slice(&b[..to - from]);
            }
            fence(Ordering::Acquire);
            if self.version.load(Ordering::Relaxed) == v1 {
                return Some(Template(t));
            }
        }
        None
    }
}

/// Counters of the senders (read by the async side for status and metrics).
#[derive(Default)]
pub struct SenderStats {
    /// Slots whose first probe left (link 0's grid).
    pub slots: AtomicU64,
    /// Slots no thread sent (every sender was later than the next slot).
    pub missed: AtomicU64,
    /// Per-slot lateness of the best sender, by [`LATENESS_BUCKETS_US`].
    pub histogram: [AtomicU64; LATENESS_BUCKETS_US.len() + 1],
    pub max_late_us: AtomicU64,
    /// Sum of the per-slot lateness (us), for the histogram's mean.
    pub sum_late_us: AtomicU64,
    /// Worst lateness of the current and the previous second (us): what
    /// our probes report to the peer.
    window_late_us: AtomicU64,
    previous_window_late_us: AtomicU64,
    /// Probes that failed to leave, per link, and the last errno.
    pub send_errors: [AtomicU64; agent_ebpf::MAX_LINKS as usize],
    pub last_errno: [AtomicI32; agent_ebpf::MAX_LINKS as usize],
    pub witness_errors: AtomicU64,
    /// Witness ARP requests sent, and those of them broadcast (the witness
    /// had not answered the request before; the rest went to its MAC).
    pub witness_requests: AtomicU64,
    pub witness_broadcasts: AtomicU64,
    /// Failed writes of the lease or of a beat to the kernel.
    pub lease_errors: AtomicU64,
    /// The longest time one wake's own work took (sends, lease, witness
    /// requests; us): time a thread was held inside its system calls, where
    /// lateness is time it was held before it woke.
    pub max_work_us: AtomicU64,
    /// Wakes whose own work took longer than a probe interval.
    pub long_work: AtomicU64,
    /// The longest work of the current and the previous second (us).
    window_work_us: AtomicU64,
    previous_window_work_us: AtomicU64,
    /// Wakes at which the decision loop was stale: nothing sent, no lease.
    pub loop_stale: AtomicU64,
    /// Threads that run under SCHED_FIFO / pinned to their CPU.
    pub realtime_threads: AtomicU64,
    pub pinned_threads: AtomicU64,
    pub threads: AtomicU64,
}

impl SenderStats {
    fn record_late(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let i = LATENESS_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENESS_BUCKETS_US.len());
        self.histogram[i].fetch_add(1, Ordering::Relaxed);
        self.sum_late_us.fetch_add(us, Ordering::Relaxed);
        self.max_late_us.fetch_max(us, Ordering::Relaxed);
        self.window_late_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Worst lateness of about the last second.
    pub fn recent_late(&self) -> Duration {
        Duration::from_micros(
            self.window_late_us
                .load(Ordering::Relaxed)
                .max(self.previous_window_late_us.load(Ordering::Relaxed)),
        )
    }

    fn roll_window(&self) {
        let w = self.window_late_us.swap(0, Ordering::Relaxed);
        self.previous_window_late_us.store(w, Ordering::Relaxed);
        let w = self.window_work_us.swap(0, Ordering::Relaxed);
        self.previous_window_work_us.store(w, Ordering::Relaxed);
    }

    fn record_work(&self, work: Duration, interval: Duration) {
        let us = u64::try_from(work.as_micros()).unwrap_or(u64::MAX);
        self.max_work_us.fetch_max(us, Ordering::Relaxed);
        self.window_work_us.fetch_max(us, Ordering::Relaxed);
        if work > interval {
            self.long_work.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The longest own work of a wake in about the last second.
    pub fn recent_work(&self) -> Duration {
        Duration::from_micros(
            self.window_work_us
                .load(Ordering::Relaxed)
                .max(self.previous_window_work_us.load(Ordering::Relaxed)),
        )
    }

    /// The lateness below which `q` (0..=1) of the slots were sent: the
    /// upper bound of the histogram bucket it falls in (None: no slot yet,
    /// or beyond the last bound).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return LATENESS_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

impl SenderStats {
    /// The counters for `ha-agent status`.
    pub fn snapshot(&self) -> SenderStatus {
        let s = self;
        use std::sync::atomic::Ordering::Relaxed;
        SenderStatus {
            threads: s.threads.load(Relaxed),
            realtime_threads: s.realtime_threads.load(Relaxed),
            pinned_threads: s.pinned_threads.load(Relaxed),
            slots: s.slots.load(Relaxed),
            missed_slots: s.missed.load(Relaxed),
            lateness: HistogramStatus {
                bounds_us: LATENESS_BUCKETS_US.to_vec(),
                counts: s.histogram.iter().map(|c| c.load(Relaxed)).collect(),
                sum_us: s.sum_late_us.load(Relaxed),
            },
            lateness_p50_us: s.quantile_us(0.5),
            lateness_p99_us: s.quantile_us(0.99),
            lateness_max_us: s.max_late_us.load(Relaxed),
            send_errors: s.send_errors.iter().map(|c| c.load(Relaxed)).sum(),
            witness_errors: s.witness_errors.load(Relaxed),
            witness_requests: s.witness_requests.load(Relaxed),
            witness_broadcasts: s.witness_broadcasts.load(Relaxed),
            lease_errors: s.lease_errors.load(Relaxed),
            loop_stale: s.loop_stale.load(Relaxed),
            work_max_us: s.max_work_us.load(Relaxed),
            long_work: s.long_work.load(Relaxed),
        }
    }
}

/// State shared by the threads and the async side.
struct Shared {
    signer: Signer,
    templates: Vec<TemplateCell>,
    /// Bumped by every publish.
    generation: AtomicU64,
    stop: AtomicBool,
    /// CLOCK_MONOTONIC ns at which the decision loop last said it is alive.
    loop_alive_ns: AtomicU64,
    /// Per link: highest seq sent, and the generation it carried.
    sent_seq: Vec<AtomicU64>,
    sent_gen: Vec<AtomicU64>,
    /// Per link: witness slot + 1 last sent (0 = none).
    witness_sent: Vec<AtomicU64>,
    /// Per link: the last witness request (when, whether unicast) and its
    /// unicast strikes (see [`next_witness_ask`]).
    witness_asks: Vec<WitnessAsks>,
    /// The kernel's lease and beats (none in tests without a kernel).
    maps: Option<SenderMaps>,
    lease_ns: u64,
    /// One more than the last slot whose lateness was recorded (0 = none):
    /// recorded once per slot whether its sends succeeded or not (a link
    /// whose sends fail is not a stalled sender).
    recorded_slots: AtomicU64,
    stats: Arc<SenderStats>,
    /// The common start of every grid.
    start: Instant,
    interval: Duration,
    /// Sender threads.
    threads: u64,
}

pub struct Senders {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The CPUs this process may run on (at most [`MAX_SENDERS`]).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size for the calling thread (pid 0).
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` was filled by the kernel; index within CPU_SETSIZE.
        .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
        .take(MAX_SENDERS)
        .collect()
}

/// How many sender threads `threads` (0 = one per CPU) gives here.
pub fn thread_count(threads: usize) -> usize {
    match threads {
        0 => allowed_cpus().len(),
        k => k.min(MAX_SENDERS),
    }
    .max(1)
}

impl Senders {
    /// Starts the threads. `templates` are the first probes (one per link).
    pub fn spawn(
        cfg: SenderConfig,
        signer: Signer,
        links: Vec<SenderLink>,
        templates: &[Template],
        maps: Option<SenderMaps>,
        stats: Arc<SenderStats>,
    ) -> std::io::Result<Self> {
        let n = links.len();
        let shared = Arc::new(Shared {
            signer,
            templates: templates.iter().map(TemplateCell::new).collect(),
            generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            loop_alive_ns: AtomicU64::new(monotonic_now_ns()),
            sent_seq: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sent_gen: (0..n).map(|_| AtomicU64::new(0)).collect(),
            witness_sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            witness_asks: (0..n).map(|_| WitnessAsks::default()).collect(),
            maps,
            lease_ns: u64::try_from(cfg.lease.as_nanos()).unwrap_or(u64::MAX),
            recorded_slots: AtomicU64::new(0),
            stats,
            start: Instant::now(),
            interval: cfg.interval.max(Duration::from_micros(100)),
            threads: thread_count(cfg.threads) as u64,
        });
        let cpus = allowed_cpus();
        let count = shared.threads as usize;
        let links = Arc::new(links);
        let mut threads = Vec::with_capacity(count);
        for j in 0..count {
            let cpu = cpus.get(j % cpus.len().max(1)).copied();
            let for_thread = shared.clone();
            let links = links.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ha-probe-{j}"))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        prepare_thread(cpu, cfg.rt_priority, &for_thread.stats);
                        run(&links, &for_thread, j);
                    })?,
            );
        }
        shared.stats.threads.store(count as u64, Ordering::Relaxed);
        Ok(Senders { shared, threads })
    }

    /// New probe templates (one per link): sent at once, then every slot.
    pub fn publish(&self, templates: &[Template]) {
        for (cell, t) in self.shared.templates.iter().zip(templates) {
            cell.store(t);
        }
        self.shared.generation.fetch_add(1, Ordering::Release);
        for t in &self.threads {
            t.thread().unpark();
        }
    }

    /// The decision loop is alive and has taken in what it was given.
    pub fn loop_alive(&self) {
        self.shared
            .loop_alive_ns
            .store(monotonic_now_ns(), Ordering::Release);
    }

    /// A handle the decision loop can mark itself alive with.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat(self.shared.clone())
    }

    pub fn stats(&self) -> &Arc<SenderStats> {
        &self.shared.stats
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Marks the decision loop alive (see [`LOOP_STALE`]).
#[derive(Clone)]
pub struct Heartbeat(Arc<Shared>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0
            .loop_alive_ns
            .store(monotonic_now_ns(), Ordering::Release);
    }
}

/// Pins the calling thread to `cpu` and makes it SCHED_FIFO; failures are
/// counted (the daemon reports them), never fatal.
fn prepare_thread(cpu: Option<usize>, priority: u8, stats: &SenderStats) {
    if let Some(cpu) = cpu {
        // SAFETY: cpu_set_t is plain data; CPU_SET within CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` < CPU_SETSIZE (it came from sched_getaffinity).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: valid set for the calling thread (pid 0).
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0
        {
            stats.pinned_threads.fetch_add(1, Ordering::Relaxed);
        }
    }
    if priority > 0 && set_realtime(priority).is_ok() {
        stats.realtime_threads.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the calling thread under SCHED_FIFO at `priority` (1..=99).
pub fn set_realtime(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The start of slot `k`. In nanoseconds: a `u32` slot count would stop
/// growing after 2^32 slots (99 days at 2 ms) and the threads would spin.
fn slot_time(shared: &Shared, k: u64) -> Instant {
    // At most u64::MAX ns (584 years) past the start: no Instant overflow.
    shared.start + slot_offset(shared.interval, k)
}

fn slot_offset(interval: Duration, k: u64) -> Duration {
    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(k.saturating_mul(interval_ns))
}

fn current_slot(shared: &Shared, now: Instant) -> u64 {
    let since = now.saturating_duration_since(shared.start).as_nanos();
    u64::try_from(since / shared.interval.as_nanos().max(1)).unwrap_or(u64::MAX)
}

/// How long after a slot's start thread 1 wakes (thread j: j times this):
/// longer than thread 0 usually takes to wake and send (p99 <= 50 us
/// here), much shorter than a slot, and all threads within its first
/// quarter.
pub fn stagger(interval: Duration, threads: u64) -> Duration {
    let quarter = interval / 4 / u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
    quarter.min(Duration::from_micros(250))
}

fn run(links: &[SenderLink], shared: &Shared, thread: usize) {
    let n = links.len();
    let offset = stagger(shared.interval, shared.threads)
        .saturating_mul(u32::try_from(thread).unwrap_or(u32::MAX));
    let beat_gap_ns =
        agent_ebpf::beat_gap(u64::try_from(shared.interval.as_nanos()).unwrap_or(u64::MAX));
    let beat_key = u32::try_from(thread).unwrap_or(u32::MAX);
    let mut beat = agent_ebpf::SenderBeat::default();
    // When this thread meant to run (the start of the slot it slept for).
    let mut due = Instant::now();
    // This thread's copy of the probes: sent when a torn read gives up.
    let mut local: [Option<Template>; agent_ebpf::MAX_LINKS as usize] = [None; 4];
    let mut seen_gen = 0u64;
    let slots_per_second =
        (Duration::from_secs(1).as_nanos() / shared.interval.as_nanos().max(1)).max(1) as u64;
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let anchor_ns = monotonic_now_ns();
        let slot = current_slot(shared, now);
        let alive = anchor_ns.saturating_sub(shared.loop_alive_ns.load(Ordering::Acquire))
            < LOOP_STALE.as_nanos() as u64;
        if let Some(len) = machine_stall(
            now.saturating_duration_since(due),
            shared.interval,
            shared.recorded_slots.load(Ordering::Acquire),
            current_slot(shared, due),
        ) {
            // In this thread's own beat (one writer: the time and the
            // length cannot come from two threads), stored below even when
            // the stall makes the decision loop look stale: the kernel's
            // grace for our own stalls reads it.
            beat = beat
                .with_machine_stall(anchor_ns, u64::try_from(len.as_nanos()).unwrap_or(u64::MAX));
        }
        if !alive {
            // The decision loop hangs: fall silent so the peer takes over,
            // and let the lease lapse so our kernel stops serving the VIPs.
            shared.stats.loop_stale.fetch_add(1, Ordering::Relaxed);
        } else {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen_gen {
                for (i, cell) in shared.templates.iter().enumerate().take(n) {
                    if let Some(t) = cell.load() {
                        local[i] = Some(t);
                    }
                }
                seen_gen = generation;
            }
            let late = now.saturating_duration_since(slot_time(shared, slot));
            let report = lateness_units(shared.stats.recent_late().max(late));
            let mut attempted = false;
            for (i, link) in links.iter().enumerate() {
                let Some(t) = local[i].as_ref() else {
                    continue;
                };
                let regular = slot << SEQ_SHIFT;
                let last = shared.sent_seq[i].load(Ordering::Acquire);
                let changed = shared.sent_gen[i].load(Ordering::Acquire) < seen_gen;
                let seq = if last < regular {
                    regular
                } else if changed && (last + 1) >> SEQ_SHIFT == slot {
                    // The control state changed within the slot: send it now.
                    last + 1
                } else {
                    continue;
                };
                let next = slot.saturating_add(1);
                if i == 0 && seq == regular {
                    let recorded = shared.recorded_slots.fetch_max(next, Ordering::AcqRel);
                    if recorded < next {
                        record_slot(shared, slot, recorded, now);
                        if slot.is_multiple_of(slots_per_second) {
                            shared.stats.roll_window();
                        }
                    }
                }
                let probe = shared.signer.finish(t, seq, report);
                let Some(socket) = link.sockets.get(thread % link.sockets.len().max(1)) else {
                    continue;
                };
                attempted = true;
                match send(socket, &probe) {
                    Ok(()) => {
                        shared.sent_seq[i].fetch_max(seq, Ordering::AcqRel);
                        shared.sent_gen[i].fetch_max(seen_gen, Ordering::AcqRel);
                    }
                    Err(e) => {
                        if let Some(c) = shared.stats.send_errors.get(i) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(c) = shared.stats.last_errno.get(i) {
                            c.store(e.raw_os_error().unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                }
            }
            // Renewed when this thread did the slot's sends (whether the
            // network took them or not: a dead peer's unresolved address
            // fails sends, and the holder must keep serving then).
            // The kernel's deadline only grows: a thread that read the
            // clock before a sibling's renewal shortens nothing.
            let until = anchor_ns.saturating_add(shared.lease_ns);
            if attempted {
                if let Some(maps) = &shared.maps {
                    if !maps.renew(until, anchor_ns) {
                        shared.stats.lease_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            send_witness_requests(links, shared, now, anchor_ns);
        }
        // After the sends, which matter more. A beat later than the gap
        // ends a stall of this CPU (the kernel's `just_ended`).
        beat = beat.next(anchor_ns, beat_gap_ns);
        if let Some(maps) = &shared.maps {
            if !maps.beat(beat_key, &beat) {
                shared.stats.lease_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wake = slot_time(shared, slot.saturating_add(1)) + offset;
        due = wake;
        let woke = now;
        let now = Instant::now();
        shared
            .stats
            .record_work(now.saturating_duration_since(woke), shared.interval);
        if wake > now {
            // publish() and shutdown() end this early.
            std::thread::park_timeout(wake - now);
        }
    }
}

/// How long this machine stalled, as a thread that woke `woke_late` after
/// the start of slot `due_slot` sees it (`recorded`: one more than the last
/// slot any thread sent). A stall only when the thread was not scheduled
/// for more than a slot and no sibling sent the slot it was due for: then
/// every CPU was held (the peer's probes may be queued behind it too). A
/// stall of this CPU alone, while a sibling sent, is the beats' business
/// (grace only while it lasts): counted by its length, it stretched the
/// detections that followed it (link-down failovers took up to 43 ms
/// instead of 8-10).
fn machine_stall(
    woke_late: Duration,
    interval: Duration,
    recorded: u64,
    due_slot: u64,
) -> Option<Duration> {
    (woke_late > interval && recorded <= due_slot).then_some(woke_late)
}

/// Records the lateness of slot `slot` (and of the slots before it that no
/// thread sent: they are as late as this send, seen from the peer).
/// `recorded` is one more than the last slot recorded (0 = none).
fn record_slot(shared: &Shared, slot: u64, recorded: u64, now: Instant) {
    let stats = &shared.stats;
    if recorded != 0 && slot > recorded {
        let missed = slot - recorded;
        stats.missed.fetch_add(missed, Ordering::Relaxed);
        // Bounded: after a very long stall the oldest are all "very late".
        for k in (recorded..slot).rev().take(64) {
            stats.record_late(now.saturating_duration_since(slot_time(shared, k)));
        }
    }
    stats.slots.fetch_add(1, Ordering::Relaxed);
    stats.record_late(now.saturating_duration_since(slot_time(shared, slot)));
}

/// Unanswered unicast requests in a row (each found again by broadcast)
/// after which a link's witness is asked by broadcast for a while: a
/// witness that ignores unicast ARP would otherwise answer every other
/// request, and be heard half as often as its detection assumes.
const UNICAST_STRIKES: u32 = 3;
/// Requests sent by broadcast after the strikes before unicast is tried
/// again (about a second at 16 ms): random loss strikes out too (three
/// lost unicasts in a row, a few times an hour at 2% loss), and must not
/// cost the unicast for good.
const UNICAST_BACKOFF: u32 = 64;

/// A link's last witness request, as the senders keep it (atomics: any
/// thread may send the request; a race costs one request's choice).
#[derive(Default)]
struct WitnessAsks {
    at_ns: AtomicU64,
    unicast: AtomicBool,
    strikes: AtomicU32,
}

/// A link's last witness request: when (CLOCK_MONOTONIC, 0 = none),
/// whether it went by unicast, and the unanswered unicasts in a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LastAsk {
    at_ns: u64,
    unicast: bool,
    strikes: u32,
}

/// Where the witness request of `now_ns` goes (None: broadcast), and the
/// strikes after it: the MAC that answered the request before (see
/// [`agent_ebpf::WitnessSeen::unicast_to`]), unless unicasts went
/// unanswered [`UNICAST_STRIKES`] times in a row; then broadcast for
/// [`UNICAST_BACKOFF`] requests, and one more unicast try (one more miss
/// backs off again). An answered unicast clears the strikes.
fn next_witness_ask(
    seen: agent_ebpf::WitnessSeen,
    last: LastAsk,
    now_ns: u64,
    interval_ns: u64,
) -> (Option<[u8; 6]>, u32) {
    let mut strikes = if last.at_ns != 0 && last.unicast {
        if seen.last_ns >= last.at_ns {
            0
        } else {
            last.strikes.saturating_add(1)
        }
    } else if last.strikes >= UNICAST_STRIKES {
        // Backing off: one more broadcast.
        last.strikes.saturating_add(1)
    } else {
        last.strikes
    };
    if strikes >= UNICAST_STRIKES + UNICAST_BACKOFF {
        strikes = UNICAST_STRIKES - 1;
    }
    let to = if strikes >= UNICAST_STRIKES {
        None
    } else {
        seen.unicast_to(now_ns, interval_ns)
    };
    (to, strikes)
}

/// Asks each link's witness, once per witness interval: by unicast to the
/// MAC that answered the request before, else by broadcast (see
/// [`next_witness_ask`]). `now_ns`: CLOCK_MONOTONIC, as the kernel stamps
/// the replies.
fn send_witness_requests(links: &[SenderLink], shared: &Shared, now: Instant, now_ns: u64) {
    for (i, link) in links.iter().enumerate() {
        let Some(w) = link.witness.as_ref() else {
            continue;
        };
        let since = now.saturating_duration_since(shared.start).as_nanos();
        let k = u64::try_from(since / w.interval.as_nanos().max(1)).unwrap_or(u64::MAX);
        if shared.witness_sent[i].load(Ordering::Acquire) > k {
            continue;
        }
        let interval_ns = u64::try_from(w.interval.as_nanos()).unwrap_or(u64::MAX);
        // Without the kernel's maps (tests), never heard: broadcast.
        let seen = shared
            .maps
            .as_ref()
            .map(|m| m.witness_seen(i))
            .unwrap_or_default();
        let asks = shared.witness_asks.get(i);
        let last = asks.map_or_else(LastAsk::default, |a| LastAsk {
            at_ns: a.at_ns.load(Ordering::Acquire),
            unicast: a.unicast.load(Ordering::Acquire),
            strikes: a.strikes.load(Ordering::Acquire),
        });
        let (to, strikes) = next_witness_ask(seen, last, now_ns, interval_ns);
        if let Some(asks) = asks {
            asks.strikes.store(strikes, Ordering::Release);
            asks.unicast.store(to.is_some(), Ordering::Release);
            asks.at_ns.store(now_ns, Ordering::Release);
        }
        if w.arp.send_request_raw(w.local_ip, w.target, to).is_err() {
            shared.stats.witness_errors.fetch_add(1, Ordering::Relaxed);
        }
        shared
            .stats
            .witness_requests
            .fetch_add(1, Ordering::Relaxed);
        if to.is_none() {
            shared
                .stats
                .witness_broadcasts
                .fetch_add(1, Ordering::Relaxed);
        }
        shared.witness_sent[i].fetch_max(k + 1, Ordering::AcqRel);
    }
}

/// Sends on a connected socket. An ICMP port-unreachable from the peer (its
/// agent not running yet) is reported by the next send, which then did not
/// go out: that is not our failure, so send again once.
fn send(socket: &UdpSocket, probe: &[u8]) -> std::io::Result<()> {
    match socket.send(probe) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            socket.send(probe).map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::election::{Control, Role};
    use crate::protocol::{decode, Key, Origin};

    #[test]
    fn a_witness_that_ignores_unicast_is_asked_by_broadcast_after_three_strikes() {
        const MS: u64 = 1_000_000;
        let i = 16 * MS;
        let mac = [2, 0, 0, 0, 0, 1];
        let heard = |at: u64| agent_ebpf::WitnessSeen {
            last_ns: at,
            mac: agent_ebpf::mac_to_word(mac),
        };
        // The request at `now`, after a reply heard at `reply` and the last
        // request (`at`, by unicast or not, with `strikes`).
        let ask = |reply: u64, at: u64, unicast: bool, strikes: u32, now: u64| {
            let last = LastAsk {
                at_ns: at,
                unicast,
                strikes,
            };
            next_witness_ask(heard(reply), last, now, i)
        };
        // Never asked: what the kernel heard decides.
        assert_eq!(ask(0, 0, false, 0, 16 * MS), (None, 0));
        // A broadcast at 100 answered: unicast at 116.
        assert_eq!(
            ask(100 * MS + 50_000, 100 * MS, false, 0, 116 * MS),
            (Some(mac), 0)
        );
        // That unicast answered: unicast again, no strike.
        assert_eq!(
            ask(116 * MS + 50_000, 116 * MS, true, 2, 132 * MS),
            (Some(mac), 0)
        );
        // Unanswered: a strike, and broadcast (the reply is 32 ms old).
        assert_eq!(
            ask(100 * MS + 50_000, 116 * MS, true, 0, 132 * MS),
            (None, 1)
        );
        // The broadcast after it answered: unicast again, the strike kept.
        assert_eq!(
            ask(132 * MS + 50_000, 132 * MS, false, 1, 148 * MS),
            (Some(mac), 1)
        );
        // The third unanswered unicast in a row: broadcast, however fresh
        // the replies to the broadcasts, for the backoff.
        assert_eq!(
            ask(132 * MS + 50_000, 148 * MS, true, 2, 164 * MS),
            (None, 3)
        );
        // Broadcasts at 164 ms and after, each answered at once.
        let (mut now, mut strikes) = (164 * MS, 3);
        let mut broadcast = 1;
        let tried = loop {
            let (to, next) = ask(now + 50_000, now, false, strikes, now + i);
            now += i;
            if to.is_some() {
                break next;
            }
            broadcast += 1;
            assert!(broadcast < 1_000, "never tried unicast again");
            strikes = next;
        };
        assert_eq!(broadcast, UNICAST_BACKOFF);
        // One more try: a miss backs off again at once, an answer clears.
        assert_eq!(tried, UNICAST_STRIKES - 1);
        assert_eq!(
            ask(now - i, now, true, tried, now + i),
            (None, UNICAST_STRIKES)
        );
        assert_eq!(ask(now + 50_000, now, true, tried, now + i), (Some(mac), 0));
    }

    #[test]
    fn only_a_slot_nobody_sent_in_time_is_a_stall_of_the_machine() {
        let ms = Duration::from_millis;
        // Woke 20 ms after slot 100 was due, and the last slot sent was 99
        // (recorded = 100): nobody sent it, the whole machine stalled.
        assert_eq!(machine_stall(ms(20), ms(2), 100, 100), Some(ms(20)));
        // A sibling sent slots 100..=109 meanwhile: only this CPU stalled.
        assert_eq!(machine_stall(ms(20), ms(2), 110, 100), None);
        // Late, but within the slot: no stall.
        assert_eq!(machine_stall(ms(1), ms(2), 100, 100), None);
    }

    #[test]
    fn the_grid_keeps_growing_past_two_to_the_32_slots() {
        // 99 days at 2 ms: a u32 slot count would stop the grid there and
        // every sender would spin on a wake time in the past.
        let ms2 = Duration::from_millis(2);
        let k = u64::from(u32::MAX) + 10;
        assert_eq!(slot_offset(ms2, k + 1) - slot_offset(ms2, k), ms2);
        assert_eq!(slot_offset(ms2, u64::MAX), Duration::from_nanos(u64::MAX));
    }

    pub(super) fn template(ctl_gen: u32) -> Template {
        let c = Control {
            epoch: 3,
            router_id: 1,
            ..Control::for_tests(Role::Backup)
        };
        let o = Origin {
            sender: Ipv4Addr::new(198, 51, 100, 11),
            token: 7,
            boot: 1,
            node: "n".into(),
            lease_ms: 24,
        };
        Template::new(&o, 0, ctl_gen, 0, &c)
    }

    #[test]
    fn the_seqlock_hands_over_whole_templates() {
        let cell = Arc::new(TemplateCell::new(&template(1)));
        let writer = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for g in 2..20_000u32 {
                    cell.store(&template(g));
                }
            })
        };
        let signer = Signer::new(&Key::from_bytes(b"0123456789abcdef"));
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            if let Some(t) = cell.load() {
                // A torn template would not be one of the written ones.
                let p = signer.finish(&t, 1, 0);
                let d = decode(&signer, &p).expect("a whole template");
                assert_eq!(
                    Template::new(
                        &Origin {
                            sender: Ipv4Addr::new(198, 51, 100, 11),
                            token: 7,
                            boot: 1,
                            node: "n".into(),
                            lease_ms: 24
                        },
                        0,
                        d.ctl_gen,
                        0,
                        &d.control
                    ),
                    t
                );
                reads += 1;
            }
        }
        writer.join().unwrap();
        assert_eq!(cell.load(), Some(template(19_999)));
    }

    #[test]
    fn siblings_wake_staggered_within_the_slots_first_quarter() {
        let ms = Duration::from_millis;
        assert_eq!(stagger(ms(2), 2), Duration::from_micros(250));
        assert_eq!(stagger(ms(1), 2), Duration::from_micros(125));
        assert_eq!(
            stagger(ms(1), 4),
            Duration::from_micros(62) + Duration::from_nanos(500)
        );
        for (interval, threads) in [(ms(1), 4), (ms(2), 2), (ms(4), 3), (ms(100), 4)] {
            let last = stagger(interval, threads) * u32::try_from(threads - 1).unwrap();
            assert!(last <= interval / 4, "{interval:?} x {threads}");
            assert!(stagger(interval, threads) > Duration::ZERO);
        }
    }

    #[test]
    fn quantiles_come_from_the_histogram() {
        let s = SenderStats::default();
        assert_eq!(s.quantile_us(0.5), None);
        for _ in 0..98 {
            s.record_late(Duration::from_micros(40));
        }
        s.record_late(Duration::from_micros(900));
        s.record_late(Duration::from_millis(20));
        assert_eq!(s.quantile_us(0.5), Some(50));
        assert_eq!(s.quantile_us(0.99), Some(1_000));
        assert_eq!(s.quantile_us(1.0), Some(24_000));
        assert_eq!(s.max_late_us.load(Ordering::Relaxed), 20_000);
        assert_eq!(s.recent_late(), Duration::from_millis(20));
        s.roll_window();
        assert_eq!(s.recent_late(), Duration::from_millis(20));
        s.roll_window();
        assert_eq!(s.recent_late(), Duration::ZERO);
    }

    #[test]
    fn work_longer_than_an_interval_is_counted_and_its_maximum_kept() {
        let s = SenderStats::default();
        s.record_work(Duration::from_micros(30), Duration::from_millis(2));
        s.record_work(Duration::from_millis(2), Duration::from_millis(2));
        assert_eq!(s.long_work.load(Ordering::Relaxed), 0);
        s.record_work(Duration::from_millis(7), Duration::from_millis(2));
        s.record_work(Duration::from_micros(50), Duration::from_millis(2));
        assert_eq!(s.long_work.load(Ordering::Relaxed), 1);
        assert_eq!(s.max_work_us.load(Ordering::Relaxed), 7_000);
        assert_eq!(s.recent_work(), Duration::from_millis(7));
        s.roll_window();
        s.roll_window();
        assert_eq!(s.recent_work(), Duration::ZERO);
        let st = s.snapshot();
        assert_eq!((st.work_max_us, st.long_work), (7_000, 1));
    }
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::protocol::Key;

    fn received(rx: &UdpSocket, within: Duration) -> usize {
        let end = Instant::now() + within;
        let mut n = 0;
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            if rx.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_hung_decision_loop_silences_the_senders() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        tx.set_nonblocking(true).unwrap();
        let senders = Senders::spawn(
            SenderConfig {
                interval: Duration::from_millis(2),
                rt_priority: 0,
                threads: 2,
                lease: Duration::from_millis(24),
            },
            Signer::new(&Key::from_bytes(b"0123456789abcdef")),
            vec![SenderLink {
                sockets: vec![tx.try_clone().unwrap(), tx],
                witness: None,
            }],
            &[super::tests::template(1)],
            None,
            Arc::new(SenderStats::default()),
        )
        .unwrap();
        let beat = senders.heartbeat();
        // Alive: probes every slot.
        let end = Instant::now() + Duration::from_millis(200);
        let mut alive = 0;
        while Instant::now() < end {
            beat.beat();
            alive += received(&rx, Duration::from_millis(10));
        }
        assert!(alive > 20, "only {alive} probes while the loop lived");
        // The loop hangs: once LOOP_STALE has passed, nothing more leaves.
        std::thread::sleep(LOOP_STALE + Duration::from_millis(50));
        while rx.recv(&mut [0u8; 256]).is_ok() {}
        assert_eq!(received(&rx, Duration::from_millis(100)), 0);
        assert!(senders.stats().loop_stale.load(Ordering::Relaxed) > 0);
        // It lives again: probes again.
        let end = Instant::now() + Duration::from_millis(100);
        let mut again = 0;
        while Instant::now() < end {
            beat.beat();
            again += received(&rx, Duration::from_millis(10));
        }
        assert!(again > 0);
    }
}
