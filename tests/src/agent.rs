//! Running ha-agent in the lab: configs, key, binary, status.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::process::{spawn_in, LabProcess};
use crate::topology::{Lab, Link, Server};
use crate::{GATEWAY, PREFIX_LEN};

/// Changes to the lab's default agent config, by dotted path into the TOML
/// document: `"node.fence_timeout_ms"`, `"link.0.interval_ms"` (array index),
/// `"hooks.notify_master"`. Missing tables are created.
///
/// ```
/// let o = ha_lab::Overrides::new()
///     .set("node.fence_timeout_ms", 500)
///     .set("link.1.multiplier", 5)
///     .remove("link.0.witness");
/// # let _ = o;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    items: Vec<(String, Option<toml::Value>)>,
}

impl Overrides {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets (or replaces) the value at `path`.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> Self {
        self.items.push((path.to_string(), Some(value.into())));
        self
    }
    /// Removes the key at `path` (no error if absent).
    pub fn remove(mut self, path: &str) -> Self {
        self.items.push((path.to_string(), None));
        self
    }

    /// Applies the changes to a TOML document.
    pub fn apply(&self, doc: &mut toml::Table) -> Result<()> {
        for (path, value) in &self.items {
            apply_one(doc, path, value.clone()).with_context(|| format!("override {path:?}"))?;
        }
        Ok(())
    }
}

fn apply_one(doc: &mut toml::Table, path: &str, value: Option<toml::Value>) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("empty path segment");
    }
    let (last, parents) = parts.split_last().expect("split yields at least one part");
    // Wrap the root in a Value so tables and arrays are walked alike.
    let mut root = toml::Value::Table(std::mem::take(doc));
    let r = walk_and_set(&mut root, parents, last, value);
    if let toml::Value::Table(t) = root {
        *doc = t;
    }
    r
}

fn walk_and_set(
    v: &mut toml::Value,
    parents: &[&str],
    last: &str,
    value: Option<toml::Value>,
) -> Result<()> {
    let mut cur = v;
    for p in parents {
        cur = match cur {
            toml::Value::Table(t) => t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            toml::Value::Array(a) => {
                let i: usize = p
                    .parse()
                    .with_context(|| format!("{p:?} is not an array index"))?;
                let len = a.len();
                a.get_mut(i)
                    .with_context(|| format!("index {i} out of range (array has {len})"))?
            }
            _ => bail!("{p:?}: parent is not a table or array"),
        };
    }
    match cur {
        toml::Value::Table(t) => {
            match value {
                Some(v) => {
                    t.insert(last.to_string(), v);
                }
                None => {
                    t.remove(last);
                }
            }
            Ok(())
        }
        toml::Value::Array(a) => {
            let i: usize = last
                .parse()
                .with_context(|| format!("{last:?} is not an array index"))?;
            match value {
                Some(v) if i < a.len() => a[i] = v,
                Some(v) if i == a.len() => a.push(v),
                None if i < a.len() => {
                    a.remove(i);
                }
                _ => bail!("index {i} out of range (array has {})", a.len()),
            }
            Ok(())
        }
        _ => bail!("parent of {last:?} is not a table or array"),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The ha-agent binary: `$HA_AGENT_BIN`, else `$CARGO_TARGET_DIR/release/ha-agent`,
/// else `<workspace>/target/release/ha-agent`. Fails if it does not exist.
pub fn agent_bin() -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os("HA_AGENT_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        };
        t.join("release/ha-agent")
    } else {
        workspace_root().join("target/release/ha-agent")
    };
    if !path.is_file() {
        bail!(
            "ha-agent binary not found at {}: run cargo xtask build first (or set HA_AGENT_BIN)",
            path.display()
        );
    }
    Ok(path)
}

impl Lab {
    /// Uses this ha-agent binary instead of [`agent_bin`]'s choice.
    pub fn set_agent_bin(&mut self, path: impl Into<PathBuf>) {
        self.agent_bin = Some(path.into());
    }

    /// The ha-agent binary this lab runs (see [`agent_bin`]).
    pub fn agent_binary(&self) -> Result<PathBuf> {
        match &self.agent_bin {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => bail!(
                "ha-agent binary not found at {}: run cargo xtask build first",
                p.display()
            ),
            None => agent_bin(),
        }
    }

    /// The shared key file (32 random bytes as 64 hex digits and a newline,
    /// mode 0600), created on first use.
    pub fn key_file(&self) -> Result<PathBuf> {
        let path = self.dir().join("key");
        if !path.exists() {
            let mut bytes = [0u8; 32];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
            let mut hex = String::with_capacity(65);
            for b in bytes {
                write!(hex, "{b:02x}").unwrap();
            }
            hex.push('\n');
            std::fs::write(&path, hex)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }

    pub fn agent_config_path(&self, server: Server) -> PathBuf {
        self.dir().join(format!("{}.toml", server.name()))
    }
    pub fn status_socket(&self, server: Server) -> PathBuf {
        self.dir().join(format!("{}.sock", server.name()))
    }
    pub fn agent_log_path(&self, server: Server) -> PathBuf {
        self.dir().join(format!("{}.log", server.name()))
    }

    /// The lab's agent config for `server` (before overrides), as TOML text.
    pub fn default_agent_config(&self, server: Server) -> Result<String> {
        let key = self.key_file()?;
        let sock = self.status_socket(server);
        let peer = server.peer();
        let mut t = String::new();
        writeln!(t, "# ha-agent config written by ha-lab for {server}")?;
        writeln!(t, "[node]")?;
        writeln!(t, "name = \"{}\"", server.name())?;
        match server {
            Server::S1 => {
                writeln!(t, "priority = 101")?;
                writeln!(t, "nopreempt = true")?;
            }
            Server::S2 => writeln!(t, "priority = 100")?,
        }
        writeln!(t, "key_file = \"{}\"", key.display())?;
        writeln!(t, "status_socket = \"{}\"", sock.display())?;
        let state = self.dir().join(format!("{}-state", server.name()));
        writeln!(t, "state_dir = \"{}\"", state.display())?;
        for link in Link::ALL {
            writeln!(t, "\n[[link]]")?;
            writeln!(t, "name = \"{}\"", link.name())?;
            writeln!(t, "interface = \"{}\"", link.ifname())?;
            writeln!(t, "local_ip = \"{}\"", server.ip(link))?;
            writeln!(t, "peer_ip = \"{}\"", peer.ip(link))?;
            if link == Link::Outside {
                writeln!(t, "witness = \"{GATEWAY}\"")?;
            }
        }
        for link in Link::ALL {
            writeln!(t, "\n[[vip]]")?;
            writeln!(t, "address = \"{}/{PREFIX_LEN}\"", link.vip())?;
            writeln!(t, "interface = \"{}\"", link.ifname())?;
        }
        Ok(t)
    }

    /// The config text for `server` with `overrides` applied.
    pub fn agent_config_text(&self, server: Server, overrides: &Overrides) -> Result<String> {
        let base = self.default_agent_config(server)?;
        let mut doc: toml::Table = base.parse().context("parsing the lab's own config")?;
        overrides.apply(&mut doc)?;
        Ok(format!(
            "# ha-agent config written by ha-lab for {server}\n{}",
            toml::to_string(&doc)?
        ))
    }

    /// Writes the agent config for `server` (lab defaults + `overrides`) and
    /// returns its path. The result is validated with the agent's own parser.
    pub fn write_agent_config(&self, server: Server, overrides: &Overrides) -> Result<PathBuf> {
        let text = self.agent_config_text(server, overrides)?;
        let path = self.agent_config_path(server);
        ha_agent::operator::config::Config::parse(&text, &path)
            .with_context(|| format!("the lab's config for {server} is invalid:\n{text}"))?;
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Writes `text` verbatim as the agent config of `server` (no validation:
    /// for tests of invalid configs).
    pub fn write_agent_config_raw(&self, server: Server, text: &str) -> Result<PathBuf> {
        let path = self.agent_config_path(server);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts `ha-agent run --config FILE` in the server's namespace, with the
    /// config already written for it (or the lab's default if none was).
    /// Output goes to `<lab dir>/serverN.log` (appended across restarts).
    pub fn start_agent(&self, server: Server) -> Result<LabProcess> {
        let bin = self.agent_binary()?;
        let config = self.agent_config_path(server);
        if !config.exists() {
            self.write_agent_config(server, &Overrides::new())?;
        }
        let _ = std::fs::remove_file(self.status_socket(server));
        spawn_in(
            self.server_ns(server),
            bin.to_str().context("agent path is not UTF-8")?,
            &[
                "run",
                "--config",
                config.to_str().context("config path is not UTF-8")?,
            ],
            &self.agent_log_path(server),
        )
    }

    /// Writes the config with `overrides`, then starts the agent.
    pub fn start_agent_with(&self, server: Server, overrides: &Overrides) -> Result<LabProcess> {
        self.write_agent_config(server, overrides)?;
        self.start_agent(server)
    }

    /// Runs `ha-agent ARGS...` (a CLI call such as `status`) and returns its output.
    pub fn agent_cli(&self, args: &[&str]) -> Result<Output> {
        let bin = self.agent_binary()?;
        crate::netns::output(Command::new(bin).args(args))
    }

    /// Runs `ha-agent ARGS...`; fails with what it printed on stderr (the
    /// agent's refusal) unless it exits 0. Returns stdout.
    pub fn agent_cli_ok(&self, args: &[&str]) -> Result<String> {
        let bin = self.agent_binary()?;
        crate::netns::run(Command::new(bin).args(args))
    }

    /// `ha-agent status --socket S --json`, parsed.
    pub fn agent_status(&self, server: Server) -> Result<serde_json::Value> {
        let sock = self.status_socket(server);
        let out = self
            .agent_cli_ok(&["status", "--socket", path_str(&sock)?, "--json"])
            .with_context(|| format!("status of {server}"))?;
        serde_json::from_str(&out).with_context(|| format!("status of {server} is not JSON: {out}"))
    }

    /// The agent's state ("MASTER", "BACKUP", "FAULT", "INIT") by its status.
    pub fn agent_state(&self, server: Server) -> Result<String> {
        let s = self.agent_status(server)?;
        s["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("status of {server} has no \"state\": {s}"))
    }

    /// `ha-agent switchover --socket S` against `server`'s agent; fails
    /// with the agent's answer when it refuses.
    pub fn switchover(&self, server: Server) -> Result<()> {
        let sock = self.status_socket(server);
        self.agent_cli_ok(&["switchover", "--socket", path_str(&sock)?])
            .with_context(|| format!("switchover on {server}"))?;
        Ok(())
    }

    /// True when `server` holds both VIPs and the other server holds none.
    pub fn sole_holder_is(&self, server: Server) -> bool {
        Link::ALL
            .iter()
            .all(|l| self.vip_holders(l.vip()) == [server])
    }

    /// Who holds each VIP, e.g. "198.51.100.100: [server1]; 203.0.113.100: []".
    pub fn describe_vips(&self) -> String {
        Link::ALL
            .iter()
            .map(|l| {
                let v: Vec<&str> = self.vip_holders(l.vip()).iter().map(|s| s.name()).collect();
                format!("{}: [{}]", l.vip(), v.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The VIP addresses of this lab (outside, inside).
    pub fn vips(&self) -> [Ipv4Addr; 2] {
        [Link::Outside.vip(), Link::Inside.vip()]
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_walk_tables_and_arrays() {
        let mut doc: toml::Table = r#"
[node]
name = "a"
[[link]]
name = "outside"
witness = "1.2.3.4"
[[link]]
name = "inside"
"#
        .parse()
        .unwrap();
        Overrides::new()
            .set("node.priority", 7)
            .set("link.1.multiplier", 5)
            .remove("link.0.witness")
            .set("hooks.notify", "/bin/true")
            .apply(&mut doc)
            .unwrap();
        assert_eq!(doc["node"]["priority"].as_integer(), Some(7));
        assert_eq!(doc["link"][1]["multiplier"].as_integer(), Some(5));
        assert!(doc["link"][0].get("witness").is_none());
        assert_eq!(doc["hooks"]["notify"].as_str(), Some("/bin/true"));
        assert!(Overrides::new()
            .set("link.5.name", "x")
            .apply(&mut doc)
            .is_err());
    }
}
