//! Rewriting the two backend lines of Atlas's `.cnf` ourselves (`persist =
//! "cnf"`), so that a restarted Atlas starts from the table the agent set.
//!
//! Only `proxy-backend-addresses` and `proxy-read-only-backend-addresses` in
//! the `[mysql-proxy]` section change; every other byte (comments, the admin
//! and user passwords, `pwds`) stays as the operator wrote it, unlike
//! Atlas's `SAVE CONFIG`, which re-serialises the whole file. The new file is
//! written beside the old one with the same mode and owner, synced, and
//! renamed over it (what the seed's `sed -i` did), so Atlas never reads a
//! half-written file.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddrV4;
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
}

/// The file's text with the two backend lines set to `rw` and `ro`; `None`
/// if there is no `[mysql-proxy]` section. A key that is missing is added
/// right after the section header; a key listed twice is set both times.
pub fn render(text: &str, rw: &[SocketAddrV4], ro: &[SocketAddrV4]) -> Option<String> {
    let join = |v: &[SocketAddrV4]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let rw_line = format!("{RW_KEY} = {}", join(rw));
    let ro_line = format!("{RO_KEY} = {}", join(ro));
    let mut out: Vec<String> = Vec::new();
    let mut in_section = false;
    let mut header_at = None;
    let (mut saw_rw, mut saw_ro) = (false, false);
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == SECTION;
            if in_section && header_at.is_none() {
                header_at = Some(out.len());
            }
            out.push(line.to_string());
            continue;
        }
        let key = t.split_once('=').map(|(k, _)| k.trim());
        match key {
            Some(RW_KEY) if in_section => {
                saw_rw = true;
                out.push(rw_line.clone());
            }
            Some(RO_KEY) if in_section => {
                saw_ro = true;
                out.push(ro_line.clone());
            }
            _ => out.push(line.to_string()),
        }
    }
    let at = header_at? + 1;
    if !saw_ro {
        out.insert(at, ro_line);
    }
    if !saw_rw {
        out.insert(at, rw_line);
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') || text.is_empty() {
        s.push('\n');
    }
    Some(s)
}

/// Rewrites `path` atomically; returns false (and writes nothing) if the
/// lines already say this.
pub fn rewrite(path: &Path, rw: &[SocketAddrV4], ro: &[SocketAddrV4]) -> Result<bool, CnfError> {
    let read_err = |source| CnfError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let text = fs::read_to_string(path).map_err(read_err)?;
    let new = render(&text, rw, ro).ok_or_else(|| CnfError::NoSection {
        path: path.to_owned(),
    })?;
    if new == text {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.ha-agent.tmp"));
    let write_err = |source| CnfError::Write {
        path: path.to_owned(),
        tmp: tmp.clone(),
        source,
    };
    let result = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp); // a leftover of a crash
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            // The file holds Atlas's admin password: never wider than the original.
            .mode(meta.mode() & 0o600)
            .open(&tmp)?;
        f.write_all(new.as_bytes())?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const SEED: &str = "[mysql-proxy]\n\
# backends\n\
proxy-backend-addresses = 192.168.1.150:3306\n\
proxy-read-only-backend-addresses = 192.168.1.101:3306\n\
pwds = root:qtyU1btXOo074Itvx0UR9Q==\n\
admin-password = pwd\n";

    #[test]
    fn replaces_both_lines_and_keeps_the_rest() {
        let out = render(SEED, &[a("192.168.1.150:3306")], &[]).unwrap();
        assert_eq!(
            out,
            SEED.replace(
                "proxy-read-only-backend-addresses = 192.168.1.101:3306",
                "proxy-read-only-backend-addresses = "
            )
        );
        let two = render(
            &out,
            &[a("10.0.0.1:3306")],
            &[a("10.0.0.2:3306"), a("10.0.0.3:3306")],
        )
        .unwrap();
        assert!(two.contains("\nproxy-backend-addresses = 10.0.0.1:3306\n"));
        assert!(two.contains("\nproxy-read-only-backend-addresses = 10.0.0.2:3306,10.0.0.3:3306\n"));
    }

    #[test]
    fn missing_keys_are_added_to_the_section_and_other_sections_left_alone() {
        let text = "[other]\nproxy-backend-addresses = 1.1.1.1:1\n[mysql-proxy]\nevent-threads = 8";
        let out = render(text, &[a("10.0.0.1:3306")], &[a("10.0.0.2:3306")]).unwrap();
        assert_eq!(
            out,
            "[other]\nproxy-backend-addresses = 1.1.1.1:1\n[mysql-proxy]\n\
proxy-backend-addresses = 10.0.0.1:3306\n\
proxy-read-only-backend-addresses = 10.0.0.2:3306\nevent-threads = 8"
        );
        assert_eq!(render("a = b\n", &[], &[]), None);
    }

    #[test]
    fn rewrite_is_atomic_keeps_the_mode_and_skips_identical_content() {
        let dir = std::env::temp_dir().join(format!("ha-agent-cnf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("my.cnf");
        fs::write(&path, SEED).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let rw = [a("192.168.1.150:3306")];
        assert!(rewrite(&path, &rw, &[]).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("proxy-read-only-backend-addresses = \n"),
            "{text}"
        );
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(!rewrite(&path, &rw, &[]).unwrap(), "same content: no write");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("my.cnf")],
            "no temp file left"
        );
        let missing = rewrite(&dir.join("nope.cnf"), &rw, &[]).unwrap_err();
        assert!(matches!(missing, CnfError::Read { .. }), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
