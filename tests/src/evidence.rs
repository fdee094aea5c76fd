//! What a failed privileged test leaves behind: a directory under
//! `target/lab-evidence/<test>-<time>/` with the lab's logs (both agents'),
//! any extra files the test names (MariaDB error logs, ...), and text notes
//! (the error, state snapshots taken at the fault). The failure message names
//! the directory, so the next failure explains itself.
//!
//! Secrets stay out: the lab's key and password files are not copied.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

/// `<target dir>/lab-evidence`: `$CARGO_TARGET_DIR` (relative to the
/// workspace) or `<workspace>/target`.
pub fn root() -> PathBuf {
    let ws = crate::agent::workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if PathBuf::from(&t).is_absolute() => PathBuf::from(t),
        Some(t) => ws.join(t),
        None => ws.join("target"),
    };
    target.join("lab-evidence")
}

/// Files of a lab directory that may hold secrets.
fn secret(name: &str) -> bool {
    name == "key" || name.ends_with(".pw") || name.ends_with(".cnf") || name.ends_with(".sock")
}

/// One evidence directory being filled.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Creates `<root>/<test>-<UTC time>/` (a suffix keeps two failures of
    /// the same second apart).
    pub fn new(test: &str) -> Result<Bundle> {
        let time = ha_agent::operator::status::rfc3339(SystemTime::now()).replace(':', "-");
        let name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = root();
        let mut dir = base.join(format!("{name}-{time}"));
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = base.join(format!("{name}-{time}-{n}"));
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Bundle { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies every regular file of `lab_dir` but secrets and sockets
    /// (agent logs, configs), best effort: what cannot be copied is listed
    /// in `missing.txt`.
    pub fn copy_dir(&self, lab_dir: &Path, prefix: &str) {
        let Ok(entries) = std::fs::read_dir(lab_dir) else {
            self.note(
                "missing.txt",
                &format!("cannot list {}\n", lab_dir.display()),
            );
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if secret(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            self.copy_file(&format!("{prefix}{name}"), &e.path());
        }
    }

    /// Copies one file under `name` (best effort, see [`Bundle::copy_dir`]).
    pub fn copy_file(&self, name: &str, path: &Path) {
        if let Err(e) = std::fs::copy(path, self.dir.join(name)) {
            self.note("missing.txt", &format!("{}: {e}\n", path.display()));
        }
    }

    /// Appends `text` to the file `name`.
    pub fn note(&self, name: &str, text: &str) {
        use std::io::Write;
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = r {
            eprintln!("ha-lab: cannot write evidence {name}: {e}");
        }
    }
}
