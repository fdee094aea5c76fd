//! `cargo xtask fuzz [--secs N] [TARGET...]`: runs the cargo-fuzz targets of
//! `fuzz/` one after another (nightly, address sanitizer, debug assertions
//! so arithmetic overflows are crashes), each for N seconds, and prints how
//! many inputs each ran. The corpus grows in `fuzz/corpus/<target>`; each
//! run also starts from seeds written here (signed probes from
//! `protocol::encode`, the shipped configs, GTID texts, an Atlas session).
//! A crash fails the run and names the input that crashed.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::setup;

pub const TARGETS: &[&str] = &[
    "probe_decode",
    "config",
    "gtid",
    "atlas_replies",
    "mysql_replies",
];

/// What one target's run did.
struct Outcome {
    target: String,
    runs: Option<u64>,
    secs: f64,
    /// The crashing input, when it crashed.
    crash: Option<String>,
    log: PathBuf,
    ok: bool,
}

pub fn run(root: &Path, secs: u64, only: &[String]) -> Result<()> {
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}; the targets are {TARGETS:?}");
        }
    }
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    setup::ensure_cargo_fuzz()?;
    let work = root.join("target/fuzz-runs");
    let seeds = work.join("seeds");
    write_seeds(root, &seeds)?;
    println!("xtask: building the fuzz targets (nightly, address sanitizer)");
    let status = cargo_fuzz(root, "build")
        .status()
        .context("cannot run cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(run_one(root, &work, &seeds, t, secs)?);
    }
    println!("xtask: fuzzing, {secs} s per target:");
    for o in &outcomes {
        let runs = o.runs.map_or("?".to_string(), |r| r.to_string());
        let rate = o.runs.map_or(0.0, |r| r as f64 / o.secs.max(0.001));
        println!(
            "  {:<14} {runs:>11} runs in {:>6.1} s ({rate:>8.0}/s)  {}",
            o.target,
            o.secs,
            match (&o.crash, o.ok) {
                (Some(input), _) => format!("CRASH: {input}"),
                (None, true) => "no crash".to_string(),
                (None, false) => format!("FAILED (see {})", o.log.display()),
            }
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {failed:?}; reproduce with `cargo +nightly fuzz run TARGET INPUT`, \
             then turn the input into a regression test in the normal test suite"
        );
    }
    Ok(())
}

fn run_one(root: &Path, work: &Path, seeds: &Path, target: &str, secs: u64) -> Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let log = work.join(format!("{target}.log"));
    println!(
        "xtask: fuzzing {target} for {secs} s (log: {})",
        log.display()
    );
    let start = Instant::now();
    let mut child = cargo_fuzz(root, "run")
        .arg(target)
        .arg(&corpus)
        .arg(seeds.join(target))
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
            // A slow input is a finding too (the quadratic GTID parse was).
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-max_len=65536",
            // LeakSanitizer needs ptrace, which this VM blocks; a leak is
            // not what these targets look for.
            "-detect_leaks=0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cargo fuzz run")?;
    // libFuzzer reports on stderr; keep all of it in the log, scan for the figures.
    let mut text = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(s, "{line}");
        }
        s
    });
    let (mut runs, mut crash) = (None, None);
    for line in BufReader::new(child.stderr.take().context("no stderr")?)
        .lines()
        .map_while(Result::ok)
    {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            runs = n.trim().parse().ok();
        }
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            crash = Some(path.trim().to_string());
        }
        if line.contains("panicked at") || line.starts_with("==") {
            eprintln!("  {target}: {line}");
        }
        let _ = writeln!(text, "{line}");
    }
    let status = child.wait()?;
    text.push_str(&out_thread.join().unwrap_or_default());
    std::fs::write(&log, &text)?;
    Ok(Outcome {
        target: target.to_string(),
        runs,
        secs: start.elapsed().as_secs_f64(),
        ok: status.success() && crash.is_none(),
        crash,
        log,
    })
}

/// `cargo +nightly fuzz SUB` with the fuzz targets' own target directory and
/// without the outer (stable) cargo's compiler settings.
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["+nightly", "fuzz", sub, "--fuzz-dir", "fuzz"])
        .arg("--target-dir")
        .arg(root.join("target/fuzz"))
        // Overflow checks on: an overflow is a crash, as in the tests.
        .arg("--debug-assertions")
        .env("PATH", setup::tool_path());
    setup::clear_outer_toolchain(&mut cmd);
    cmd
}

/// Seed inputs per target, rewritten on each run from the current code.
fn write_seeds(root: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let mut n = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        n += 1;
        Ok(())
    };
    for (i, seed) in probe_seeds().iter().enumerate() {
        put("probe_decode", &format!("signed-{i}"), seed)?;
    }
    for name in ["server1.toml", "server2.toml"] {
        let text = std::fs::read_to_string(root.join("config").join(name))
            .with_context(|| format!("reading config/{name}"))?;
        put("config", name, text.as_bytes())?;
        put(
            "config",
            &format!("full-{name}"),
            full_config(name, &text).as_bytes(),
        )?;
    }
    for (i, text) in GTID_SEEDS.iter().enumerate() {
        put("gtid", &format!("seed-{i}"), text.as_bytes())?;
    }
    put("atlas_replies", "backends", &atlas_session())?;
    for (i, text) in MYSQL_SEEDS.iter().enumerate() {
        put("mysql_replies", &format!("seed-{i}"), text.as_bytes())?;
    }
    println!("xtask: {n} seed inputs in {}", dir.display());
    Ok(())
}

/// Probes as the agent sends them: the 32-byte key the target reads first,
/// then a signed probe, then its template and a sequence number (the
/// target signs that itself, see fuzz/fuzz_targets/probe_decode.rs).
fn probe_seeds() -> Vec<Vec<u8>> {
    use ha_agent::decisions::election::{Control, Role};
    use ha_agent::protocol::{Key, Origin, Signer, Template};
    let key_bytes = *b"ha-agent fuzz key, not a secret!";
    let signer = Signer::new(&Key::from_bytes(&key_bytes));
    let mut out = Vec::new();
    for (i, role) in [Role::Init, Role::Backup, Role::Master, Role::Fault]
        .into_iter()
        .enumerate()
    {
        let c = Control {
            role,
            priority: 100 + i as u8,
            epoch: [0, 1, 7, u64::MAX][i],
            eligible: i != 3,
            want_takeover: i == 1,
            witness_reach: (i % 2) as u8,
            witness_count: 1,
            links_up: 0b11,
            witness_links: (i % 2) as u8,
            router_id: 0xC633_640C,
            replica_ok: i == 1,
            fresh_takeover: i == 2,
            semisync: ha_agent::decisions::database::SemisyncAdvert::None,
        };
        let origin = Origin {
            sender: std::net::Ipv4Addr::new(198, 51, 100, 12),
            token: 0x1122_3344_5566_7788,
            boot: 1_796_000_000_000 + i as u64,
            node: ["server1", "server2", "", "sixteen-bytes-xx"][i].into(),
            lease_ms: 24,
        };
        let t = Template::new(&origin, i as u8 % 2, i as u32 + 1, 0x0A0B_0C0D, &c);
        let seq = (1000 + i as u64) << 8;
        let p = signer.finish(&t, seq, 3);
        out.push([&key_bytes[..], &p[..], &t.0[..], &seq.to_be_bytes()[..]].concat());
    }
    out
}

/// A shipped config with every optional section it lacks added.
fn full_config(name: &str, text: &str) -> String {
    let peer = if name == "server1.toml" {
        "192.168.1.101"
    } else {
        "192.168.1.100"
    };
    let has = |header: &str| text.lines().any(|l| l.trim() == header);
    let mut out = text.to_string();
    for section in CONFIG_SECTIONS
        .split("\n[")
        .filter(|s| !s.trim().is_empty())
    {
        let section = format!("[{}", section.trim_start_matches('['));
        let header = section.lines().next().unwrap_or_default().trim();
        if !has(header) {
            out.push('\n');
            out.push_str(&section.replace("PEER", peer));
        }
    }
    out
}

/// Every optional section, for the config seeds.
const CONFIG_SECTIONS: &str = r#"
[garp]
count = 3
spacing_ms = 10
refresh_ms = 1000

[hooks]
notify_master = "/etc/keepalived/notify.sh 'master arg'"
notify = "/usr/local/bin/notify"
timeout_ms = 10000

[ebpf]
xdp_mode = "generic"

[mysql]
user = "ha_agent"
password_file = "/etc/ha-agent/mysql-password"
replication_user = "repl"
replication_password_file = "/etc/ha-agent/repl-password"
peer_address = "PEER:3306"
catchup_policy = "stay_read_only"

[atlas]
user = "admin"
password_file = "/etc/ha-agent/atlas-password"
persist = "cnf"
cnf_path = "/usr/local/mysql-proxy/conf/my.cnf"
"#;

const GTID_SEEDS: &[&str] = &[
    "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3|3e11fa47-71ca-11e1-9e33-c80aa9429562:1-40:50-60",
    "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:Mytag:1-3:9|3e11fa47-71ca-11e1-9e33-c80aa9429562:mytag:1-3",
    "3e11fa4771ca11e19e33c80aa9429562:1:3:5:7:9:11|3e11fa47-71ca-11e1-9e33-c80aa9429562:2-8",
    "0-1-100,0-2-120,1-2-5|0-1-90,0-2-120",
    "0-1-250,0-2-200|0-1-100,0-2-260",
    "0-1-4294967295,7-1-4|",
];

const MYSQL_SEEDS: &[&str] = &[
    "10.11.19-MariaDB-0+deb12u1-log\nmariadb.org binary distribution\nSlave_IO_Running=Yes\nSlave_SQL_Running=Yes\nMaster_Host=203.0.113.11\nMaster_Port=3306\nUsing_Gtid=Slave_Pos\nGtid_IO_Pos=0-1-100,1-2-5\nGtid_Slave_Pos=0-1-90,1-2-5\nSeconds_Behind_Master=0\nLast_IO_Errno=0\nLast_IO_Error=\nLast_SQL_Errno=1062\nLast_SQL_Error=Duplicate entry\nSlave_SQL_Running_State=Slave has read all relay log\nuser:repl\npassword:s3cret\nmariadb-bin.000001\n/var/lib/mysql/mariadb-bin.000002\nBINLOG 'AAAA'\n",
    "8.0.36\nMySQL Community Server - GPL\nReplica_IO_Running=Connecting\nReplica_SQL_Running=No\nSource_Host=203.0.113.11\nSource_Port=3306\nRetrieved_Gtid_Set=3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100\nExecuted_Gtid_Set=3e11fa47-71ca-11e1-9e33-c80aa9429562:1-90\nSeconds_Behind_Source\nLast_IO_Errno=2003\nLast_IO_Error=error connecting\nuser:repl\npassword:pw\n",
    "5.5.5-10.3.39-MariaDB\n\nSlave_IO_Running=No\nSlave_SQL_Running=Yes\nUsing_Gtid=No\nGtid_Slave_Pos=\n",
];

/// One Atlas admin session as the client reads it: greeting, login OK, the
/// backends result set. Packets are framed as the target reads them (2-byte
/// little-endian length, then the payload).
fn atlas_session() -> Vec<u8> {
    let lenenc = |p: &mut Vec<u8>, s: &[u8]| {
        p.push(s.len() as u8);
        p.extend_from_slice(s);
    };
    let mut greeting = vec![10];
    greeting.extend_from_slice(b"5.0.99-agent-admin\0");
    greeting.extend_from_slice(&1u32.to_le_bytes());
    greeting.extend_from_slice(b"abcdefgh\0");
    // LONG_PASSWORD | PROTOCOL_41 | SECURE_CONNECTION, what Atlas offers.
    greeting.extend_from_slice(&0x8201u16.to_le_bytes());
    greeting.push(8);
    greeting.extend_from_slice(&2u16.to_le_bytes());
    greeting.extend_from_slice(&0u16.to_le_bytes());
    greeting.push(21);
    greeting.extend_from_slice(&[0; 10]);
    greeting.extend_from_slice(b"ijklmnopqrst\0");
    let ok = vec![0, 0, 0, 2, 0, 0, 0];
    let mut packets = vec![greeting, ok, vec![4]];
    for name in ha_agent::drivers::atlas::table::COLUMNS {
        let mut c = Vec::new();
        for part in [&b"def"[..], b"", b"backends", b"backends"] {
            lenenc(&mut c, part);
        }
        lenenc(&mut c, name.as_bytes());
        lenenc(&mut c, name.as_bytes());
        c.push(0x0c);
        c.extend_from_slice(&8u16.to_le_bytes());
        c.extend_from_slice(&64u32.to_le_bytes());
        c.push(254);
        c.extend_from_slice(&[0, 0, 0, 0, 0]);
        packets.push(c);
    }
    let eof = vec![0xFE, 0, 0, 2, 0];
    packets.push(eof.clone());
    for row in [
        ["1", "203.0.113.100:3306", "up", "rw"],
        ["2", "203.0.113.11:3306", "unknown", "ro"],
    ] {
        let mut r = Vec::new();
        for v in row {
            lenenc(&mut r, v.as_bytes());
        }
        packets.push(r);
    }
    packets.push(eof);
    let mut out = Vec::new();
    for p in packets {
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(&p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_agent::drivers::atlas::client::parsers;

    #[test]
    fn probe_seeds_verify_with_their_key() {
        use ha_agent::protocol::{decode, Key, Signer, PROBE_LEN};
        for seed in probe_seeds() {
            let (key, rest) = seed.split_at(32);
            let signer = Signer::new(&Key::from_bytes(key));
            decode(&signer, &rest[..PROBE_LEN]).unwrap();
        }
    }

    #[test]
    fn the_atlas_seed_is_a_whole_session() {
        let data = atlas_session();
        let mut packets = Vec::new();
        let mut rest = &data[..];
        while let Some((len, tail)) = rest.split_first_chunk::<2>() {
            let (p, tail) = tail.split_at(u16::from_le_bytes(*len) as usize);
            packets.push(p);
            rest = tail;
        }
        assert_eq!(packets.len(), 2 + 1 + 4 + 1 + 2 + 1);
        let (version, _) = parsers::greeting(packets[0]).unwrap();
        assert_eq!(version, "5.0.99-agent-admin");
        assert_eq!(parsers::ok(packets[1]), Ok(0));
        assert_eq!(parsers::column_count(packets[2]), Ok(4));
        let names: Vec<String> = packets[3..7]
            .iter()
            .map(|p| parsers::column(p).unwrap().name)
            .collect();
        assert!(parsers::is_eof(packets[7]));
        let rows: Vec<_> = packets[8..10]
            .iter()
            .map(|p| parsers::row(p, 4).unwrap())
            .collect();
        assert!(parsers::is_eof(packets[10]));
        let table = ha_agent::drivers::atlas::table::parse_backends(&names, &rows).unwrap();
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_config_seeds_are_valid_configs() {
        let root = crate::workspace_root();
        for name in ["server1.toml", "server2.toml"] {
            let text = std::fs::read_to_string(root.join("config").join(name)).unwrap();
            ha_agent::operator::config::Config::parse(&full_config(name, &text), Path::new(name))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
