//! The election thread's part of `ha-agent status`: roles, links and the
//! kernel's counters, VIPs, transitions, false alarms, the senders.

use std::time::{Instant, SystemTime};

use crate::drivers::ebpf::monotonic_now_ns;
use crate::operator::config::Vip;
use crate::operator::status::{
    self, millis, FalseAlarmStatus, LinkStatus, PeerStatus, Status, TransitionCount,
    TransitionStatus, VipStatus,
};

impl super::ElectionLoop {
    /// The election's part of the status (the services fill in theirs).
    pub(super) fn status(&self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let now_ns = monotonic_now_ns();
        let age = |ns: u64| (ns != 0).then(|| now_ns.saturating_sub(ns) / 1_000_000);
        let links = self
            .cfg
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let k = self.liveness.link_state(i as u32).unwrap_or_default();
                LinkStatus {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    carrier: self.election.carrier(i),
                    peer_up: self.election.link_up(i),
                    last_seen_ms_ago: age(k.peer_last_ns),
                    probes_received: k.rx,
                    probes_lost: k.lost,
                    probes_rejected: k.rejected,
                    probes_duplicate: k.duplicates,
                    lease_drops: k.lease_drops,
                    send_errors: self.stats.send_errors[i].load(Relaxed),
                    witness: l.witness.map(|w| w.to_string()),
                    witness_up: l.witness.map(|_| self.election.witness_up(i)),
                    witness_last_seen_ms_ago: l.witness.and_then(|_| age(k.witness_last_ns)),
                }
            })
            .collect();
        let vip_name = |v: &Vip| format!("{}/{}", v.address, v.prefix_len);
        let mut warnings = Vec::new();
        if !self.cfg.witnesses_configured() {
            warnings.push("no witness configured: a partition between the servers can produce two VIP holders".to_string());
        }
        if self.election.degraded() {
            let down: Vec<&str> = self
                .cfg
                .links
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.election.link_up(*i))
                .map(|(_, l)| l.name.as_str())
                .collect();
            warnings.push(format!(
                "peer silent on link(s) {}: degraded, no failover",
                down.join(", ")
            ));
        }
        let threads = self.stats.threads.load(Relaxed);
        let rt = self.stats.realtime_threads.load(Relaxed);
        if self.cfg.node.rt_priority > 0 && rt < threads {
            warnings.push(format!("{} of {threads} probe sender threads could not get SCHED_FIFO (CAP_SYS_NICE): a busy CPU can delay probes", threads - rt));
        }
        let transitions = self
            .election
            .history()
            .map(|t| {
                let wall = self
                    .transition_times
                    .iter()
                    .find(|(at, _)| *at == t.at)
                    .map_or_else(|| SystemTime::now() - t.at.elapsed(), |(_, w)| *w);
                TransitionStatus {
                    time: status::rfc3339(wall),
                    from: t.from.to_string(),
                    to: t.to.to_string(),
                    epoch: t.epoch,
                    reason: t.reason.clone(),
                }
            })
            .collect();
        Status {
            node: self.cfg.node.name.clone(),
            state: self.election.role().to_string(),
            epoch: self.election.epoch(),
            priority: self.cfg.node.priority,
            nopreempt: self.cfg.node.nopreempt,
            degraded: self.election.degraded(),
            provisional: self.election.provisional(),
            lease_ms: self.cfg.lease().as_millis() as u64,
            fencing_in_ms: self
                .election
                .fencing_at()
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            peer: self.election.peer_control().map(|c| PeerStatus {
                node: self.peer_node.clone(),
                state: c.role.to_string(),
                epoch: c.epoch,
                priority: c.priority,
                eligible: c.eligible,
                witness_reach: c.witness_reach,
                alive: self.election.peer_alive(),
                lateness_ms: self.election.peer_lateness().map_or(0.0, millis),
            }),
            links,
            vips: self
                .vips
                .iter()
                .map(|v| VipStatus {
                    address: vip_name(v),
                    interface: v.interface.clone(),
                    held: self.holds,
                })
                .collect(),
            vips_held: if self.holds {
                self.vips.iter().map(vip_name).collect()
            } else {
                Vec::new()
            },
            warnings,
            transitions,
            false_alarms: self.election.false_alarms(),
            recent_false_alarms: self
                .false_alarms
                .iter()
                .map(|(wall, f, own)| FalseAlarmStatus {
                    time: status::rfc3339(*wall),
                    epoch: f.epoch,
                    silence_ms: millis(f.silence),
                    held_ms: millis(f.held),
                    peer_lateness_ms: millis(f.peer_lateness),
                    own_lateness_ms: millis(*own),
                })
                .collect(),
            sender: Some(self.stats.snapshot()),
            probes_refused: self.rejected.values().sum::<u64>() + self.bad_probes,
            transition_counts: self
                .election
                .transition_counts()
                .map(|(from, to, cause, count)| TransitionCount {
                    from: from.to_string(),
                    to: to.to_string(),
                    reason: cause.as_str().to_string(),
                    count,
                })
                .collect(),
            hooks: Vec::new(),
            hook_totals: Vec::new(),
            database: None,
            atlas: None,
        }
    }
}
