//! Prometheus metrics scraped from the running agents of the seed's whole
//! stack (MariaDB, Atlas), validated by `promtool check metrics`, before and
//! after a failover; and the agents' logs, written to files, free of escape
//! codes. Root only: run by `cargo xtask test`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ha_lab::netns::in_netns;
use ha_lab::stack::{kill_server1, started, StackOptions, METRICS_LISTEN, STEP};
use ha_lab::{wait_until_ok, Server};

const S1: Server = Server::S1;
const S2: Server = Server::S2;

/// `GET /metrics` from inside the server's namespace.
fn scrape(ns: &str) -> Result<String> {
    let reply = in_netns(ns, || -> Result<String> {
        let mut s = std::net::TcpStream::connect(METRICS_LISTEN)
            .with_context(|| format!("connect to {METRICS_LISTEN} in {ns}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {METRICS_LISTEN}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {reply:?}"))?;
    ensure!(head.contains(" 200 "), "scrape of {ns}: {head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Ok(body.to_string())
}

/// `promtool check metrics` (Debian's prometheus package, from `cargo xtask setup`).
fn promtool(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool not found: run cargo xtask setup (Debian package prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics ({}): {said}\n{text}", out.status);
    }
    Ok(())
}

/// The value of a sample without labels.
fn value(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in:\n{text}"))
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn metrics_scraped_from_running_agents() -> Result<()> {
    let mut st = started(StackOptions::default())?;
    // The fixture's checker (every 250 ms here, Atlas's every 4 s) marks
    // the backends the agents added `up`; until then Atlas takes no writes
    // and the agents do not call it serving.
    // The agents' view catches up with the servers and Atlas.
    wait_until_ok(
        STEP,
        "replica offered, both Atlases in sync and serving",
        || {
            let m1 = scrape(st.lab.server_ns(S1))?;
            let m2 = scrape(st.lab.server_ns(S2))?;
            Ok(has(&m2, "ha_agent_database_replica_ok 1")
                && [&m1, &m2].iter().all(|m| {
                    has(m, "ha_agent_atlas_in_sync 1") && has(m, "ha_agent_atlas_serving 1")
                }))
        },
    )
    .with_context(|| st.logs())?;
    for s in [S1, S2] {
        let m = scrape(st.lab.server_ns(s))?;
        promtool(&m).with_context(|| format!("{s}'s metrics"))?;
        println!(
            "{s}: {} lines of metrics, promtool check metrics: clean",
            m.lines().count()
        );
        for line in [
            "ha_agent_peer_alive 1",
            "ha_agent_link_peer_up{interface=\"eth0\",link=\"outside\"} 1",
            "ha_agent_link_peer_up{interface=\"eth1\",link=\"inside\"} 1",
            "ha_agent_link_witness_up{interface=\"eth0\",link=\"outside\",witness=\"198.51.100.1\"} 1",
            "ha_agent_database_up 1",
            "ha_agent_atlas_reachable 1",
            "ha_agent_atlas_serving 1",
        ] {
            ensure!(has(&m, line), "{s}: missing {line:?} in:\n{m}");
        }
        for family in [
            "ha_agent_link_probes_received_total",
            "ha_agent_link_probes_lost_total",
            "ha_agent_link_probes_rejected_total",
            "ha_agent_link_peer_last_seen_seconds",
            "ha_agent_atlas_reconciliations_total",
            "ha_agent_atlas_errors_total",
            "ha_agent_sender_lateness_seconds",
            "ha_agent_transitions_total",
            "ha_agent_false_alarms_total",
            // Zero before any transition ran a hook: a first failure is an
            // increase an alert sees.
            "ha_agent_hook_runs_total",
            "ha_agent_hook_failures_total",
        ] {
            ensure!(
                m.contains(&format!("# TYPE {family} ")),
                "{s}: no {family} in:\n{m}"
            );
        }
    }
    let m = scrape(st.lab.server_ns(S1))?;
    for line in [
        "ha_agent_role{role=\"MASTER\"} 1",
        "ha_agent_vips_held 2",
        "ha_agent_database_role{role=\"primary\"} 1",
    ] {
        ensure!(has(&m, line), "server1: missing {line:?} in:\n{m}");
    }
    let m = scrape(st.lab.server_ns(S2))?;
    for line in [
        "ha_agent_role{role=\"BACKUP\"} 1",
        "ha_agent_vips_held 0",
        "ha_agent_database_role{role=\"replica\"} 1",
        "ha_agent_database_replication_io_running 1",
        "ha_agent_database_replication_sql_running 1",
        "ha_agent_database_replica_ok 1",
    ] {
        ensure!(has(&m, line), "server2: missing {line:?} in:\n{m}");
    }
    ensure!(
        m.contains("ha_agent_database_replication_lag_seconds "),
        "{m}"
    );

    let scrape_s1_before = scrape(st.lab.server_ns(S1))?;
    // After server1's death: server2 is MASTER with a primary, and says how
    // long the promotion took.
    kill_server1(&mut st)?;
    wait_until_ok(STEP, "server2's metrics after the failover", || {
        let m = scrape(st.lab.server_ns(S2))?;
        Ok(has(&m, "ha_agent_role{role=\"MASTER\"} 1")
            && has(&m, "ha_agent_database_role{role=\"primary\"} 1")
            && m.contains("ha_agent_database_last_promotion_duration_seconds "))
    })
    .with_context(|| st.logs())?;
    let m = scrape(st.lab.server_ns(S2))?;
    promtool(&m).context("server2's metrics after the failover")?;
    let epoch_before = value(&scrape_s1_before, "ha_agent_epoch")?;
    let epoch_after = value(&m, "ha_agent_epoch")?;
    ensure!(
        epoch_after > epoch_before,
        "server2's epoch after its takeover ({epoch_after}) must exceed server1's before ({epoch_before})"
    );
    for line in [
        "ha_agent_vips_held 2",
        "ha_agent_peer_alive 0",
        "ha_agent_link_peer_up{interface=\"eth0\",link=\"outside\"} 0",
    ] {
        ensure!(
            has(&m, line),
            "server2 after failover: missing {line:?} in:\n{m}"
        );
    }
    let promo = m
        .lines()
        .find(|l| l.starts_with("ha_agent_database_last_promotion_duration_seconds "))
        .unwrap_or_default();
    println!("server2 after the failover: {promo}");

    // Both agents' logs went to files: not one escape code.
    for s in [S1, S2] {
        let log = std::fs::read_to_string(st.lab.agent_log_path(s))?;
        ensure!(!log.is_empty(), "{s}'s log is empty");
        let escapes = log.matches('\x1b').count();
        ensure!(escapes == 0, "{s}'s log has {escapes} escape codes:\n{log}");
        println!("{s}: {} log lines, 0 escape codes", log.lines().count());
    }
    Ok(())
}
