//! `ha-agent check-config` and `ha-agent run` refuse every dangerous config
//! of issue 11 with the field named, through the same checks (the binary,
//! unprivileged: nothing here reaches the network).
//!
//! `run` is only started on a config `check-config` has just refused, on
//! interfaces that do not exist, and (as root) in a fresh network namespace,
//! so a check that wrongly passed could not touch this machine's network.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ha-agent");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ha-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const KEY: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0\n";

/// A valid config of the documentation ranges, every section present, on
/// interfaces that do not exist.
fn base(d: &Dir) -> String {
    d.write("key", KEY, 0o600);
    d.write("mysql.pw", "admin pw\n", 0o600);
    d.write("repl.pw", "repl pw\n", 0o600);
    d.write("atlas.pw", "atlas pw\n", 0o600);
    let dir = d.0.display();
    format!(
        r#"[node]
name = "server1"
priority = 101
key_file = "{dir}/key"
status_socket = "{dir}/agent.sock"
state_dir = "{dir}/state"
preempt_delay_ms = 0
fence_timeout_ms = 300
init_timeout_ms = 100

[[link]]
name = "outside"
interface = "hcx0"
local_ip = "198.51.100.10"
peer_ip = "198.51.100.11"
witness = "198.51.100.1"
interval_ms = 4
witness_interval_ms = 16

[[link]]
name = "inside"
interface = "hcx1"
local_ip = "203.0.113.10"
peer_ip = "203.0.113.11"
interval_ms = 4
witness_interval_ms = 16

[[vip]]
address = "198.51.100.100/24"
interface = "hcx0"

[[vip]]
address = "203.0.113.100/24"
interface = "hcx1"

[garp]
spacing_ms = 10
refresh_ms = 1000

[hooks]
notify_master = "/bin/true 'quoted arg'"
timeout_ms = 10000

[mysql]
user = "ha_agent"
password_file = "{dir}/mysql.pw"
replication_user = "repl"
replication_password_file = "{dir}/repl.pw"
peer_address = "203.0.113.11:3306"
catchup_timeout_ms = 5000
down_handover_ms = 3000
check_interval_ms = 200
timeout_ms = 2000

[atlas]
user = "admin"
password_file = "{dir}/atlas.pw"
persist = "none"
period_ms = 1000
connect_timeout_ms = 500
query_timeout_ms = 500
"#
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn check_config(config: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(config)
        .output()
        .unwrap()
}

/// `ha-agent run --config FILE`, in its own network namespace when root;
/// killed (and reported) if it has not exited within 30 s.
fn run(config: &Path) -> (Option<i32>, String) {
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        c.args(["--net", "--"]).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(config)
        .env("HA_AGENT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`ha-agent run` did not exit on a refused config {config:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

/// Both commands refuse the config in `d/agent.toml`, naming `field`.
fn refused(d: &Dir, what: &str, field: &str) {
    let config = d.path("agent.toml");
    let out = check_config(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: check-config must exit 2; stdout {}, stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(&format!("  - {field}: ")),
        "{what}: check-config does not name {field}: {err}"
    );
    let (code, run_err) = run(&config);
    assert!(
        code.is_some_and(|c| c != 0),
        "{what}: run exited {code:?}: {run_err}"
    );
    assert!(
        run_err.contains(&format!("  - {field}: ")),
        "{what}: run does not name {field}: {run_err}"
    );
    // The same problem in the same words.
    let line = err
        .lines()
        .find(|l| l.starts_with(&format!("  - {field}: ")))
        .unwrap();
    assert!(
        run_err.contains(line),
        "{what}: run says it differently:\n{run_err}\ncheck-config:\n{err}"
    );
}

#[test]
fn the_base_config_passes() {
    let d = Dir::new("base");
    d.write("agent.toml", &base(&d), 0o644);
    let out = check_config(&d.path("agent.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "ok (node server1, 2 link(s), 2 VIP(s); key file, 3 password file(s) and 1 hook command(s) checked)"
        ),
        "{stdout}"
    );
}

#[test]
fn dangerous_configs_are_refused_by_check_config_and_run() {
    let d = Dir::new("danger");
    let good = base(&d);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "VIP outside its link's subnet",
            good.replace("198.51.100.100/24", "198.51.101.100/24"),
            "vip[0].address",
        ),
        (
            "VIP with a prefix that leaves the peer out",
            good.replace("198.51.100.100/24", "198.51.100.100/29"),
            "vip[0].address",
        ),
        (
            "VIP equal to the witness",
            good.replace("198.51.100.100/24", "198.51.100.1/24"),
            "vip[0].address",
        ),
        (
            "mysql.peer_address equal to a VIP",
            good.replace("203.0.113.11:3306", "203.0.113.100:3306"),
            "mysql.peer_address",
        ),
        (
            "hook with an unterminated quote",
            good.replace("'quoted arg'", "'quoted arg"),
            "hooks.notify_master",
        ),
        (
            "fence timeout of u64::MAX",
            good.replace(
                "fence_timeout_ms = 300",
                "fence_timeout_ms = 18446744073709551615",
            ),
            "node.fence_timeout_ms",
        ),
        (
            "29-byte node name",
            good.replace(
                "name = \"server1\"",
                "name = \"server1.datacenter-east.lan\"",
            ),
            "node.name",
        ),
    ];
    for (what, text, field) in cases {
        d.write("agent.toml", &text, 0o644);
        refused(&d, what, field);
    }
}

#[test]
fn every_ms_field_is_bounded_in_both_commands() {
    let d = Dir::new("bounds");
    let good = base(&d);
    let mut section = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in good.lines() {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
        }
        let Some((name, _)) = line.split_once(" = ") else {
            continue;
        };
        // The second link repeats the first one's fields.
        if !name.ends_with("_ms") || !seen.insert(format!("{section}.{name}")) {
            continue;
        }
        let text = good.replacen(line, &format!("{name} = 18446744073709551615"), 1);
        d.write("agent.toml", &text, 0o644);
        let field = if section == "link" {
            format!("link[0].{name}")
        } else {
            format!("{section}.{name}")
        };
        refused(&d, &format!("{field} = u64::MAX"), &field);
    }
    assert_eq!(seen.len(), 15, "every *_ms field: {seen:?}");
}

#[test]
fn missing_or_unsafe_secret_files_are_refused_by_check_config_and_run() {
    let d = Dir::new("files");
    let good = base(&d);
    d.write("agent.toml", &good, 0o644);
    for (file, field) in [
        ("key", "node.key_file"),
        ("mysql.pw", "mysql.password_file"),
        ("repl.pw", "mysql.replication_password_file"),
        ("atlas.pw", "atlas.password_file"),
    ] {
        let saved = std::fs::read_to_string(d.path(file)).unwrap();
        std::fs::remove_file(d.path(file)).unwrap();
        refused(&d, &format!("missing {file}"), field);
        d.write(file, &saved, 0o644);
        refused(&d, &format!("{file} readable by all"), field);
        d.write(file, &saved, 0o600);
    }
    // The key must be 64 hex digits, not any 16+ bytes.
    for bad in ["aaaaaaaaaaaaaaaa\n", "correct horse battery staple\n"] {
        d.write("key", bad, 0o600);
        refused(&d, &format!("key {bad:?}"), "node.key_file");
    }
    // Not through a symbolic link.
    d.write("real-key", KEY, 0o600);
    std::fs::remove_file(d.path("key")).unwrap();
    std::os::unix::fs::symlink(d.path("real-key"), d.path("key")).unwrap();
    refused(&d, "key through a symlink", "node.key_file");
    std::fs::remove_file(d.path("key")).unwrap();
    d.write("key", KEY, 0o600);
    if is_root() {
        let c = std::ffi::CString::new(d.path("key").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        refused(&d, "key owned by nobody", "node.key_file");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 0, 0) }, 0);
    }
    // A hook whose executable does not exist.
    d.write(
        "agent.toml",
        &good.replace("/bin/true", &format!("{}/no-such-hook", d.0.display())),
        0o644,
    );
    refused(&d, "missing hook executable", "hooks.notify_master");
    d.write("agent.toml", &good, 0o644);
    // A state directory others may write (the boot counter that orders
    // this node's sessions lives there).
    let state = d.path("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&d, "state_dir writable by all", "node.state_dir");
    std::fs::remove_dir(&state).unwrap();
}

#[test]
fn a_status_socket_naming_a_regular_file_is_refused_and_the_file_kept() {
    let d = Dir::new("socket");
    let good = base(&d);
    let victim = d.write("passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644);
    d.write(
        "agent.toml",
        &good.replace(
            &format!("{}/agent.sock", d.0.display()),
            victim.to_str().unwrap(),
        ),
        0o644,
    );
    refused(&d, "status_socket = a regular file", "node.status_socket");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\n",
        "the file named by status_socket is untouched"
    );
}

#[test]
fn check_config_warns_when_status_group_cannot_reach_the_socket() {
    let d = Dir::new("group");
    let run = d.path("run");
    std::fs::create_dir(&run).unwrap();
    let config = base(&d)
        .replace(
            &format!("{}/agent.sock", d.0.display()),
            &format!("{}/agent.sock", run.display()),
        )
        .replace("[node]\n", "[node]\nstatus_group = \"nogroup\"\n");
    d.write("agent.toml", &config, 0o644);
    let warning = format!(
        "WARNING: members of node.status_group cannot enter {}",
        run.display()
    );
    let warned = |mode: u32| {
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = check_config(&d.path("agent.toml"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.contains(&warning)
    };
    assert!(
        warned(0o750),
        "a directory closed to others and not the group's"
    );
    assert!(!warned(0o751), "others may enter");
}
