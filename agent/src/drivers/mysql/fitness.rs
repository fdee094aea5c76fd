//! Turns a stream of health probes into "may this node hold the VIPs?":
//! one failed probe is a blip, `down_handover_ms` of failures is an outage.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fitness {
    /// The local server answers.
    Fit,
    /// It has not answered for `down_for`, less than the threshold: keep the VIPs.
    Failing { down_for: Duration },
    /// Down for at least the threshold: hand the VIPs to a fit peer.
    Unfit { down_for: Duration },
}

impl Fitness {
    pub fn is_unfit(&self) -> bool {
        matches!(self, Fitness::Unfit { .. })
    }
}

/// Tracks how long the local server has been down.
#[derive(Debug, Clone)]
pub struct DownTracker {
    threshold: Duration,
    down_since: Option<Instant>,
}

impl DownTracker {
    pub fn new(threshold: Duration) -> Self {
        DownTracker {
            threshold,
            down_since: None,
        }
    }

    /// Records one probe result taken at `now`.
    pub fn observe(&mut self, up: bool, now: Instant) -> Fitness {
        if up {
            self.down_since = None;
            return Fitness::Fit;
        }
        let since = *self.down_since.get_or_insert(now);
        let down_for = now.saturating_duration_since(since);
        if down_for >= self.threshold {
            Fitness::Unfit { down_for }
        } else {
            Fitness::Failing { down_for }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_only_after_the_threshold_and_fit_again_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = DownTracker::new(ms(3000));
        assert_eq!(t.observe(true, t0), Fitness::Fit);
        assert_eq!(
            t.observe(false, t0 + ms(200)),
            Fitness::Failing { down_for: ms(0) }
        );
        assert_eq!(
            t.observe(false, t0 + ms(3000)),
            Fitness::Failing { down_for: ms(2800) }
        );
        assert!(t.observe(false, t0 + ms(3200)).is_unfit());
        assert_eq!(t.observe(true, t0 + ms(3400)), Fitness::Fit);
        // A new outage counts from its own start.
        assert!(!t.observe(false, t0 + ms(3600)).is_unfit());
    }
}
