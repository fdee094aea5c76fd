//! "Listed" is not "serving": which wanted backends Atlas actually uses, as
//! a sans-IO state machine fed with every table the reconciler reads.
//!
//! A backend added with `ADD MASTER`/`ADD SLAVE` (or re-onlined) is
//! `unknown` until Atlas's checker thread probes it, every 4 s; Atlas routes
//! nothing to it until then (writes through the proxy fail with `ERROR
//! 2013` while the rw backend is not `up`). No admin command makes the
//! checker run sooner (`SET ONLINE` only sets `unknown` again), so that
//! 0-4 s is a floor the agent can only measure and report:
//!
//! - for each wanted backend, when it was first seen listed and when first
//!   seen `up`, hence its time to serving;
//! - an alarm when the rw backend has not been `up` for longer than a bound
//!   (missing, `unknown`, `down` or `offline` alike);
//! - the next time the table should be read: soon while a wanted backend is
//!   listed and `unknown` (so the time to serving is measured, and the
//!   agent reports in sync as soon as the rw backend serves), and when the
//!   alarm would fire.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::reconcile::Desired;
use super::table::{Backend, Kind, State};

/// How often the table is read while a wanted backend is listed `unknown`.
pub const SERVING_POLL: Duration = Duration::from_millis(100);

/// What changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A wanted backend became `up`; `after` is from when it was first
    /// seen listed (None: it was already up when first seen).
    Serving {
        address: SocketAddrV4,
        kind: Kind,
        after: Option<Duration>,
    },
    /// The rw backend has not been up for longer than the bound.
    RwAlarm {
        address: SocketAddrV4,
        state: Option<State>,
        for_: Duration,
    },
    /// It is up again after an alarm.
    RwRecovered {
        address: SocketAddrV4,
        after: Duration,
    },
}

/// One wanted backend as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub address: SocketAddrV4,
    pub kind: Kind,
    /// Its state in the last table read; None: not listed.
    pub state: Option<State>,
    /// When it was first seen listed in its current stint.
    pub listed_since: Option<Instant>,
    /// When it was first seen `up` in that stint (None: not serving).
    pub up_since: Option<Instant>,
    /// Listed to up, the last time it came up while the agent watched.
    pub time_to_serving: Option<Duration>,
}

impl Entry {
    pub fn serving(&self) -> bool {
        self.state == Some(State::Up)
    }
}

#[derive(Debug, Clone)]
pub struct Serving {
    bound: Duration,
    entries: BTreeMap<(SocketAddrV4, Kind), Entry>,
    /// Since when the wanted rw backend has not been seen up.
    rw_not_up_since: Option<Instant>,
    alarmed: bool,
}

impl Serving {
    pub fn new(rw_alarm_bound: Duration) -> Serving {
        Serving {
            bound: rw_alarm_bound,
            entries: BTreeMap::new(),
            rw_not_up_since: None,
            alarmed: false,
        }
    }

    /// A table read at `now`, towards `desired` (None: nothing wanted, nothing tracked).
    pub fn observe(
        &mut self,
        now: Instant,
        table: &[Backend],
        desired: Option<&Desired>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(d) = desired else {
            self.entries.clear();
            self.rw_not_up_since = None;
            self.alarmed = false;
            return events;
        };
        let wanted: Vec<(SocketAddrV4, Kind)> = std::iter::once((d.rw, Kind::Rw))
            .chain(d.ro.iter().map(|&a| (a, Kind::Ro)))
            .collect();
        self.entries.retain(|k, _| wanted.contains(k));
        for &(address, kind) in &wanted {
            // A duplicate listing counts once: the first (Atlas uses it first).
            let state = table
                .iter()
                .find(|b| b.address == address && b.kind == kind)
                .map(|b| b.state);
            let is_new = !self.entries.contains_key(&(address, kind));
            let e = self.entries.entry((address, kind)).or_insert(Entry {
                address,
                kind,
                state: None,
                listed_since: None,
                up_since: None,
                time_to_serving: None,
            });
            match state {
                None => {
                    e.listed_since = None;
                    e.up_since = None;
                }
                Some(s) => {
                    let newly_listed = e.listed_since.is_none();
                    if newly_listed {
                        e.listed_since = Some(now);
                    }
                    if s == State::Up && e.up_since.is_none() {
                        e.up_since = Some(now);
                        // Already up when first seen: how long it took is unknown.
                        let after = (!(newly_listed && is_new))
                            .then(|| e.listed_since.map(|l| now.saturating_duration_since(l)))
                            .flatten();
                        if after.is_some() {
                            e.time_to_serving = after;
                        }
                        events.push(Event::Serving {
                            address,
                            kind,
                            after,
                        });
                    } else if s != State::Up {
                        e.up_since = None;
                    }
                }
            }
            e.state = state;
        }
        let rw = &self.entries[&(d.rw, Kind::Rw)];
        if rw.serving() {
            if let (true, Some(since)) = (self.alarmed, self.rw_not_up_since) {
                events.push(Event::RwRecovered {
                    address: d.rw,
                    after: now.saturating_duration_since(since),
                });
            }
            self.rw_not_up_since = None;
            self.alarmed = false;
        } else {
            let since = *self.rw_not_up_since.get_or_insert(now);
            let for_ = now.saturating_duration_since(since);
            if !self.alarmed && for_ > self.bound {
                self.alarmed = true;
                events.push(Event::RwAlarm {
                    address: d.rw,
                    state: rw.state,
                    for_,
                });
            }
        }
        events
    }

    /// When the table should be read again, if sooner than the period.
    pub fn next_read(&self, now: Instant) -> Option<Instant> {
        // Only `unknown` is waiting for the checker; `down` and `offline`
        // can last, and the period is soon enough for them.
        let waiting = self
            .entries
            .values()
            .any(|e| e.state == Some(State::Unknown));
        let poll = waiting.then_some(now + SERVING_POLL);
        let alarm = match (self.alarmed, self.rw_not_up_since) {
            (false, Some(since)) => Some((since + self.bound + Duration::from_millis(1)).max(now)),
            _ => None,
        };
        match (poll, alarm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every wanted backend, rw first.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.entries.values().cloned().collect();
        v.sort_by_key(|e| (e.kind != Kind::Rw, e.address));
        v
    }

    /// Since when the rw backend is not up, and whether that is an alarm.
    pub fn rw_not_up(&self) -> Option<(Instant, bool)> {
        self.rw_not_up_since.map(|s| (s, self.alarmed))
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn row(ndx: u32, addr: &str, state: State, kind: Kind) -> Backend {
        Backend {
            ndx,
            address: a(addr),
            state,
            kind,
        }
    }

    const RW: &str = "10.0.0.150:3306";
    const RO: &str = "10.0.0.2:3306";

    fn want(ro: bool) -> Desired {
        Desired {
            rw: a(RW),
            ro: if ro { vec![a(RO)] } else { vec![] },
        }
    }

    #[test]
    fn a_new_replica_is_listed_then_serving_and_the_time_is_measured() {
        let t0 = Instant::now();
        let mut s = Serving::new(Duration::from_secs(10));
        let rw_up = row(1, RW, State::Up, Kind::Rw);
        assert_eq!(
            s.observe(t0, &[rw_up], Some(&want(false))),
            vec![Event::Serving {
                address: a(RW),
                kind: Kind::Rw,
                after: None
            }],
            "already up at the first sight: no time to serving"
        );
        assert_eq!(s.next_read(t0), None);
        // ADD SLAVE: listed, unknown.
        let t1 = t0 + Duration::from_secs(1);
        let listed = [rw_up, row(2, RO, State::Unknown, Kind::Ro)];
        assert_eq!(s.observe(t1, &listed, Some(&want(true))), vec![]);
        assert_eq!(
            s.next_read(t1),
            Some(t1 + SERVING_POLL),
            "poll while not serving"
        );
        let ro = &s.entries()[1];
        assert_eq!((ro.state, ro.serving()), (Some(State::Unknown), false));
        // The checker marks it up 3.5 s later.
        let t2 = t1 + Duration::from_millis(3500);
        let up = [rw_up, row(2, RO, State::Up, Kind::Ro)];
        assert_eq!(
            s.observe(t2, &up, Some(&want(true))),
            vec![Event::Serving {
                address: a(RO),
                kind: Kind::Ro,
                after: Some(Duration::from_millis(3500))
            }]
        );
        assert_eq!(
            s.entries()[1].time_to_serving,
            Some(Duration::from_millis(3500))
        );
        assert_eq!(s.next_read(t2), None);
        // Removed at a failover: forgotten.
        s.observe(t2, &[rw_up], Some(&want(false)));
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn rw_not_up_past_the_bound_raises_one_alarm_then_recovers() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(10);
        let mut s = Serving::new(bound);
        let d = want(false);
        s.observe(t0, &[row(1, RW, State::Up, Kind::Rw)], Some(&d));
        // Removed by hand: not listed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.observe(t1, &[], Some(&d)), vec![]);
        assert_eq!(s.rw_not_up(), Some((t1, false)));
        // The alarm deadline is a read too (nothing listed to poll for).
        assert_eq!(s.next_read(t1), Some(t1 + bound + Duration::from_millis(1)));
        // Re-added, unknown, then down (the VIP's MySQL is gone).
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(
            s.observe(t2, &[row(1, RW, State::Unknown, Kind::Rw)], Some(&d)),
            vec![]
        );
        let t3 = t1 + Duration::from_secs(4);
        assert_eq!(
            s.observe(t3, &[row(1, RW, State::Down, Kind::Rw)], Some(&d)),
            vec![]
        );
        let t4 = t1 + bound + Duration::from_millis(1);
        assert_eq!(
            s.observe(t4, &[row(1, RW, State::Down, Kind::Rw)], Some(&d)),
            vec![Event::RwAlarm {
                address: a(RW),
                state: Some(State::Down),
                for_: bound + Duration::from_millis(1)
            }]
        );
        // Once only.
        assert_eq!(
            s.observe(t4 + bound, &[row(1, RW, State::Down, Kind::Rw)], Some(&d)),
            vec![]
        );
        let t5 = t4 + bound + Duration::from_secs(1);
        let ev = s.observe(t5, &[row(1, RW, State::Up, Kind::Rw)], Some(&d));
        assert_eq!(
            ev,
            vec![
                Event::Serving {
                    address: a(RW),
                    kind: Kind::Rw,
                    after: Some(t5 - t2)
                },
                Event::RwRecovered {
                    address: a(RW),
                    after: t5 - t1
                }
            ]
        );
        assert_eq!(s.rw_not_up(), None);
    }

    #[test]
    fn nothing_wanted_tracks_nothing() {
        let mut s = Serving::new(Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(s.observe(now, &[], None), vec![]);
        assert_eq!(s.next_read(now), None);
        assert!(s.entries().is_empty());
    }
}
