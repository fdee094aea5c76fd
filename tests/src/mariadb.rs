//! Throwaway MariaDB servers for tests: each one a plain `mariadbd` process
//! with its own data directory, socket and logs in a temporary directory,
//! optionally inside a lab namespace, killed (by PID) on drop.
//!
//! Every server starts with the seed's replication settings (binary log,
//! ROW format, gtid_strict_mode, log_slave_updates), its `server_id`, and
//! three accounts created without binlogging (so the two servers' GTID
//! histories start empty and equal):
//!
//! - `ha_agent` (the agent's admin account, with exactly the privileges
//!   the driver documents),
//! - `repl` (REPLICATION SLAVE: both replication and the agent's peer reads),
//! - `app` (an application: DML on `app.*`, no privilege that bypasses
//!   read_only).
//!
//! Test-side SQL goes through the `mariadb` client over the Unix socket as
//! root (no password: the socket is in the server's private directory), or
//! over TCP as `app` with the password in a 0600 defaults file, never on a
//! command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ha_agent::operator::config::{CatchupPolicy, MysqlConfig};

use crate::netns::netns_command;
use crate::wait::{wait_until, wait_until_ok};

pub const AGENT_USER: &str = "ha_agent";
pub const AGENT_PASSWORD: &str = "agent-Pw-1";
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "repl-Pw-2";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-Pw-3";

/// Privileges of the agent's account on MariaDB 10.11: read_only (READ_ONLY
/// ADMIN; SUPER no longer implies it), replication control and
/// gtid_slave_pos (REPLICATION SLAVE ADMIN), RESET MASTER on a forced
/// rejoin (RELOAD, BINLOG ADMIN), status reads (REPLICATION CLIENT aka
/// BINLOG MONITOR, SLAVE MONITOR), semi-sync settings (SUPER), and seeing
/// and closing other sessions: the replica's IO thread at a promotion, the
/// commits stuck waiting for a semi-sync acknowledgement at a fence
/// (PROCESS, CONNECTION ADMIN).
pub const AGENT_GRANTS: &str = "SUPER, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, BINLOG ADMIN, \
     RELOAD, BINLOG MONITOR, SLAVE MONITOR, PROCESS, CONNECTION ADMIN";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where and how a server runs.
#[derive(Debug, Clone)]
pub struct MariadbOptions {
    pub server_id: u32,
    /// Address to bind (the server's inside address in a lab, or 127.0.0.1).
    pub bind: Ipv4Addr,
    /// TCP port; 0 picks a free one (loopback only).
    pub port: u16,
    /// Lab namespace to run in (None: the caller's namespace).
    pub namespace: Option<String>,
    /// Directory under which the server's own directory is made.
    pub parent: PathBuf,
    /// Start with `read_only=ON` (the README's advice for both servers): a
    /// restarted old primary accepts no write before its agent decides.
    pub read_only: bool,
}

impl MariadbOptions {
    /// A server on 127.0.0.1 with a free port, in the system temp dir.
    pub fn loopback(server_id: u32) -> Self {
        MariadbOptions {
            server_id,
            bind: Ipv4Addr::LOCALHOST,
            port: 0,
            namespace: None,
            parent: std::env::temp_dir(),
            read_only: false,
        }
    }
}

/// A running (or stopped) test server. Dropping it kills the process and
/// removes its directory (kept when dropped while panicking, for the logs).
#[derive(Debug)]
pub struct Mariadb {
    opts: MariadbOptions,
    dir: PathBuf,
    child: Option<Child>,
    /// When the current process was spawned.
    started_at: Option<Instant>,
}

/// A pristine data directory made by `mariadb-install-db`, shared by every
/// test process of the same MariaDB version (made once, under a temporary
/// name, then renamed into place); each server copies it.
fn template() -> Result<&'static Path> {
    static TEMPLATE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow!("{e}"))
}

fn make_template() -> Result<PathBuf> {
    const INSTALL: &str = "install mariadb-server (apt-get install mariadb-server mariadb-client)";
    let out = Command::new("mariadbd")
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run mariadbd: {INSTALL}"))?;
    let version: String = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("ha-mariadb-template-{version}"));
    if dir.join("mysql").is_dir() {
        return Ok(dir);
    }
    let tmp = std::env::temp_dir().join(format!(
        "ha-mariadb-template-{version}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg("--auth-root-authentication-method=normal")
        .arg(format!("--datadir={}", tmp.display()))
        .args(["--user=root", "--skip-test-db", "--innodb-log-file-size=8M"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run mariadb-install-db: {INSTALL}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "mariadb-install-db failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another test process may have won the race: then use its copy.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl Mariadb {
    /// Creates the data directory, starts the server, waits until it
    /// answers, and creates the accounts and the `app.t` table.
    pub fn start(mut opts: MariadbOptions) -> Result<Mariadb> {
        if opts.port == 0 {
            if opts.namespace.is_some() {
                bail!("a server in a namespace needs an explicit port");
            }
            opts.port = free_port(opts.bind)?;
        }
        let dir = opts.parent.join(format!(
            "mdb{}-{}-{}",
            opts.server_id,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut db = Mariadb {
            opts,
            dir,
            child: None,
            started_at: None,
        };
        let data = db.data_dir();
        let out = Command::new("cp")
            .arg("-a")
            .arg(template()?)
            .arg(&data)
            .output()
            .context("cp")?;
        if !out.status.success() {
            bail!(
                "copying the template datadir failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (name, pw) in [("agent.pw", AGENT_PASSWORD), ("repl.pw", REPL_PASSWORD)] {
            write_private(&db.dir.join(name), &format!("{pw}\n"))?;
        }
        write_private(
            &db.dir.join("app.cnf"),
            &format!("[client]\nuser={APP_USER}\npassword={APP_PASSWORD}\n"),
        )?;
        db.spawn()?;
        db.bootstrap()?;
        Ok(db)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }
    pub fn server_id(&self) -> u32 {
        self.opts.server_id
    }
    /// The TCP address clients (and the agent) use.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.opts.bind), self.opts.port)
    }
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
    /// When the running process was started.
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn server_args(&self) -> Vec<String> {
        let d = &self.dir;
        let data = self.data_dir();
        vec![
            "--no-defaults".into(),
            // mariadbd refuses to run as root unless told to.
            "--user=root".into(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", self.socket().display()),
            format!("--pid-file={}", d.join("pid").display()),
            format!("--log-error={}", d.join("error.log").display()),
            // A tmpdir of its own: a starting server deletes every `#sql*`
            // file in its tmpdir (leftovers of its previous run, it
            // assumes), which in a shared /tmp are the live internal temp
            // tables of the servers other tests run meanwhile ("Error on
            // delete of '/tmp/#sql-temptable-...MAI'" failed a promotion's
            // process-list query once).
            format!("--tmpdir={}", d.join("tmp").display()),
            format!("--port={}", self.opts.port),
            // In a server namespace: every address, so the inside VIP
            // reaches it once the agent holds it (the seed's 0.0.0.0).
            format!(
                "--bind-address={}",
                if self.opts.namespace.is_some() {
                    Ipv4Addr::UNSPECIFIED
                } else {
                    self.opts.bind
                }
            ),
            format!("--server-id={}", self.opts.server_id),
            format!("--log-bin={}", data.join("bin").display()),
            format!("--relay-log={}", data.join("relay").display()),
            "--binlog-format=ROW".into(),
            "--gtid-strict-mode=ON".into(),
            "--log-slave-updates=ON".into(),
            format!("--report-host={}", self.opts.bind),
            // A restarted old primary must not start replicating on its own.
            "--skip-slave-start".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=32M".into(),
            "--innodb-log-file-size=8M".into(),
            "--performance-schema=OFF".into(),
            "--max-connections=50".into(),
            format!(
                "--read-only={}",
                if self.opts.read_only { "ON" } else { "OFF" }
            ),
        ]
    }

    /// Starts the process and waits (bounded) until it answers on its socket.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("server {} is already running", self.opts.server_id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        let mut cmd = match &self.opts.namespace {
            Some(ns) => netns_command(ns, "mariadbd"),
            None => Command::new("mariadbd"),
        };
        cmd.args(self.server_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
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
        let started = Instant::now();
        let child = cmd
            .spawn()
            .context("cannot start mariadbd: install mariadb-server (apt-get install mariadb-server mariadb-client)")?;
        self.child = Some(child);
        self.started_at = Some(started);
        let id = self.opts.server_id;
        let r = wait_until_ok(
            STARTUP_TIMEOUT,
            format!("mariadbd {id} to accept connections"),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        bail!("mariadbd exited at start ({status})");
                    }
                }
                Ok(self.socket().exists() && self.try_sql("SELECT 1").is_ok())
            },
        );
        if let Err(e) = r {
            let log = self.error_log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{e:#}\nerror log:\n{}", tail.join("\n"));
        }
        Ok(())
    }

    fn bootstrap(&self) -> Result<()> {
        self.sql(&format!(
            "SET SESSION sql_log_bin = 0;
             CREATE USER '{AGENT_USER}'@'%' IDENTIFIED BY '{AGENT_PASSWORD}';
             GRANT {AGENT_GRANTS} ON *.* TO '{AGENT_USER}'@'%';
             CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}';
             GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%';
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             CREATE DATABASE app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO '{APP_USER}'@'%';
             CREATE TABLE app.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64) NOT NULL, origin INT NOT NULL) ENGINE=InnoDB;"
        ))?;
        Ok(())
    }

    /// SIGKILL (a crash) and reap; the data directory stays.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().context("waiting for the killed mariadbd")?;
        }
        // The socket file of a killed server stays: remove it so a restart's
        // readiness check waits for the new server.
        let _ = std::fs::remove_file(self.socket());
        Ok(())
    }

    /// Kill, then start again on the same data (a crash and reboot).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--skip-column-names"]);
        c
    }

    fn try_sql(&self, sql: &str) -> Result<String> {
        use std::io::Write;
        // On stdin: a long batch would not fit in one argument.
        let mut child = self
            .client()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run the mariadb client")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        output_text(child.wait_with_output()?, sql)
    }

    /// Runs SQL as root over the socket; returns the tab-separated rows.
    pub fn sql(&self, sql: &str) -> Result<String> {
        self.try_sql(sql)
            .with_context(|| format!("on server {}", self.opts.server_id))
    }

    /// One value (first column of the first row).
    pub fn value(&self, sql: &str) -> Result<String> {
        Ok(self
            .sql(sql)?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// Runs SQL as the `app` account over TCP (inside the server's
    /// namespace): the server's answer, or its error text.
    pub fn app_sql(&self, sql: &str) -> Result<Output> {
        let mut c = match &self.opts.namespace {
            Some(ns) => netns_command(ns, "mariadb"),
            None => Command::new("mariadb"),
        };
        c.arg(format!(
            "--defaults-extra-file={}",
            self.dir.join("app.cnf").display()
        ))
        .arg(format!("--host={}", self.opts.bind))
        .arg(format!("--port={}", self.opts.port))
        .args([
            "--protocol=TCP",
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ])
        .stdin(Stdio::null());
        c.output().context("running the mariadb client")
    }

    /// Rows in `app.t`.
    pub fn count(&self) -> Result<u64> {
        self.value("SELECT COUNT(*) FROM app.t")?
            .parse()
            .context("COUNT(*)")
    }

    /// Inserts `n` rows, one transaction each, as root (bypassing read_only).
    pub fn insert_rows(&self, n: usize, tag: &str) -> Result<()> {
        let mut sql = String::with_capacity(n * 60);
        for i in 0..n {
            sql.push_str(&format!(
                "INSERT INTO app.t (v, origin) VALUES ('{tag}-{i}', @@server_id);\n"
            ));
        }
        self.sql(&sql).map(|_| ())
    }

    pub fn gtid_binlog_pos(&self) -> Result<String> {
        self.value("SELECT @@global.gtid_binlog_pos")
    }

    /// Makes this server a replica of `primary` the plain way (not through
    /// the agent), and waits until both threads run.
    pub fn replicate_from(&self, primary: SocketAddr) -> Result<()> {
        self.sql(&format!(
            "STOP SLAVE; SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos;
             CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={}, MASTER_USER='{REPL_USER}',
               MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos;
             START SLAVE; SET GLOBAL read_only = ON;",
            primary.ip(),
            primary.port()
        ))?;
        self.wait_replicating(Duration::from_secs(20))
    }

    /// A column of SHOW SLAVE STATUS (None: not a replica).
    pub fn slave_status(&self, column: &str) -> Result<Option<String>> {
        // Vertical output needs the column names: not the batch client.
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--vertical", "-e", "SHOW SLAVE STATUS"])
            .stdin(Stdio::null())
            .output()?;
        let text = output_text(out, "SHOW SLAVE STATUS")?;
        Ok(text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == column).then(|| v.trim().to_string())
        }))
    }

    pub fn wait_replicating(&self, timeout: Duration) -> Result<()> {
        wait_until_ok(
            timeout,
            format!("server {} to replicate", self.opts.server_id),
            || {
                if let Some(e) = self.slave_status("Last_Error")?.filter(|e| !e.is_empty()) {
                    bail!("replication error: {e}");
                }
                Ok(
                    self.slave_status("Slave_IO_Running")?.as_deref() == Some("Yes")
                        && self.slave_status("Slave_SQL_Running")?.as_deref() == Some("Yes"),
                )
            },
        )
        .map(|_| ())
    }

    /// Waits until this replica's IO thread has received `pos` (a
    /// `gtid_binlog_pos` of its primary).
    pub fn wait_received(&self, pos: &str, timeout: Duration) -> Result<()> {
        wait_until_ok(
            timeout,
            format!("server {} to receive {pos}", self.opts.server_id),
            || Ok(self.slave_status("Gtid_IO_Pos")?.as_deref() == Some(pos)),
        )
        .map(|_| ())
    }

    /// The replication state as text, for evidence: read-only, GTID
    /// positions, `SHOW SLAVE STATUS`, the semi-sync status and settings,
    /// and who is connected. A server that does not answer says why.
    pub fn state_report(&self) -> String {
        let mut out = format!("== server {} ({}) ==\n", self.opts.server_id, self.addr());
        if self.child.is_none() {
            out.push_str("not running (killed or not started)\n");
            return out;
        }
        for sql in [
            "SELECT @@global.read_only AS read_only, @@global.gtid_binlog_pos AS gtid_binlog_pos, \
             @@global.gtid_binlog_state AS gtid_binlog_state, @@global.gtid_slave_pos AS gtid_slave_pos, \
             @@global.gtid_current_pos AS gtid_current_pos",
            "SHOW SLAVE STATUS",
            "SHOW GLOBAL STATUS LIKE 'Rpl\\_semi\\_sync\\_%'",
            "SHOW GLOBAL VARIABLES LIKE 'rpl\\_semi\\_sync\\_%'",
            "SELECT ID, USER, HOST, COMMAND, TIME, STATE, LEFT(INFO, 80) AS INFO FROM information_schema.PROCESSLIST",
            "SELECT COUNT(*) AS rows_in_app_t FROM app.t",
        ] {
            let r = Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "--vertical", "--connect-timeout=2", "-e", sql])
                .stdin(Stdio::null())
                .output();
            out.push_str(&format!("-- {sql}\n"));
            match r {
                Ok(o) => {
                    out.push_str(&String::from_utf8_lossy(&o.stdout));
                    out.push_str(&String::from_utf8_lossy(&o.stderr));
                }
                Err(e) => out.push_str(&format!("cannot run the mariadb client: {e}\n")),
            }
        }
        out
    }

    /// The server's error log file.
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Waits until `app.t` holds `n` rows.
    pub fn wait_count(&self, n: u64, timeout: Duration) -> Result<Duration> {
        wait_until(
            timeout,
            format!("server {} to hold {n} rows", self.opts.server_id),
            || self.count().ok() == Some(n),
        )
    }

    /// Waits until `app.t` holds at least `n` rows (writers may still run).
    pub fn wait_count_at_least(&self, n: u64, timeout: Duration) -> Result<Duration> {
        wait_until(
            timeout,
            format!("server {} to hold at least {n} rows", self.opts.server_id),
            || self.count().is_ok_and(|c| c >= n),
        )
    }

    /// The agent's `[mysql]` section for this server, with `peer` as the peer.
    pub fn agent_config(&self, peer: SocketAddr) -> MysqlConfig {
        MysqlConfig {
            address: self.addr(),
            user: AGENT_USER.into(),
            password_file: self.dir.join("agent.pw"),
            replication_user: REPL_USER.into(),
            replication_password_file: self.dir.join("repl.pw"),
            peer_address: peer,
            catchup_timeout_ms: 5000,
            catchup_policy: CatchupPolicy::StayReadOnly,
            down_handover_ms: 3000,
            semisync: false,
            durability: None,
            semisync_timeout_ms: 1000,
            state_dir: Some(self.dir.join("agent-state")),
            check_interval_ms: 200,
            timeout_ms: 2000,
            max_replica_lag_s: 2,
        }
    }
}

fn output_text(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "mariadb client failed ({}) on {:?}: {}",
            out.status,
            what.chars().take(120).collect::<String>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::thread::panicking() || std::env::var_os("HA_LAB_KEEP").is_some() {
            eprintln!(
                "ha-lab: kept MariaDB directory {} for its logs",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
