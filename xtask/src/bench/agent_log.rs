//! The agent's own log, read after a run: tracing's text format, one event
//! per line, `<RFC 3339 UTC time, microseconds> <LEVEL> <spans>: <message>
//! key=value ...`, with ANSI colours (the lab's agents log to a file).
//!
//! Only what the agent reports about itself is taken from here (its
//! timestamps, `wake_us`, `took_us`): every measurement that can be made
//! from the outside is made from the outside.

use std::path::Path;
use std::time::SystemTime;

/// One log line, colours removed.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line's timestamp (the agent's wall clock when it logged).
    pub wall: Option<SystemTime>,
    pub text: String,
}

impl LogLine {
    fn parse(raw: &str) -> LogLine {
        let text = strip_ansi(raw);
        let wall = text
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        LogLine { wall, text }
    }

    /// The value of field `key` (`key=value`, or `key="quoted value"`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let start = self.text.rfind(&pat)? + pat.len();
        let rest = &self.text[start..];
        if let Some(q) = rest.strip_prefix('"') {
            return q.split('"').next();
        }
        rest.split_whitespace().next()
    }

    /// Everything after ` key=` to the end of the line: for a last field
    /// logged with Display, whose value holds spaces (`reason=...`).
    pub fn field_rest(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let start = self.text.rfind(&pat)? + pat.len();
        Some(self.text[start..].trim())
    }

    pub fn field_f64(&self, key: &str) -> Option<f64> {
        self.field(key)?.parse().ok()
    }
}

/// Every line of one agent's log.
#[derive(Debug, Clone, Default)]
pub struct AgentLog {
    pub lines: Vec<LogLine>,
}

impl AgentLog {
    /// The log at `path`; empty if it cannot be read.
    pub fn read(path: &Path) -> AgentLog {
        std::fs::read_to_string(path)
            .map(|t| AgentLog::parse(&t))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> AgentLog {
        AgentLog {
            lines: text.lines().map(LogLine::parse).collect(),
        }
    }

    /// The last line whose text holds `what`.
    pub fn last_with(&self, what: &str) -> Option<&LogLine> {
        self.lines.iter().rfind(|l| l.text.contains(what))
    }

    /// The first line at or after `t` (by its timestamp) that holds `what`.
    pub fn first_with_after(&self, what: &str, t: SystemTime) -> Option<&LogLine> {
        self.lines
            .iter()
            .find(|l| l.text.contains(what) && l.wall.is_some_and(|w| w >= t))
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip '[' and the parameters up to the final letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const LINE: &str = "\u{1b}[2m2026-12-02T05:10:59.338988Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[1magent\u{1b}[0m\u{1b}[1m{\u{1b}[0m\u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\u{1b}[0mserver2\u{1b}[1m}\u{1b}[0m\u{1b}[2m:\u{1b}[0m peer silent on its last link \u{1b}[3mlink\u{1b}[0m\u{1b}[2m=\u{1b}[0minside \u{1b}[3mepoch\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 \u{1b}[3msilence_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m12028 \u{1b}[3mwake_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m112";

    #[test]
    fn reads_time_and_fields_of_a_coloured_line() {
        let log = AgentLog::parse(&format!("{LINE}\nnot a log line\n"));
        let l = log.last_with("peer silent on its last link").unwrap();
        assert_eq!(l.field("link"), Some("inside"));
        assert_eq!(l.field_f64("wake_us"), Some(112.0));
        assert_eq!(l.field_f64("silence_us"), Some(12028.0));
        let t = l.wall.unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(t.subsec_micros(), 338_988);
        assert_eq!(t.as_secs() % 60, 59);
        assert!(log.lines[1].wall.is_none());
        let before = l.wall.unwrap() - Duration::from_micros(1);
        assert!(log.first_with_after("wake_us", before).is_some());
    }

    #[test]
    fn quoted_fields() {
        let l = LogLine::parse("2026-12-02T05:10:59Z  INFO x: m reason=\"a b\" n=2");
        assert_eq!(l.field("reason"), Some("a b"));
        assert_eq!(l.field("n"), Some("2"));
        let t = LogLine::parse(
            "2026-12-02T05:10:59Z  INFO x: state change to=MASTER reason=peer silent on all links",
        );
        assert_eq!(t.field_rest("reason"), Some("peer silent on all links"));
    }
}
