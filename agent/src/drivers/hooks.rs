//! keepalived-compatible notify hooks.
//!
//! For a transition to STATE the runner executes, in order:
//! 1. `notify_master` / `notify_backup` / `notify_fault` (whichever matches;
//!    none for STOP), with only the arguments written in the config;
//! 2. `notify GROUP <group> <STATE> 0`;
//! 3. for each instance, `notify INSTANCE <name> <STATE> <priority>`.
//!
//! These are keepalived 2.x's arguments (vrrp_notify.c): four are appended to
//! `notify`, and a group's priority is given as 0. STATE is MASTER, BACKUP,
//! FAULT or STOP. Commands are split into words like keepalived does
//! (whitespace; single or double quotes group words) and run without a shell.
//!
//! One command runs at a time, in the order transitions were queued: hooks
//! typically start and stop services, and a BACKUP hook overtaking the MASTER
//! hook before it would leave a service in the wrong state. The caller only
//! queues; a slow, failing or hanging hook never delays an election.

use std::collections::VecDeque;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::operator::config::HooksConfig;
use crate::operator::status::{HookStatus, HookTotal};

/// How many outcomes `recent()` keeps.
pub const RECENT: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl HookState {
    /// The word given to `notify` scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Master => "MASTER",
            HookState::Backup => "BACKUP",
            HookState::Fault => "FAULT",
            HookState::Stop => "STOP",
        }
    }
}

impl fmt::Display for HookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one hook command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    /// The command as run (arguments quoted where needed).
    pub command: String,
    pub state: HookState,
    /// Exit code; None if it did not exit normally (see `error`).
    pub exit: Option<i32>,
    pub timed_out: bool,
    /// Why it did not run or did not exit normally.
    pub error: Option<String>,
    pub duration: Duration,
}

impl HookOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit == Some(0)
    }
}

/// A hook command that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("hook command {command:?} has an unterminated {quote} quote; close it or remove it")]
    Unterminated { command: String, quote: char },
    #[error("hook command is empty; remove the setting instead")]
    Empty,
}

/// Splits a command into words: whitespace separates words, and quotes
/// (single or double, removed) group text into one word, as in keepalived.
/// There are no escapes and no shell expansion.
pub fn split_command(command: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in command.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                // `""` is an empty word, not nothing.
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if let Some(quote) = quote {
        return Err(SplitError::Unterminated {
            command: command.to_string(),
            quote,
        });
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

/// One command to run for a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    /// Shown in outcomes and logs.
    display: String,
    argv: Result<Vec<String>, SplitError>,
}

/// The commands for a transition to `state`, in execution order.
fn plan(
    cfg: &HooksConfig,
    group: &str,
    instances: &[String],
    priority: u8,
    state: HookState,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let specific = match state {
        HookState::Master => cfg.notify_master.as_deref(),
        HookState::Backup => cfg.notify_backup.as_deref(),
        HookState::Fault => cfg.notify_fault.as_deref(),
        HookState::Stop => None,
    };
    if let Some(cmd) = specific {
        out.push(planned(cmd, &[]));
    }
    if let Some(cmd) = cfg.notify.as_deref() {
        let state = state.as_str();
        out.push(planned(cmd, &["GROUP", group, state, "0"]));
        let priority = priority.to_string();
        for name in instances {
            out.push(planned(cmd, &["INSTANCE", name, state, &priority]));
        }
    }
    out
}

fn planned(cmd: &str, extra: &[&str]) -> Planned {
    match split_command(cmd) {
        Ok(mut argv) => {
            argv.extend(extra.iter().map(|s| s.to_string()));
            Planned {
                display: display(&argv),
                argv: Ok(argv),
            }
        }
        Err(e) => {
            let mut display = cmd.to_string();
            for word in extra {
                display.push(' ');
                display.push_str(word);
            }
            Planned {
                display,
                argv: Err(e),
            }
        }
    }
}

/// `argv` as one line, quoting words that would otherwise be ambiguous.
fn display(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty() && !w.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                w.clone()
            } else if w.contains('"') {
                format!("'{w}'")
            } else {
                format!("\"{w}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Shared {
    recent: Mutex<VecDeque<HookOutcome>>,
    /// Transitions handed to `notify` so far.
    queued: AtomicU64,
    /// Commands run and failed since start, by state (MASTER, BACKUP, FAULT, STOP).
    runs: [AtomicU64; 4],
    failures: [AtomicU64; 4],
}

impl HookState {
    const ALL: [HookState; 4] = [
        HookState::Master,
        HookState::Backup,
        HookState::Fault,
        HookState::Stop,
    ];
    fn index(self) -> usize {
        self as usize
    }
}

/// Runs the hooks of queued transitions on a background task.
#[derive(Clone)]
pub struct HookRunner {
    tx: mpsc::UnboundedSender<HookState>,
    shared: Arc<Shared>,
    /// Transitions fully handled by the runner so far.
    done: watch::Receiver<u64>,
}

impl HookRunner {
    /// Spawns the runner task on the current tokio runtime.
    ///
    /// Panics if called outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(cfg: HooksConfig, group: String, instances: Vec<String>, priority: u8) -> Self {
        // Unbounded: `notify` must never block the election or drop a
        // transition. The queue stays short: transitions are rare, and each
        // hook is bounded by its timeout.
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(0);
        let shared = Arc::new(Shared {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            queued: AtomicU64::new(0),
            runs: Default::default(),
            failures: Default::default(),
        });
        let task = Task {
            cfg,
            group,
            instances,
            priority,
            shared: shared.clone(),
            done: done_tx,
        };
        tokio::spawn(task.run(rx));
        Self { tx, shared, done }
    }

    /// Queues the hooks of one transition; never blocks, never fails the caller.
    pub fn notify(&self, state: HookState) {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(state).is_err() {
            tracing::error!(
                %state,
                "hook runner has stopped (runtime shutting down?); hooks for this transition will not run"
            );
        }
    }

    /// The last outcomes, oldest first (at most [`RECENT`]), for `ha-agent status`.
    pub fn recent(&self) -> Vec<HookOutcome> {
        lock(&self.shared.recent).iter().cloned().collect()
    }

    /// The hooks' part of `ha-agent status`: the last outcomes, and the
    /// commands run and failed since start for every state, zeros included
    /// (a first failure is then an increase a metrics alert can see).
    pub fn snapshot(&self) -> (Vec<HookStatus>, Vec<HookTotal>) {
        let recent = self
            .recent()
            .into_iter()
            .map(|h| HookStatus {
                ok: h.succeeded(),
                detail: match (&h.error, h.timed_out, h.exit) {
                    (Some(e), _, _) => e.clone(),
                    (None, true, _) => "timed out".into(),
                    (None, false, Some(c)) => {
                        format!("exit {c} in {} ms", h.duration.as_millis())
                    }
                    (None, false, None) => "killed".into(),
                },
                command: h.command,
                state: h.state.to_string(),
            })
            .collect();
        let totals = HookState::ALL
            .iter()
            .map(|s| HookTotal {
                state: s.to_string(),
                runs: self.shared.runs[s.index()].load(Ordering::Relaxed),
                failures: self.shared.failures[s.index()].load(Ordering::Relaxed),
            })
            .collect();
        (recent, totals)
    }

    /// Waits until the hooks of every transition queued before this call have
    /// finished (e.g. the STOP hooks before the agent exits). Each hook is
    /// bounded by its timeout, so this is too.
    pub async fn drain(&self) {
        let target = self.shared.queued.load(Ordering::SeqCst);
        let mut done = self.done.clone();
        // Err: the runner is gone, nothing more will finish.
        let _ = done.wait_for(|d| *d >= target).await;
    }
}

/// The outcome ring must stay usable even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Task {
    cfg: HooksConfig,
    group: String,
    instances: Vec<String>,
    priority: u8,
    shared: Arc<Shared>,
    done: watch::Sender<u64>,
}

impl Task {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<HookState>) {
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut finished = 0u64;
        while let Some(state) = rx.recv().await {
            for p in plan(
                &self.cfg,
                &self.group,
                &self.instances,
                self.priority,
                state,
            ) {
                let outcome = execute(p, state, timeout).await;
                log(&outcome);
                self.shared.runs[state.index()].fetch_add(1, Ordering::Relaxed);
                if !outcome.succeeded() {
                    self.shared.failures[state.index()].fetch_add(1, Ordering::Relaxed);
                }
                let mut recent = lock(&self.shared.recent);
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(outcome);
            }
            finished += 1;
            self.done.send_replace(finished);
        }
    }
}

async fn execute(p: Planned, state: HookState, timeout: Duration) -> HookOutcome {
    let start = Instant::now();
    let mut outcome = HookOutcome {
        command: p.display,
        state,
        exit: None,
        timed_out: false,
        error: None,
        duration: Duration::ZERO,
    };
    let argv = match p.argv {
        Ok(argv) => argv,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        // As under keepalived, hook output is discarded (hooks log with
        // logger(1)); inherited, it would interleave with our structured log.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills what it started too
        // (`sh -c 'sleep 30'` leaves the sleep behind if only sh is killed).
        .process_group(0)
        // If the runtime goes away mid-hook, do not leave the hook running.
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            outcome.error = Some(format!("cannot start {}: {e}", argv[0]));
            outcome.duration = start.elapsed();
            return outcome;
        }
    };
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            outcome.exit = status.code();
            if let Some(signal) = status.signal() {
                outcome.error = Some(format!("killed by signal {signal}"));
            }
        }
        Ok(Err(e)) => outcome.error = Some(format!("cannot wait for it: {e}")),
        Err(_) => {
            outcome.timed_out = true;
            outcome.error = Some(format!(
                "timed out after {} ms (hooks.timeout_ms); killed",
                timeout.as_millis()
            ));
            // The child is not reaped yet, so its pid still names its group.
            // pid > 1 guards against kill(0)/kill(-1), which would signal our
            // own group or every process.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            // Kills the leader if the group kill did not, and reaps it.
            let _ = child.kill().await;
        }
    }
    outcome.duration = start.elapsed();
    outcome
}

fn log(o: &HookOutcome) {
    let ms = o.duration.as_millis() as u64;
    if o.succeeded() {
        tracing::info!(command = %o.command, state = %o.state, duration_ms = ms, "hook succeeded");
    } else if let Some(error) = &o.error {
        tracing::warn!(command = %o.command, state = %o.state, duration_ms = ms, %error, "hook failed");
    } else {
        tracing::warn!(
            command = %o.command,
            state = %o.state,
            exit = o.exit,
            duration_ms = ms,
            "hook exited with non-zero status"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn words(s: &str) -> Vec<String> {
        split_command(s).unwrap()
    }

    #[test]
    fn split_like_keepalived() {
        assert_eq!(words("/usr/bin/x  a\tb "), ["/usr/bin/x", "a", "b"]);
        assert_eq!(
            words(r#"x "two words" 'it"s'"#),
            ["x", "two words", "it\"s"]
        );
        assert_eq!(words(r#"x a"b c"d"#), ["x", "ab cd"]);
        assert_eq!(words(r#"x "" y"#), ["x", "", "y"]);
        assert_eq!(
            split_command("x 'open"),
            Err(SplitError::Unterminated {
                command: "x 'open".into(),
                quote: '\''
            })
        );
        assert_eq!(split_command("   "), Err(SplitError::Empty));
    }

    fn cfg() -> HooksConfig {
        HooksConfig {
            notify_master: Some("/bin/m 'to master'".into()),
            notify_backup: Some("/bin/b".into()),
            notify_fault: None,
            notify: Some("/bin/n".into()),
            timeout_ms: 1000,
        }
    }

    fn argvs(state: HookState) -> Vec<Vec<String>> {
        let instances = vec!["outside_network".to_string(), "inside_network".to_string()];
        plan(&cfg(), "VG_1", &instances, 101, state)
            .into_iter()
            .map(|p| p.argv.unwrap())
            .collect()
    }

    #[test]
    fn plan_follows_keepalived_argument_convention() {
        assert_eq!(
            argvs(HookState::Master),
            [
                vec!["/bin/m", "to master"],
                vec!["/bin/n", "GROUP", "VG_1", "MASTER", "0"],
                vec!["/bin/n", "INSTANCE", "outside_network", "MASTER", "101"],
                vec!["/bin/n", "INSTANCE", "inside_network", "MASTER", "101"],
            ]
        );
        // No notify_fault configured, and there is none for STOP.
        assert_eq!(
            argvs(HookState::Fault)[0],
            ["/bin/n", "GROUP", "VG_1", "FAULT", "0"]
        );
        assert_eq!(argvs(HookState::Stop).len(), 3);
        assert_eq!(argvs(HookState::Stop)[2][3], "STOP");
        assert_eq!(argvs(HookState::Backup)[0], ["/bin/b"]);
    }

    #[test]
    fn display_quotes_ambiguous_words() {
        let argv: Vec<String> = ["/bin/m", "to master", "it\"s", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(display(&argv), r#"/bin/m "to master" 'it"s' """#);
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::AtomicU32;
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("ha-hooks-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        /// Writes a script run as `sh <path>` (not exec'd: executing a file
        /// just written can fail with ETXTBSY while other test threads fork).
        fn script(&self, name: &str, body: &str) -> String {
            let p = self.path(name);
            std::fs::write(&p, body).unwrap();
            format!("/bin/sh {}", p.display())
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn hooks(
        master: Option<String>,
        backup: Option<String>,
        notify: Option<String>,
    ) -> HooksConfig {
        HooksConfig {
            notify_master: master,
            notify_backup: backup,
            notify_fault: None,
            notify,
            timeout_ms: 5_000,
        }
    }

    async fn drained(r: &HookRunner) {
        tokio::time::timeout(Duration::from_secs(30), r.drain())
            .await
            .expect("hooks did not finish within 30 s");
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn transitions_run_one_at_a_time_in_queue_order() {
        let dir = TempDir::new("order");
        let log = dir.path("log");
        let log = log.display();
        // The MASTER hook is slow: if hooks overlapped, later ones would log first.
        let master = dir.script("m", &format!("sleep 0.3; echo master >> {log}\n"));
        let backup = dir.script("b", &format!("echo backup >> {log}\n"));
        let notify = dir.script("n", &format!("echo \"n $*\" >> {log}\n"));
        let r = HookRunner::spawn(
            hooks(Some(master), Some(backup), Some(notify)),
            "VG_1".into(),
            vec!["outside_network".into(), "inside_network".into()],
            101,
        );
        r.notify(HookState::Master);
        r.notify(HookState::Backup);
        r.notify(HookState::Stop);
        drained(&r).await;
        assert_eq!(
            lines(&dir.path("log")),
            [
                "master",
                "n GROUP VG_1 MASTER 0",
                "n INSTANCE outside_network MASTER 101",
                "n INSTANCE inside_network MASTER 101",
                "backup",
                "n GROUP VG_1 BACKUP 0",
                "n INSTANCE outside_network BACKUP 101",
                "n INSTANCE inside_network BACKUP 101",
                "n GROUP VG_1 STOP 0",
                "n INSTANCE outside_network STOP 101",
                "n INSTANCE inside_network STOP 101",
            ]
        );
        let recent = r.recent();
        assert_eq!(recent.len(), 11);
        assert!(recent.iter().all(HookOutcome::succeeded), "{recent:?}");
        assert_eq!(recent[0].state, HookState::Master);
        assert_eq!(recent[10].state, HookState::Stop);
    }

    #[tokio::test]
    async fn quoted_words_reach_the_hook_intact() {
        let dir = TempDir::new("quote");
        let log = dir.path("log");
        let script = dir.script(
            "q",
            &format!(
                "for a in \"$@\"; do printf '[%s]' \"$a\" >> {}; done\n",
                log.display()
            ),
        );
        let r = HookRunner::spawn(
            hooks(
                Some(format!(r#"{script} "two words" 'say "hi"' plain"#)),
                None,
                None,
            ),
            "VG_1".into(),
            vec![],
            100,
        );
        // Every state is in the totals from the start, zeros included.
        let (_, totals) = r.snapshot();
        let zeros: Vec<(String, u64, u64)> = ["MASTER", "BACKUP", "FAULT", "STOP"]
            .iter()
            .map(|s| (s.to_string(), 0, 0))
            .collect();
        let as_tuples = |t: Vec<HookTotal>| -> Vec<(String, u64, u64)> {
            t.into_iter()
                .map(|h| (h.state, h.runs, h.failures))
                .collect()
        };
        assert_eq!(as_tuples(totals), zeros);
        r.notify(HookState::Master);
        drained(&r).await;
        assert_eq!(lines(&log), [r#"[two words][say "hi"][plain]"#]);
        assert_eq!(r.recent()[0].exit, Some(0));
        let (recent, totals) = r.snapshot();
        assert!(
            recent[0].ok && recent[0].detail.starts_with("exit 0 in "),
            "{recent:?}"
        );
        assert_eq!(as_tuples(totals)[0], ("MASTER".to_string(), 1, 0));
    }

    #[tokio::test]
    async fn timeout_kills_the_hook_and_what_it_started() {
        let dir = TempDir::new("timeout");
        let pidfile = dir.path("pid");
        // sh starts `sleep 30` as a child and waits: killing only sh would
        // leave the sleep running.
        let script = dir.script(
            "slow",
            &format!("sleep 30 & echo $! > {}; wait\n", pidfile.display()),
        );
        let mut cfg = hooks(Some(script), Some("/bin/true".into()), None);
        cfg.timeout_ms = 300;
        let r = HookRunner::spawn(cfg, "VG_1".into(), vec![], 100);
        r.notify(HookState::Master);
        r.notify(HookState::Backup);
        drained(&r).await;
        let recent = r.recent();
        assert!(recent[0].timed_out, "{recent:?}");
        assert_eq!(recent[0].exit, None);
        assert!(recent[0].duration < Duration::from_secs(10), "{recent:?}");
        // The runner was not stuck behind it.
        assert!(recent[1].succeeded(), "{recent:?}");

        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // SIGKILL is delivered asynchronously; the grandchild then lingers as
        // a zombie until its new parent reaps it. Poll with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_to_string(&stat) {
                Err(_) => break,
                Ok(s)
                    if s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z') =>
                {
                    break
                }
                Ok(s) => {
                    assert!(Instant::now() < deadline, "sleep 30 survived: {s}");
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    #[tokio::test]
    async fn missing_executable_is_reported_and_later_hooks_still_run() {
        let r = HookRunner::spawn(
            hooks(
                Some("/nonexistent/ha-hook --flag".into()),
                Some("/bin/false".into()),
                Some("/bin/sh -c 'exit 0' 'unterminated".into()),
            ),
            "VG_1".into(),
            vec![],
            100,
        );
        r.notify(HookState::Master);
        r.notify(HookState::Backup);
        drained(&r).await;
        let recent = r.recent();
        assert_eq!(recent.len(), 4, "{recent:?}");
        let e = recent[0].error.as_deref().unwrap_or("");
        assert!(
            e.contains("/nonexistent/ha-hook") && e.contains("No such file"),
            "{e}"
        );
        assert_eq!(recent[0].exit, None);
        // The `notify` command cannot be split: reported, not run.
        assert!(recent[1]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("unterminated"));
        assert_eq!(
            recent[1].command,
            "/bin/sh -c 'exit 0' 'unterminated GROUP VG_1 MASTER 0"
        );
        assert_eq!(recent[2].exit, Some(1), "{recent:?}");
        assert!(!recent[2].succeeded());
    }

    #[tokio::test]
    async fn recent_is_bounded() {
        let r = HookRunner::spawn(
            hooks(Some("/bin/true".into()), None, None),
            "G".into(),
            vec![],
            1,
        );
        for _ in 0..RECENT + 5 {
            r.notify(HookState::Master);
        }
        drained(&r).await;
        assert_eq!(r.recent().len(), RECENT);
    }
}
