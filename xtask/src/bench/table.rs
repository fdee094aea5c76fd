//! A Markdown table with padded columns (also readable in a terminal).

use std::fmt::Write as _;

use super::report::{num, stats};

/// "min / median / max" of the finite values, "-" if there are none.
pub fn spread(values: &[f64]) -> String {
    match stats(values) {
        Some((lo, med, hi)) => format!("{} / {} / {}", num(lo), num(med), num(hi)),
        None => "-".into(),
    }
}

/// The same as JSON: `{"min", "median", "max", "n"}` or null.
pub fn spread_json(values: &[f64]) -> serde_json::Value {
    match stats(values) {
        Some((lo, med, hi)) => serde_json::json!({
            "min": lo, "median": med, "max": hi,
            "n": values.iter().filter(|x| x.is_finite()).count(),
        }),
        None => serde_json::Value::Null,
    }
}

/// One metric of a result type: row title, JSON key, how to read it.
pub type Metric<T> = (&'static str, &'static str, fn(&T) -> Option<f64>);

/// Results in columns (a key per column; several results per key).
pub struct Columns<'a, K, T> {
    pub keys: &'a [K],
    pub results: &'a [(K, T)],
    /// A failed result counts in "failed trials" and in no metric.
    pub failed: fn(&T) -> bool,
}

impl<K: PartialEq, T> Columns<'_, K, T> {
    fn of<'b>(&'b self, k: &'b K) -> impl Iterator<Item = &'b T> + 'b {
        self.results
            .iter()
            .filter(move |(x, _)| x == k)
            .map(|(_, t)| t)
    }

    /// The successful results of column `k`.
    pub fn ok<'b>(&'b self, k: &'b K) -> impl Iterator<Item = &'b T> + 'b {
        self.of(k).filter(|t| !(self.failed)(t))
    }

    fn values(&self, k: &K, get: fn(&T) -> Option<f64>) -> Vec<f64> {
        self.ok(k).filter_map(get).collect()
    }

    /// A min / median / max row per metric, then "failed trials".
    pub fn rows(&self, metrics: &[Metric<T>]) -> Vec<(String, Vec<String>)> {
        let mut rows: Vec<(String, Vec<String>)> = metrics
            .iter()
            .map(|(title, _, get)| {
                let cells = self.keys.iter().map(|k| spread(&self.values(k, *get)));
                (title.to_string(), cells.collect())
            })
            .collect();
        let failed = self.keys.iter().map(|k| {
            let n = self.of(k).filter(|t| (self.failed)(t)).count();
            format!("{n}/{}", self.of(k).count())
        });
        rows.push(("failed trials".into(), failed.collect()));
        rows
    }

    /// `{<column name>: {<metric key>: {min, median, max, n}}}`.
    pub fn summary(&self, metrics: &[Metric<T>], name: impl Fn(&K) -> String) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for k in self.keys {
            let m: serde_json::Map<String, serde_json::Value> = metrics
                .iter()
                .map(|(_, key, get)| (key.to_string(), spread_json(&self.values(k, *get))))
                .collect();
            out.insert(name(k), serde_json::Value::Object(m));
        }
        serde_json::Value::Object(out)
    }
}

/// Prints the table whose first column is titled `first`.
pub fn print(first: String, columns: &[String], rows: &[(String, Vec<String>)]) {
    let mut header = vec![first];
    header.extend(columns.iter().cloned());
    println!();
    print!("{}", markdown(&header, rows));
}

/// `header` and `rows` (a title, then one cell per remaining column).
pub fn markdown(header: &[String], rows: &[(String, Vec<String>)]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for (m, cells) in rows {
        widths[0] = widths[0].max(m.len());
        for (i, c) in cells.iter().enumerate() {
            if let Some(w) = widths.get_mut(i + 1) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            write!(s, " {c:<w$} |").unwrap();
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    let sep: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out.push_str(&line(&sep).replace(' ', "-"));
    for (m, cells) in rows {
        let mut all = vec![m.clone()];
        all.extend(cells.iter().cloned());
        out.push_str(&line(&all));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_columns() {
        let t = super::markdown(
            &["metric".into(), "a".into()],
            &[("x".into(), vec!["12.5".into()])],
        );
        assert_eq!(
            t,
            "| metric | a    |\n|--------|------|\n| x      | 12.5 |\n"
        );
        assert_eq!(super::spread(&[3.0, f64::NAN, 1.0, 2.0]), "1.0 / 2.0 / 3.0");
        assert_eq!(super::spread(&[]), "-");
    }
}
