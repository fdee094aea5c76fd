//! Atlas's `.cnf`: what its two backend lines say, and rewriting them so
//! that a restarted Atlas starts from the table the agent set, without
//! losing what the operator wrote there.
//!
//! Only `proxy-backend-addresses` and `proxy-read-only-backend-addresses` in
//! the `[mysql-proxy]` section change; every other byte (comments, the admin
//! and user passwords, `pwds`) stays. Unlike Atlas's `SAVE CONFIG`, which
//! writes back only its run-time table, an ro backend keeps its `@weight`
//! and a backend keeps the host name it was written with (Atlas's table
//! shows IP addresses): [`Remembered`] holds what the file (and the
//! `[atlas]` config) said for each address.
//!
//! A file is rewritten beside the old one with the old one's mode and
//! owner, synced, renamed over it and checked afterwards ([`write_as`]), so
//! Atlas never reads a half-written file and the admin password never
//! becomes readable by anyone who could not read it before. The same
//! function puts the mode and owner back after Atlas's `SAVE CONFIG`, which
//! rewrites the file 0644.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddrV4, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const RW_KEY: &str = "proxy-backend-addresses";
pub const RO_KEY: &str = "proxy-read-only-backend-addresses";
const SECTION: &str = "[mysql-proxy]";

#[derive(Debug, thiserror::Error)]
pub enum CnfError {
    #[error("cannot read Atlas's config {path}: {source} (check [atlas] cnf_path)")]
    Read { path: PathBuf, source: io::Error },
    #[error("Atlas's config {path} has no [mysql-proxy] section: is cnf_path Atlas's .cnf?")]
    NoSection { path: PathBuf },
    #[error("cannot write Atlas's config {path} (via {tmp}): {source}")]
    Write {
        path: PathBuf,
        tmp: PathBuf,
        source: io::Error,
    },
    #[error("Atlas's config {path} is mode {found_mode:o} owner {found_uid}:{found_gid} after the rewrite, expected mode {mode:o} owner {uid}:{gid}; it holds Atlas's admin password: check it now")]
    NotRestored {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
        found_mode: u32,
        found_uid: u32,
        found_gid: u32,
    },
}

/// A file's permission bits and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Access {
    pub fn of(path: &Path) -> io::Result<Access> {
        let m = fs::metadata(path)?;
        Ok(Access {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Group or other may read the file.
    pub fn readable_by_others(&self) -> bool {
        self.mode & 0o044 != 0
    }

    /// Group or other may read the file and could not under `before` (a
    /// 0640 file that became 0644 exposes its passwords to everyone).
    pub fn exposes_more_than(&self, before: &Access) -> bool {
        self.mode & 0o044 & !before.mode != 0
    }
}

/// One entry of a backend line: `host:port` with an optional `@weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `host:port` as written (host name or IP address).
    pub spelling: String,
    pub weight: Option<u32>,
}

impl Item {
    pub fn parse(s: &str) -> Item {
        // Atlas splits at the last '@' and reads the weight with atoi.
        match s.rsplit_once('@') {
            Some((a, w)) => Item {
                spelling: a.trim().to_string(),
                weight: w.trim().parse().ok(),
            },
            None => Item {
                spelling: s.trim().to_string(),
                weight: None,
            },
        }
    }

    pub fn render(&self) -> String {
        match self.weight {
            Some(w) => format!("{}@{w}", self.spelling),
            None => self.spelling.clone(),
        }
    }

    /// The address, with `resolve` for host names (what Atlas does at start).
    pub fn address(
        &self,
        resolve: &mut impl FnMut(&str) -> Option<SocketAddrV4>,
    ) -> Option<SocketAddrV4> {
        self.spelling
            .parse()
            .ok()
            .or_else(|| resolve(&self.spelling))
    }
}

/// The two backend lines of a `.cnf` text (the last of each in the
/// `[mysql-proxy]` section, as GLib reads it); `None` without the section.
pub fn backend_items(text: &str) -> Option<(Vec<Item>, Vec<Item>)> {
    let (mut rw, mut ro) = (Vec::new(), Vec::new());
    let mut in_section = false;
    let mut seen_section = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == SECTION;
            seen_section |= in_section;
            continue;
        }
        if !in_section || t.starts_with('#') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let target = match k.trim() {
            RW_KEY => &mut rw,
            RO_KEY => &mut ro,
            _ => continue,
        };
        *target = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Item::parse)
            .collect();
    }
    seen_section.then_some((rw, ro))
}

/// Resolves `host:port` to an IPv4 address the way the system does.
pub fn system_resolve(spelling: &str) -> Option<SocketAddrV4> {
    spelling.to_socket_addrs().ok()?.find_map(|a| match a {
        std::net::SocketAddr::V4(a) => Some(a),
        std::net::SocketAddr::V6(_) => None,
    })
}

/// What the operator wrote for each address: ro weights and host names.
/// Learned from every read of the file and from `[atlas] ro_weights`
/// (which wins); kept for the agent's lifetime, so a replica that leaves
/// the table at a failover gets its weight and name back when it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remembered {
    configured: BTreeMap<SocketAddrV4, u32>,
    weights: BTreeMap<SocketAddrV4, u32>,
    spellings: BTreeMap<SocketAddrV4, String>,
    /// Host names already resolved (each is resolved once).
    resolved: BTreeMap<String, Option<SocketAddrV4>>,
}

impl Remembered {
    pub fn new(configured_weights: BTreeMap<SocketAddrV4, u32>) -> Remembered {
        Remembered {
            configured: configured_weights,
            ..Default::default()
        }
    }

    /// The address of `item`, resolving a host name once with `resolve`.
    pub fn address_of(
        &mut self,
        item: &Item,
        resolve: &mut impl FnMut(&str) -> Option<SocketAddrV4>,
    ) -> Option<SocketAddrV4> {
        let cache = &mut self.resolved;
        item.address(&mut |h: &str| *cache.entry(h.to_string()).or_insert_with(|| resolve(h)))
    }

    /// Learns from the items a file holds now. A file without weights
    /// (what `SAVE CONFIG` writes) teaches nothing: weights are only added
    /// or changed here, never dropped.
    pub fn learn(
        &mut self,
        rw: &[Item],
        ro: &[Item],
        resolve: &mut impl FnMut(&str) -> Option<SocketAddrV4>,
    ) {
        for (item, is_ro) in rw
            .iter()
            .map(|i| (i, false))
            .chain(ro.iter().map(|i| (i, true)))
        {
            let Some(a) = self.address_of(item, resolve) else {
                continue;
            };
            if item.spelling.parse::<SocketAddrV4>().is_err() {
                self.spellings.insert(a, item.spelling.clone());
            }
            if let (true, Some(w)) = (is_ro, item.weight) {
                self.weights.insert(a, w);
            }
        }
    }

    pub fn weight(&self, a: SocketAddrV4) -> Option<u32> {
        self.configured
            .get(&a)
            .or_else(|| self.weights.get(&a))
            .copied()
    }

    /// How an address is written in the file (`ro` adds its weight).
    pub fn item(&self, a: SocketAddrV4, ro: bool) -> Item {
        Item {
            spelling: self
                .spellings
                .get(&a)
                .cloned()
                .unwrap_or_else(|| a.to_string()),
            weight: if ro { self.weight(a) } else { None },
        }
    }

    /// True when a weight is known for some address.
    pub fn has_weights(&self) -> bool {
        !self.configured.is_empty() || !self.weights.is_empty()
    }
}

/// The lines the file should have for the table's `rw` and `ro` addresses:
/// entries already in the file keep their place, new ones follow in table
/// order. `None` when the file already says exactly this (in any order).
pub fn wanted_items(
    current: &(Vec<Item>, Vec<Item>),
    rw: &[SocketAddrV4],
    ro: &[SocketAddrV4],
    mem: &mut Remembered,
    resolve: &mut impl FnMut(&str) -> Option<SocketAddrV4>,
) -> Option<(Vec<Item>, Vec<Item>)> {
    let mut one = |cur: &[Item], want: &[SocketAddrV4], is_ro: bool| -> (Vec<Item>, bool) {
        let mut out: Vec<Item> = Vec::new();
        let mut placed: Vec<SocketAddrV4> = Vec::new();
        for item in cur {
            if let Some(a) = mem.address_of(item, resolve) {
                if want.contains(&a) && !placed.contains(&a) {
                    placed.push(a);
                    out.push(mem.item(a, is_ro));
                }
            }
        }
        for &a in want {
            if !placed.contains(&a) {
                placed.push(a);
                out.push(mem.item(a, is_ro));
            }
        }
        let mut before: Vec<String> = cur.iter().map(Item::render).collect();
        let mut after: Vec<String> = out.iter().map(Item::render).collect();
        before.sort();
        after.sort();
        (out, before != after)
    };
    let (rw_items, rw_changed) = one(&current.0, rw, false);
    let (ro_items, ro_changed) = one(&current.1, ro, true);
    (rw_changed || ro_changed).then_some((rw_items, ro_items))
}

/// The file's text with the two backend lines set to `rw` and `ro`; `None`
/// if there is no `[mysql-proxy]` section. A key that is missing is added
/// right after the section header; a key listed twice is set both times.
/// The `key = value` or `key=value` style of the file is kept.
pub fn render(text: &str, rw: &[Item], ro: &[Item]) -> Option<String> {
    let join = |v: &[Item]| v.iter().map(Item::render).collect::<Vec<_>>().join(",");
    let (rw_value, ro_value) = (join(rw), join(ro));
    let mut out: Vec<String> = Vec::new();
    let mut in_section = false;
    let mut header_at = None;
    // Where the (last rw, first ro) backend line is, if any.
    let (mut saw_rw, mut saw_ro): (Option<usize>, Option<usize>) = (None, None);
    // GLib writes `key=value`, a hand-written file often `key = value`:
    // the new lines follow the file's first key.
    let spaced = text
        .lines()
        .map(str::trim)
        .filter(|t| !t.starts_with('#') && !t.starts_with('['))
        .find_map(|t| t.split_once('=').map(|(k, _)| k.ends_with(' ')))
        .unwrap_or(true);
    let line = |k: &str, v: &str| {
        if spaced {
            format!("{k} = {v}")
        } else {
            format!("{k}={v}")
        }
    };
    for line_in in text.lines() {
        let t = line_in.trim();
        if t.starts_with('[') {
            in_section = t == SECTION;
            if in_section && header_at.is_none() {
                header_at = Some(out.len());
            }
            out.push(line_in.to_string());
            continue;
        }
        let key = (!t.starts_with('#'))
            .then(|| t.split_once('=').map(|(k, _)| k.trim()))
            .flatten();
        let value = match key {
            Some(RW_KEY) if in_section => {
                saw_rw = Some(out.len());
                &rw_value
            }
            Some(RO_KEY) if in_section => {
                saw_ro.get_or_insert(out.len());
                &ro_value
            }
            _ => {
                out.push(line_in.to_string());
                continue;
            }
        };
        out.push(line(key.unwrap_or_default(), value));
    }
    // A missing key goes next to the other one, else after the header.
    let at = header_at? + 1;
    match (saw_rw, saw_ro) {
        (Some(rw), None) => out.insert(rw + 1, line(RO_KEY, &ro_value)),
        (None, Some(ro)) => out.insert(ro, line(RW_KEY, &rw_value)),
        (None, None) => {
            out.insert(at, line(RO_KEY, &ro_value));
            out.insert(at, line(RW_KEY, &rw_value));
        }
        (Some(_), Some(_)) => {}
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') || text.is_empty() {
        s.push('\n');
    }
    Some(s)
}

/// Reads the file's text and access.
pub fn read(path: &Path) -> Result<(String, Access), CnfError> {
    let read_err = |source| CnfError::Read {
        path: path.to_owned(),
        source,
    };
    let access = Access::of(path).map_err(read_err)?;
    let text = fs::read_to_string(path).map_err(read_err)?;
    Ok((text, access))
}

/// The temporary file beside `path` that a rewrite goes through.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ha-agent.tmp"))
}

/// Proves that [`write_as`] can work here (a file can be created beside
/// `path` and given `access`'s owner), without touching `path`. Run before
/// `SAVE CONFIG`: if the agent could not put the mode back afterwards, it
/// must not let Atlas make the file world-readable in the first place.
pub fn check_writable(path: &Path, access: Access) -> Result<(), CnfError> {
    let tmp = tmp_path(path);
    let r = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(access.uid), Some(access.gid))?;
        Ok(())
    })();
    let _ = fs::remove_file(&tmp);
    r.map_err(|source| CnfError::Write {
        path: path.to_owned(),
        tmp,
        source,
    })
}

/// Replaces `path` with `text`, mode and owner `access`, atomically (a
/// synced temporary file renamed over it), then checks the mode and owner
/// the path has afterwards.
pub fn write_as(path: &Path, text: &str, access: Access) -> Result<(), CnfError> {
    let tmp = tmp_path(path);
    let result = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp); // a leftover of a crash
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            // The file holds Atlas's admin password: never wider than wanted.
            .mode(access.mode & 0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::os::unix::fs::fchown(&f, Some(access.uid), Some(access.gid))?;
        f.set_permissions(fs::Permissions::from_mode(access.mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CnfError::Write {
            path: path.to_owned(),
            tmp,
            source,
        });
    }
    let found = Access::of(path).map_err(|source| CnfError::Read {
        path: path.to_owned(),
        source,
    })?;
    if found != access {
        return Err(CnfError::NotRestored {
            path: path.to_owned(),
            mode: access.mode,
            uid: access.uid,
            gid: access.gid,
            found_mode: found.mode,
            found_uid: found.uid,
            found_gid: found.gid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn no_dns(_: &str) -> Option<SocketAddrV4> {
        None
    }

    const SEED: &str = "[mysql-proxy]\n\
# backends\n\
proxy-backend-addresses = 192.168.1.150:3306\n\
proxy-read-only-backend-addresses = 192.168.1.101:3306@3\n\
pwds = root:qtyU1btXOo074Itvx0UR9Q==\n\
admin-password = pwd\n";

    fn items(v: &[&str]) -> Vec<Item> {
        v.iter().map(|s| Item::parse(s)).collect()
    }

    #[test]
    fn items_parse_with_weights_and_host_names() {
        let (rw, ro) = backend_items(SEED).unwrap();
        assert_eq!(rw, items(&["192.168.1.150:3306"]));
        assert_eq!(
            ro,
            vec![Item {
                spelling: "192.168.1.101:3306".into(),
                weight: Some(3)
            }]
        );
        let (_, ro) = backend_items(
            "[mysql-proxy]\nproxy-read-only-backend-addresses=db2:3306@2, 10.0.0.3:3306\n",
        )
        .unwrap();
        assert_eq!(ro, items(&["db2:3306@2", "10.0.0.3:3306"]));
        assert_eq!(ro[0].render(), "db2:3306@2");
        assert_eq!(backend_items("[other]\nx = 1\n"), None);
    }

    #[test]
    fn weights_and_names_survive_a_replica_leaving_and_coming_back() {
        let mut mem = Remembered::default();
        let mut dns = |h: &str| (h == "db2:3306").then(|| a("10.0.0.2:3306"));
        let text = "[mysql-proxy]\nproxy-backend-addresses = 10.0.0.1:3306\nproxy-read-only-backend-addresses = db2:3306@5\n";
        let cur = backend_items(text).unwrap();
        mem.learn(&cur.0, &cur.1, &mut dns);
        // Already right: nothing to write.
        assert_eq!(
            wanted_items(
                &cur,
                &[a("10.0.0.1:3306")],
                &[a("10.0.0.2:3306")],
                &mut mem,
                &mut dns
            ),
            None
        );
        // Failover: the replica leaves.
        let (rw, ro) = wanted_items(&cur, &[a("10.0.0.1:3306")], &[], &mut mem, &mut dns).unwrap();
        let after = render(text, &rw, &ro).unwrap();
        assert!(
            after.contains("proxy-read-only-backend-addresses = \n"),
            "{after}"
        );
        // Atlas's SAVE CONFIG would now drop weights; the file teaches nothing.
        let cur = backend_items(&after).unwrap();
        mem.learn(&cur.0, &cur.1, &mut dns);
        // It returns: name and weight are back.
        let (rw, ro) = wanted_items(
            &cur,
            &[a("10.0.0.1:3306")],
            &[a("10.0.0.2:3306")],
            &mut mem,
            &mut dns,
        )
        .unwrap();
        let back = render(&after, &rw, &ro).unwrap();
        assert_eq!(back, text);
        // What SAVE CONFIG writes (IPs, no weight) is out of date.
        let saved = "[mysql-proxy]\nproxy-backend-addresses=10.0.0.1:3306\nproxy-read-only-backend-addresses=10.0.0.2:3306\n";
        let cur = backend_items(saved).unwrap();
        let (rw, ro) = wanted_items(
            &cur,
            &[a("10.0.0.1:3306")],
            &[a("10.0.0.2:3306")],
            &mut mem,
            &mut dns,
        )
        .unwrap();
        assert_eq!(
            render(saved, &rw, &ro).unwrap(),
            "[mysql-proxy]\nproxy-backend-addresses=10.0.0.1:3306\nproxy-read-only-backend-addresses=db2:3306@5\n"
        );
    }

    #[test]
    fn configured_weights_win_and_order_does_not_force_a_rewrite() {
        let mut mem = Remembered::new([(a("10.0.0.3:3306"), 7)].into());
        let text = "[mysql-proxy]\nproxy-backend-addresses = 10.0.0.1:3306\nproxy-read-only-backend-addresses = 10.0.0.3:3306@7,10.0.0.2:3306\n";
        let cur = backend_items(text).unwrap();
        mem.learn(&cur.0, &cur.1, &mut no_dns);
        assert!(mem.has_weights());
        let rw = [a("10.0.0.1:3306")];
        assert_eq!(
            wanted_items(
                &cur,
                &rw,
                &[a("10.0.0.2:3306"), a("10.0.0.3:3306")],
                &mut mem,
                &mut no_dns
            ),
            None,
            "same entries in another order"
        );
        let cur2 = (cur.0.clone(), items(&["10.0.0.3:3306@2"]));
        let (_, ro) =
            wanted_items(&cur2, &rw, &[a("10.0.0.3:3306")], &mut mem, &mut no_dns).unwrap();
        assert_eq!(ro, items(&["10.0.0.3:3306@7"]));
    }

    #[test]
    fn render_replaces_both_lines_and_keeps_the_rest() {
        let out = render(SEED, &items(&["192.168.1.150:3306"]), &[]).unwrap();
        assert_eq!(
            out,
            SEED.replace(
                "proxy-read-only-backend-addresses = 192.168.1.101:3306@3",
                "proxy-read-only-backend-addresses = "
            )
        );
        let text = "[other]\nproxy-backend-addresses = 1.1.1.1:1\n[mysql-proxy]\nevent-threads = 8";
        let out = render(text, &items(&["10.0.0.1:3306"]), &items(&["10.0.0.2:3306"])).unwrap();
        assert_eq!(
            out,
            "[other]\nproxy-backend-addresses = 1.1.1.1:1\n[mysql-proxy]\n\
proxy-backend-addresses = 10.0.0.1:3306\n\
proxy-read-only-backend-addresses = 10.0.0.2:3306\nevent-threads = 8"
        );
        assert_eq!(render("a = b\n", &[], &[]), None);
        // GLib's style is kept in a file GLib wrote.
        let glib = "[mysql-proxy]\nproxy-backend-addresses=1.1.1.1:1\n";
        assert_eq!(
            render(glib, &items(&["10.0.0.1:3306"]), &[]).unwrap(),
            "[mysql-proxy]\nproxy-backend-addresses=10.0.0.1:3306\nproxy-read-only-backend-addresses=\n"
        );
    }

    #[test]
    fn write_as_is_atomic_sets_mode_and_owner_and_checks_them() {
        let dir = std::env::temp_dir().join(format!("ha-agent-cnf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("my.cnf");
        fs::write(&path, SEED).unwrap();
        // What SAVE CONFIG leaves: 0644.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut want = Access::of(&path).unwrap();
        assert!(want.readable_by_others());
        let at = |mode| Access {
            mode,
            uid: 0,
            gid: 0,
        };
        assert!(at(0o644).exposes_more_than(&at(0o600)));
        assert!(at(0o644).exposes_more_than(&at(0o640)));
        assert!(!at(0o640).exposes_more_than(&at(0o640)));
        assert!(!at(0o600).exposes_more_than(&at(0o640)));
        want.mode = 0o600;
        check_writable(&path, want).unwrap();
        write_as(&path, "[mysql-proxy]\n", want).unwrap();
        assert_eq!(Access::of(&path).unwrap(), want);
        assert_eq!(fs::read_to_string(&path).unwrap(), "[mysql-proxy]\n");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("my.cnf")],
            "no temp file left"
        );
        let missing = read(&dir.join("nope.cnf")).unwrap_err();
        assert!(matches!(missing, CnfError::Read { .. }), "{missing}");
        let nodir = write_as(&dir.join("no/such/dir.cnf"), "", want).unwrap_err();
        assert!(matches!(nodir, CnfError::Write { .. }), "{nodir}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
