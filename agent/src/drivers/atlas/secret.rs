//! The Atlas admin password: read from a file only root may read, kept out
//! of every log, error and status (its `Debug` is redacted, it has no
//! `Display`).

use std::path::{Path, PathBuf};

use crate::operator::secret_file::{self, SecretFileError};

#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("Atlas admin password file: {0} (write Atlas's admin-password into it: (umask 077; printf %s 'PASSWORD' > FILE))")]
    File(#[from] SecretFileError),
    #[error("Atlas admin password file {path} is empty: write Atlas's admin-password into it")]
    Empty { path: PathBuf },
}

impl Password {
    /// Reads the password file (see [`crate::operator::secret_file`]). One
    /// trailing newline is not part of the password (editors add it); other
    /// whitespace is.
    pub fn load(path: &Path) -> Result<Password, PasswordError> {
        let bytes = secret_file::password(secret_file::read(path)?);
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
    use crate::operator::secret_file::tests::Dir;

    #[test]
    fn password_file_mode_and_content_are_checked() {
        let d = Dir::new("atlas-pw");
        let path = d.file("pw", b"s3cret\n", 0o644);
        let err = Password::load(&path).unwrap_err();
        assert!(
            matches!(
                err,
                PasswordError::File(SecretFileError::Mode { mode: 0o644, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let path = d.file("pw", b"s3cret\n", 0o600);
        let pw = Password::load(&path).unwrap();
        assert_eq!(pw.expose(), b"s3cret");
        assert_eq!(format!("{pw:?}"), "Password(<redacted>)");
        let path = d.file("pw", b"\n", 0o600);
        assert!(matches!(
            Password::load(&path),
            Err(PasswordError::Empty { .. })
        ));
        let missing = Password::load(&d.0.join("missing")).unwrap_err();
        assert!(
            matches!(&missing, PasswordError::File(f) if f.is_missing()),
            "{missing}"
        );
    }
}
