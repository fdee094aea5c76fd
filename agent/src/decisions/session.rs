//! Which verified probes are the live peer speaking now (sans-IO).
//!
//! A probe that verifies (both MACs) may still be a replay: captured earlier
//! and sent again, onto another link, from another address, or from one of
//! the peer's earlier runs, or one of our own. This module decides, for each
//! verified probe and the link and source it arrived from:
//!
//! - identity: the source is the link's `peer_ip`, the probe names the link
//!   it arrived on and the peer's sender id (our own probes name ours);
//! - order within a session: `seq` grows strictly per link (a replay of
//!   anything already seen is refused), and the control state never goes
//!   back (a slower link's older probe does not undo a newer one);
//! - order of sessions: a session of an older boot than the newest seen is
//!   refused;
//! - freshness of a new session: it is accepted only once its probes echo
//!   our current session token. Our token is random per run, so no probe
//!   made before we started can carry it: a replayed old session never gets
//!   in, even right after our restart.
//!
//! Until the peer's session is accepted, we echo the newest session we have
//! seen (by boot), so a restarted peer can accept us and we it.

use std::net::Ipv4Addr;

use crate::protocol::Probe;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our own session token (random per run, never 0).
    pub our_token: u64,
    /// The peer's sender id: its first link's address.
    pub peer_id: Ipv4Addr,
    /// The peer's address on each link (index = link).
    pub peer_ips: Vec<Ipv4Addr>,
}

/// What to do with one verified probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The live peer's control: hand it to the election. `new_session`: the
    /// peer's session just changed (install its token in the kernel).
    Accept { new_session: bool },
    /// A newer session than any seen, not accepted yet (it does not echo us
    /// yet). `echo_changed`: our probes must now echo it.
    Pending { echo_changed: bool },
    /// Not the live peer: count it, log rate-limited, do nothing else.
    Reject(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("from {source_ip}, not the peer's address on this link")]
    WrongSource { source_ip: Ipv4Addr },
    #[error("names link {named}, arrived on link {arrived}")]
    WrongLink { named: u8, arrived: usize },
    #[error(
        "sender id {0} is not the peer's (our own probe reflected, or a third node with the key)"
    )]
    WrongSender(Ipv4Addr),
    #[error("seq {seq} not after {last} on this link: a copy or a replay")]
    Replay { seq: u64, last: u64 },
    #[error("control generation {got} older than {newest}: an old state, dropped")]
    StaleControl { got: u32, newest: u32 },
    #[error(
        "session of boot {boot}, older than the newest seen ({newest}): an old session replayed"
    )]
    OldSession { boot: u64, newest: u64 },
}

impl Rejection {
    /// A short name for counters and rate-limited logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::WrongSource { .. } => "wrong_source",
            Rejection::WrongLink { .. } => "wrong_link",
            Rejection::WrongSender(_) => "wrong_sender",
            Rejection::Replay { .. } => "replay",
            Rejection::StaleControl { .. } => "stale_control",
            Rejection::OldSession { .. } => "old_session",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Accepted {
    token: u64,
    boot: u64,
    /// Highest seq accepted per link.
    last_seq: Vec<Option<u64>>,
    newest_ctl_gen: u32,
}

#[derive(Clone, Debug)]
pub struct Sessions {
    cfg: SessionConfig,
    accepted: Option<Accepted>,
    /// The newest session seen (token, boot): what our probes echo.
    candidate: Option<(u64, u64)>,
}

impl Sessions {
    pub fn new(cfg: SessionConfig) -> Sessions {
        Sessions {
            cfg,
            accepted: None,
            candidate: None,
        }
    }

    /// The peer token our probes carry as `echo` (0 = none seen yet).
    pub fn echo(&self) -> u64 {
        self.candidate.map_or(0, |(t, _)| t)
    }

    /// The accepted peer session's token.
    pub fn accepted_token(&self) -> Option<u64> {
        self.accepted.as_ref().map(|a| a.token)
    }

    /// Sessions of an older boot than this are replays (0 = none known).
    pub fn min_boot(&self) -> u64 {
        self.candidate.map_or(0, |(_, b)| b)
    }

    pub fn on_probe(&mut self, link: usize, source: Ipv4Addr, p: &Probe) -> Verdict {
        match self.check(link, source, p) {
            Ok(v) => v,
            Err(r) => Verdict::Reject(r),
        }
    }

    fn check(&mut self, link: usize, source: Ipv4Addr, p: &Probe) -> Result<Verdict, Rejection> {
        if self.cfg.peer_ips.get(link) != Some(&source) {
            return Err(Rejection::WrongSource { source_ip: source });
        }
        if usize::from(p.link) != link {
            return Err(Rejection::WrongLink {
                named: p.link,
                arrived: link,
            });
        }
        if p.sender != self.cfg.peer_id || p.token == self.cfg.our_token {
            return Err(Rejection::WrongSender(p.sender));
        }
        if let Some(a) = self.accepted.as_mut().filter(|a| a.token == p.token) {
            let slot = a.last_seq.get_mut(link).ok_or(Rejection::WrongLink {
                named: p.link,
                arrived: link,
            })?;
            if let Some(last) = *slot {
                if p.seq <= last {
                    return Err(Rejection::Replay { seq: p.seq, last });
                }
            }
            *slot = Some(p.seq);
            if p.ctl_gen < a.newest_ctl_gen {
                return Err(Rejection::StaleControl {
                    got: p.ctl_gen,
                    newest: a.newest_ctl_gen,
                });
            }
            a.newest_ctl_gen = p.ctl_gen;
            return Ok(Verdict::Accept { new_session: false });
        }
        // Another session than the accepted one.
        let newest = self.min_boot();
        let newer = match self.candidate {
            None => true,
            Some((token, boot)) => p.boot > boot || (p.boot == boot && p.token == token),
        };
        if !newer {
            return Err(Rejection::OldSession {
                boot: p.boot,
                newest,
            });
        }
        let echo_changed = self.candidate.map(|(t, _)| t) != Some(p.token);
        self.candidate = Some((p.token, p.boot));
        if p.echo != self.cfg.our_token {
            return Ok(Verdict::Pending { echo_changed });
        }
        let mut last_seq = vec![None; self.cfg.peer_ips.len()];
        last_seq[link] = Some(p.seq);
        self.accepted = Some(Accepted {
            token: p.token,
            boot: p.boot,
            last_seq,
            newest_ctl_gen: p.ctl_gen,
        });
        Ok(Verdict::Accept { new_session: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::election::{Control, Role};
    use std::time::Duration;

    const OURS: u64 = 0x0A;
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
    const PEER_IN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
    const US: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

    fn sessions() -> Sessions {
        Sessions::new(SessionConfig {
            our_token: OURS,
            peer_id: PEER,
            peer_ips: vec![PEER, PEER_IN],
        })
    }

    fn probe(link: u8, token: u64, boot: u64, seq: u64, echo: u64, ctl_gen: u32) -> Probe {
        Probe {
            link,
            sender: PEER,
            ctl_gen,
            token,
            seq,
            boot,
            echo,
            lateness: Duration::ZERO,
            lease_ms: 24,
            node: "server2".into(),
            control: Control {
                router_id: u32::from(PEER),
                ..Control::for_tests(Role::Backup)
            },
        }
    }

    fn established() -> Sessions {
        let mut s = sessions();
        assert_eq!(
            s.on_probe(0, PEER, &probe(0, 0xB, 5, 256, 0, 1)),
            Verdict::Pending { echo_changed: true }
        );
        assert_eq!(s.echo(), 0xB);
        assert_eq!(
            s.on_probe(0, PEER, &probe(0, 0xB, 5, 512, OURS, 1)),
            Verdict::Accept { new_session: true }
        );
        s
    }

    #[test]
    fn a_new_session_counts_once_it_echoes_ours() {
        let s = established();
        assert_eq!(s.accepted_token(), Some(0xB));
        assert_eq!(s.min_boot(), 5);
    }

    #[test]
    fn replays_of_the_same_session_are_refused_per_link() {
        let mut s = established();
        let again = probe(0, 0xB, 5, 512, OURS, 1);
        assert!(matches!(
            s.on_probe(0, PEER, &again),
            Verdict::Reject(Rejection::Replay { .. })
        ));
        // The inside link has its own order: the same slot counts there once.
        let inside = probe(1, 0xB, 5, 512, OURS, 1);
        assert_eq!(
            s.on_probe(1, PEER_IN, &inside),
            Verdict::Accept { new_session: false }
        );
        assert!(matches!(
            s.on_probe(1, PEER_IN, &inside),
            Verdict::Reject(Rejection::Replay { .. })
        ));
    }

    #[test]
    fn an_older_control_state_never_undoes_a_newer_one() {
        let mut s = established();
        assert!(matches!(
            s.on_probe(0, PEER, &probe(0, 0xB, 5, 768, OURS, 3)),
            Verdict::Accept { .. }
        ));
        // The inside link's probe of an earlier slot, with the older state.
        assert!(matches!(
            s.on_probe(1, PEER_IN, &probe(1, 0xB, 5, 600, OURS, 2)),
            Verdict::Reject(Rejection::StaleControl { got: 2, newest: 3 })
        ));
    }

    #[test]
    fn old_sessions_are_refused_and_new_ones_must_echo() {
        let mut s = established();
        // The peer's previous run (boot 4), even echoing us.
        assert!(matches!(
            s.on_probe(0, PEER, &probe(0, 0x9, 4, 1 << 20, OURS, 9)),
            Verdict::Reject(Rejection::OldSession { boot: 4, newest: 5 })
        ));
        // A restarted peer (boot 6) first does not know us...
        assert_eq!(
            s.on_probe(0, PEER, &probe(0, 0xC, 6, 256, 0, 1)),
            Verdict::Pending { echo_changed: true }
        );
        assert_eq!(
            s.accepted_token(),
            Some(0xB),
            "the old session stays until the new one echoes"
        );
        // ...then echoes us.
        assert_eq!(
            s.on_probe(1, PEER_IN, &probe(1, 0xC, 6, 512, OURS, 1)),
            Verdict::Accept { new_session: true }
        );
        // Now the previous session is old.
        assert!(matches!(
            s.on_probe(0, PEER, &probe(0, 0xB, 5, 1 << 30, OURS, 9)),
            Verdict::Reject(Rejection::OldSession { .. })
        ));
    }

    #[test]
    fn after_our_restart_no_recorded_probe_can_get_in() {
        // We restarted: new token, nothing known. Every probe recorded
        // before carries an echo of our earlier token.
        let mut s = sessions();
        for (token, boot) in [(0xB, 5), (0x9, 4)] {
            let old = probe(0, token, boot, 1 << 20, 0x0BAD, 7);
            assert!(!matches!(s.on_probe(0, PEER, &old), Verdict::Accept { .. }));
        }
        assert_eq!(s.accepted_token(), None);
        // Only a probe made after our start (echoing our new token) counts.
        assert_eq!(
            s.on_probe(0, PEER, &probe(0, 0xB, 5, 2 << 20, OURS, 8)),
            Verdict::Accept { new_session: true }
        );
    }

    #[test]
    fn identity_is_checked() {
        let mut s = established();
        let p = probe(0, 0xB, 5, 1024, OURS, 1);
        assert!(matches!(
            s.on_probe(0, Ipv4Addr::new(198, 51, 100, 66), &p),
            Verdict::Reject(Rejection::WrongSource { .. })
        ));
        // A probe of the outside link replayed onto the inside link.
        assert!(matches!(
            s.on_probe(1, PEER_IN, &p),
            Verdict::Reject(Rejection::WrongLink {
                named: 0,
                arrived: 1
            })
        ));
        // Our own probe reflected to us (our sender id).
        let own = Probe {
            sender: US,
            ..probe(0, OURS, 9, 1 << 30, 0xB, 1)
        };
        assert!(matches!(
            s.on_probe(0, PEER, &own),
            Verdict::Reject(Rejection::WrongSender(_))
        ));
    }
}
