//! Answering other hosts' claims of the VIPs we hold: at most one
//! gratuitous ARP round per `min`, with one summary for the log. A peer's
//! takeover burst claims every VIP at once (256 VIPs: 512 claims), and a
//! round per claim kept the decision loop busy past the senders' heartbeat.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// At most one round this often.
pub const REANNOUNCE_MIN: Duration = Duration::from_millis(50);

/// The claims a round answers: how many since the last round, and the
/// latest (link name, VIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub count: u64,
    pub last: Option<(String, Ipv4Addr)>,
}

#[derive(Debug)]
pub struct Reannounce {
    min: Duration,
    pending: bool,
    last_round: Option<Instant>,
    count: u64,
    last: Option<(String, Ipv4Addr)>,
}

impl Reannounce {
    pub fn new(min: Duration) -> Self {
        Reannounce {
            min,
            pending: false,
            last_round: None,
            count: 0,
            last: None,
        }
    }

    /// Another host claimed `vip` on `link` (counted for the summary).
    pub fn claimed(&mut self, link: String, vip: Ipv4Addr) {
        self.count = self.count.saturating_add(1);
        self.last = Some((link, vip));
    }

    /// The election wants the VIPs announced again.
    pub fn request(&mut self) {
        self.pending = true;
    }

    /// A round to send now, with the claims it answers; None while nothing
    /// is wanted or the last round was less than `min` ago (ask again at
    /// [`Self::next_due`]).
    pub fn poll(&mut self, now: Instant) -> Option<Claims> {
        if !self.pending || self.next_due().is_some_and(|t| now < t) {
            return None;
        }
        self.pending = false;
        self.last_round = Some(now);
        Some(Claims {
            count: std::mem::take(&mut self.count),
            last: self.last.take(),
        })
    }

    /// When a wanted round may go out (None: no round wanted, or at once).
    pub fn next_due(&self) -> Option<Instant> {
        self.last_round
            .filter(|_| self.pending)
            .map(|t| t + self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(50);

    fn vip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, n)
    }

    #[test]
    fn a_burst_of_claims_gets_one_round_per_interval() {
        let t0 = Instant::now();
        let mut r = Reannounce::new(MIN);
        assert_eq!(r.poll(t0), None, "nothing wanted");
        // A takeover burst: 512 claims, each making the election ask.
        for i in 0..512u32 {
            r.claimed("outside".into(), vip((i % 250) as u8));
            r.request();
        }
        let first = r.poll(t0).expect("the first round goes at once");
        assert_eq!(first.count, 512);
        assert_eq!(first.last, Some(("outside".into(), vip(11))));
        // More claims right after: held until the interval is over.
        r.claimed("inside".into(), vip(1));
        r.request();
        assert_eq!(r.poll(t0 + Duration::from_millis(10)), None);
        assert_eq!(r.next_due(), Some(t0 + MIN));
        let second = r.poll(t0 + MIN).expect("then one more round");
        assert_eq!(second.count, 1);
        assert_eq!(second.last, Some(("inside".into(), vip(1))));
        assert_eq!(r.poll(t0 + MIN * 3), None, "nothing wanted since");
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn a_request_without_claims_still_gets_its_round() {
        let t0 = Instant::now();
        let mut r = Reannounce::new(MIN);
        r.request();
        assert_eq!(
            r.poll(t0),
            Some(Claims {
                count: 0,
                last: None
            })
        );
    }
}
