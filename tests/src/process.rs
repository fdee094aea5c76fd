//! Processes started inside a lab namespace; killed on drop.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::netns_command;

/// A process running inside a lab namespace (through `ip netns exec`, which
/// execs the program, so [`LabProcess::pid`] is the program's pid).
///
/// It is in its own process group (a terminal's Ctrl-C does not reach it),
/// gets SIGKILL if the thread that spawned it dies (PR_SET_PDEATHSIG: spawn
/// from a thread that outlives the process, e.g. the test's own thread), and
/// is killed when dropped.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    name: String,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// Starts `program args...` in namespace `ns`, stdout and stderr appended to `log_path`.
pub fn spawn_in(ns: &str, program: &str, args: &[&str], log_path: &Path) -> Result<LabProcess> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open log {}", log_path.display()))?;
    let err = log.try_clone()?;
    let mut cmd = netns_command(ns, program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {program} in {ns}"))?;
    let mut p = LabProcess {
        child,
        name: format!("{program} in {ns}"),
        log: log_path.to_owned(),
        status: None,
    };
    // `ip netns exec` enters the namespace then execs the program: wait
    // (bounded) until it has, so the caller's "started at" is meaningful.
    let want = std::fs::metadata(format!("{}/{ns}", crate::netns::NETNS_DIR))
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let proc_ns = format!("/proc/{}/ns/net", p.pid());
    let start = Instant::now();
    loop {
        let now = std::fs::metadata(&proc_ns).map(|m| (m.dev(), m.ino())).ok();
        if want.is_none() || now == want {
            break;
        }
        if let Some(status) = p.try_status() {
            bail!("{} exited at once ({status}): {}", p.name, p.log_tail(20));
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("{} did not enter its namespace within 5 s", p.name);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(p)
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// "program in namespace", for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// The log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends a signal (fails if the process has exited and was reaped).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.try_status().is_some() {
            bail!("{} has already exited", self.name);
        }
        // SAFETY: kill(2) on our own child, which has not been reaped.
        if unsafe { libc::kill(self.pid() as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP): it stays alive but does nothing.
    pub fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }
    /// Resumes a frozen process (SIGCONT).
    pub fn cont(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// The exit status if the process has exited (reaps it), else None.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit (polling every 5 ms).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL and reap (also works on a stopped process).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Ok(s);
        }
        let _ = self.child.kill();
        let s = self.child.wait().context("wait after kill")?;
        self.status = Some(s);
        Ok(s)
    }

    /// SIGTERM (and SIGCONT, in case it is stopped), wait up to `grace`, then SIGKILL.
    /// Returns the exit status and whether it exited by itself within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(s) = self.try_status() {
            return Ok((s, true));
        }
        let _ = self.signal(libc::SIGTERM);
        let _ = self.signal(libc::SIGCONT);
        if let Some(s) = self.wait_exit(grace) {
            return Ok((s, true));
        }
        Ok((self.kill()?, false))
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
