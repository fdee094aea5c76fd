//! `ha-agent import-keepalived` on the seed's two keepalived.conf files
//! (addresses moved to the lab's), then the imported configs run the lab:
//! server1 holds the VIPs, server2 takes them when server1's links die,
//! and the translated notify script runs. The seed's server2 file, with its
//! `rrp_sync_group` typo, is refused. Root only: run by `cargo xtask test`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ha_lab::{wait_until, wait_until_ok, Lab, LabProcess, Link, Server, GATEWAY};

const S1: Server = Server::S1;
const S2: Server = Server::S2;
const SETTLE: Duration = Duration::from_secs(10);

fn seed(name: &str) -> Result<String> {
    let path = ha_lab::agent::workspace_root()
        .join("agent/tests/data/keepalived")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

/// The seed's file with the lab's VIPs and a notify script that records its calls.
fn lab_conf(text: &str, notify: &Path) -> String {
    text.replace("10.96.153.239/24", &format!("{}/24", Link::Outside.vip()))
        .replace("192.168.1.150/24", &format!("{}/24", Link::Inside.vip()))
        // server2's file gives the inside VIP without a prefix (/32).
        .replace("192.168.1.150\n", &format!("{}/24\n", Link::Inside.vip()))
        .replace(
            "/data/sh/mysqlfailover-server1.sh",
            &notify.display().to_string(),
        )
        .replace(
            "/data/sh/mysqlfailover-server2.sh",
            &notify.display().to_string(),
        )
}

fn import(lab: &Lab, s: Server, conf: &Path, peer: &Path) -> Result<PathBuf> {
    let out = lab.dir().join(format!("imported-{}.toml", s.name()));
    let _ = std::fs::remove_file(&out);
    let mut args: Vec<String> = vec![
        "import-keepalived".into(),
        conf.display().to_string(),
        "--peer-config".into(),
        peer.display().to_string(),
        "--name".into(),
        s.name().into(),
        "-o".into(),
        out.display().to_string(),
        "--witness".into(),
        format!("{}={GATEWAY}", Link::Outside.ifname()),
    ];
    for l in Link::ALL {
        args.push("--local-ip".into());
        args.push(format!("{}={}", l.ifname(), s.ip(l)));
        args.push("--peer-ip".into());
        args.push(format!("{}={}", l.ifname(), s.peer().ip(l)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lab.agent_cli(&args)?;
    ensure!(
        o.status.success(),
        "import for {s}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out)
}

/// The imported config with the lab's key, status socket and state
/// directory, as this server's config; check-config must pass it (it
/// reads the key file and looks for the hook scripts, as `run` does).
fn install(lab: &Lab, s: Server, imported: &Path) -> Result<()> {
    let mut doc: toml::Table = std::fs::read_to_string(imported)?.parse()?;
    let node = doc
        .get_mut("node")
        .and_then(|n| n.as_table_mut())
        .context("[node]")?;
    node.insert(
        "key_file".into(),
        lab.key_file()?.display().to_string().into(),
    );
    node.insert(
        "status_socket".into(),
        lab.status_socket(s).display().to_string().into(),
    );
    node.insert(
        "state_dir".into(),
        lab.dir()
            .join(format!("{}-state", s.name()))
            .display()
            .to_string()
            .into(),
    );
    let path = lab.write_agent_config_raw(s, &toml::to_string(&doc)?)?;
    let check = lab.agent_cli(&["check-config", path.to_str().context("utf-8")?])?;
    ensure!(
        check.status.success(),
        "check-config on the imported {s} config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    println!(
        "{s}: imported, {}",
        String::from_utf8_lossy(&check.stdout).trim()
    );
    Ok(())
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn imported_seed_configs_run_the_lab() -> Result<()> {
    let lab = Lab::new()?;
    // One recording notify script per server, as the seed has.
    let mut notify = Vec::new();
    for srv in Server::ALL {
        let calls = lab.dir().join(format!("notify-calls-{}", srv.name()));
        let script = lab.dir().join(format!("notify-{}.sh", srv.name()));
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        notify.push((script, calls));
    }
    let c1 = lab.dir().join("keepalived-server1.conf");
    let c2 = lab.dir().join("keepalived-server2.conf");
    let c2_typo = lab.dir().join("keepalived-server2-typo.conf");
    std::fs::write(&c1, lab_conf(&seed("seed-server1.conf")?, &notify[0].0))?;
    let s2 = lab_conf(&seed("seed-server2.conf")?, &notify[1].0);
    std::fs::write(&c2_typo, &s2)?;
    std::fs::write(&c2, s2.replacen("rrp_sync_group", "vrrp_sync_group", 1))?;

    // The seed's server2 file as written: refused, naming the line.
    let o = lab.agent_cli(&["import-keepalived", c2_typo.to_str().context("utf-8")?])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(2)
            && err.contains(&format!(
                "{}:1: unknown top-level keyword `rrp_sync_group`",
                c2_typo.display()
            )),
        "the typo must be refused with its line: {:?} {err}",
        o.status
    );

    let i1 = import(&lab, S1, &c1, &c2)?;
    let i2 = import(&lab, S2, &c2, &c1)?;
    install(&lab, S1, &i1)?;
    install(&lab, S2, &i2)?;

    let mut a1: LabProcess = lab.start_agent(S1)?;
    let logs = |a: &LabProcess| a.log_tail(40);
    wait_until(SETTLE, "server1 sole VIP holder", || lab.sole_holder_is(S1))
        .with_context(|| logs(&a1))?;
    let a2 = lab.start_agent(S2)?;
    wait_until_ok(SETTLE, "server2 BACKUP", || {
        Ok(lab.agent_state(S2)? == "BACKUP")
    })
    .with_context(|| format!("{}\n{}", logs(&a1), logs(&a2)))?;
    ensure!(lab.sole_holder_is(S1), "{}", lab.describe_vips());

    lab.links_down(S1)?;
    wait_until(SETTLE, "server2 holds both VIPs", || {
        Link::ALL
            .iter()
            .all(|l| lab.vip_holders(l.vip()).contains(&S2))
    })
    .with_context(|| format!("{}\n{}", logs(&a1), logs(&a2)))?;
    wait_until(
        SETTLE,
        "the notify script ran on server2 for MASTER",
        || {
            std::fs::read_to_string(&notify[1].1)
                .is_ok_and(|c| c.lines().any(|l| l == "GROUP VG_1 MASTER 0"))
        },
    )
    .with_context(|| format!("{}\n{}", logs(&a1), logs(&a2)))?;
    println!(
        "server2's notify calls:\n{}",
        std::fs::read_to_string(&notify[1].1).unwrap_or_default()
    );
    a1.kill()?;
    Ok(())
}
