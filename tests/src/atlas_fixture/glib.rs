//! Atlas's `SAVE CONFIG` (`network_backends_save`), as a real Atlas 2.2.2
//! does it through GLib's key-file code:
//!
//! - `g_key_file_load_from_file(G_KEY_FILE_KEEP_COMMENTS)`: comments and
//!   blank lines are kept as lines of the group they are in; a missing file
//!   fails the save (Atlas only logs it, and still answers success);
//! - `g_key_file_set_value` for `proxy-backend-addresses`,
//!   `proxy-read-only-backend-addresses`, `client-ips` and `pwds`, in that
//!   order: an existing key is set in place, a missing one is appended to
//!   the end of the group (before its trailing blank lines);
//! - `g_key_file_to_data`: every pair as `key=value` (whitespace around the
//!   `=` gone), groups separated by a blank line;
//! - `g_file_set_contents`: a new file (mode 0666 & ~umask: 0644) renamed
//!   over the old one.
//!
//! The values come from the run-time table only: ro weights are gone and
//! backends configured by host name are written as the addresses they
//! resolved to.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One line of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment or blank line, kept verbatim.
    Comment(String),
    Pair(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// None: the lines before the first group header.
    name: Option<String>,
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyFile {
    groups: Vec<Group>,
}

fn is_comment(t: &str) -> bool {
    t.is_empty() || t.starts_with('#')
}

impl KeyFile {
    pub fn parse(text: &str) -> KeyFile {
        let mut groups = vec![Group {
            name: None,
            lines: vec![],
        }];
        for raw in text.lines() {
            let t = raw.trim_start();
            let cur = groups.last_mut().expect("at least the start group");
            if is_comment(t) {
                cur.lines.push(Line::Comment(raw.to_string()));
            } else if let Some(name) = t
                .strip_prefix('[')
                .and_then(|r| r.trim_end().strip_suffix(']'))
            {
                groups.push(Group {
                    name: Some(name.to_string()),
                    lines: vec![],
                });
            } else if let Some((k, v)) = t.split_once('=') {
                cur.lines.push(Line::Pair(
                    k.trim_end().to_string(),
                    v.trim_start().to_string(),
                ));
            }
            // GLib rejects other lines; a file Atlas loaded has none.
        }
        KeyFile { groups }
    }

    /// The value of `key` in `group` (the last one, as GLib reads it).
    pub fn get(&self, group: &str, key: &str) -> Option<&str> {
        self.groups
            .iter()
            .filter(|g| g.name.as_deref() == Some(group))
            .flat_map(|g| g.lines.iter())
            .filter_map(|l| match l {
                Line::Pair(k, v) if k == key => Some(v.as_str()),
                _ => None,
            })
            .next_back()
    }

    pub fn set(&mut self, group: &str, key: &str, value: &str) {
        let g = match self
            .groups
            .iter()
            .rposition(|g| g.name.as_deref() == Some(group))
        {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(Group {
                    name: Some(group.to_string()),
                    lines: vec![],
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        if let Some(Line::Pair(_, v)) = g
            .lines
            .iter_mut()
            .rev()
            .find(|l| matches!(l, Line::Pair(k, _) if k == key))
        {
            *v = value.to_string();
            return;
        }
        // Appended after the last line that is not blank.
        let at = g
            .lines
            .iter()
            .rposition(|l| !matches!(l, Line::Comment(c) if c.trim().is_empty()))
            .map_or(0, |i| i + 1);
        g.lines
            .insert(at, Line::Pair(key.to_string(), value.to_string()));
    }

    pub fn to_data(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            if let Some(name) = &g.name {
                // Groups are separated by at least an empty line.
                if out.len() >= 2 && !out.ends_with("\n\n") {
                    out.push('\n');
                }
                out.push_str(&format!("[{name}]\n"));
            }
            for l in &g.lines {
                match l {
                    Line::Comment(c) => out.push_str(&format!("{c}\n")),
                    Line::Pair(k, v) => out.push_str(&format!("{k}={v}\n")),
                }
            }
        }
        out
    }
}

/// `SAVE CONFIG` on `path`: the four keys set from the run-time values,
/// the whole file rewritten GLib's way with mode 0644. The fixture has no
/// run-time client allow-list or users of its own (no `ADD CLIENT`, no
/// `ADD PWD`): Atlas's are the file's as loaded, written back as they are
/// (`client-ips=` appears empty when the file had none).
pub fn save_config(path: &Path, rw: &str, ro: &str) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    let mut kf = KeyFile::parse(&text);
    let pwds = kf.get("mysql-proxy", "pwds").unwrap_or("").to_string();
    let client_ips = kf
        .get("mysql-proxy", "client-ips")
        .unwrap_or("")
        .to_string();
    kf.set("mysql-proxy", "proxy-backend-addresses", rw);
    kf.set("mysql-proxy", "proxy-read-only-backend-addresses", ro);
    kf.set("mysql-proxy", "client-ips", &client_ips);
    kf.set("mysql-proxy", "pwds", &pwds);
    // g_file_set_contents: a temporary file renamed over the old one.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.GLIB1X"));
    fs::write(&tmp, kf.to_data())?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_like_glib() {
        let text = "# top comment\n[mysql-proxy]\n# backends\nproxy-backend-addresses = 127.0.0.1:3306\nproxy-read-only-backend-addresses = localhost:3308@2\npwds = root:abc==\nadmin-password = pw\n\n[other]\nx = 1\n";
        let mut kf = KeyFile::parse(text);
        assert_eq!(kf.get("mysql-proxy", "pwds"), Some("root:abc=="));
        kf.set(
            "mysql-proxy",
            "proxy-read-only-backend-addresses",
            "127.0.0.1:3308",
        );
        kf.set("mysql-proxy", "client-ips", "");
        assert_eq!(
            kf.to_data(),
            "# top comment\n\n[mysql-proxy]\n# backends\nproxy-backend-addresses=127.0.0.1:3306\nproxy-read-only-backend-addresses=127.0.0.1:3308\npwds=root:abc==\nadmin-password=pw\nclient-ips=\n\n[other]\nx=1\n"
        );
    }

    #[test]
    fn save_config_keeps_the_client_allow_list() {
        let dir = std::env::temp_dir().join(format!("glib-clients-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.cnf");
        fs::write(
            &path,
            "[mysql-proxy]\nproxy-backend-addresses = 127.0.0.1:3306\nclient-ips = 10.0.0.5, 10.0.0.6\npwds = root:abc==\n",
        )
        .unwrap();
        save_config(&path, "127.0.0.1:3306", "127.0.0.1:3308").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("client-ips=10.0.0.5, 10.0.0.6\n"), "{text}");
        assert!(text.contains("pwds=root:abc==\n"), "{text}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
