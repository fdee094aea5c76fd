//! Passwords read from files that only root may read; never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::operator::secret_file::{self, SecretFileError};

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
    #[error("MySQL password file: {0} (the file holds the account's password, mode 0600, owned by root)")]
    File(#[from] SecretFileError),
    #[error(
        "MySQL password file {path} is empty or not UTF-8: write the account's password into it"
    )]
    Empty { path: PathBuf },
}

/// Reads a password file (see [`crate::operator::secret_file`]). One
/// trailing newline is not part of the password (editors add it); other
/// whitespace is.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    let bytes = secret_file::password(secret_file::read(path)?);
    match String::from_utf8(bytes) {
        Ok(pw) if !pw.is_empty() => Ok(Secret(pw)),
        _ => Err(PasswordFileError::Empty {
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::secret_file::tests::Dir;

    #[test]
    fn password_files_are_checked_and_never_shown() {
        let d = Dir::new("mysql-pw");
        let path = d.file("pw", b"top secret \n", 0o644);
        let e = read_password_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("top secret"));
        let path = d.file("pw", b"top secret \n", 0o600);
        let s = read_password_file(&path).unwrap();
        assert_eq!(s.expose(), "top secret ");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        for empty in [&b"\n"[..], b"", b"\xff\xfe"] {
            let path = d.file("pw", empty, 0o600);
            assert!(matches!(
                read_password_file(&path),
                Err(PasswordFileError::Empty { .. })
            ));
        }
        assert!(matches!(
            read_password_file(&d.0.join("absent")),
            Err(PasswordFileError::File(f)) if f.is_missing()
        ));
    }
}
