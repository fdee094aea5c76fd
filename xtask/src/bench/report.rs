//! The results: one table (rows: metrics, columns: contenders, cells
//! min / median / max) and the same as JSON with every raw trial.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::checks::{Check, CheckResult};
use super::contender::Contender;
use super::soak::SoakResult;
use super::trial::{Fault, TrialResult};

/// min, median, max of some values (None if there are none).
pub fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((v[0], median, v[n - 1]))
}

pub fn num(x: f64) -> String {
    if x.abs() < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

pub struct Report<'a> {
    pub contenders: &'a [Contender],
    pub trials: &'a [TrialResult],
    pub soaks: &'a [SoakResult],
    pub checks: &'a [CheckResult],
    pub n_trials: usize,
    pub soak_secs: u64,
}

/// One metric of the trials: its row title and how to read it from a trial.
type Metric = (&'static str, &'static str, fn(&TrialResult) -> Option<f64>);

const METRICS: [Metric; 6] = [
    ("both VIPs on server2 (ms)", "vips_ms", |t| t.vips_ms),
    ("first GARP from server2 at client (ms)", "garp_ms", |t| {
        t.garp_ms
    }),
    ("first client reply via server2 (ms)", "reply_ms", |t| {
        t.reply_ms
    }),
    ("longest client reply gap (ms)", "gap_ms", |t| t.gap_ms),
    (
        "client outage: last reply before server2's first (ms)",
        "outage_ms",
        |t| t.outage_ms,
    ),
    ("the fault command itself took (ms)", "fault_cmd_ms", |t| {
        t.fault_cmd_ms
    }),
];

impl Report<'_> {
    fn trials_of(&self, c: Contender, f: Fault) -> impl Iterator<Item = &TrialResult> {
        self.trials
            .iter()
            .filter(move |t| t.contender == c && t.fault == f)
    }

    /// Values of a metric over the successful trials.
    fn values(&self, c: Contender, f: Fault, get: fn(&TrialResult) -> Option<f64>) -> Vec<f64> {
        self.trials_of(c, f)
            .filter(|t| t.failure.is_none())
            .filter_map(get)
            .collect()
    }

    fn cell(&self, c: Contender, f: Fault, get: fn(&TrialResult) -> Option<f64>) -> String {
        let ok = self.trials_of(c, f).filter(|t| t.failure.is_none()).count();
        let v = self.values(c, f, get);
        match stats(&v) {
            None if ok == 0 => "-".into(),
            None => format!("none seen (0/{ok})"),
            Some((lo, med, hi)) => {
                let mut s = format!("{} / {} / {}", num(lo), num(med), num(hi));
                if v.len() < ok {
                    write!(s, " (seen {}/{ok})", v.len()).unwrap();
                }
                s
            }
        }
    }

    fn soak_of(&self, c: Contender) -> Option<&SoakResult> {
        self.soaks.iter().find(|s| s.contender == c)
    }

    fn check_of(&self, c: Contender, k: Check) -> Option<&CheckResult> {
        self.checks
            .iter()
            .find(|r| r.contender == c && r.check == k)
    }

    /// The rows of the table: (metric, one cell per contender).
    pub fn rows(&self) -> Vec<(String, Vec<String>)> {
        let mut rows = Vec::new();
        let cs = self.contenders;
        for f in Fault::KNOWN {
            if !cs.iter().any(|&c| self.trials_of(c, f).next().is_some()) {
                continue;
            }
            for (title, _, get) in METRICS {
                rows.push((
                    format!("{}: {title}", f.title()),
                    cs.iter().map(|&c| self.cell(c, f, get)).collect(),
                ));
            }
            rows.push((
                format!("{}: failed trials", f.title()),
                cs.iter()
                    .map(|&c| {
                        let all = self.trials_of(c, f).count();
                        let failed = self.trials_of(c, f).filter(|t| t.failure.is_some()).count();
                        format!("{failed}/{all}")
                    })
                    .collect(),
            ));
            rows.push((
                format!("{}: takeovers by silence detection", f.title()),
                cs.iter()
                    .map(|&c| super::trial::detection_share(self.trials_of(c, f)))
                    .collect(),
            ));
        }
        if !self.soaks.is_empty() {
            let soak_row = |title: &str, get: &dyn Fn(&SoakResult) -> String| {
                (
                    format!(
                        "soak {} s (stress-ng --cpu 2, 2% loss): {title}",
                        self.soak_secs
                    ),
                    cs.iter()
                        .map(|&c| match self.soak_of(c) {
                            None => "-".into(),
                            Some(s) if s.failure.is_some() => format!("FAILED; {}", get(s)),
                            Some(s) => get(s),
                        })
                        .collect(),
                )
            };
            let opt = |x: Option<f64>| x.map_or("-".into(), num);
            rows.push(soak_row("false failovers (VIP moves)", &|s| {
                s.moves.map_or("-".into(), |m| m.to_string())
            }));
            rows.push(soak_row("VIP addresses added (netlink events)", &|s| {
                s.vip_adds.map_or("-".into(), |m| m.to_string())
            }));
            rows.push(soak_row("time with a VIP on both servers (ms)", &|s| {
                opt(s.dual_ms)
            }));
            rows.push(soak_row("time with a VIP on neither (ms)", &|s| {
                opt(s.orphan_ms)
            }));
            rows.push(soak_row("client pings answered (10 ms)", &|s| match (
                s.pings_sent,
                s.pings_answered,
            ) {
                (Some(n), Some(a)) if n > 0 => {
                    format!("{:.2}% of {n}", 100.0 * a as f64 / n as f64)
                }
                _ => "-".into(),
            }));
            rows.push(soak_row("longest client reply gap (ms)", &|s| {
                opt(s.longest_gap_ms)
            }));
        }
        for k in Check::ALL {
            if !cs.iter().any(|&c| self.check_of(c, k).is_some()) {
                continue;
            }
            rows.push((
                format!("check: {}", k.title()),
                cs.iter()
                    .map(|&c| match self.check_of(c, k) {
                        None => "-".into(),
                        Some(r) => {
                            let verdict = if r.passed { "PASS" } else { "FAIL" };
                            if r.short.is_empty() {
                                verdict.into()
                            } else {
                                format!("{verdict} ({})", r.short)
                            }
                        }
                    })
                    .collect(),
            ));
        }
        rows
    }

    /// The table as Markdown (also readable in a terminal).
    pub fn table(&self) -> String {
        let mut header = vec!["metric (min / median / max)".to_string()];
        header.extend(self.contenders.iter().map(|c| c.name().to_string()));
        super::table::markdown(&header, &self.rows())
    }

    /// "client outage after death": median longest gap with server1's
    /// links down, ha-agent over the best keepalived variant.
    pub fn ratio(&self) -> Option<(f64, Contender, f64, f64)> {
        let med = |c: Contender| {
            stats(&self.values(c, Fault::LinksDown, |t| t.gap_ms)).map(|(_, m, _)| m)
        };
        let ours = med(Contender::HaAgent)?;
        let (best, theirs) = self
            .contenders
            .iter()
            .filter(|c| matches!(c, Contender::Keepalived(_)))
            .filter_map(|&c| med(c).map(|m| (c, m)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        Some((ours / theirs, best, ours, theirs))
    }

    pub fn ratio_line(&self) -> String {
        match self.ratio() {
            Some((r, best, ours, theirs)) => format!(
                "client outage after death (server1 links down, median longest reply gap): \
                 ha-agent {} ms / {best} {} ms = {r:.3} ({:.1}x shorter)",
                num(ours),
                num(theirs),
                1.0 / r
            ),
            None => "ratio ha-agent / keepalived: not available (a contender has no successful links-down trial)".into(),
        }
    }

    pub fn json(&self, meta: Value) -> Value {
        let mut summary = serde_json::Map::new();
        for &c in self.contenders {
            let mut per = serde_json::Map::new();
            for f in Fault::KNOWN {
                let mut m = serde_json::Map::new();
                for (_, key, get) in METRICS {
                    let v = self.values(c, f, get);
                    m.insert(
                        key.into(),
                        match stats(&v) {
                            Some((lo, med, hi)) => {
                                json!({"min": lo, "median": med, "max": hi, "n": v.len()})
                            }
                            None => Value::Null,
                        },
                    );
                }
                m.insert("trials".into(), json!(self.trials_of(c, f).count()));
                m.insert(
                    "failed".into(),
                    json!(self.trials_of(c, f).filter(|t| t.failure.is_some()).count()),
                );
                per.insert(f.name().into(), Value::Object(m));
            }
            summary.insert(c.name().into(), Value::Object(per));
        }
        let soaks: Vec<Value> = self.soaks.iter().map(super::soak::json_of).collect();
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|r| {
                json!({
                    "contender": r.contender.name(),
                    "check": r.check.name(),
                    "title": r.check.title(),
                    "passed": r.passed,
                    "happened": r.happened,
                    "short": r.short,
                    "events": r.events,
                    "saved_logs": r.saved_logs,
                })
            })
            .collect();
        let table: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|(m, cells)| {
                let mut o = serde_json::Map::new();
                o.insert("metric".into(), json!(m));
                for (c, cell) in self.contenders.iter().zip(cells) {
                    o.insert(c.name().into(), json!(cell));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "meta": meta,
            "contenders": self.contenders.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "trials_per_fault": self.n_trials,
            "soak_secs": self.soak_secs,
            "table": table,
            "ratio": self.ratio().map(|(r, best, ours, theirs)| json!({
                "metric": "links_down gap_ms median",
                "ha_agent_ms": ours,
                "best_keepalived": best.name(),
                "best_keepalived_ms": theirs,
                "ratio": r,
            })),
            "summary": summary,
            "trials": self.trials.iter().map(TrialResult::json).collect::<Vec<_>>(),
            "soaks": soaks,
            "checks": checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(stats(&[]), None);
        assert_eq!(num(3147.4), "3147");
        assert_eq!(num(30.64), "30.6");
    }
}
