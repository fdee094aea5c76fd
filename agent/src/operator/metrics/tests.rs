use std::io::{Read, Write};
use std::process::{Command, Stdio};

use super::*;
use crate::operator::status::atlas::AtlasBackend;
use crate::operator::status::database::{DatabaseStatus, PromotionStatus, ReplicationStatus};
use crate::operator::status::{
    AtlasSection, HookTotal, LinkStatus, PeerStatus, SenderStatus, TransitionCount, VipStatus,
};

/// A status with every section the metrics read.
pub fn full_status() -> Status {
    let link = |name: &str, iface: &str, witness: Option<&str>| LinkStatus {
        name: name.into(),
        interface: iface.into(),
        carrier: true,
        peer_up: true,
        last_seen_ms_ago: Some(3),
        probes_received: 1000,
        probes_lost: 2,
        probes_rejected: 1,
        probes_duplicate: 7,
        lease_drops: 0,
        send_errors: 0,
        witness: witness.map(str::to_string),
        witness_up: witness.map(|_| true),
        witness_last_seen_ms_ago: witness.map(|_| 12),
    };
    Status {
        node: "server1".into(),
        state: "MASTER".into(),
        epoch: 3,
        priority: 101,
        nopreempt: true,
        peer: Some(PeerStatus {
            node: "server2".into(),
            state: "BACKUP".into(),
            epoch: 3,
            priority: 100,
            eligible: true,
            witness_reach: 1,
            alive: true,
            lateness_ms: 0.3,
        }),
        links: vec![
            link("outside", "eth0", Some("198.51.100.1")),
            link("inside", "eth1", None),
        ],
        vips: vec![VipStatus {
            address: "198.51.100.100/24".into(),
            interface: "eth0".into(),
            held: true,
        }],
        vips_held: vec!["198.51.100.100/24".into()],
        sender: Some(SenderStatus {
            threads: 2,
            realtime_threads: 2,
            pinned_threads: 2,
            slots: 5000,
            missed_slots: 0,
            lateness: HistogramStatus {
                bounds_us: vec![50, 100, 1000],
                counts: vec![4000, 900, 99, 1],
                sum_us: 300_000,
            },
            lateness_p50_us: Some(50),
            lateness_p99_us: Some(1000),
            lateness_max_us: 1200,
            send_errors: 1,
            witness_requests: 300,
            witness_broadcasts: 2,
            ..SenderStatus::default()
        }),
        false_alarms: 0,
        transition_counts: vec![TransitionCount {
            from: "BACKUP".into(),
            to: "MASTER".into(),
            reason: "peer_silent".into(),
            count: 1,
        }],
        hook_totals: vec![HookTotal {
            state: "MASTER".into(),
            runs: 2,
            failures: 1,
        }],
        database: Some(DatabaseStatus {
            server: "203.0.113.11:3306".into(),
            role: "primary".into(),
            up: true,
            fit: true,
            replication: Some(ReplicationStatus {
                io_running: "Yes".into(),
                sql_running: true,
                seconds_behind: Some(0),
                ..Default::default()
            }),
            semisync_effective: Some(true),
            last_promotion: Some(PromotionStatus {
                took_ms: 17.5,
                caught_up: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        atlas: Some(AtlasSection {
            admin_address: "127.0.0.1:2345".into(),
            reachable: true,
            in_sync: true,
            backends: vec![AtlasBackend {
                address: "203.0.113.100:3306".into(),
                kind: "rw".into(),
                state: "up".into(),
            }],
            rounds: 40,
            failures_total: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn status_becomes_metrics() {
    let text = render(&full_status());
    for want in [
        "# TYPE ha_agent_role gauge",
        "ha_agent_role{role=\"MASTER\"} 1",
        "ha_agent_role{role=\"BACKUP\"} 0",
        "ha_agent_epoch 3",
        "ha_agent_peer_alive 1",
        "ha_agent_vips_held 1",
        "ha_agent_link_peer_up{interface=\"eth0\",link=\"outside\"} 1",
        "ha_agent_link_peer_last_seen_seconds{interface=\"eth1\",link=\"inside\"} 0.003",
        "# TYPE ha_agent_link_probes_received_total counter",
        "ha_agent_link_probes_received_total{interface=\"eth1\",link=\"inside\"} 1000",
        "ha_agent_link_probes_lost_total{interface=\"eth0\",link=\"outside\"} 2",
        "ha_agent_link_probes_rejected_total{interface=\"eth0\",link=\"outside\"} 1",
        "ha_agent_link_witness_up{interface=\"eth0\",link=\"outside\",witness=\"198.51.100.1\"} 1",
        "# TYPE ha_agent_sender_lateness_seconds histogram",
        "ha_agent_sender_lateness_seconds_count 5000",
        "ha_agent_sender_lateness_seconds_bucket{le=\"0.0001\"} 4900",
        "ha_agent_sender_lateness_seconds_bucket{le=\"+Inf\"} 5000",
        "ha_agent_sender_witness_requests_total{to=\"unicast\"} 298",
        "ha_agent_sender_witness_requests_total{to=\"broadcast\"} 2",
        "ha_agent_false_alarms_total 0",
        "ha_agent_transitions_total{from=\"BACKUP\",reason=\"peer_silent\",to=\"MASTER\"} 1",
        "ha_agent_hook_runs_total{state=\"MASTER\"} 2",
        "ha_agent_hook_failures_total{state=\"MASTER\"} 1",
        "ha_agent_database_role{role=\"primary\"} 1",
        "ha_agent_database_replication_lag_seconds 0",
        "ha_agent_database_replication_io_running 1",
        "ha_agent_database_semisync_effective 1",
        "ha_agent_database_last_promotion_duration_seconds 0.0175",
        "ha_agent_atlas_in_sync 1",
        "ha_agent_atlas_serving 1",
        "ha_agent_atlas_backends{state=\"up\",type=\"rw\"} 1",
        "ha_agent_atlas_errors_total 2",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn absent_sections_and_bad_histograms_are_left_out() {
    let mut s = full_status();
    s.database = None;
    s.atlas = None;
    if let Some(sender) = &mut s.sender {
        sender.lateness.counts.pop();
    }
    let text = render(&s);
    for absent in ["database_", "atlas_", "lateness"] {
        assert!(!text.contains(absent), "{absent} in:\n{text}");
    }
    // A fresh agent: nothing but the node's own metrics.
    let text = render(&Status {
        node: "n".into(),
        state: "INIT".into(),
        ..Default::default()
    });
    assert!(text.contains("ha_agent_role{role=\"INIT\"} 1"));
    assert!(!text.contains("link_"), "{text}");
}

/// `promtool check metrics` when promtool is installed (`cargo xtask
/// setup` installs it; the lab test `metrics_scraped_from_running_agents`
/// requires it).
#[test]
fn promtool_accepts_the_rendering() {
    let text = render(&full_status());
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed (cargo xtask setup installs it): not checked here");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn http_endpoint_serves_the_snapshot() {
    // The server and a stand-in for the agent's loop, on their own thread.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (tx, mut rx) = mpsc::channel::<(
                crate::operator::status::server::Request,
                oneshot::Sender<Reply>,
            )>(8);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            tokio::spawn(serve(listener, tx));
            // Answers "status" once, then holds the next request unanswered.
            if let Some((cmd, reply)) = rx.recv().await {
                assert_eq!(cmd, crate::operator::status::server::Request::Status);
                let _ = reply.send(Reply::Status(Box::new(full_status())));
            }
            let _held = rx.recv().await;
            std::future::pending::<()>().await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Clients that never send a request do not block a scrape.
    let _silent: Vec<_> = (0..MAX_SCRAPES - 1)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let ok = get(addr, "/metrics");
    assert!(
        ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
        "{ok}"
    );
    assert!(ok.contains(CONTENT_TYPE), "{ok}");
    assert!(ok.contains("ha_agent_role{role=\"MASTER\"} 1"), "{ok}");
    assert!(get(addr, "/nope").contains(" 404 "));
    // The agent does not answer: 503, within the snapshot timeout.
    let t = std::time::Instant::now();
    let busy = get(addr, "/metrics");
    assert!(busy.contains(" 503 "), "{busy}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_taken_port_is_an_error_naming_the_field() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let e = spawn(taken.local_addr().unwrap(), tx).await.unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    });
}
