//! The picture of a failover run (`bench failover --json`'s JSON): per
//! contender and fault, every trial's client outage on a log scale (so
//! 12 ms and 3 s fit one axis), and each contender's soak as a timeline of
//! VIP moves. Drawn with plotters' SVG backend.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// Every fault the failover bench knows, in the order drawn, with its label.
const FAULTS: [(&str, &str); 5] = [
    ("links_down", "server1 links down"),
    ("death", "server1 dies"),
    ("isolate", "server1 isolated (silent)"),
    ("outside_carrier", "outside cable pulled"),
    ("hang", "daemon hung (SIGSTOP)"),
];
/// Outages past the axis (and failed trials) are drawn at its top.
const AXIS_MAX_MS: f64 = 10_000.0;
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 720;

/// Writes the SVG of `json` (a failover report) to `out`.
pub fn write(json: &Value, out: &Path) -> Result<()> {
    let svg = render(json)?;
    std::fs::write(out, svg).with_context(|| format!("cannot write {}", out.display()))
}

/// Reads a failover report's JSON file and writes its SVG.
pub fn from_file(json: &Path, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    write(&v, out)
}

/// The contenders of a report, in its order.
fn contenders(json: &Value) -> Vec<String> {
    json["contenders"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The faults the report has trials of, in drawing order.
fn faults(json: &Value) -> Vec<(&'static str, &'static str)> {
    let trials = json["trials"].as_array().cloned().unwrap_or_default();
    FAULTS
        .into_iter()
        .filter(|(f, _)| trials.iter().any(|t| t["fault"] == *f))
        .collect()
}

/// Client outage (longest ping gap, ms) of every successful trial within
/// the axis, and how many trials failed or went past it.
fn gaps(json: &Value, contender: &str, fault: &str) -> (Vec<f64>, usize) {
    let trials: Vec<Value> = json["trials"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["contender"] == contender && t["fault"] == fault)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let shown: Vec<f64> = trials
        .iter()
        .filter(|t| t["failed"] != true)
        .filter_map(|t| t["gap_ms"].as_f64())
        .filter(|g| *g < AXIS_MAX_MS)
        .collect();
    let beyond = trials.len() - shown.len();
    (shown, beyond)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    })
}

/// Seconds into the soak of a "+12.3 s ..." event or "gap +483.223..." detail.
fn seconds_of(text: &str) -> Option<f64> {
    let start = text.find('+')? + 1;
    let num: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.trim_end_matches('.').parse().ok()
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn render(json: &Value) -> Result<String> {
    let names = contenders(json);
    anyhow::ensure!(!names.is_empty(), "the JSON has no contenders");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "Failover: client outage per fault, and the soak ({} trials per fault; {})",
            json["trials_per_fault"].as_u64().unwrap_or(0),
            json["meta"]["date"].as_str().unwrap_or("")
        );
        let root = root.titled(&title, ("sans-serif", 20))?;
        let soaked = json["soak_secs"].as_f64().is_some_and(|s| s > 0.0)
            && json["soaks"].as_array().is_some_and(|a| !a.is_empty());
        if soaked {
            let (top, bottom) = root.split_vertically(HEIGHT * 62 / 100);
            outages(&top, json, &names)?;
            soak(&bottom, json, &names)?;
        } else {
            outages(&root, json, &names)?;
        }
        root.present()?;
    }
    Ok(svg)
}

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn outages(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    json: &Value,
    names: &[String],
) -> Result<()> {
    let n = names.len();
    let faults = faults(json);
    let slots = (faults.len() * n).max(1);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .caption(
            "longest gap in pings to the outside VIP, every trial (dash: median of those drawn; x at the top: failed or over 10 s)",
            ("sans-serif", 15),
        )
        .build_cartesian_2d(
            -0.5f64..(slots as f64 - 0.5),
            (1.0f64..AXIS_MAX_MS).log_scale(),
        )?;
    let fault_label = |x: &f64| {
        let i = x.round();
        if (i - x).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        let i = i as usize;
        // The label sits under the middle contender of each fault.
        if i % n == n / 2 {
            faults
                .get(i / n)
                .map(|f| f.1.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&fault_label)
        .y_desc("client outage (ms, log scale)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (fi, (fault, _)) in faults.iter().enumerate() {
        for (ci, name) in names.iter().enumerate() {
            let x = (fi * n + ci) as f64;
            let (values, beyond) = gaps(json, name, fault);
            let c = colour(ci);
            chart.draw_series((0..beyond).map(|i| {
                let dx = (i as f64 / beyond as f64 - 0.5) * 0.5;
                Cross::new((x + dx, AXIS_MAX_MS * 0.85), 5, c.stroke_width(2))
            }))?;
            let k = values.len().max(1) as f64;
            chart.draw_series(values.iter().enumerate().map(|(i, v)| {
                // Spread the points sideways so equal values stay visible.
                let dx = (i as f64 / k - 0.5) * 0.5;
                Circle::new((x + dx, v.max(1.0)), 3, c.mix(0.7).filled())
            }))?;
            if let Some(m) = median(&values) {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.35, m), (x + 0.35, m)],
                    c.stroke_width(3),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    format_ms(m),
                    (x + 0.12, m * 1.35),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )))?;
            }
        }
    }
    // The legend: contender colours.
    for (ci, name) in names.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Circle::new((-10.0, 1.0), 0, colour(ci))))?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x, y), 5, colour(ci).filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn soak(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    json: &Value,
    names: &[String],
) -> Result<()> {
    let secs = json["soak_secs"].as_f64().unwrap_or(600.0).max(1.0);
    let soaks = json["soaks"].as_array().cloned().unwrap_or_default();
    let n = names.len();
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(130)
        .caption(
            format!("soak: {secs:.0} s, both cores saturated, 2% loss on both links; triangles: VIP moves (false failovers), x: longest ping gap"),
            ("sans-serif", 15),
        )
        .build_cartesian_2d(0f64..secs, -0.5f64..(n as f64 - 0.5))?;
    let row_label = |y: &f64| {
        let i = y.round();
        if (i - y).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        names.get(i as usize).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&row_label)
        .x_desc("seconds into the soak")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (ci, name) in names.iter().enumerate() {
        let y = ci as f64;
        let c = colour(ci);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, y), (secs, y)],
            c.stroke_width(2),
        )))?;
        let Some(s) = soaks.iter().find(|s| s["contender"] == name.as_str()) else {
            continue;
        };
        let moves: Vec<f64> = s["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e.as_str().and_then(seconds_of))
                    .collect()
            })
            .unwrap_or_default();
        chart.draw_series(
            moves
                .iter()
                .map(|t| TriangleMarker::new((*t, y), 8, c.filled())),
        )?;
        if let Some(t) = s["gap_detail"].as_str().and_then(seconds_of) {
            chart.draw_series(std::iter::once(Cross::new(
                (t, y),
                6,
                BLACK.stroke_width(2),
            )))?;
        }
        let summary = format!(
            "{} VIP moves, longest gap {}",
            s["moves"].as_u64().map_or("?".into(), |m| m.to_string()),
            s["longest_gap_ms"].as_f64().map_or("?".into(), format_ms)
        );
        chart.draw_series(std::iter::once(Text::new(
            summary,
            (secs * 0.02, y + 0.28),
            ("sans-serif", 13).into_font().color(&BLACK),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_read() {
        assert_eq!(seconds_of("+12.3 s outside: server1+server2"), Some(12.3));
        assert_eq!(seconds_of("gap +483.223..+483.263 s; GARPs"), Some(483.223));
        assert_eq!(seconds_of("no time"), None);
    }

    #[test]
    fn every_fault_is_drawn_and_no_empty_soak() {
        let mut trials = Vec::new();
        for (fault, _) in FAULTS {
            for k in 0..3 {
                trials.push(serde_json::json!({"contender": "ha-agent", "fault": fault, "gap_ms": 5.0 + f64::from(k), "failed": false}));
            }
        }
        trials.push(serde_json::json!({"contender": "ha-agent", "fault": "hang", "failed": true}));
        trials.push(serde_json::json!({"contender": "ha-agent", "fault": "hang", "gap_ms": 12_000.0, "failed": false}));
        let json = serde_json::json!({"contenders": ["ha-agent"], "trials": trials, "trials_per_fault": 3, "soak_secs": 0, "soaks": []});
        let svg = render(&json).unwrap();
        for (_, label) in FAULTS {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains("soak:"), "an empty soak panel is drawn");
        // The 15 trials within the axis, and the legend's two circles.
        assert_eq!(svg.matches("<circle").count(), 5 * 3 + 2);
    }

    #[test]
    fn the_committed_run_draws() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/failover-all-contenders.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let svg = render(&json).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for want in ["keepalived-seed", "server1 links down", "0 VIP moves", "ms"] {
            assert!(svg.contains(want), "{want} missing");
        }
        // One point per successful trial.
        assert!(svg.matches("<circle").count() >= 3 * 3 * 19);
    }
}
