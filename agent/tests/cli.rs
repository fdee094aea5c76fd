//! The `ha-agent` binary as an operator runs it (unprivileged): error
//! messages said once, plain logs in files, import-keepalived then
//! check-config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ha-agent"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keepalived")
        .join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ha-agent-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_without_agent_says_the_error_once() {
    let out = bin()
        .args(["status", "--socket", "/nonexistent/ha-agent.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    // Before: "...: No such file or directory (os error 2) (is ha-agent
    // running, ...): No such file or directory (os error 2)".
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/ha-agent.sock"), "{err}");
    assert!(err.contains("is ha-agent running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A config that validates but whose key file does not exist: `run` logs
/// a start line and the error, then exits 1 (with or without root).
fn failing_run(dir: &Path, json: bool) -> (Output, String) {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
name = "server1"
key_file = "{}/missing-key"
status_socket = "{}/agent.sock"
[[link]]
name = "inside"
interface = "eth1"
local_ip = "192.168.1.100"
peer_ip = "192.168.1.101"
[[vip]]
address = "192.168.1.150/24"
interface = "eth1"
"#,
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let log = dir.join(if json { "json.log" } else { "text.log" });
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = bin();
    cmd.args(["run", "--config", config.to_str().unwrap()]);
    if json {
        cmd.arg("--json-logs");
    }
    let out = cmd
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stderr(file)
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn logs_written_to_a_file_have_no_escape_codes() {
    let dir = tmpdir("logs");
    let (out, log) = failing_run(&dir, false);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("ha-agent starting"), "{log}");
    assert!(log.contains("ha-agent stopped on an error"), "{log}");
    assert_eq!(
        log.matches('\x1b').count(),
        0,
        "escape codes in a log written to a file:\n{log:?}"
    );
    // The error is said once, in the log only.
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{log}"
    );

    let (out, log) = failing_run(&dir, true);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert_eq!(log.matches('\x1b').count(), 0, "{log:?}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "ERROR"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn imported_seed_config_passes_check_config() {
    let dir = tmpdir("import");
    let out_file = dir.join("server1.toml");
    let out = bin()
        .args(["import-keepalived"])
        .arg(data("seed-server1.conf"))
        .args(["--output", out_file.to_str().unwrap(), "--name", "server1"])
        .args([
            "--local-ip",
            "eth0=10.96.153.110",
            "--peer-ip",
            "eth0=10.96.153.114",
        ])
        .args([
            "--local-ip",
            "eth1=192.168.1.100",
            "--peer-ip",
            "eth1=192.168.1.101",
        ])
        .args(["--witness", "eth0=10.96.153.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("review: lines 13, 30: advert_int 1 s"));
    let check = check_imported(&dir, &out_file);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("ok (node server1, 2 link(s), 2 VIP(s)"));
    // Never overwrites.
    let again = bin()
        .arg("import-keepalived")
        .arg(data("seed-server1.conf"))
        .args(["-o", out_file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!again.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seed_server2_typo_is_refused_with_file_and_line() {
    let out = bin()
        .arg("import-keepalived")
        .arg(data("seed-server2.conf"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("seed-server2.conf:1: unknown top-level keyword `rrp_sync_group`"),
        "{err}"
    );
}

#[test]
fn missing_addresses_without_a_terminal_name_the_options() {
    let out = bin()
        .arg("import-keepalived")
        .arg(data("seed-server1.conf"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--local-ip eth1=ADDRESS"), "{err}");
}

/// On a terminal (a pty from script(1)) the log has colours, unless
/// NO_COLOR is set.
#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let dir = tmpdir("tty");
    let (_, _) = failing_run(&dir, false); // writes agent.toml
    let config = dir.join("agent.toml");
    let on_tty = |no_color: bool| -> String {
        let inner = format!(
            "{} run --config {}",
            env!("CARGO_BIN_EXE_ha-agent"),
            config.display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .stdin(Stdio::null())
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("script(1) from bsdutils");
        text(&out.stdout)
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("ha-agent starting"), "{coloured:?}");
    assert!(
        coloured.contains('\x1b'),
        "no colours on a terminal: {coloured:?}"
    );
    let plain = on_tty(true);
    assert!(plain.contains("ha-agent starting"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colours despite NO_COLOR: {plain:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a terminal, the addresses keepalived.conf lacks are asked for.
#[test]
fn missing_addresses_are_asked_for_on_a_terminal() {
    let dir = tmpdir("prompt");
    let out_file = dir.join("server1.toml");
    let inner = format!(
        "{} import-keepalived {} --name server1 --witness eth0=10.96.153.1 -o {}",
        env!("CARGO_BIN_EXE_ha-agent"),
        data("seed-server1.conf").display(),
        out_file.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from bsdutils");
    // One answer per question: eth1 (inside_network) first, then eth0; a
    // wrong answer is asked again.
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"192.168.1.100\nnot-an-ip\n192.168.1.101\n10.96.153.110\n10.96.153.114\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("this server's address on eth1 (vrrp_instance inside_network)? "),
        "{screen}"
    );
    assert!(
        screen.contains("\"not-an-ip\" is not an IPv4 address"),
        "{screen}"
    );
    let toml = std::fs::read_to_string(&out_file).unwrap();
    for want in [
        "local_ip = \"192.168.1.100\"",
        "peer_ip = \"192.168.1.101\"",
        "local_ip = \"10.96.153.110\"",
        "peer_ip = \"10.96.153.114\"",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    let check = check_imported(&dir, &out_file);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// check-config on an imported file, on a host like the one it came from:
/// check-config reads the key file and looks for the hook scripts, so the
/// key (which the importer says to create) and the seed's notify script
/// are made in `dir` and the file is pointed at them.
fn check_imported(dir: &std::path::Path, toml: &std::path::Path) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let scripts = dir.join("sh");
    std::fs::create_dir_all(&scripts).unwrap();
    let mut text = std::fs::read_to_string(toml).unwrap();
    text = text.replace("/etc/ha-agent/key", key.to_str().unwrap());
    text = text.replace("/data/sh/", &format!("{}/", scripts.display()));
    for word in text.split(['"', ' ']) {
        if let Some(name) = word.strip_prefix(&format!("{}/", scripts.display())) {
            let script = scripts.join(name);
            std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::write(toml, text).unwrap();
    bin().arg("check-config").arg(toml).output().unwrap()
}
