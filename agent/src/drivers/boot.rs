//! The boot counter: a number that grows at every start of the agent, kept
//! in the state directory. It orders our sessions for the peer (a probe of
//! an older boot is an old session replayed), so it must never go back:
//! the new value is at least the stored one plus one, and at least the Unix
//! time in milliseconds, so a lost or garbled file still moves forward on a
//! host whose clock is sane (an agent cannot start twice in a millisecond). Written atomically (temporary file, fsync, rename).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const FILE: &str = "boot";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot create the state directory {path}: {source} (set node.state_dir to a directory root can write)")]
    Dir { path: PathBuf, source: io::Error },
    #[error("the state directory {path} is not a directory owned by root with mode 0700 (it is {what}): fix it or set node.state_dir")]
    Unsafe { path: PathBuf, what: String },
    #[error("cannot write the boot counter {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the counter file held, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    None,
    Value(u64),
    Unreadable,
}

/// Reads, advances and stores the boot counter; returns the new value.
pub fn next(dir: &Path) -> Result<(u64, Previous), BootError> {
    ensure_dir(dir)?;
    let path = dir.join(FILE);
    let previous = match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_or(Previous::Unreadable, Previous::Value),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Previous::None,
        Err(_) => Previous::Unreadable,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let stored = match previous {
        Previous::Value(v) => v,
        _ => 0,
    };
    let boot = stored.saturating_add(1).max(now);
    store(dir, &path, boot).map_err(|source| BootError::Write {
        path: path.clone(),
        source,
    })?;
    Ok((boot, previous))
}

fn ensure_dir(dir: &Path) -> Result<(), BootError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| BootError::Dir {
                path: dir.to_owned(),
                source,
            }),
        Err(source) => Err(BootError::Dir {
            path: dir.to_owned(),
            source,
        }),
        Ok(m) => check_existing(dir, &m),
    }
}

/// What start-up will say of `dir` as the state directory, without
/// creating anything (for `check-config`): a missing one is made at start.
pub fn check_dir(dir: &Path) -> Result<(), BootError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BootError::Dir {
            path: dir.to_owned(),
            source,
        }),
        Ok(m) => check_existing(dir, &m),
    }
}

fn check_existing(dir: &Path, m: &fs::Metadata) -> Result<(), BootError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = m.permissions().mode() & 0o777;
    if !m.is_dir() || m.uid() != euid || mode & 0o022 != 0 {
        return Err(BootError::Unsafe {
            path: dir.to_owned(),
            what: format!(
                "{}owned by uid {}, mode {mode:o}",
                if m.is_dir() { "" } else { "not a directory, " },
                m.uid()
            ),
        });
    }
    Ok(())
}

fn store(dir: &Path, path: &Path, boot: u64) -> io::Result<()> {
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    writeln!(f, "{boot}")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_at_every_start_and_survives_a_lost_file() {
        let dir = std::env::temp_dir().join(format!("ha-boot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (a, prev) = next(&dir).unwrap();
        assert_eq!(prev, Previous::None);
        let (b, prev) = next(&dir).unwrap();
        assert_eq!(prev, Previous::Value(a));
        assert!(b > a);
        // A counter far ahead of the clock still grows by one.
        fs::write(dir.join(FILE), format!("{}\n", u64::MAX - 5)).unwrap();
        assert_eq!(next(&dir).unwrap().0, u64::MAX - 4);
        // Garbage: the clock keeps it moving forward.
        fs::write(dir.join(FILE), "garbage").unwrap();
        let (c, prev) = next(&dir).unwrap();
        assert_eq!(prev, Previous::Unreadable);
        assert!(c >= b);
        assert_eq!(
            fs::metadata(dir.join(FILE)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(next(&dir), Err(BootError::Unsafe { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
