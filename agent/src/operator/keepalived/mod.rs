//! `ha-agent import-keepalived`: an ha-agent config from a keepalived.conf.
//!
//! [`parse`] holds keepalived's grammar, [`read`] turns statements into
//! instances and groups (refusing unknown keywords), and [`import`] maps
//! them onto ha-agent's config: the sync group becomes the group, each
//! instance a link with its VIPs. What has no equivalent is listed in the
//! result's header, what needs a decision is a `TODO` comment next to the
//! field, and the text is validated with the agent's own parser.

pub mod parse;
pub mod read;
mod render;
#[cfg(test)]
mod tests;
mod translate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use translate::Translator;

/// Something in a keepalived.conf that stops the import, at its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// An address the keepalived.conf files do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingAddress {
    pub interface: String,
    pub instance: String,
    /// This server's address (else the peer's).
    pub local: bool,
}

impl MissingAddress {
    /// The question asked on a terminal.
    pub fn question(&self) -> String {
        let whose = if self.local {
            "this server's"
        } else {
            "the peer's"
        };
        format!(
            "{whose} address on {} (vrrp_instance {})? ",
            self.interface, self.instance
        )
    }
}

impl fmt::Display for MissingAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whose, flag, kw) = if self.local {
            ("this server's", "--local-ip", "unicast_src_ip")
        } else {
            ("the peer's", "--peer-ip", "unicast_peer")
        };
        write!(
            f,
            "{whose} address on {} (vrrp_instance {} has no {kw}): pass {flag} {}=ADDRESS",
            self.interface, self.instance, self.interface
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refused: {} problem(s) to fix first:\n{}", .0.len(), lines(.0))]
    Refused(Vec<Problem>),
    #[error("{} address(es) missing (the peer's keepalived.conf, --peer-config, may hold them):\n{}", .0.len(), lines(.0))]
    MissingAddresses(Vec<MissingAddress>),
    #[error("bad option {option} {value:?}: {reason}")]
    BadOption {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the imported config does not validate (please report this with the keepalived.conf): {0}"
    )]
    Invalid(String),
}

fn lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the operator adds to the files.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// This server's name; else global_defs router_id, else `hostname`.
    pub name: Option<String>,
    /// Fallback name (the machine's host name).
    pub hostname: String,
    /// Per interface: this server's address, the peer's, the witness.
    pub local_ips: BTreeMap<String, Ipv4Addr>,
    pub peer_ips: BTreeMap<String, Ipv4Addr>,
    pub witnesses: BTreeMap<String, Ipv4Addr>,
}

impl ImportOptions {
    /// Parses `IFACE=IP` values of `option` into `map`.
    pub fn add_addresses(
        map: &mut BTreeMap<String, Ipv4Addr>,
        option: &'static str,
        values: &[String],
    ) -> Result<(), ImportError> {
        for v in values {
            let bad = |reason: &str| ImportError::BadOption {
                option,
                value: v.clone(),
                reason: reason.to_string(),
            };
            let (iface, ip) = v
                .split_once('=')
                .ok_or_else(|| bad("expected IFACE=IPv4, e.g. eth1=192.168.1.100"))?;
            let ip: Ipv4Addr = ip
                .trim()
                .parse()
                .map_err(|_| bad("not an IPv4 address after '='"))?;
            if map.insert(iface.trim().to_string(), ip).is_some() {
                return Err(bad("this interface is given twice"));
            }
        }
        Ok(())
    }
}

/// The result: the config text and what the operator must review.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    /// Translated with a change of meaning, or needing a decision.
    pub notes: Vec<String>,
    /// keepalived settings with no ha-agent equivalent.
    pub untranslated: Vec<String>,
}

/// A keepalived.conf: its path (for messages) and its text.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// Reads a file for [`import`].
    pub fn load(path: &Path) -> Result<String, ImportError> {
        std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })
    }
}

/// Translates `local` (this server's keepalived.conf), checked against
/// `peer` (the other server's) when given.
pub fn import(
    local: Source,
    peer: Option<Source>,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let ka = read::read(local.path, local.text);
    let pk = peer
        .as_ref()
        .map(|p| read::read(p.path, p.text))
        .transpose();
    let (ka, pk) = match (ka, pk) {
        (Ok(ka), Ok(pk)) => (ka, pk),
        (ka, pk) => {
            let mut problems = ka.err().unwrap_or_default();
            problems.extend(pk.err().unwrap_or_default());
            return Err(ImportError::Refused(problems));
        }
    };
    Translator {
        ka: &ka,
        peer: pk.as_ref(),
        opts,
        problems: Vec::new(),
        notes: Vec::new(),
        untranslated: ka.untranslated.clone(),
    }
    .run()
}
