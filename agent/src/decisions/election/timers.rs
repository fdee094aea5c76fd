//! The election's deadlines as one table (in the way of quinn-proto's
//! `TimerTable`): one slot per kind, `next` is the earliest, and the
//! election dispatches expired ones in one place (`handle_timeout`).

use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// A starting node listens for its peer until then.
    Init,
    /// A holder that reaches neither the peer nor a witness fences itself then.
    Fence,
    /// A higher-priority backup (preemption on) asks for the VIPs then.
    Preempt,
    /// The weaker backup may take VIPs nobody holds then.
    Contest,
    /// A holder meeting its fresh replacement yields then if it was not handed back.
    Conflict,
    /// End of the reclaim window of our takeover from a silent holder.
    Reclaim,
    /// A provisional takeover becomes a real failover then (reclaim window
    /// over and the old holder's lease surely lapsed).
    Settle,
    /// A shutdown leaves then, handed over or not.
    Shutdown,
    /// We yielded: not eligible until then.
    Yield,
    /// A control message counts as hearing the peer until then.
    Heard,
    /// A carrier loss on some links is acted on then (see `carrier_settle`).
    Carrier,
    /// A backup's switchover request lapses then if the holder has not
    /// yielded (an old request must not preempt a healthy holder later).
    Switchover,
}

impl Timer {
    pub(super) const ALL: [Timer; 12] = [
        Timer::Init,
        Timer::Fence,
        Timer::Preempt,
        Timer::Contest,
        Timer::Conflict,
        Timer::Reclaim,
        Timer::Settle,
        Timer::Shutdown,
        Timer::Yield,
        Timer::Heard,
        Timer::Carrier,
        Timer::Switchover,
    ];
}

#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable([Option<Instant>; Timer::ALL.len()]);

impl TimerTable {
    pub(super) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }

    /// Sets `t` unless it is already set; returns its deadline.
    pub(super) fn get_or_set(&mut self, t: Timer, at: Instant) -> Instant {
        *self.0[t as usize].get_or_insert(at)
    }

    pub(super) fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    pub(super) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    pub(super) fn is_set(&self, t: Timer) -> bool {
        self.0[t as usize].is_some()
    }

    /// Set and due at `now`.
    pub(super) fn expired(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| now >= at)
    }

    /// Set and not yet due at `now`.
    pub(super) fn running(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| now < at)
    }

    /// The earliest deadline among the timers `wanted` keeps.
    pub(super) fn next(&self, wanted: impl Fn(Timer) -> bool) -> Option<Instant> {
        Timer::ALL
            .iter()
            .filter(|t| wanted(**t))
            .filter_map(|t| self.get(*t))
            .min()
    }
}
