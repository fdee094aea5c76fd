//! `cargo xtask bench failover`: ha-agent and keepalived (the seed's config
//! and a tuned VRRPv3 one) side by side, in one run, on the same lab.
//!
//! For each contender: `--trials` trials of each fault on server1 (links
//! down, silent isolation, daemon SIGSTOP, outside cable unplugged), each
//! on a fresh lab with a settled pair; then a soak under CPU saturation and
//! packet loss counting false failovers; then the behaviour checks. Trials
//! are interleaved (trial i of every fault and contender before trial i+1)
//! so a change in the machine's background load hits every contender alike.
//!
//! The other benchmarks: `soak` (idle and hostile soaks, ha-agent beside
//! keepalived), `rest` (CPU and memory at rest), `database`, `tradeoff`
//! (ha-agent's interval x multiplier settings: false alarms, detection,
//! cost), `scaling` (takeover time with 2 to 256 VIPs) and `latency`
//! (kernel event to VIP added, with a busy database side).
//!
//! Every lab is removed after its trial, on error and on Ctrl-C; every
//! daemon, pinger and stress-ng is killed by pid (and the lab's teardown
//! kills whatever is left in its namespaces).

mod agent_log;
mod arp;
mod checks;
mod contender;
mod database;
mod latency;
mod plot;
mod report;
mod rest;
mod scaling;
mod soak;
mod table;
mod timers;
mod tradeoff;
mod trial;
mod watch;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ha_lab::{Lab, Link, Overrides};
use serde_json::{json, Value};

use contender::Contender;
use timers::AgentTimers;
use watch::WatchOptions;

/// Bench labs use their own prefix base, so `ip netns` tells them apart
/// from the tests' labs (and a crashed bench's leftovers are found).
const LAB_BASE: &str = "hb";

#[derive(Subcommand)]
pub enum BenchCmd {
    /// ha-agent vs keepalived: failover times, soak, behaviour checks.
    Failover(FailoverArgs),
    /// CPU and memory of a settled pair when nothing happens.
    Rest(RestArgs),
    /// MySQL and Atlas through failover and rejoin (semi-sync on).
    Database(DatabaseArgs),
    /// Draw a failover run's JSON (from `bench failover --json`) as SVG.
    Plot(PlotArgs),
    /// Settled pairs left alone (idle, hostile): every VIP move, the
    /// agents' false alarms and sender lateness, beside keepalived.
    Soak(SoakArgs),
    /// ha-agent's interval x multiplier settings: soak false alarms,
    /// detection when server1 dies, CPU and memory at rest, one column each.
    Tradeoff(tradeoff::TradeoffArgs),
    /// Takeover time with 2, 32 and 256 VIPs in the group.
    Scaling(scaling::ScalingArgs),
    /// Kernel event to VIP added on server2, database side quiet or busy.
    Latency(latency::LatencyArgs),
}

#[derive(Args)]
pub struct PlotArgs {
    /// A `bench failover --json` file.
    json: PathBuf,
    /// Where to write the SVG (default: the JSON's path with .svg).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
pub struct SoakArgs {
    /// Duration of each soak, in seconds.
    #[arg(long, default_value_t = 1800)]
    secs: u64,
    /// Comma-separated: idle (no load at all), hostile (stress-ng --cpu 2,
    /// 2% loss on every server port, a client pinging every 10 ms).
    #[arg(long, value_delimiter = ',', default_value = "idle,hostile")]
    variants: Vec<String>,
    /// Comma-separated contenders (see `bench failover --help`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ha-agent,keepalived-tuned"
    )]
    contenders: Vec<String>,
    #[command(flatten)]
    out: RunArgs,
    #[command(flatten)]
    timers: AgentTimers,
}

/// What every newer bench takes about its run.
#[derive(Args)]
pub struct RunArgs {
    /// Also write the results (table and every run) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not build; use $HA_AGENT_BIN or the existing release binary.
    #[arg(long)]
    no_build: bool,
    /// Where to keep the lab logs of failed runs and of soaks that moved a
    /// VIP (default: a new directory under the temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[derive(Args)]
pub struct DatabaseArgs {
    /// Trials (each on a fresh stack).
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Semi-synchronous replication on both servers (`mysql.semisync`).
    #[arg(long)]
    semisync: bool,
    /// `mysql.durability` with --semisync: strict (the default) or available.
    #[arg(long, value_parser = ["strict", "available"])]
    durability: Option<String>,
    /// What happens to server1, the primary.
    #[arg(long, value_enum, default_value = "death")]
    fault: database::DbFault,
    /// Also write the results (table and every trial) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not build; use $HA_AGENT_BIN or the existing release binary.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct RestArgs {
    /// How long to sample, in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Comma-separated contenders (see `bench failover --help`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ha-agent,keepalived-tuned"
    )]
    contenders: Vec<String>,
    /// Do not build; use $HA_AGENT_BIN or the existing release binary.
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    timers: AgentTimers,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// Trials per fault and contender.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Soak duration per contender, in seconds (0: no soak).
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Comma-separated: ha-agent, keepalived-seed, keepalived-tuned (and the
    /// opt-in keepalived-tuned-rt: tuned plus vrrp_rt_priority 50).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ha-agent,keepalived-seed,keepalived-tuned"
    )]
    contenders: Vec<String>,
    /// Also write the results (table and every trial) as JSON here, and
    /// their picture beside it (same name, .svg).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The client's ping interval during trials, in ms (1 or 2).
    #[arg(long, default_value_t = 2)]
    ping_interval_ms: u64,
    /// Skip the behaviour checks.
    #[arg(long)]
    no_checks: bool,
    /// Do not build; use $HA_AGENT_BIN or the existing release binary.
    #[arg(long)]
    no_build: bool,
    /// Where to keep the lab logs of failed trials and checks
    /// (default: a new directory under the temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Keep the lab logs of every trial, not only of the failed ones (to
    /// read what the agents saw in the slow ones).
    #[arg(long)]
    all_logs: bool,
    /// Only these faults (comma-separated: links_down, isolate, hang,
    /// outside_carrier; default all four; also death: server1's daemon
    /// frozen at once, then its links down).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    #[command(flatten)]
    timers: AgentTimers,
}

/// What every trial needs.
pub struct Ctx {
    agent_bin: Option<PathBuf>,
    ping_interval: Duration,
    log_dir: PathBuf,
    /// Keep every trial's logs, not only the failed ones'.
    all_logs: bool,
    /// ha-agent's timers on both servers.
    timers: AgentTimers,
    /// A VIP group instead of the lab's two VIPs (ha-agent only).
    group: Option<Vec<(Link, Ipv4Addr)>>,
}

impl Ctx {
    pub fn new(agent_bin: Option<PathBuf>, ping_interval: Duration, log_dir: PathBuf) -> Ctx {
        Ctx {
            agent_bin,
            ping_interval,
            log_dir,
            all_logs: false,
            timers: AgentTimers::default(),
            group: None,
        }
    }

    /// ha-agent's config changes for both servers: the VIP group, the timers.
    pub fn agent_overrides(&self) -> Overrides {
        let base = match &self.group {
            Some(g) => ha_lab::vips::vip_overrides(Overrides::new(), g),
            None => Overrides::new(),
        };
        self.timers.overrides(base)
    }

    /// What the VIP watch follows: the group, or the lab's two VIPs.
    pub fn watch_options(&self) -> WatchOptions {
        let mut o = WatchOptions::default();
        if let Some(g) = &self.group {
            o.vips = g.iter().map(|(_, ip)| *ip).collect();
        }
        o
    }

    /// The VIP the client pings: the group's last outside VIP (the last in
    /// its config), or the lab's outside VIP.
    pub fn client_vip(&self) -> Ipv4Addr {
        self.group
            .as_ref()
            .and_then(|g| g.iter().rev().find(|(l, _)| *l == Link::Outside))
            .map_or(Link::Outside.vip(), |(_, ip)| *ip)
    }

    pub fn new_lab(&self) -> Result<Lab> {
        let mut lab = Lab::with_base(LAB_BASE)?;
        if let Some(b) = &self.agent_bin {
            lab.set_agent_bin(b);
        }
        Ok(lab)
    }

    /// Copies the lab's logs and configs to `<log dir>/<label>/` (before the
    /// lab and its directory go), the label prefixed with the agent's timers
    /// and VIP group when they are not the defaults (one run may try
    /// several); returns where, or None if nothing was saved.
    pub fn save_logs(&self, lab: &Lab, label: &str) -> Option<String> {
        let mut prefix = String::new();
        if self.timers != AgentTimers::default() {
            prefix.push_str(&format!("{}-", self.timers).replace(' ', "-"));
        }
        if let Some(g) = &self.group {
            prefix.push_str(&format!("{}vips-", g.len()));
        }
        let dest = self.log_dir.join(format!("{prefix}{label}"));
        std::fs::create_dir_all(&dest).ok()?;
        let mut n = 0;
        for e in std::fs::read_dir(lab.dir()).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = [".log", ".conf", ".toml"].iter().any(|x| name.ends_with(x));
            if keep && std::fs::copy(e.path(), dest.join(&name)).is_ok() {
                n += 1;
            }
        }
        (n > 0).then(|| dest.display().to_string())
    }
}

pub fn main(root: &Path, cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Failover(a) => failover(root, a),
        BenchCmd::Rest(a) => rest(root, a),
        BenchCmd::Database(a) => bench_database(root, a),
        BenchCmd::Plot(a) => {
            let svg = a.svg.unwrap_or_else(|| a.json.with_extension("svg"));
            plot::from_file(&a.json, &svg)?;
            println!("bench: picture written to {}", svg.display());
            Ok(())
        }
        BenchCmd::Soak(a) => bench_soak(root, a),
        BenchCmd::Tradeoff(a) => tradeoff::main(root, a),
        BenchCmd::Scaling(a) => scaling::main(root, a),
        BenchCmd::Latency(a) => latency::main(root, a),
    }
}

fn bench_soak(root: &Path, a: SoakArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    if !(10..=86_400).contains(&a.secs) {
        bail!("--secs must be between 10 and 86400");
    }
    a.timers.check()?;
    let variants: Vec<soak::Variant> = a
        .variants
        .iter()
        .map(|v| soak::Variant::parse(v))
        .collect::<Result<_>>()?;
    if variants.is_empty() {
        bail!("no soak variant given");
    }
    let contenders = parse_contenders(&a.contenders)?;
    let mut tools = vec!["nft", "ip"];
    if variants.contains(&soak::Variant::Hostile) {
        tools.push("stress-ng");
    }
    if contenders
        .iter()
        .any(|c| matches!(c, Contender::Keepalived(_)))
    {
        tools.push("keepalived");
    }
    require(&tools)?;
    let agent_bin = agent_bin(root, &contenders, a.out.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let run = Run::start();
    let mut ctx = Ctx::new(
        agent_bin.clone(),
        Duration::from_millis(10),
        log_dir(a.out.logs.clone(), "soak", &run),
    );
    ctx.timers = a.timers.clone();
    println!(
        "bench soak: {} s x {} variant(s) x {} contender(s) (about {:.0} min); ha-agent: {}; load average {}; logs of soaks that moved a VIP in {}",
        a.secs,
        variants.len(),
        contenders.len(),
        (a.secs as f64 + 15.0) * (variants.len() * contenders.len()) as f64 / 60.0,
        ctx.timers,
        run.load_start,
        ctx.log_dir.display()
    );
    let mut soaks = Vec::new();
    for &v in &variants {
        for &c in &contenders {
            println!("bench soak: {} / {c}: {} s ...", v.title(), a.secs);
            let s = soak::run(&ctx, c, a.secs, v)?;
            println!(
                "bench soak: {} / {c}: {} VIP address(es) added, {} holder change(s), dual {} ms{}",
                v.name(),
                s.vip_adds.map_or("?".into(), |m| m.to_string()),
                s.moves.map_or("?".into(), |m| m.to_string()),
                s.dual_ms.map_or("?".into(), |x| format!("{x:.1}")),
                s.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; FAILED: {}", first_line(f)))
            );
            soaks.push(s);
        }
    }
    println!();
    print!("{}", soak::table(&soaks));
    println!();
    for s in &soaks {
        print!("{}", soak::details(s));
    }
    let load_end = run.done("soak");
    if let Some(path) = &a.out.json {
        let meta = run.meta(
            root,
            agent_bin.as_deref(),
            &load_end,
            json!({"keepalived": keepalived_version(), "agent_timers": a.timers.json()}),
        );
        let v = json!({
            "meta": meta,
            "table": table_json(&soak::rows(&soaks), &soaks.iter().map(|s| format!("{}/{}", s.variant.name(), s.contender)).collect::<Vec<_>>()),
            "soaks": soaks.iter().map(soak::json_of).collect::<Vec<_>>(),
        });
        write_json(path, &v)?;
        println!("bench soak: JSON written to {}", path.display());
    }
    Ok(())
}

/// A table's rows as JSON objects, `{"metric": ..., <column>: <cell>, ...}`.
fn table_json(rows: &[(String, Vec<String>)], columns: &[String]) -> Value {
    Value::Array(
        rows.iter()
            .map(|(m, cells)| {
                let mut o = serde_json::Map::new();
                o.insert("metric".into(), json!(m));
                for (c, cell) in columns.iter().zip(cells) {
                    o.insert(c.clone(), json!(cell));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// Fails naming the first tool that is not installed.
fn require(tools: &[&str]) -> Result<()> {
    for tool in tools {
        if which(tool).is_none() {
            bail!("{tool} is not installed: run cargo xtask setup");
        }
    }
    Ok(())
}

/// `--logs`, or a new directory under the temp dir, created.
fn log_dir(given: Option<PathBuf>, what: &str, run: &Run) -> PathBuf {
    let d = given.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ha-bench-{what}-{}", run.date.replace(':', "")))
    });
    let _ = std::fs::create_dir_all(&d);
    d
}

fn bench_database(root: &Path, a: DatabaseArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    if !(1..=200).contains(&a.trials) {
        bail!("--trials must be between 1 and 200");
    }
    for tool in ["mariadbd", "mariadb", "nft", "ip"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed: run cargo xtask setup");
        }
    }
    let agent = agent_bin(root, &[Contender::HaAgent], a.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let run = Run::start();
    if a.durability.is_some() && !a.semisync {
        bail!("--durability needs --semisync");
    }
    let durability: Option<&'static str> = match a.durability.as_deref() {
        Some("available") => Some("available"),
        Some(_) => Some("strict"),
        None => None,
    };
    println!(
        "bench database: {} trial(s), fault {}, semi-sync {}{}; load average {}",
        a.trials,
        a.fault.name(),
        if a.semisync { "on" } else { "off" },
        durability.map(|d| format!(" ({d})")).unwrap_or_default(),
        run.load_start
    );
    let mut trials = Vec::new();
    for i in 0..a.trials {
        let t = database::run(i, a.semisync, durability, a.fault)?;
        database::print_trial(&t, a.trials);
        if let Some(f) = &t.failure {
            println!("{f}");
        }
        trials.push(t);
    }
    println!();
    print!("{}", database::table(&trials));
    let load_end = loadavg();
    println!(
        "\nbench database: done in {:.0} s; load average {} at the start, {load_end} at the end; kernel {}",
        run.started.elapsed().as_secs_f64(),
        run.load_start,
        kernel()
    );
    if let Some(path) = &a.json {
        let meta = run.meta(
            root,
            agent.as_deref(),
            &load_end,
            json!({"mariadb": mariadb_version(), "semisync": a.semisync, "durability": durability, "fault": a.fault.name()}),
        );
        write_json(path, &database::json(&trials, meta))?;
        println!("bench database: JSON written to {}", path.display());
    }
    Ok(())
}

fn mariadb_version() -> String {
    std::process::Command::new("mariadbd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn rest(root: &Path, a: RestArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    if !(5..=3600).contains(&a.secs) {
        bail!("--secs must be between 5 and 3600");
    }
    a.timers.check()?;
    let contenders = parse_contenders(&a.contenders)?;
    let agent_bin = agent_bin(root, &contenders, a.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let mut ctx = Ctx::new(
        agent_bin,
        Duration::from_millis(10),
        std::env::temp_dir().join(format!("ha-bench-rest-{}", std::process::id())),
    );
    ctx.timers = a.timers.clone();
    println!(
        "bench rest: {} s per contender; ha-agent: {}; load average {} (the figures need an idle machine)",
        a.secs,
        ctx.timers,
        loadavg()
    );
    let mut all = Vec::new();
    for &c in &contenders {
        let r = rest::run(&ctx, c, a.secs).with_context(|| {
            format!(
                "{c}: at-rest measurement failed (logs in {})",
                ctx.log_dir.display()
            )
        })?;
        all.extend(r);
    }
    println!();
    print!("{}", rest::table(&all));
    println!(
        "\nkernel {}, {} core(s); load average at the end {}",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    Ok(())
}

fn parse_contenders(names: &[String]) -> Result<Vec<Contender>> {
    let contenders: Vec<Contender> = names
        .iter()
        .map(|s| Contender::parse(s))
        .collect::<Result<_>>()?;
    if contenders.is_empty() {
        bail!("no contender given");
    }
    Ok(contenders)
}

/// The agent binary when ha-agent is a contender: built unless `no_build`.
fn agent_bin(root: &Path, contenders: &[Contender], no_build: bool) -> Result<Option<PathBuf>> {
    if !contenders.contains(&Contender::HaAgent) {
        return Ok(None);
    }
    Ok(Some(if no_build {
        ha_lab::agent_bin()?
    } else {
        crate::build(root)?
    }))
}

fn failover(root: &Path, a: FailoverArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    if a.trials == 0 && a.soak_secs == 0 && a.no_checks {
        bail!("nothing to do: --trials 0, --soak-secs 0 and --no-checks");
    }
    if !(1..=100).contains(&a.ping_interval_ms) {
        bail!("--ping-interval-ms must be between 1 and 100");
    }
    a.timers.check()?;
    let contenders = parse_contenders(&a.contenders)?;
    let faults: Vec<trial::Fault> = if a.faults.is_empty() {
        trial::Fault::ALL.to_vec()
    } else {
        a.faults
            .iter()
            .map(|f| trial::Fault::parse(f))
            .collect::<Result<_>>()?
    };
    require(&["keepalived", "stress-ng", "nft", "ip"])?;
    let agent_bin = agent_bin(root, &contenders, a.no_build)?;
    let stale = Lab::cleanup_orphans(LAB_BASE)?;
    if !stale.is_empty() {
        println!("bench: removed leftover labs of dead runs: {stale:?}");
    }
    let run = Run::start();
    let log_dir = a.logs.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ha-bench-{}", run.date.replace(':', "")))
    });
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut ctx = Ctx::new(
        agent_bin.clone(),
        Duration::from_millis(a.ping_interval_ms),
        log_dir,
    );
    ctx.timers = a.timers.clone();
    ctx.all_logs = a.all_logs;
    println!(
        "bench: {} trial(s) x {} fault(s) x {} contender(s), soak {} s each, checks {}; ping every {} ms; ha-agent: {}; load average {}; logs of failures in {}",
        a.trials,
        faults.len(),
        contenders.len(),
        a.soak_secs,
        if a.no_checks { "off" } else { "on" },
        a.ping_interval_ms,
        ctx.timers,
        run.load_start,
        ctx.log_dir.display()
    );

    let mut trials = Vec::new();
    for i in 0..a.trials {
        for &fault in &faults {
            for &c in &contenders {
                let r = trial::run(&ctx, c, fault, i)?;
                print_trial(&r, a.trials);
                trials.push(r);
            }
        }
    }
    let mut soaks = Vec::new();
    if a.soak_secs > 0 {
        for &c in &contenders {
            println!("bench: {c}: soak for {} s ...", a.soak_secs);
            let s = soak::run(&ctx, c, a.soak_secs, soak::Variant::Hostile)?;
            println!(
                "bench: {c}: soak: {} move(s), {} VIP address(es) added, dual {:?} ms, orphan {:?} ms, answered {:?}/{:?}{}",
                s.moves.map_or("?".into(), |m| m.to_string()),
                s.vip_adds.map_or("?".into(), |m| m.to_string()),
                s.dual_ms.map(|x| x.round()),
                s.orphan_ms.map(|x| x.round()),
                s.pings_answered,
                s.pings_sent,
                s.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; FAILED: {f}"))
            );
            if let Some(d) = &s.gap_detail {
                println!(
                    "bench: {c}: soak: longest client gap {:?} ms: {d}",
                    s.longest_gap_ms.map(|x| x.round())
                );
            }
            print!("{}", soak::details(&s));
            soaks.push(s);
        }
    }
    let mut check_results = Vec::new();
    if !a.no_checks {
        for &c in &contenders {
            for k in checks::Check::ALL {
                let r = checks::run(&ctx, c, k)?;
                println!(
                    "bench: {c}: check {}: {}: {}",
                    k.title(),
                    if r.passed { "PASS" } else { "FAIL" },
                    r.happened
                );
                check_results.push(r);
            }
        }
    }

    let report = report::Report {
        contenders: &contenders,
        trials: &trials,
        soaks: &soaks,
        checks: &check_results,
        n_trials: a.trials,
        soak_secs: a.soak_secs,
    };
    let load_end = loadavg();
    println!();
    print!("{}", report.table());
    println!();
    println!("{}", report.ratio_line());
    for r in &check_results {
        if !r.passed {
            println!(
                "\ncheck FAILED: {} / {}: {}",
                r.contender,
                r.check.title(),
                r.happened
            );
            for e in r.events.iter().take(20) {
                println!("    {e}");
            }
            if r.events.len() > 20 {
                println!("    ... {} more change(s)", r.events.len() - 20);
            }
        }
    }
    let failed: Vec<&trial::TrialResult> = trials.iter().filter(|t| t.failure.is_some()).collect();
    if !failed.is_empty() {
        println!("\nfailed trials:");
        for t in failed {
            println!(
                "  {} {} #{}: {}",
                t.contender,
                t.fault.name(),
                t.index,
                first_line(t.failure.as_deref().unwrap_or(""))
            );
        }
    }
    println!(
        "\nbench: done in {:.0} s; load average {} at the start, {load_end} at the end",
        run.started.elapsed().as_secs_f64(),
        run.load_start
    );
    if let Some(path) = &a.json {
        let meta = run.meta(
            root,
            agent_bin.as_deref(),
            &load_end,
            json!({
                "keepalived": keepalived_version(),
                "ping_interval_ms": a.ping_interval_ms,
                "log_dir": ctx.log_dir.display().to_string(),
                "agent_timers": a.timers.json(),
            }),
        );
        let v = report.json(meta);
        write_json(path, &v)?;
        println!("bench: JSON written to {}", path.display());
        let svg = path.with_extension("svg");
        plot::write(&v, &svg)?;
        println!("bench: picture written to {}", svg.display());
    }
    Ok(())
}

/// What every JSON report records about its run, taken at its start.
struct Run {
    date: String,
    command: String,
    load_start: String,
    started: Instant,
}

impl Run {
    fn start() -> Run {
        Run {
            date: date_utc(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            load_start: loadavg(),
            started: Instant::now(),
        }
    }

    /// Prints "bench WHAT: done in ...; load average ..."; returns the load
    /// average now.
    fn done(&self, what: &str) -> String {
        let load_end = loadavg();
        println!(
            "\nbench {what}: done in {:.0} s; load average {} at the start, {load_end} at the end; kernel {}",
            self.started.elapsed().as_secs_f64(),
            self.load_start,
            kernel()
        );
        load_end
    }

    /// The run's facts, plus the benchmark's own in `extra` (an object).
    fn meta(&self, root: &Path, agent_bin: Option<&Path>, load_end: &str, extra: Value) -> Value {
        let mut meta = json!({
            "date": self.date,
            "kernel": kernel(),
            "command": self.command,
            "agent_bin": agent_bin.map(|p| p.display().to_string()),
            "workspace_head": git(root, &["rev-parse", "HEAD"]),
            // Uncommitted agent changes in the workspace (a binary built
            // from it, rather than from HEAD, includes them).
            "workspace_agent_changes": git(root, &["status", "--porcelain", "agent", "agent-ebpf"]),
            "loadavg_start": self.load_start,
            "loadavg_end": load_end,
            "duration_s": self.started.elapsed().as_secs_f64(),
        });
        if let (Some(m), Value::Object(e)) = (meta.as_object_mut(), extra) {
            m.extend(e);
        }
        meta
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn print_trial(r: &trial::TrialResult, n: usize) {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    let head = format!(
        "bench: {:<19} {:<10} {:>2}/{n}",
        r.contender.name(),
        r.fault.name(),
        r.index + 1
    );
    match &r.failure {
        None => println!(
            "{head}: VIPs {} ms, GARP {} ms, reply {} ms, outage {} ms, gap {} ms (from {} ms, {} request(s) sent in it){}",
            f(r.vips_ms),
            f(r.garp_ms),
            f(r.reply_ms),
            f(r.outage_ms),
            f(r.gap_ms),
            f(r.gap_start_ms),
            r.gap_requests.map_or("-".into(), |n| n.to_string()),
            r.takeover_reason
                .as_ref()
                .map_or(String::new(), |x| format!("; server2: {x}"))
        ),
        Some(e) => println!("{head}: FAILED: {}", first_line(e)),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn date_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn git(root: &Path, args: &[&str]) -> String {
    std::process::Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn keepalived_version() -> String {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}
