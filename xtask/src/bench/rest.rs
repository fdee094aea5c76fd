//! `cargo xtask bench rest`: what a settled pair costs when nothing happens.
//! Starts a contender's pair in a fresh lab, lets it settle, stops every
//! watcher of the bench (so only the daemons run), then samples each
//! daemon's CPU time (user + system, all threads, from /proc) and memory
//! over `--secs`.
//!
//! In the lab the CPU figure includes more than the daemon: a packet sent on
//! a veth is delivered (bridge, peer veth, the peer's XDP program) in the
//! sender's own softirq, so the sender is charged for the receiving side
//! too. The figure is an upper bound of what a real NIC costs.
//!
//! For ha-agent it also gives the share of the peer's probes that were
//! copies (a slot sent by two sender threads): each copy is a send and a
//! receive that bought nothing while both CPUs ran on time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ha_lab::Server;

use super::contender::{Contender, Pair};
use super::watch::VipWatch;
use super::Ctx;

/// One daemon's cost at rest.
#[derive(Debug, Clone)]
pub struct RestResult {
    pub contender: Contender,
    pub server: Server,
    /// The length of the sampling window, in seconds.
    pub secs: f64,
    /// CPU time used in the window, in percent of one core.
    pub cpu_percent: f64,
    /// The same, per thread: (thread name, percent of one core).
    pub threads: Vec<(String, f64)>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// ha-agent: of the peer's probes this server's kernel took in during
    /// the window, the share that were copies of a slot already counted
    /// (a slot sent by more than one sender thread), in percent.
    pub copies_percent: Option<f64>,
}

pub fn run(ctx: &Ctx, c: Contender, secs: u64) -> Result<Vec<RestResult>> {
    let lab = ctx.new_lab()?;
    let out = measure(ctx, &lab, c, secs);
    if out.is_err() {
        ctx.save_logs(&lab, &format!("{c}-rest"));
    }
    lab.close()?;
    out
}

fn measure(ctx: &Ctx, lab: &ha_lab::Lab, c: Contender, secs: u64) -> Result<Vec<RestResult>> {
    let watch = VipWatch::start(lab, Duration::from_secs(120))?;
    let mut pair = Pair::start(lab, c, &watch, &ctx.agent_overrides())?;
    watch.finish();
    // Start-up work (eBPF load, first announcements) is not rest.
    ha_lab::sleep(Duration::from_secs(2))?;
    let mut pids = Vec::new();
    for s in Server::ALL {
        for pid in pair.get(s)?.pids() {
            pids.push((s, pid));
        }
    }
    let before: Vec<Sample> = pids
        .iter()
        .map(|&(s, p)| Sample::take(p).with_context(|| format!("{s}: pid {p}")))
        .collect::<Result<_>>()?;
    let agent = c == Contender::HaAgent;
    let probes_before = if agent {
        Some(probe_counts(lab)?)
    } else {
        None
    };
    let t0 = Instant::now();
    ha_lab::sleep(Duration::from_secs(secs))?;
    pair.check_alive()?;
    let probes_after = if agent {
        Some(probe_counts(lab)?)
    } else {
        None
    };
    let after: Vec<Sample> = pids
        .iter()
        .map(|&(s, p)| Sample::take(p).with_context(|| format!("{s}: pid {p}")))
        .collect::<Result<_>>()?;
    let wall = t0.elapsed().as_secs_f64();
    let tick = clock_ticks_per_sec();
    let pct = |ticks: u64| ticks as f64 / tick / wall * 100.0;
    let mut results: Vec<RestResult> = Vec::new();
    for (((server, pid), b), a) in pids.iter().zip(&before).zip(&after) {
        let mut threads: Vec<(String, f64)> = a
            .threads
            .iter()
            .map(|(tid, name, t)| {
                let was = b
                    .threads
                    .iter()
                    .find(|(id, _, _)| id == tid)
                    .map_or(0, |x| x.2);
                (name.clone(), pct(t.saturating_sub(was)))
            })
            .filter(|(_, p)| *p > 0.0)
            .collect();
        threads.sort_by(|x, y| y.1.total_cmp(&x.1));
        let (rss_kib, hwm_kib) = memory(*pid)?;
        let cpu_percent = pct(a.total.saturating_sub(b.total));
        let copies_percent = probes_before.zip(probes_after).map(|(b, a)| {
            copies(
                b[usize::from(server.index() - 1)],
                a[usize::from(server.index() - 1)],
            )
        });
        // keepalived runs a parent and a VRRP child: one row per server.
        if let Some(r) = results.iter_mut().find(|r| r.server == *server) {
            r.cpu_percent += cpu_percent;
            r.threads.extend(threads);
            r.rss_kib += rss_kib;
            r.hwm_kib += hwm_kib;
        } else {
            results.push(RestResult {
                contender: c,
                server: *server,
                secs: wall,
                cpu_percent,
                threads,
                rss_kib,
                hwm_kib,
                copies_percent,
            });
        }
    }
    pair.shutdown();
    Ok(results)
}

/// Per server: (probes the kernel counted, copies it dropped), summed over
/// the links, from the agent's status.
fn probe_counts(lab: &ha_lab::Lab) -> Result<[(u64, u64); 2]> {
    let mut out = [(0, 0); 2];
    for s in Server::ALL {
        let status = lab.agent_status(s)?;
        let links = status["links"]
            .as_array()
            .with_context(|| format!("{s}: status without links"))?;
        for l in links {
            out[usize::from(s.index() - 1)].0 += l["probes_received"].as_u64().unwrap_or(0);
            out[usize::from(s.index() - 1)].1 += l["probes_duplicate"].as_u64().unwrap_or(0);
        }
    }
    Ok(out)
}

/// Copies among the probes that arrived between two counts, in percent.
fn copies(before: (u64, u64), after: (u64, u64)) -> f64 {
    let counted = after.0.saturating_sub(before.0);
    let copies = after.1.saturating_sub(before.1);
    let all = counted + copies;
    if all == 0 {
        0.0
    } else {
        copies as f64 / all as f64 * 100.0
    }
}

/// CPU ticks of a process, in total and per thread.
pub struct Sample {
    total: u64,
    threads: Vec<(u32, String, u64)>,
}

impl Sample {
    pub fn take(pid: i32) -> Result<Sample> {
        let total = ticks(&format!("/proc/{pid}/stat"))?.1;
        let mut threads = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok((name, t)) = ticks(&format!("/proc/{pid}/task/{tid}/stat")) {
                threads.push((tid, name, t));
            }
        }
        Ok(Sample { total, threads })
    }
}

/// (comm, utime + stime) from a `stat` file. comm may hold spaces and
/// parentheses, so the fields are counted after its last ')'.
fn ticks(path: &str) -> Result<(String, u64)> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let open = s.find('(').context("no comm in stat")?;
    let close = s.rfind(')').context("no comm in stat")?;
    let name = s[open + 1..close].to_string();
    // After ")": state(3) ppid(4) ... utime(14) stime(15).
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .context("short stat line")?
            .parse::<u64>()
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok((name, field(14)? + field(15)?))
}

fn memory(pid: i32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("VmHWM:")))
}

impl Sample {
    /// CPU used between `self` and `later` by the threads whose name
    /// `keep` accepts, in percent of one core over `wall` seconds.
    pub fn percent_since(&self, later: &Sample, wall: f64, keep: impl Fn(&str) -> bool) -> f64 {
        let ticks: u64 = later
            .threads
            .iter()
            .filter(|(_, name, _)| keep(name))
            .map(|(tid, _, t)| {
                let was = self
                    .threads
                    .iter()
                    .find(|(id, _, _)| id == tid)
                    .map_or(0, |x| x.2);
                t.saturating_sub(was)
            })
            .sum();
        ticks as f64 / clock_ticks_per_sec() / wall.max(1e-9) * 100.0
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The table printed by `bench rest`.
pub fn table(results: &[RestResult]) -> String {
    let window = results.first().map_or(0.0, |r| r.secs);
    let mut out = format!(
        "at rest, sampled over {window:.0} s\n{:<20} {:<8} {:>8} {:>9} {:>9} {:>9}  busiest threads (% of one core)\n",
        "contender", "server", "CPU %", "RSS MiB", "peak MiB", "copies %"
    );
    for r in results {
        let threads: Vec<String> = r
            .threads
            .iter()
            .take(3)
            .map(|(n, p)| format!("{n} {p:.2}"))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<8} {:>8.2} {:>9.1} {:>9.1} {:>9}  {}\n",
            r.contender.name(),
            r.server.to_string(),
            r.cpu_percent,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
            r.copies_percent
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1}")),
            threads.join(", ")
        ));
    }
    out
}
