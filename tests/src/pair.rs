//! A running pair of agents in a fresh lab, and the waits the privileged
//! tests share. The VIP holders are read from the server namespaces (`ip
//! addr`), never from the agents' own word.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::LabProcess;
use crate::topology::{Lab, Link, Server};
use crate::wait::{wait_until, wait_until_ok};
use crate::Overrides;

/// Generous bound for "the agents settled" (start-up loads the eBPF program).
pub const SETTLE: Duration = Duration::from_secs(10);
/// Bound for a failover; the design target is tens of milliseconds, the bound
/// only keeps a broken agent from hanging the test.
pub const FAILOVER: Duration = Duration::from_secs(3);

/// Both agents of a lab.
pub struct Running {
    pub lab: Lab,
    pub agents: [Option<LabProcess>; 2],
}

impl Running {
    pub fn agent(&mut self, s: Server) -> &mut LabProcess {
        self.agents[usize::from(s.index() - 1)]
            .as_mut()
            .expect("agent running")
    }

    pub fn take(&mut self, s: Server) -> LabProcess {
        self.agents[usize::from(s.index() - 1)]
            .take()
            .expect("agent running")
    }

    pub fn restart(&mut self, s: Server) -> Result<()> {
        let p = self.lab.start_agent(s)?;
        self.agents[usize::from(s.index() - 1)] = Some(p);
        Ok(())
    }

    /// The agents' last log lines, and where the whole logs are kept.
    pub fn logs(&self) -> String {
        let tails: String = self
            .agents
            .iter()
            .flatten()
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log_tail(40)))
            .collect();
        format!(
            "{tails}\n(whole logs: {})",
            self.lab.evidence_dir().display()
        )
    }

    /// Fails if `cond` stops holding at any moment during `d`.
    pub fn holds_for(&self, d: Duration, what: &str, cond: impl Fn(&Lab) -> bool) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if !cond(&self.lab) {
                bail!(
                    "{what} stopped holding: {}\n{}",
                    self.lab.describe_vips(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn wait_sole_holder(&self, s: Server, bound: Duration) -> Result<Duration> {
        wait_until(bound, format!("{s} sole VIP holder"), || {
            self.lab.sole_holder_is(s)
        })
        .with_context(|| format!("{}\n{}", self.lab.describe_vips(), self.logs()))
    }

    /// `s` stays the only VIP holder for two seconds.
    pub fn stays_sole_holder(&self, s: Server, what: &str) -> Result<()> {
        self.holds_for(Duration::from_secs(2), what, |l| l.sole_holder_is(s))
    }

    /// `s` holds both VIPs (the other server may hold them too).
    pub fn wait_holds_both(&self, s: Server) -> Result<Duration> {
        wait_until(FAILOVER, format!("{s} holds both VIPs"), || {
            Link::ALL
                .iter()
                .all(|l| self.lab.vip_holders(l.vip()).contains(&s))
        })
        .with_context(|| format!("{}\n{}", self.lab.describe_vips(), self.logs()))
    }

    pub fn wait_state(&self, s: Server, state: &str) -> Result<Duration> {
        wait_until_ok(SETTLE, format!("{s} in {state}"), || {
            Ok(self.lab.agent_state(s)? == state)
        })
        .with_context(|| self.logs())
    }
}

/// Both agents running with the lab's configs, server1 holding the VIPs.
///
/// server1 starts first and takes the VIPs alone, then server2 joins: the
/// stories begin from a known holder whatever the machine's load. (Who wins
/// when both start at once is the election's story tests' business.)
pub fn started_with(overrides: [Overrides; 2]) -> Result<Running> {
    let lab = Lab::new()?;
    let [o1, o2] = overrides;
    let a1 = lab.start_agent_with(Server::S1, &o1)?;
    let mut r = Running {
        lab,
        agents: [Some(a1), None],
    };
    r.wait_sole_holder(Server::S1, SETTLE)?;
    r.agents[1] = Some(r.lab.start_agent_with(Server::S2, &o2)?);
    r.wait_state(Server::S2, "BACKUP")?;
    r.wait_sole_holder(Server::S1, SETTLE)?;
    Ok(r)
}

pub fn started() -> Result<Running> {
    started_with([Overrides::new(), Overrides::new()])
}

pub fn server2_mac_outside(r: &Running) -> String {
    r.lab.mac(Server::S2, Link::Outside).to_string()
}
