//! The Atlas admin password: read from a file only root may read, kept out
//! of every log, error and status (its `Debug` is redacted, it has no
//! `Display`).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read the Atlas admin password file {path}: {source} (write Atlas's admin-password into it: printf %s 'PASSWORD' > {path}; chmod 600 {path})")]
    Read { path: PathBuf, source: io::Error },
    #[error("Atlas admin password file {path} is readable or writable by group/other (mode {mode:o}): run chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("Atlas admin password file {path} is empty: write Atlas's admin-password into it")]
    Empty { path: PathBuf },
}

impl Password {
    /// Reads the password file, refusing one that group or other may read
    /// (like the HMAC key file). One trailing newline is not part of the
    /// password (editors add it); other whitespace is.
    pub fn load(path: &Path) -> Result<Password, PasswordError> {
        let read_err = |source| PasswordError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(read_err)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PasswordError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = fs::read(path).map_err(read_err)?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            // Atlas compares a scramble of its (non-empty) admin-password with
            // what the client sends; an empty one can never be right.
            return Err(PasswordError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Password(bytes))
    }

    pub fn new(bytes: impl Into<Vec<u8>>) -> Password {
        Password(bytes.into())
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn password_file_mode_and_content_are_checked() {
        let dir = std::env::temp_dir().join(format!("ha-agent-pw-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Password::load(&path).unwrap_err();
        assert!(
            matches!(err, PasswordError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let pw = Password::load(&path).unwrap();
        assert_eq!(pw.expose(), b"s3cret");
        assert_eq!(format!("{pw:?}"), "Password(<redacted>)");
        fs::write(&path, "\n").unwrap();
        assert!(matches!(
            Password::load(&path),
            Err(PasswordError::Empty { .. })
        ));
        let missing = Password::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, PasswordError::Read { .. }), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
