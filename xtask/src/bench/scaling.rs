//! `cargo xtask bench scaling`: how ha-agent's takeover grows with the
//! number of VIPs in the group.
//!
//! For each size (2, 32, 256 by default; half the VIPs on each link, from
//! `.100` up in each lab subnet, see `ha_lab::vips`), `--trials` trials of
//! server1's death (its daemon frozen, then both links down; or
//! `--fault links_down`) on a fresh lab whose two agents carry
//! that group, sizes interleaved (trial i of every size before trial i+1).
//! Timed from the fault, with the monotonic clock: the first and the last
//! of the group's VIPs on server2 (kernel address events, watched under
//! SCHED_FIFO so the stamps are not late behind the agent's own real-time
//! threads), the first gratuitous ARP from server2 for the group's last
//! outside VIP (the last in the config, the last the agent asks for) and the
//! first client reply via server2 on it (the client pings it every 2 ms),
//! and the longest reply gap; plus server2's own account of its netlink
//! batch ("VIPs added ... took_us").

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use ha_lab::Lab;
use serde_json::json;

use super::contender::Contender;
use super::table::{Columns, Metric};
use super::timers::AgentTimers;
use super::trial::{self, Fault, TrialResult};
use super::{
    agent_bin, first_line, log_dir, require, table_json, write_json, Ctx, Run, RunArgs, LAB_BASE,
};

#[derive(Args)]
pub struct ScalingArgs {
    /// Comma-separated group sizes (even, 2 to 256).
    #[arg(long, value_delimiter = ',', default_value = "2,32,256")]
    sizes: Vec<usize>,
    /// Trials per size.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// The fault on server1: death (its daemon frozen, then both links
    /// down: it cannot speak once the fault begins), or links_down (the two
    /// switch ports down one after the other: server1 may see the first
    /// carrier loss and hand over through the other port, which is not
    /// detection).
    #[arg(long, default_value = "death")]
    fault: String,
    /// The client's ping interval, in ms.
    #[arg(long, default_value_t = 2)]
    ping_interval_ms: u64,
    #[command(flatten)]
    out: RunArgs,
    #[command(flatten)]
    timers: AgentTimers,
}

/// One row of the table: title, JSON key, how to read it from a trial.
const METRICS: [Metric<TrialResult>; 8] = [
    ("fault -> first VIP on server2 (ms)", "first_vip_ms", |t| {
        t.first_vip_ms
    }),
    ("fault -> every VIP on server2 (ms)", "vips_ms", |t| {
        t.vips_ms
    }),
    ("first -> last VIP on server2 (ms)", "spread_ms", |t| {
        Some(t.vips_ms? - t.first_vip_ms?)
    }),
    (
        "server2's own account: VIPs added took (ms)",
        "agent_add_ms",
        |t| t.agent_add_us.map(|u| u / 1000.0),
    ),
    (
        "fault -> first GARP for the last VIP at the client (ms)",
        "garp_ms",
        |t| t.garp_ms,
    ),
    (
        "fault -> first client reply via server2 on the last VIP (ms)",
        "reply_ms",
        |t| t.reply_ms,
    ),
    (
        "client outage on the last VIP: last reply before server2's first (ms)",
        "outage_ms",
        |t| t.outage_ms,
    ),
    (
        "longest client reply gap on the last VIP (ms)",
        "gap_ms",
        |t| t.gap_ms,
    ),
];

pub fn main(root: &Path, a: ScalingArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    if a.sizes.is_empty() {
        bail!("no --sizes given");
    }
    if !(1..=200).contains(&a.trials) {
        bail!("--trials must be between 1 and 200");
    }
    if !(1..=100).contains(&a.ping_interval_ms) {
        bail!("--ping-interval-ms must be between 1 and 100");
    }
    a.timers.check()?;
    let fault = Fault::parse(&a.fault)?;
    let groups = a
        .sizes
        .iter()
        .map(|&n| ha_lab::vips::vip_group(n))
        .collect::<Result<Vec<_>>>()?;
    require(&["nft", "ip"])?;
    let bin = agent_bin(root, &[Contender::HaAgent], a.out.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let run = Run::start();
    let dir = log_dir(a.out.logs.clone(), "scaling", &run);
    let ctxs: Vec<Ctx> = groups
        .into_iter()
        .map(|g| {
            let mut c = Ctx::new(
                bin.clone(),
                Duration::from_millis(a.ping_interval_ms),
                dir.clone(),
            );
            c.timers = a.timers.clone();
            c.group = Some(g);
            c
        })
        .collect();
    println!(
        "bench scaling: {} trial(s) x sizes {:?}, fault {}; ha-agent: {}; client pings the last VIP every {} ms; load average {}; logs of failures in {}",
        a.trials,
        a.sizes,
        fault.name(),
        a.timers,
        a.ping_interval_ms,
        run.load_start,
        dir.display()
    );
    let mut trials: Vec<(usize, TrialResult)> = Vec::new();
    for i in 0..a.trials {
        for (ctx, &n) in ctxs.iter().zip(&a.sizes) {
            let r = trial::run(ctx, Contender::HaAgent, fault, i)?;
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
            match &r.failure {
                None => println!(
                    "bench scaling: {n:>3} VIPs {:>2}/{}: first {} ms, all {} ms (agent: {} ms), GARP {} ms, reply {} ms, outage {} ms, gap {} ms (from {} ms, {} request(s) in it); server2: {}; load {}",
                    i + 1,
                    a.trials,
                    f(r.first_vip_ms),
                    f(r.vips_ms),
                    f(r.agent_add_us.map(|u| u / 1000.0)),
                    f(r.garp_ms),
                    f(r.reply_ms),
                    f(r.outage_ms),
                    f(r.gap_ms),
                    f(r.gap_start_ms),
                    r.gap_requests.map_or("-".into(), |n| n.to_string()),
                    r.takeover_reason.as_deref().unwrap_or("?"),
                    r.loadavg
                ),
                Some(e) => println!(
                    "bench scaling: {n:>3} VIPs {:>2}/{}: FAILED: {}",
                    i + 1,
                    a.trials,
                    first_line(e)
                ),
            }
            trials.push((n, r));
        }
    }
    let columns: Vec<String> = a.sizes.iter().map(|n| format!("{n} VIPs")).collect();
    let rows = rows(&a.sizes, &trials);
    super::table::print(
        format!("{} (min / median / max)", fault.title()),
        &columns,
        &rows,
    );
    let load_end = run.done("scaling");
    if let Some(path) = &a.out.json {
        let meta = run.meta(
            root,
            bin.as_deref(),
            &load_end,
            json!({"agent_timers": a.timers.json(), "ping_interval_ms": a.ping_interval_ms, "fault": fault.name()}),
        );
        let v = json!({
            "meta": meta,
            "sizes": a.sizes,
            "table": table_json(&rows, &columns),
            "summary": grouped(&a.sizes, &trials).summary(&METRICS, |n| n.to_string()),
            "trials": trials.iter().map(|(_, t)| t.json()).collect::<Vec<_>>(),
        });
        write_json(path, &v)?;
        println!("bench scaling: JSON written to {}", path.display());
    }
    Ok(())
}

fn grouped<'a>(
    sizes: &'a [usize],
    trials: &'a [(usize, TrialResult)],
) -> Columns<'a, usize, TrialResult> {
    Columns {
        keys: sizes,
        results: trials,
        failed: |t| t.failure.is_some(),
    }
}

fn rows(sizes: &[usize], trials: &[(usize, TrialResult)]) -> Vec<(String, Vec<String>)> {
    let cols = grouped(sizes, trials);
    let mut rows = cols.rows(&METRICS);
    let detection = sizes
        .iter()
        .map(|n| trial::detection_share(cols.ok(n)))
        .collect();
    rows.insert(
        rows.len() - 1,
        ("takeovers by silence detection".into(), detection),
    );
    rows
}
