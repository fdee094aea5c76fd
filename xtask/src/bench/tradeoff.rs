//! `cargo xtask bench tradeoff`: ha-agent's probe interval x multiplier
//! settings side by side: what each costs in false alarms (soaks), what it
//! buys in detection (server1 dies), what it costs at rest.
//!
//! For each setting (`--settings 1x3,2x3,2x4,4x3`: interval ms x slots of
//! silence, both links, both servers): `--trials` trials of server1's death
//! (its daemon frozen, then its links down, so every takeover is a
//! detection; `--fault links_down` for the links alone)
//! (settings interleaved, trial i of every setting before trial i+1), then
//! `bench rest`'s measurement over `--rest-secs`, then one soak of each
//! `--soak-variants` over `--soak-secs` (the soaks of `bench soak`, so
//! every VIP address added counts). Everything else at the agent's
//! defaults; every run on a fresh lab.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use ha_lab::{Lab, Server};
use serde_json::{json, Value};

use super::contender::Contender;
use super::rest::{self, RestResult};
use super::soak::{self, SoakResult, Variant};
use super::table::{spread, spread_json};
use super::timers::AgentTimers;
use super::trial::{self, Fault, TrialResult};
use super::{
    agent_bin, first_line, log_dir, require, table_json, write_json, Ctx, Run, RunArgs, LAB_BASE,
};

#[derive(Args)]
pub struct TradeoffArgs {
    /// Comma-separated settings, INTERVALxMULTIPLIER (ms x probe slots).
    #[arg(long, value_delimiter = ',', default_value = "1x3,2x3,2x4,4x3")]
    settings: Vec<String>,
    /// Trials of the fault per setting (0: none).
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Duration of each soak, in seconds (0: no soak).
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Comma-separated soak variants (idle, hostile).
    #[arg(long, value_delimiter = ',', default_value = "idle,hostile")]
    soak_variants: Vec<String>,
    /// At-rest sampling per setting, in seconds (0: none).
    #[arg(long, default_value_t = 60)]
    rest_secs: u64,
    /// The fault on server1: death (its daemon frozen, then both links
    /// down: it cannot speak once the fault begins), or links_down (the two
    /// switch ports down one after the other: server1 may see the first
    /// carrier loss and hand over through the other port, which is not
    /// detection).
    #[arg(long, default_value = "death")]
    fault: String,
    /// The client's ping interval during the trials, in ms.
    #[arg(long, default_value_t = 2)]
    ping_interval_ms: u64,
    #[command(flatten)]
    out: RunArgs,
}

/// Everything measured for one setting.
struct Setting {
    timers: AgentTimers,
    ctx: Ctx,
    trials: Vec<TrialResult>,
    rest: Vec<RestResult>,
    rest_error: Option<String>,
    soaks: Vec<SoakResult>,
}

pub fn main(root: &Path, a: TradeoffArgs) -> Result<()> {
    ha_lab::install_interrupt_handler();
    let timers = a
        .settings
        .iter()
        .map(|s| AgentTimers::parse_setting(s))
        .collect::<Result<Vec<_>>>()?;
    if timers.is_empty() {
        bail!("no --settings given");
    }
    let fault = Fault::parse(&a.fault)?;
    let variants = if a.soak_secs == 0 {
        Vec::new()
    } else {
        a.soak_variants
            .iter()
            .map(|v| Variant::parse(v))
            .collect::<Result<Vec<_>>>()?
    };
    if a.trials == 0 && variants.is_empty() && a.rest_secs == 0 {
        bail!("nothing to do: --trials 0, --soak-secs 0 and --rest-secs 0");
    }
    if a.trials > 200 || (a.rest_secs != 0 && !(5..=3600).contains(&a.rest_secs)) {
        bail!("--trials must be at most 200 and --rest-secs 0 or 5 to 3600");
    }
    let mut tools = vec!["nft", "ip"];
    if variants.contains(&Variant::Hostile) {
        tools.push("stress-ng");
    }
    require(&tools)?;
    let bin = agent_bin(root, &[Contender::HaAgent], a.out.no_build)?;
    Lab::cleanup_orphans(LAB_BASE)?;
    let run = Run::start();
    let dir = log_dir(a.out.logs.clone(), "tradeoff", &run);
    let mut settings: Vec<Setting> = timers
        .into_iter()
        .map(|t| {
            let mut ctx = Ctx::new(
                bin.clone(),
                Duration::from_millis(a.ping_interval_ms),
                dir.clone(),
            );
            ctx.timers = t.clone();
            Setting {
                timers: t,
                ctx,
                trials: Vec::new(),
                rest: Vec::new(),
                rest_error: None,
                soaks: Vec::new(),
            }
        })
        .collect();
    let minutes = settings.len() as f64
        * (a.trials as f64 * 6.0
            + a.rest_secs as f64
            + 15.0
            + variants.len() as f64 * (a.soak_secs as f64 + 15.0))
        / 60.0;
    println!(
        "bench tradeoff: settings {}; {} links-down trial(s), {} s at rest, soaks {} of {} s each, per setting (about {minutes:.0} min); load average {}; logs in {}",
        a.settings.join(", "),
        a.trials,
        a.rest_secs,
        variants.iter().map(|v| v.name()).collect::<Vec<_>>().join("+"),
        a.soak_secs,
        run.load_start,
        dir.display()
    );
    for i in 0..a.trials {
        for s in settings.iter_mut() {
            let r = trial::run(&s.ctx, Contender::HaAgent, fault, i)?;
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
            match &r.failure {
                None => println!(
                    "bench tradeoff: {:<5} {} {:>2}/{}: VIPs {} ms, reply {} ms, outage {} ms, gap {} ms; server2: {}",
                    s.timers.to_string(),
                    fault.name(),
                    i + 1,
                    a.trials,
                    f(r.vips_ms),
                    f(r.reply_ms),
                    f(r.outage_ms),
                    f(r.gap_ms),
                    r.takeover_reason.as_deref().unwrap_or("?")
                ),
                Some(e) => println!(
                    "bench tradeoff: {:<5} {} {:>2}/{}: FAILED: {}",
                    s.timers.to_string(),
                    fault.name(),
                    i + 1,
                    a.trials,
                    first_line(e)
                ),
            }
            s.trials.push(r);
        }
    }
    if a.rest_secs > 0 {
        for s in settings.iter_mut() {
            println!(
                "bench tradeoff: {}: at rest for {} s ...",
                s.timers, a.rest_secs
            );
            match rest::run(&s.ctx, Contender::HaAgent, a.rest_secs) {
                Ok(r) => {
                    print!("{}", rest::table(&r));
                    s.rest = r;
                }
                Err(e) if ha_lab::interrupted() => return Err(e),
                Err(e) => {
                    println!("bench tradeoff: {}: at rest: FAILED: {e:#}", s.timers);
                    s.rest_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    for s in settings.iter_mut() {
        for &v in &variants {
            println!(
                "bench tradeoff: {}: soak {} for {} s ...",
                s.timers,
                v.title(),
                a.soak_secs
            );
            let r = soak::run(&s.ctx, Contender::HaAgent, a.soak_secs, v)
                .with_context(|| format!("{}: soak {}", s.timers, v.name()))?;
            println!(
                "bench tradeoff: {}: soak {}: {} VIP address(es) added, {} false alarm(s){}",
                s.timers,
                v.name(),
                r.vip_adds.map_or("?".into(), |n| n.to_string()),
                r.agents.iter().map(|x| x.false_alarms).sum::<u64>(),
                r.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; FAILED: {}", first_line(f)))
            );
            print!("{}", soak::details(&r));
            s.soaks.push(r);
        }
    }
    let columns: Vec<String> = settings.iter().map(|s| s.timers.to_string()).collect();
    let rows = rows(&settings, fault, &variants, a.soak_secs);
    super::table::print(
        "interval x multiplier (ms x slots)".to_string(),
        &columns,
        &rows,
    );
    let load_end = run.done("tradeoff");
    if let Some(path) = &a.out.json {
        let meta = run.meta(
            root,
            bin.as_deref(),
            &load_end,
            json!({"fault": fault.name()}),
        );
        let v = json!({
            "meta": meta,
            "table": table_json(&rows, &columns),
            "settings": settings.iter().map(setting_json).collect::<Vec<_>>(),
        });
        write_json(path, &v)?;
        println!("bench tradeoff: JSON written to {}", path.display());
    }
    Ok(())
}

fn ok_values(s: &Setting, get: fn(&TrialResult) -> Option<f64>) -> Vec<f64> {
    s.trials
        .iter()
        .filter(|t| t.failure.is_none())
        .filter_map(get)
        .collect()
}

fn rest_of(s: &Setting, server: Server) -> Option<&RestResult> {
    s.rest.iter().find(|r| r.server == server)
}

fn rows(
    settings: &[Setting],
    fault: Fault,
    variants: &[Variant],
    soak_secs: u64,
) -> Vec<(String, Vec<String>)> {
    let row =
        |title: String, f: &dyn Fn(&Setting) -> String| (title, settings.iter().map(f).collect());
    let mut rows = vec![row("detection: silence on every link (ms)".into(), &|s| {
        s.timers.detect_ms().map_or("-".into(), |d| d.to_string())
    })];
    if settings.iter().any(|s| !s.trials.is_empty()) {
        rows.push(row(
            format!("{}: every VIP on server2 (ms)", fault.title()),
            &|s| spread(&ok_values(s, |t| t.vips_ms)),
        ));
        rows.push(row(
            format!("{}: first client reply via server2 (ms)", fault.title()),
            &|s| spread(&ok_values(s, |t| t.reply_ms)),
        ));
        rows.push(row(
            format!("{}: client outage (ms)", fault.title()),
            &|s| spread(&ok_values(s, |t| t.outage_ms)),
        ));
        rows.push(row(
            format!("{}: longest client reply gap (ms)", fault.title()),
            &|s| spread(&ok_values(s, |t| t.gap_ms)),
        ));
        rows.push(row(
            format!("{}: takeovers by silence detection", fault.title()),
            &|s| trial::detection_share(s.trials.iter()),
        ));
        rows.push(row(format!("{}: failed trials", fault.title()), &|s| {
            let failed = s.trials.iter().filter(|t| t.failure.is_some()).count();
            format!("{failed}/{}", s.trials.len())
        }));
    }
    for &v in variants {
        let soak_of = move |s: &Setting| s.soaks.iter().find(|x| x.variant == v).cloned();
        let title = |what: &str| format!("soak {} {soak_secs} s: {what}", v.name());
        let cell = move |s: &Setting, f: &dyn Fn(&SoakResult) -> String| match soak_of(s) {
            None => "-".to_string(),
            Some(r) if r.failure.is_some() => format!("FAILED; {}", f(&r)),
            Some(r) => f(&r),
        };
        rows.push(row(title("VIP addresses added"), &|s| {
            cell(s, &|r| r.vip_adds.map_or("-".into(), |n| n.to_string()))
        }));
        rows.push(row(title("false alarms (server1 + server2)"), &|s| {
            cell(s, &|r| {
                r.agents
                    .iter()
                    .map(|a| a.false_alarms)
                    .sum::<u64>()
                    .to_string()
            })
        }));
        rows.push(row(title("time with a VIP on both servers (ms)"), &|s| {
            cell(s, &|r| r.dual_ms.map_or("-".into(), |d| format!("{d:.1}")))
        }));
        rows.push(row(title("probe slots missed (server1 + server2)"), &|s| {
            cell(s, &|r| {
                r.agents
                    .iter()
                    .map(|a| a.missed_slots)
                    .sum::<u64>()
                    .to_string()
            })
        }));
        rows.push(row(
            title("missed-slot episodes: on both servers at once / in all"),
            &|s| {
                cell(s, &|r| {
                    r.stalls.map_or("-".into(), |x| {
                        format!("{} / {}", x.both, x.server1 + x.server2 - x.both)
                    })
                })
            },
        ));
        rows.push(row(
            title("best sender's lateness p99 / max (us, worse server)"),
            &|s| {
                cell(s, &|r| {
                    let p99 = r.agents.iter().filter_map(|a| a.p99_us).max();
                    let max = r.agents.iter().filter_map(|a| a.max_us).max();
                    let exact = r.agents.iter().any(|a| a.max_exact && a.max_us == max);
                    format!(
                        "<={} / {}{}",
                        p99.map_or("-".into(), |x| x.to_string()),
                        if exact { "" } else { "<=" },
                        max.map_or("-".into(), |x| x.to_string())
                    )
                })
            },
        ));
    }
    if settings
        .iter()
        .any(|s| !s.rest.is_empty() || s.rest_error.is_some())
    {
        rows.push(row(
            "at rest: CPU % of one core (server1 / server2)".into(),
            &|s| match (rest_of(s, Server::S1), rest_of(s, Server::S2)) {
                (Some(a), Some(b)) => format!("{:.2} / {:.2}", a.cpu_percent, b.cpu_percent),
                _ if s.rest_error.is_some() => "FAILED".into(),
                _ => "-".into(),
            },
        ));
        rows.push(row(
            "at rest: RSS MiB (server1 / server2)".into(),
            &|s| match (rest_of(s, Server::S1), rest_of(s, Server::S2)) {
                (Some(a), Some(b)) => format!(
                    "{:.1} / {:.1}",
                    a.rss_kib as f64 / 1024.0,
                    b.rss_kib as f64 / 1024.0
                ),
                _ => "-".into(),
            },
        ));
    }
    rows
}

fn setting_json(s: &Setting) -> Value {
    json!({
        "setting": s.timers.to_string(),
        "timers": s.timers.json(),
        "detect_ms": s.timers.detect_ms(),
        "trials": {
            "vips_ms": spread_json(&ok_values(s, |t| t.vips_ms)),
            "reply_ms": spread_json(&ok_values(s, |t| t.reply_ms)),
            "gap_ms": spread_json(&ok_values(s, |t| t.gap_ms)),
            "outage_ms": spread_json(&ok_values(s, |t| t.outage_ms)),
            "trials": s.trials.len(),
            "failed": s.trials.iter().filter(|t| t.failure.is_some()).count(),
            "failures": s.trials.iter().filter_map(|t| t.failure.as_ref().map(|f| json!({
                "index": t.index, "failure": f, "saved_logs": t.saved_logs,
            }))).collect::<Vec<_>>(),
            "raw": s.trials.iter().map(TrialResult::json).collect::<Vec<_>>(),
        },
        "rest": s.rest.iter().map(|r| json!({
            "server": r.server.name(),
            "secs": r.secs,
            "cpu_percent": r.cpu_percent,
            "rss_kib": r.rss_kib,
            "hwm_kib": r.hwm_kib,
            "threads": r.threads.iter().map(|(n, p)| json!({"name": n, "cpu_percent": p})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rest_error": s.rest_error,
        "soaks": s.soaks.iter().map(soak::json_of).collect::<Vec<_>>(),
    })
}
