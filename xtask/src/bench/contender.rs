//! The daemons under test, behind one interface: start in a server
//! namespace, freeze (SIGSTOP), resume, kill, all by pid.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ha_lab::keepalived::{Keepalived, Variant};
use ha_lab::{Lab, LabProcess, Overrides, Server};

use super::watch::VipWatch;

/// Bound for server1 to claim the VIPs after it starts (seed keepalived
/// waits its 3.6 s master-down interval first; ha-agent loads XDP).
const STARTUP: Duration = Duration::from_secs(20);
/// How long server1 must stay the sole holder once server2's ha-agent reports
/// BACKUP, before the pair counts as settled.
const AGENT_HOLD: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    HaAgent,
    Keepalived(Variant),
}

impl Contender {
    /// Every contender (keepalived-tuned-rt is opt-in: not in the default list).
    pub const ALL: [Contender; 4] = [
        Contender::HaAgent,
        Contender::Keepalived(Variant::Seed),
        Contender::Keepalived(Variant::Tuned),
        Contender::Keepalived(Variant::TunedRt),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::HaAgent => "ha-agent",
            Contender::Keepalived(Variant::Seed) => "keepalived-seed",
            Contender::Keepalived(Variant::Tuned) => "keepalived-tuned",
            Contender::Keepalived(Variant::TunedRt) => "keepalived-tuned-rt",
        }
    }

    pub fn parse(s: &str) -> Result<Contender> {
        Contender::ALL
            .into_iter()
            .find(|c| c.name() == s.trim())
            .with_context(|| {
                let names: Vec<&str> = Contender::ALL.iter().map(|c| c.name()).collect();
                format!("unknown contender {s:?} (known: {})", names.join(", "))
            })
    }

    /// How long server1 must keep the VIPs, alone, after server2 started,
    /// before the pair counts as settled. keepalived has no status to ask,
    /// so: server2's master-down interval (it would have claimed by then
    /// had it not heard server1) plus margin.
    fn settle_hold(self) -> Duration {
        match self {
            Contender::HaAgent => AGENT_HOLD,
            Contender::Keepalived(v) => {
                v.master_down_interval(ha_lab::keepalived::priority(Server::S2))
                    + Duration::from_millis(500)
            }
        }
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One running daemon.
pub enum Daemon {
    Agent(LabProcess),
    Keepalived(Keepalived),
}

impl Daemon {
    /// Starts `c` on `server`; ha-agent with the lab's config plus `agent`
    /// (keepalived ignores it).
    pub fn start(lab: &Lab, c: Contender, server: Server, agent: &Overrides) -> Result<Daemon> {
        Ok(match c {
            Contender::HaAgent => Daemon::Agent(lab.start_agent_with(server, agent)?),
            Contender::Keepalived(v) => Daemon::Keepalived(lab.start_keepalived(server, v)?),
        })
    }

    /// Every pid of the daemon (keepalived: parent and VRRP child).
    pub fn pids(&mut self) -> Vec<i32> {
        match self {
            Daemon::Agent(p) => vec![p.pid() as i32],
            Daemon::Keepalived(k) => k.pids(),
        }
    }

    /// SIGSTOP to every process of the daemon: it hangs, its kernel state
    /// (VIPs, XDP program, sockets) stays.
    pub fn stop(&mut self) -> Result<()> {
        match self {
            Daemon::Agent(p) => p.stop(),
            Daemon::Keepalived(k) => k.stop(),
        }
    }

    pub fn cont(&mut self) -> Result<()> {
        match self {
            Daemon::Agent(p) => p.cont(),
            Daemon::Keepalived(k) => k.cont(),
        }
    }

    /// SIGKILL (no clean-up).
    pub fn kill(&mut self) -> Result<()> {
        match self {
            Daemon::Agent(p) => p.kill().map(|_| ()),
            Daemon::Keepalived(k) => k.kill(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self {
            Daemon::Agent(p) => p.is_running(),
            Daemon::Keepalived(k) => k.is_running(),
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        match self {
            Daemon::Agent(p) => p.log_tail(n),
            Daemon::Keepalived(k) => k.log_tail(n),
        }
    }
}

/// Both daemons of one contender in one lab.
pub struct Pair {
    pub contender: Contender,
    daemons: [Option<Daemon>; 2],
    /// ha-agent's config changes (timers, VIP group), for restarts.
    agent: Overrides,
}

fn slot(s: Server) -> usize {
    usize::from(s.index() - 1)
}

impl Pair {
    /// Starts server1, waits until it holds every watched VIP alone, starts
    /// server2 and waits until the pair is settled with server1 the sole
    /// holder. ha-agent runs the lab's config plus `agent` on both servers.
    pub fn start(lab: &Lab, c: Contender, watch: &VipWatch, agent: &Overrides) -> Result<Pair> {
        let mut pair = Pair {
            contender: c,
            daemons: [None, None],
            agent: agent.clone(),
        };
        pair.daemons[0] = Some(Daemon::start(lab, c, Server::S1, agent)?);
        let t = Instant::now();
        if !watch.wait_for(STARTUP, |h| h.sole(Server::S1))? {
            bail!(
                "server1 did not take the VIPs within {STARTUP:?} of starting ({}); log:\n{}",
                watch.current().describe(),
                pair.logs(15)
            );
        }
        let claimed = t.elapsed();
        pair.daemons[1] = Some(Daemon::start(lab, c, Server::S2, agent)?);
        if c == Contender::HaAgent {
            ha_lab::wait_until_ok(Duration::from_secs(10), "server2 in BACKUP", || {
                Ok(lab.agent_state(Server::S2)? == "BACKUP")
            })
            .with_context(|| pair.logs(15))?;
        }
        let hold = c.settle_hold();
        let end = Instant::now() + hold;
        while Instant::now() < end {
            let h = watch.current();
            if !h.sole(Server::S1) {
                bail!(
                    "server1 (claimed after {claimed:?}) lost sole ownership while server2 started: {}; log:\n{}",
                    h.describe(),
                    pair.logs(15)
                );
            }
            pair.check_alive()?;
            ha_lab::sleep(Duration::from_millis(5))?;
        }
        Ok(pair)
    }

    pub fn get(&mut self, s: Server) -> Result<&mut Daemon> {
        self.daemons[slot(s)]
            .as_mut()
            .with_context(|| format!("{s}'s daemon is not running"))
    }

    /// Kills `s`'s daemon (SIGKILL) and forgets it.
    pub fn kill(&mut self, s: Server) -> Result<()> {
        if let Some(mut d) = self.daemons[slot(s)].take() {
            d.kill()?;
        }
        Ok(())
    }

    /// Starts `s`'s daemon again (after [`Pair::kill`]).
    pub fn restart(&mut self, lab: &Lab, s: Server) -> Result<()> {
        self.kill(s)?;
        self.daemons[slot(s)] = Some(Daemon::start(lab, self.contender, s, &self.agent)?);
        Ok(())
    }

    /// Fails if a daemon that should run has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for s in Server::ALL {
            if let Some(d) = self.daemons[slot(s)].as_mut() {
                if !d.is_running() {
                    bail!("{s}'s {} exited; log:\n{}", self.contender, d.log_tail(30));
                }
            }
        }
        Ok(())
    }

    /// The last `n` log lines of each daemon.
    pub fn logs(&self, n: usize) -> String {
        let mut out = String::new();
        for s in Server::ALL {
            if let Some(d) = &self.daemons[slot(s)] {
                out.push_str(&format!("--- {s} ---\n{}\n", d.log_tail(n)));
            }
        }
        out
    }

    /// Resumes (in case a fault froze them) and kills both daemons.
    pub fn shutdown(&mut self) {
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.cont();
            let _ = d.kill();
        }
        self.daemons = [None, None];
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.shutdown();
    }
}
