//! Passwords read from files that only root may read; never printed.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A password. Its `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The password itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read MySQL password file {path}: {source} (put the password in it and chmod 600 it)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("MySQL password file {path} is readable or writable by group/other (mode {mode:o}): run chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "MySQL password file {path} is empty or not UTF-8: write the account's password into it"
    )]
    Empty { path: PathBuf },
}

/// Reads a password file (mode 0600 or 0400). One trailing newline is not
/// part of the password (editors add it); other whitespace is.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    let read_err = |source| PasswordFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PasswordFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| PasswordFileError::Empty {
        path: path.to_owned(),
    })?;
    let pw = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if pw.is_empty() {
        return Err(PasswordFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secret(pw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn password_files_are_checked_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("ha-mysql-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "top secret \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("top secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = read_password_file(&path).unwrap();
        assert_eq!(s.expose(), "top secret ");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_password_file(&path),
            Err(PasswordFileError::Empty { .. })
        ));
        assert!(matches!(
            read_password_file(&dir.join("absent")),
            Err(PasswordFileError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
