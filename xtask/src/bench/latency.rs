//! `cargo xtask bench latency`: the decision latency of server2's agent,
//! from the kernel's event (its XDP timer found the peer silent on the last
//! link and wrote to the ring buffer) to the first VIP in server2's kernel,
//! with the database side quiet or busy.
//!
//! Sides:
//! - **quiet**: the lab's agents without `[mysql]` or `[atlas]`;
//! - **busy**: the seed's stack (`ha_lab::stack`: MariaDB 10.11 and a
//!   fixture Atlas per server, the agents with `[mysql]` and `[atlas]`),
//!   server1's MariaDB first given `--gtid-domains` GTID domains (so every
//!   GTID position the agents read and compare has that many entries: the
//!   database checks become slow), an application on server2 writing
//!   through the inside VIP without pause, server1 dying as in `bench
//!   database` (then its agent and mariadbd killed).
//!
//! The fault is server1's death, the bench's `death`: its agent frozen
//! (SIGSTOP), then its links down. With the links alone going down one
//! after the other, server1's agent may see the first carrier loss and hand
//! over through the other link: a takeover that no ring-buffer event
//! decided. A trial whose server2 did not take over by detecting the
//! silence fails.
//!
//! How the two ends are timed, and why: the event's time is the kernel's
//! own (`bpf_ktime_get_ns` in the event); the agent does not publish it,
//! but logs, when it reads the event, how old it was (`wake_us` of "peer
//! silent on its last link"), with the log line's wall-clock time
//! (microseconds): event = line time - wake_us. The VIP's arrival is seen
//! from the outside: the bench's netlink address watch in server2's
//! namespace, under SCHED_FIFO 80 (above the agent's threads, so its
//! stamps are not late behind a busy CPU), stamped with the monotonic clock
//! and mapped to the wall clock by a pair of readings taken at the fault
//! (the two clocks run at the same rate over the few milliseconds between;
//! netlink sockets give no kernel receive timestamp). The agent's own
//! figures are reported beside: `wake_us` (ring buffer to its loop) and
//! `took_us` of "VIPs added" (its netlink batch).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use ha_lab::stack::{replicating, stack, vip, Stack, StackOptions};
use ha_lab::writer::{Writer, WriterMode};
use ha_lab::{wait_until, wait_until_ok, Lab, Server};
use serde_json::{json, Value};

use super::agent_log::AgentLog;
use super::contender::{Contender, Pair};
use super::rest::Sample;
use super::table::{Columns, Metric};
use super::timers::AgentTimers;
use super::trial::{ms, DETECTION_REASON, MOVE_BOUND};
use super::watch::{VipWatch, WatchOptions};
use super::{
    agent_bin, first_line, log_dir, require, table_json, write_json, Ctx, Run, RunArgs, LAB_BASE,
};

const S1: Server = Server::S1;
const S2: Server = Server::S2;
/// Start-up and replication set-up of the stack.
const SETTLE: Duration = Duration::from_secs(60);
/// The window before the fault over which server2's agent's CPU is sampled.
const SAMPLE: Duration = Duration::from_secs(1);
/// What the agent logs when the kernel finds the peer silent on its last link.
const EVENT_LINE: &str = "peer silent on its last link";
const ADDED_LINE: &str = "VIPs added";

#[derive(Args)]
pub struct LatencyArgs {
    /// Trials per side.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Comma-separated: quiet (no database section), busy (MariaDB and
    /// Atlas under a writer, many GTID domains).
    #[arg(long, value_delimiter = ',', default_value = "quiet,busy")]
    sides: Vec<String>,
    /// GTID domains written on server1's MariaDB before the agents start
    /// (busy side): the size of every GTID position the agents handle.
    #[arg(long, default_value_t = 20_000)]
    gtid_domains: usize,
    #[command(flatten)]
    out: RunArgs,
    #[command(flatten)]
    timers: AgentTimers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Quiet,
    Busy,
}

impl Side {
    fn parse(s: &str) -> Result<Side> {
        match s.trim() {
            "quiet" => Ok(Side::Quiet),
            "busy" => Ok(Side::Busy),
            _ => bail!("unknown side {s:?} (known: quiet, busy)"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Side::Quiet => "quiet",
            Side::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct LatTrial {
    index: usize,
    /// Fault to the kernel's event on server2 (detection).
    event_ms: Option<f64>,
    /// Kernel event to the first / every VIP on server2.
    decision_ms: Option<f64>,
    all_ms: Option<f64>,
    /// Fault to every VIP on server2.
    fault_all_ms: Option<f64>,
    /// The agent's account: event age when its loop read it; its VIP batch.
    wake_ms: Option<f64>,
    took_ms: Option<f64>,
    /// server2's agent, in the second before the fault: CPU of the threads
    /// other than the election and the probe senders (% of one core).
    services_cpu: Option<f64>,
    /// The whole agent, same window.
    agent_cpu: Option<f64>,
    loadavg: String,
    failure: Option<String>,
    saved_logs: Option<String>,
}

pub fn main(root: &Path, a: LatencyArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    let sides = a
        .sides
        .iter()
        .map(|s| Side::parse(s))
        .collect::<Result<Vec<_>>>()?;
    if sides.is_empty() || !(1..=200).contains(&a.trials) {
        bail!("give at least one side and 1 to 200 --trials");
    }
    if a.gtid_domains > 100_000 {
        bail!("--gtid-domains must be at most 100000");
    }
    a.timers.check()?;
    let mut tools = vec!["nft", "ip"];
    if sides.contains(&Side::Busy) {
        tools.extend(["mariadbd", "mariadb"]);
    }
    require(&tools)?;
    let bin = agent_bin(root, &[Contender::HaAgent], a.out.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let run = Run::start();
    let mut ctx = Ctx::new(
        bin.clone(),
        Duration::from_millis(10),
        log_dir(a.out.logs.clone(), "latency", &run),
    );
    ctx.timers = a.timers.clone();
    println!(
        "bench latency: {} trial(s) per side ({}); busy side: {} GTID domains and a writer; ha-agent: {}; load average {}; logs of failures in {}",
        a.trials,
        a.sides.join(", "),
        a.gtid_domains,
        ctx.timers,
        run.load_start,
        ctx.log_dir.display()
    );
    let mut results: Vec<(Side, LatTrial)> = Vec::new();
    for i in 0..a.trials {
        for &side in &sides {
            let t = run_trial(&ctx, side, i, a.gtid_domains)?;
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
            match &t.failure {
                None => println!(
                    "bench latency: {:<5} {:>2}/{}: fault -> event {} ms, event -> first VIP {} ms, -> every VIP {} ms (agent: wake {} ms, add {} ms); server2 agent CPU before: {} % ({} % outside the election); load {}",
                    side.name(),
                    i + 1,
                    a.trials,
                    f(t.event_ms),
                    f(t.decision_ms),
                    f(t.all_ms),
                    f(t.wake_ms),
                    f(t.took_ms),
                    f(t.agent_cpu),
                    f(t.services_cpu),
                    t.loadavg
                ),
                Some(e) => println!(
                    "bench latency: {:<5} {:>2}/{}: FAILED: {}",
                    side.name(),
                    i + 1,
                    a.trials,
                    first_line(e)
                ),
            }
            results.push((side, t));
        }
    }
    let columns: Vec<String> = sides.iter().map(|s| s.name().to_string()).collect();
    let rows = grouped(&sides, &results).rows(&METRICS);
    super::table::print(
        "server2's decision (min / median / max)".to_string(),
        &columns,
        &rows,
    );
    let load_end = run.done("latency");
    if let Some(path) = &a.out.json {
        let meta = run.meta(
            root,
            bin.as_deref(),
            &load_end,
            json!({"agent_timers": a.timers.json(), "gtid_domains": a.gtid_domains}),
        );
        let v = json!({
            "meta": meta,
            "table": table_json(&rows, &columns),
            "summary": grouped(&sides, &results).summary(&METRICS, |s| s.name().to_string()),
            "trials": results.iter().map(|(s, t)| trial_json(*s, t)).collect::<Vec<_>>(),
        });
        write_json(path, &v)?;
        println!("bench latency: JSON written to {}", path.display());
    }
    Ok(())
}

const METRICS: [Metric<LatTrial>; 7] = [
    ("fault -> kernel event on server2 (ms)", "event_ms", |t| {
        t.event_ms
    }),
    (
        "kernel event -> first VIP on server2 (us)",
        "decision_us",
        |t| t.decision_ms.map(|x| x * 1000.0),
    ),
    ("kernel event -> every VIP on server2 (us)", "all_us", |t| {
        t.all_ms.map(|x| x * 1000.0)
    }),
    ("fault -> every VIP on server2 (ms)", "fault_all_ms", |t| {
        t.fault_all_ms
    }),
    (
        "agent's account: event age when its loop read it (us)",
        "wake_us",
        |t| t.wake_ms.map(|x| x * 1000.0),
    ),
    ("agent's account: VIPs added took (us)", "took_us", |t| {
        t.took_ms.map(|x| x * 1000.0)
    }),
    (
        "server2 agent CPU before the fault, outside the election and senders (% of a core)",
        "services_cpu",
        |t| t.services_cpu,
    ),
];

fn grouped<'a>(sides: &'a [Side], results: &'a [(Side, LatTrial)]) -> Columns<'a, Side, LatTrial> {
    Columns {
        keys: sides,
        results,
        failed: |t| t.failure.is_some(),
    }
}

fn trial_json(side: Side, t: &LatTrial) -> Value {
    json!({
        "side": side.name(),
        "index": t.index,
        "event_ms": t.event_ms,
        "decision_ms": t.decision_ms,
        "all_ms": t.all_ms,
        "fault_all_ms": t.fault_all_ms,
        "wake_ms": t.wake_ms,
        "took_ms": t.took_ms,
        "services_cpu": t.services_cpu,
        "agent_cpu": t.agent_cpu,
        "loadavg": t.loadavg,
        "failure": t.failure,
        "saved_logs": t.saved_logs,
    })
}

fn run_trial(ctx: &Ctx, side: Side, index: usize, domains: usize) -> Result<LatTrial> {
    let mut t = LatTrial {
        index,
        loadavg: super::loadavg(),
        ..Default::default()
    };
    let label = format!("latency-{}-{index}", side.name());
    match side {
        Side::Quiet => {
            let lab = match ctx.new_lab() {
                Ok(l) => l,
                Err(e) if ha_lab::interrupted() => return Err(e),
                Err(e) => {
                    t.failure = Some(format!("lab setup: {e:#}"));
                    return Ok(t);
                }
            };
            let r = quiet(ctx, &lab, &mut t);
            finish(ctx, &lab, &label, r, &mut t)?;
            lab.close()?;
        }
        Side::Busy => {
            let st = stack(StackOptions {
                lab_base: LAB_BASE,
                ..Default::default()
            });
            let mut st = match st {
                Ok(st) => st,
                Err(e) if ha_lab::interrupted() => return Err(e),
                Err(e) => {
                    t.failure = Some(format!("stack setup: {e:#}"));
                    return Ok(t);
                }
            };
            let r = busy(ctx, &mut st, domains, &mut t);
            finish(ctx, &st.lab, &label, r, &mut t)?;
            // The stack drops agents, Atlas, MariaDB, then the lab.
        }
    }
    Ok(t)
}

/// Records a failure (keeping the logs); only an interruption is an error.
fn finish(ctx: &Ctx, lab: &Lab, label: &str, r: Result<()>, t: &mut LatTrial) -> Result<()> {
    if let Err(e) = r {
        if ha_lab::interrupted() {
            return Err(e);
        }
        t.failure = Some(format!("{e:#}"));
    }
    if t.failure.is_some() || std::env::var_os("HA_BENCH_LOGS").is_some() {
        t.saved_logs = ctx.save_logs(lab, label);
    }
    Ok(())
}

fn quiet(ctx: &Ctx, lab: &Lab, t: &mut LatTrial) -> Result<()> {
    let watch = VipWatch::start_with(lab, Duration::from_secs(120), ctx.watch_options())?;
    let mut pair = Pair::start(lab, Contender::HaAgent, &watch, &ctx.agent_overrides())?;
    let pid = pair.get(S2)?.pids()[0];
    let r = measure(lab, &watch, pid, t, || {
        pair.get(S1)?.stop()?;
        lab.links_down(S1)
    });
    pair.shutdown();
    r
}

fn busy(ctx: &Ctx, st: &mut Stack, domains: usize, t: &mut LatTrial) -> Result<()> {
    fill_domains(st, domains)?;
    for s in Server::ALL {
        let o = ctx.timers.overrides(st.overrides(s)?);
        st.agents[usize::from(s.index() - 1)] = Some(st.lab.start_agent_with(s, &o)?);
        if s == S1 {
            wait_until(SETTLE, "server1 sole VIP holder", || {
                st.lab.sole_holder_is(S1)
            })
            .with_context(|| st.logs())?;
        }
    }
    st.wait_state(S2, "BACKUP")?;
    wait_until_ok(SETTLE, "server2 replicating from server1", || {
        replicating(st.db(S2))
    })
    .with_context(|| st.logs())?;
    let ns2 = st.lab.server_ns(S2).to_string();
    let app = Writer::start(&ns2, vip(), "a", WriterMode::APP, Duration::from_secs(300))?;
    app.wait_acks(50, Duration::from_secs(30))
        .with_context(|| st.logs())?;
    let watch = VipWatch::start_with(&st.lab, Duration::from_secs(120), WatchOptions::default())?;
    if !watch.current().sole(S1) {
        bail!(
            "before the fault server1 is not the sole holder: {}",
            watch.current().describe()
        );
    }
    let pid = st.agents[1]
        .as_ref()
        .context("server2's agent is not running")?
        .pid() as i32;
    let Stack { lab, agents, .. } = &mut *st;
    let r = measure(lab, &watch, pid, t, || {
        agents[0]
            .as_mut()
            .context("server1's agent is not running")?
            .stop()?;
        lab.links_down(S1)
    });
    // The rest of server1's death (as in `bench database`), after the fault.
    st.kill_agent(S1)?;
    st.dbs[0].kill()?;
    let _ = app.finish();
    r
}

/// Writes `n` transactions on server1, each in its own GTID domain, as
/// root over its socket (before any agent runs: server2 receives them when
/// its agent sets up replication).
fn fill_domains(st: &Stack, n: usize) -> Result<()> {
    const CHUNK: usize = 5_000;
    let mut done = 0;
    while done < n {
        ha_lab::check_interrupt()?;
        let end = (done + CHUNK).min(n);
        let mut sql = String::with_capacity((end - done) * 90);
        for d in done..end {
            // Domain 0 is the servers' own; the extra ones start at 1.
            sql.push_str(&format!(
                "SET SESSION gtid_domain_id = {}; INSERT INTO app.t (v, origin) VALUES ('domain-{}', @@server_id);\n",
                d + 1,
                d + 1
            ));
        }
        st.db(S1)
            .sql(&sql)
            .with_context(|| format!("writing GTID domains {}..{end}", done + 1))?;
        done = end;
    }
    Ok(())
}

/// Samples server2's agent for [`SAMPLE`], injects the fault, waits until
/// server2 holds every VIP, then reads its log.
fn measure(
    lab: &Lab,
    watch: &VipWatch,
    pid: i32,
    t: &mut LatTrial,
    fault: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = Sample::take(pid)?;
    let t_sample = Instant::now();
    ha_lab::sleep(SAMPLE)?;
    let after = Sample::take(pid)?;
    let wall = t_sample.elapsed().as_secs_f64();
    t.agent_cpu = Some(before.percent_since(&after, wall, |_| true));
    t.services_cpu = Some(before.percent_since(&after, wall, |n| {
        n != "ha-election" && !n.starts_with("ha-probe")
    }));

    // The clocks' pair: the agent logs wall-clock times, the watch monotonic ones.
    let (i0, w0) = (Instant::now(), SystemTime::now());
    fault().context("the fault did not happen")?;
    if !watch.wait_for(MOVE_BOUND, |h| h.holds_all(S2))? {
        bail!(
            "server2 did not take the VIPs within {MOVE_BOUND:?}: {}",
            watch.current().describe()
        );
    }
    let to_wall = |i: Instant| w0 + i.saturating_duration_since(i0);
    let first = watch.first_at_or_after(i0, |h| h.holds_any(S2));
    let all = watch.first_at_or_after(i0, |h| h.holds_all(S2));
    t.fault_all_ms = all.map(|x| ms(x.saturating_duration_since(i0)));
    // The agent logs right after acting; give its line a moment to land.
    ha_lab::sleep(Duration::from_millis(100))?;
    let log = AgentLog::read(&lab.agent_log_path(S2));
    let reason = log
        .first_with_after("to=MASTER", w0)
        .and_then(|l| l.field_rest("reason"))
        .unwrap_or("?");
    if reason != DETECTION_REASON {
        bail!("server2 took over for another reason than the kernel's event: {reason}");
    }
    let ev = log
        .first_with_after(EVENT_LINE, w0)
        .with_context(|| format!("server2's log has no {EVENT_LINE:?} after the fault"))?;
    let wake_us = ev
        .field_f64("wake_us")
        .context("no wake_us in the event line")?;
    let logged = ev.wall.context("the event line has no time")?;
    let event = logged
        .checked_sub(Duration::from_secs_f64(wake_us / 1e6))
        .context("event time")?;
    let signed_ms = |a: SystemTime, b: SystemTime| match a.duration_since(b) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    };
    t.wake_ms = Some(wake_us / 1000.0);
    t.event_ms = Some(signed_ms(event, w0));
    t.decision_ms = first.map(|x| signed_ms(to_wall(x), event));
    t.all_ms = all.map(|x| signed_ms(to_wall(x), event));
    t.took_ms = log
        .first_with_after(ADDED_LINE, w0)
        .and_then(|l| l.field_f64("took_us"))
        .map(|u| u / 1000.0);
    Ok(())
}
