//! keepalived 2.2 in the lab, as the baseline ha-agent is measured against.
//!
//! The configs are generated from the lab's own description (interfaces,
//! addresses, VIPs) so both daemons protect exactly the same things:
//!
//! - [`Variant::Seed`]: the seed stack's settings (VRRPv2, `advert_int 1`,
//!   a `vrrp_sync_group` of `outside_network` (eth0, vrid 50) and
//!   `inside_network` (eth1, vrid 51), both servers `state BACKUP`, server1
//!   `nopreempt`, priorities 101/100, `auth_type PASS`);
//! - [`Variant::Tuned`]: the same structure with VRRPv3 and `advert_int 0.01`,
//!   keepalived's minimum (VRRPv3 has no authentication, so no `authentication`
//!   block);
//! - [`Variant::TunedRt`]: Tuned plus `vrrp_rt_priority 50`, so keepalived's
//!   VRRP process runs under SCHED_RR at the priority ha-agent's probe
//!   sender uses by default (SCHED_FIFO 50): not part of the seed's or the
//!   tuned config, but the fair comparison under CPU load.
//!
//! keepalived runs as a plain process in the server's namespace
//! (`keepalived -n -l -D -P -f CONF -p PID -r VRRP_PID -c CHECKERS_PID`), with
//! every file in the lab directory: nothing under /etc is read or written
//! (the pid files default to /run, so they are always given). With `-n` the
//! parent stays in the foreground and forks one VRRP child; both pids are
//! known (the child's from its pid file) and every signal goes to both.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{spawn_in, LabProcess};
use crate::topology::{Lab, Link, Server};
use crate::PREFIX_LEN;

/// Which keepalived configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The seed's settings: VRRPv2, advert_int 1 s, auth PASS.
    Seed,
    /// VRRPv3 with advert_int 0.01 s (keepalived's minimum).
    Tuned,
    /// Tuned, with the VRRP process under real-time scheduling.
    TunedRt,
}

impl Variant {
    /// "seed" / "tuned" (file names and messages).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Seed => "seed",
            Variant::Tuned => "tuned",
            Variant::TunedRt => "tuned-rt",
        }
    }

    /// The advertisement interval.
    pub fn advert_int(self) -> Duration {
        match self {
            Variant::Seed => Duration::from_secs(1),
            Variant::Tuned | Variant::TunedRt => Duration::from_millis(10),
        }
    }

    /// The VRRP version.
    pub fn vrrp_version(self) -> u8 {
        match self {
            Variant::Seed => 2,
            Variant::Tuned | Variant::TunedRt => 3,
        }
    }

    /// RFC 3768/5798 master-down interval of a backup with `priority`:
    /// 3 x advert_int + (256 - priority)/256 x advert_int. A backup that
    /// hears nothing for this long becomes master; it is also how long a
    /// freshly started `state BACKUP` instance waits before claiming.
    pub fn master_down_interval(self, priority: u8) -> Duration {
        let a = self.advert_int().as_secs_f64();
        Duration::from_secs_f64(3.0 * a + (256.0 - f64::from(priority)) / 256.0 * a)
    }
}

/// The VRRP priority of a server (server1 101, server2 100, as in the seed).
pub fn priority(server: Server) -> u8 {
    match server {
        Server::S1 => 101,
        Server::S2 => 100,
    }
}

/// The VRRP instance name and virtual router id of a link.
fn instance(link: Link) -> (&'static str, u8) {
    match link {
        Link::Outside => ("outside_network", 50),
        Link::Inside => ("inside_network", 51),
    }
}

/// keepalived's configuration for `server` in this lab.
pub fn config_text(server: Server, variant: Variant) -> String {
    let mut t = String::new();
    // Writing to a String cannot fail.
    let _ = write_config(&mut t, server, variant);
    t
}

fn write_config(t: &mut String, server: Server, variant: Variant) -> std::fmt::Result {
    writeln!(
        t,
        "# keepalived ({} variant) for {server}, written by ha-lab",
        variant.name()
    )?;
    writeln!(t, "global_defs {{")?;
    writeln!(t, "    router_id ha_lab_{}", server.name())?;
    writeln!(t, "    vrrp_version {}", variant.vrrp_version())?;
    if variant == Variant::TunedRt {
        writeln!(t, "    vrrp_rt_priority 50")?;
    }
    writeln!(t, "}}\n")?;
    writeln!(t, "vrrp_sync_group VG_1 {{")?;
    writeln!(t, "    group {{")?;
    // The seed lists inside_network first.
    for link in [Link::Inside, Link::Outside] {
        writeln!(t, "        {}", instance(link).0)?;
    }
    writeln!(t, "    }}")?;
    writeln!(t, "}}")?;
    for link in [Link::Inside, Link::Outside] {
        let (name, vrid) = instance(link);
        writeln!(t, "\nvrrp_instance {name} {{")?;
        writeln!(t, "    state BACKUP")?;
        writeln!(t, "    interface {}", link.ifname())?;
        writeln!(t, "    virtual_router_id {vrid}")?;
        writeln!(t, "    priority {}", priority(server))?;
        if server == Server::S1 {
            writeln!(t, "    nopreempt")?;
        }
        match variant {
            Variant::Seed => {
                writeln!(t, "    advert_int 1")?;
                writeln!(t, "    authentication {{")?;
                writeln!(t, "        auth_type PASS")?;
                writeln!(t, "        auth_pass 1111")?;
                writeln!(t, "    }}")?;
            }
            Variant::Tuned | Variant::TunedRt => writeln!(t, "    advert_int 0.01")?,
        }
        writeln!(t, "    virtual_ipaddress {{")?;
        writeln!(
            t,
            "        {}/{PREFIX_LEN} dev {}",
            link.vip(),
            link.ifname()
        )?;
        writeln!(t, "    }}")?;
        writeln!(t, "}}")?;
    }
    Ok(())
}

/// A running keepalived (parent and VRRP child) in a server namespace.
#[derive(Debug)]
pub struct Keepalived {
    pub server: Server,
    pub variant: Variant,
    parent: LabProcess,
    vrrp_pid_file: PathBuf,
    /// The VRRP child's pid, once read from its pid file.
    vrrp_pid: Option<i32>,
}

impl Lab {
    fn keepalived_path(&self, server: Server, what: &str) -> PathBuf {
        self.dir()
            .join(format!("keepalived-{}.{what}", server.name()))
    }

    /// Writes keepalived's config for `server` into the lab directory and
    /// checks it with `keepalived -t` inside the server's namespace (where
    /// eth0/eth1 exist). Returns its path.
    pub fn write_keepalived_config(&self, server: Server, variant: Variant) -> Result<PathBuf> {
        let path = self.keepalived_path(server, "conf");
        std::fs::write(&path, config_text(server, variant))?;
        let p = path.to_str().context("config path is not UTF-8")?;
        let out = self.exec(self.server_ns(server), &["keepalived", "-t", "-f", p])?;
        if !out.status.success() {
            bail!(
                "keepalived -t -f {p} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(path)
    }

    /// Writes and checks the config, then starts keepalived (VRRP only) in
    /// `server`'s namespace; output is appended to
    /// `<lab dir>/keepalived-serverN.log`. Waits (bounded) for the VRRP
    /// child's pid file so every later signal reaches both processes.
    pub fn start_keepalived(&self, server: Server, variant: Variant) -> Result<Keepalived> {
        let conf = self.write_keepalived_config(server, variant)?;
        let pid = self.keepalived_path(server, "pid");
        let vrrp_pid = self.keepalived_path(server, "vrrp.pid");
        let checkers_pid = self.keepalived_path(server, "checkers.pid");
        // A pid file left by a killed run would be taken for the new child's.
        for f in [&pid, &vrrp_pid, &checkers_pid] {
            let _ = std::fs::remove_file(f);
        }
        let s = |p: &PathBuf| p.to_str().map(str::to_string).context("path is not UTF-8");
        let args = [
            "-n".to_string(), // stay in the foreground: the parent is our child
            "-l".into(),      // log to the console (our log file)
            "-D".into(),
            "-G".into(), // no syslog
            "-P".into(), // VRRP only
            "-f".into(),
            s(&conf)?,
            "-p".into(),
            s(&pid)?,
            "-r".into(),
            s(&vrrp_pid)?,
            "-c".into(),
            s(&checkers_pid)?,
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let parent = spawn_in(
            self.server_ns(server),
            "keepalived",
            &args,
            &self.keepalived_path(server, "log"),
        )?;
        let mut k = Keepalived {
            server,
            variant,
            parent,
            vrrp_pid_file: vrrp_pid,
            vrrp_pid: None,
        };
        let start = Instant::now();
        while k.vrrp_pid().is_none() {
            if let Some(status) = k.parent.try_status() {
                bail!(
                    "keepalived on {server} exited ({status}): {}",
                    k.parent.log_tail(20)
                );
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!(
                    "keepalived on {server} wrote no VRRP pid file within 5 s: {}",
                    k.parent.log_tail(20)
                );
            }
            crate::sleep(Duration::from_millis(2))?;
        }
        Ok(k)
    }
}

impl Keepalived {
    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.parent.pid()
    }

    /// The VRRP child's pid (from its pid file; None until it is written).
    pub fn vrrp_pid(&mut self) -> Option<i32> {
        if self.vrrp_pid.is_none() {
            self.vrrp_pid = std::fs::read_to_string(&self.vrrp_pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|&p: &i32| p > 0 && p as u32 != self.parent.pid());
        }
        self.vrrp_pid
    }

    /// Both pids (parent first).
    pub fn pids(&mut self) -> Vec<i32> {
        let mut v = vec![self.parent.pid() as i32];
        v.extend(self.vrrp_pid());
        v
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &std::path::Path {
        self.parent.log_path()
    }
    pub fn log_tail(&self, n: usize) -> String {
        self.parent.log_tail(n)
    }

    /// True while the parent runs and the VRRP child exists.
    pub fn is_running(&mut self) -> bool {
        let child_alive = self
            .vrrp_pid()
            .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        self.parent.is_running() && child_alive
    }

    /// Sends `sig` to the VRRP child (by pid), then to the parent.
    fn signal_all(&mut self, sig: libc::c_int) -> Result<()> {
        if let Some(p) = self.vrrp_pid() {
            // SAFETY: kill(2) on the pid keepalived wrote for its own child,
            // which lives in this lab's namespace.
            unsafe { libc::kill(p, sig) };
        }
        self.parent.signal(sig)
    }

    /// Freezes both processes (SIGSTOP): "keepalived hung".
    pub fn stop(&mut self) -> Result<()> {
        self.signal_all(libc::SIGSTOP)
    }

    /// Resumes both (SIGCONT).
    pub fn cont(&mut self) -> Result<()> {
        self.signal_all(libc::SIGCONT)
    }

    /// SIGKILL to the child and the parent (no clean-up: like a power cut,
    /// the VIPs stay in the kernel). Reaps the parent.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(p) = self.vrrp_pid() {
            // SAFETY: as in signal_all; SIGCONT first in case it is stopped.
            unsafe {
                libc::kill(p, libc::SIGCONT);
                libc::kill(p, libc::SIGKILL);
            }
        }
        self.parent.kill()?;
        Ok(())
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        // The parent is killed by LabProcess's own drop; the child is ours.
        if let Some(p) = self.vrrp_pid {
            // SAFETY: as in signal_all.
            unsafe {
                libc::kill(p, libc::SIGCONT);
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_has_the_seed_settings() {
        let c = config_text(Server::S1, Variant::Seed);
        for want in [
            "vrrp_sync_group VG_1",
            "vrrp_instance outside_network",
            "vrrp_instance inside_network",
            "virtual_router_id 50",
            "virtual_router_id 51",
            "state BACKUP",
            "nopreempt",
            "priority 101",
            "advert_int 1\n",
            "auth_type PASS",
            "vrrp_version 2",
            "198.51.100.100/24 dev eth0",
            "203.0.113.100/24 dev eth1",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        let c2 = config_text(Server::S2, Variant::Seed);
        assert!(c2.contains("priority 100") && !c2.contains("nopreempt"));
    }

    #[test]
    fn tuned_config_is_vrrpv3_at_10ms_without_auth() {
        let c = config_text(Server::S2, Variant::Tuned);
        assert!(c.contains("vrrp_version 3") && c.contains("advert_int 0.01"));
        assert!(!c.contains("authentication"));
        assert_eq!(c.matches("vrrp_instance").count(), 2);
        assert!(!c.contains("rt_priority"));
        let rt = config_text(Server::S2, Variant::TunedRt);
        assert!(rt.contains("vrrp_rt_priority 50") && rt.contains("advert_int 0.01"));
    }

    #[test]
    fn master_down_interval_matches_the_rfc() {
        let d = Variant::Seed.master_down_interval(100);
        assert!((d.as_secs_f64() - 3.609375).abs() < 1e-9, "{d:?}");
        let d = Variant::Tuned.master_down_interval(100);
        assert!((d.as_secs_f64() - 0.03609375).abs() < 1e-9, "{d:?}");
    }
}
