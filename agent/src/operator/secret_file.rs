//! Files that hold a secret (the probe key, the MySQL and Atlas passwords):
//! root's alone, read in one way everywhere.
//!
//! The file is opened once, without following a symbolic link (O_NOFOLLOW)
//! and without blocking on a FIFO (O_NONBLOCK); its type, owner and mode are
//! then checked on the open descriptor (fstat), so nothing can be swapped in
//! between the check and the read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A key or a password is a few dozen bytes; anything this big is the wrong file.
pub const MAX_LEN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is a symbolic link: secret files are not read through links (put the file itself there)")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is owned by uid {uid}, not root (anyone who owns it can change it): run chown root:root {path}")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path} is readable or writable by group/other (mode {mode:o}): run chmod 600 {path}")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path} holds {len} bytes; a secret file holds one key or password (at most {MAX_LEN} bytes)")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

impl SecretFileError {
    /// The file does not exist (the operator has not created it yet).
    pub fn is_missing(&self) -> bool {
        matches!(self, SecretFileError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads a secret file: a regular file, not a link, owned by root (or by
/// the user the agent runs as), with no access for group or other.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    read_owned_by(path, euid)
}

/// [`read`], with the non-root owner that is accepted made explicit.
fn read_owned_by(path: &Path, euid: u32) -> Result<Vec<u8>, SecretFileError> {
    let p = || path.to_owned();
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                SecretFileError::Symlink { path: p() }
            } else {
                SecretFileError::Open { path: p(), source }
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|source| SecretFileError::Read { path: p(), source })?;
    if !meta.file_type().is_file() {
        return Err(SecretFileError::NotRegular { path: p() });
    }
    // Root's file; or the agent's own user's when it runs unprivileged with
    // capabilities (it could not read a root-only file then, and its own
    // files are exactly as trusted as the agent itself).
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(SecretFileError::Owner {
            path: p(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode { path: p(), mode });
    }
    if meta.len() > MAX_LEN {
        return Err(SecretFileError::TooLarge {
            path: p(),
            len: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows after the fstat.
    file.take(MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SecretFileError::Read { path: p(), source })?;
    if bytes.len() as u64 > MAX_LEN {
        return Err(SecretFileError::TooLarge {
            path: p(),
            len: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// A password as written in its file: one trailing newline (LF or CRLF) is
/// not part of it (editors add one); all other bytes are.
pub fn password(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch directory removed on drop.
    pub(crate) struct Dir(pub PathBuf);
    impl Dir {
        pub(crate) fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("ha-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        /// Writes `content` with `mode`.
        pub(crate) fn file(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn reads_a_private_regular_file() {
        let d = Dir::new("secret-ok");
        for mode in [0o600, 0o400] {
            let path = d.file("s", b"secret\n", mode);
            assert_eq!(read(&path).unwrap(), b"secret\n");
        }
        assert_eq!(password(b"pw \r\n".to_vec()), b"pw ");
        assert_eq!(password(b"pw\n\n".to_vec()), b"pw\n");
        assert_eq!(password(b" pw".to_vec()), b" pw");
    }

    #[test]
    fn refuses_group_or_other_access() {
        let d = Dir::new("secret-mode");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            let path = d.file("s", b"x", mode);
            match read(&path) {
                Err(e @ SecretFileError::Mode { .. }) => {
                    assert!(e.to_string().contains("chmod 600"), "{e}")
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_links_fifos_directories_and_missing_files() {
        let d = Dir::new("secret-kind");
        let target = d.file("target", b"secret", 0o600);
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(read(&link), Err(SecretFileError::Symlink { .. })));
        assert!(matches!(
            read(&d.0),
            Err(SecretFileError::NotRegular { .. })
        ));
        let fifo = d.0.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Must not block waiting for a writer.
        assert!(matches!(
            read(&fifo),
            Err(SecretFileError::NotRegular { .. })
        ));
        let missing = read(&d.0.join("absent")).unwrap_err();
        assert!(missing.is_missing(), "{missing}");
    }

    #[test]
    fn refuses_another_owner() {
        let d = Dir::new("secret-owner");
        let path = d.file("s", b"secret", 0o600);
        // Owned by us: accepted as root's or as the agent's own user's.
        assert!(read(&path).is_ok());
        // Seen from an agent running as another, non-root user: refused.
        let other = if euid() == 4242 { 4243 } else { 4242 };
        if euid() != 0 {
            match read_owned_by(&path, other) {
                Err(e @ SecretFileError::Owner { .. }) => {
                    assert!(e.to_string().contains("chown root"), "{e}")
                }
                r => panic!("{r:?}"),
            }
        } else {
            // As root: a file owned by someone else is refused.
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            assert!(matches!(
                read(&path),
                Err(SecretFileError::Owner { uid: 65534, .. })
            ));
        }
    }

    #[test]
    fn refuses_a_huge_file() {
        let d = Dir::new("secret-size");
        let path = d.file("s", &vec![b'a'; MAX_LEN as usize + 1], 0o600);
        assert!(matches!(read(&path), Err(SecretFileError::TooLarge { .. })));
        let path = d.file("s", &vec![b'a'; MAX_LEN as usize], 0o600);
        assert_eq!(read(&path).unwrap().len(), MAX_LEN as usize);
    }
}
