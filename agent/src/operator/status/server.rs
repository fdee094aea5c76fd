//! The status socket's server side: who may connect, who may do what, and
//! one command per connection.
//!
//! - The socket is created in a private (0700) directory beside its final
//!   path, given its mode (0600, or 0660 with `status_group`) and only then
//!   renamed into place: it is never reachable with looser rights.
//! - A path that exists and is not a socket is refused (the agent never
//!   deletes a regular file named by a config).
//! - Every connection's peer is checked with `SO_PEERCRED`: root may do
//!   everything; a member of `status_group` may read `status` only.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Reply;

/// A command an operator sends, parsed once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Switchover,
    RejoinForce,
    PromoteForce,
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        match line.trim() {
            "status" => Some(Request::Status),
            "switchover" => Some(Request::Switchover),
            "rejoin-force" => Some(Request::RejoinForce),
            "promote-force" => Some(Request::PromoteForce),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Switchover => "switchover",
            Request::RejoinForce => "rejoin-force",
            Request::PromoteForce => "promote-force",
        }
    }

    /// Whether it changes anything (root only).
    fn changes_state(self) -> bool {
        !matches!(self, Request::Status)
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("status socket {path}: the path exists and is not a socket; refusing to replace it (set node.status_socket to another path)")]
    NotASocket { path: PathBuf },
    #[error("another ha-agent is already running with status socket {path} (stop it, or set node.status_socket)")]
    InUse { path: PathBuf },
    #[error("status socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("status_group {group:?} does not exist on this host (check /etc/group)")]
    UnknownGroup { group: String },
}

/// The bound socket and who may use it.
pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
    /// Members may read `status`.
    group: Option<u32>,
}

/// The gid of a group name.
pub fn group_id(name: &str) -> Result<u32, BindError> {
    let unknown = || BindError::UnknownGroup {
        group: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: group is plain data; getgrnam_r writes it and buf.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers and buffer length for the call.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(grp.gr_gid)
}

/// The first directory above `path` whose search permission members of
/// `gid` lack (neither "others" nor its group when it is `gid` may enter).
/// A directory that does not exist yet is not judged: `check-config` may run
/// before systemd makes the unit's `RuntimeDirectory`.
pub fn closed_to_group(path: &Path, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let closed = std::fs::metadata(dir)
            .is_ok_and(|m| m.mode() & 0o001 == 0 && !(m.gid() == gid && m.mode() & 0o010 != 0));
        closed.then(|| dir.to_owned())
    })
}

/// What to tell the operator about a directory [`closed_to_group`] found.
pub fn shut_out_warning(dir: &Path) -> String {
    format!(
        "members of node.status_group cannot enter {}, so they cannot read the status: \
         give it search permission for others (chmod o+x) or for that group",
        dir.display()
    )
}

impl StatusServer {
    /// Binds `path` safely (see the module doc). `group`: the gid whose
    /// members may read the status.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<StatusServer, BindError> {
        let io = |what: &'static str| {
            let path = path.to_owned();
            move |source| BindError::Io { path, what, source }
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(BindError::InUse {
                        path: path.to_owned(),
                    });
                }
                // Left by a run that crashed.
                std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
            }
            Ok(_) => {
                return Err(BindError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("checking the path")(e)),
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(io("creating its directory"))?;
        let private = tempdir_in(dir).map_err(io("creating a private directory beside it"))?;
        let staged = private.join("sock");
        let result = (|| {
            let listener = UnixListener::bind(&staged).map_err(io("binding"))?;
            let mode = if group.is_some() { 0o660 } else { 0o600 };
            if let Some(gid) = group {
                std::os::unix::fs::chown(&staged, None, Some(gid))
                    .map_err(io("giving it to status_group"))?;
            }
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting its mode"))?;
            std::fs::rename(&staged, path).map_err(io("moving it into place"))?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        Ok(StatusServer {
            listener: result?,
            path: path.to_owned(),
            group,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory above the socket that members of `status_group` cannot
    /// enter (they could never reach the socket), if any.
    pub fn closed_to_group(&self) -> Option<PathBuf> {
        self.group.and_then(|gid| closed_to_group(&self.path, gid))
    }

    /// Accepts connections; for each allowed request calls `handle` and
    /// writes its reply. Runs until the listener fails for good.
    pub async fn serve<F, Fut>(self, handle: F)
    where
        F: Fn(Request) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Reply> + Send,
    {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "status socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            let group = self.group;
            tokio::spawn(async move {
                let _ = answer_one(stream, group, handle).await;
            });
        }
    }

    /// Removes the socket (on the way out).
    pub fn remove(path: &Path) {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A fresh 0700 directory inside `dir`.
fn tempdir_in(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for attempt in 0..16u32 {
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let p = dir.join(format!(
            ".ha-agent-sock-{}-{attempt}-{:08x}",
            std::process::id(),
            u32::from_ne_bytes(r)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no private directory")))
}

/// The connected peer's credentials.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let c = stream.peer_cred()?;
    Ok(Peer {
        pid: c.pid().unwrap_or(0),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Whether `peer` may send `req`, given the status group.
pub fn allowed(
    peer: Peer,
    req: Request,
    group: Option<u32>,
    in_group: impl Fn(Peer, u32) -> bool,
) -> bool {
    if peer.uid == 0 {
        return true;
    }
    if req.changes_state() {
        return false;
    }
    group.is_some_and(|g| peer.gid == g || in_group(peer, g))
}

/// Whether the process `peer.pid` has `gid` among its supplementary groups
/// (read from /proc: the kernel already checked the socket's mode at
/// connect, this is the second lock).
fn in_supplementary_groups(peer: Peer, gid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", peer.pid)) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>() == Ok(gid)))
}

async fn answer_one<F, Fut>(stream: UnixStream, group: Option<u32>, handle: F) -> Option<()>
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let peer = peer_of(&stream).ok()?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(256));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    let reply = match Request::parse(&line) {
        None => Reply::Error {
            message: format!(
                "unknown command {:?} (use status, switchover, rejoin-force or promote-force)",
                line.trim()
            ),
        },
        Some(req) if !allowed(peer, req, group, in_supplementary_groups) => Reply::Error {
            message: format!(
                "{} is not allowed for uid {}: {}",
                req.as_str(),
                peer.uid,
                if req.changes_state() {
                    "only root may change the agent's state"
                } else {
                    "only root and members of node.status_group may read the status"
                }
            ),
        },
        Some(req) => handle(req).await,
    };
    let mut text = serde_json::to_string(&reply).ok()?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_the_group_cannot_enter_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let top = std::env::temp_dir().join(format!("ha-sock-dirs-{}", std::process::id()));
        let inner = top.join("run");
        std::fs::create_dir_all(&inner).unwrap();
        let sock = inner.join("ha-agent.sock");
        let gid = 4242;
        let set =
            |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        set(&top, 0o755).unwrap();
        // A root-owned 0750 directory (as systemd makes RuntimeDirectory=
        // with RuntimeDirectoryMode=0750): the group cannot enter.
        set(&inner, 0o750).unwrap();
        assert_eq!(closed_to_group(&sock, gid), Some(inner.clone()));
        set(&inner, 0o751).unwrap();
        assert_eq!(closed_to_group(&sock, gid), None);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // The directory given to the group instead.
            std::os::unix::fs::chown(&inner, None, Some(gid)).unwrap();
            set(&inner, 0o750).unwrap();
            assert_eq!(closed_to_group(&sock, gid), None);
        }
        let not_yet = inner.join("absent").join("ha-agent.sock");
        assert_eq!(closed_to_group(&not_yet, gid), None, "a missing directory");
        set(&top, 0o700).unwrap();
        assert_eq!(closed_to_group(&sock, gid), Some(top.clone()));
        assert_eq!(closed_to_group(&not_yet, gid), Some(top.clone()));
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn the_shipped_unit_lets_status_group_reach_the_socket() {
        // /run/ha-agent is root's: members of status_group need "others"
        // search permission on it (the socket's own mode and SO_PEERCRED
        // decide who may talk).
        let unit = include_str!("../../../../config/ha-agent.service");
        let mode = unit
            .lines()
            .find_map(|l| l.strip_prefix("RuntimeDirectoryMode="))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            .expect("the unit sets RuntimeDirectoryMode");
        assert_ne!(mode & 0o001, 0, "RuntimeDirectoryMode={mode:o}");
        assert_eq!(mode & 0o022, 0, "RuntimeDirectoryMode={mode:o}");
    }

    #[test]
    fn commands_parse_once() {
        assert_eq!(Request::parse("status\n"), Some(Request::Status));
        assert_eq!(Request::parse(" switchover "), Some(Request::Switchover));
        assert_eq!(Request::parse("rejoin-force"), Some(Request::RejoinForce));
        assert_eq!(Request::parse("rm -rf /"), None);
    }

    #[test]
    fn root_may_do_all_the_group_may_read() {
        let root = Peer {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        let member = Peer {
            pid: 2,
            uid: 1000,
            gid: 50,
        };
        let other = Peer {
            pid: 3,
            uid: 1001,
            gid: 1001,
        };
        let never = |_: Peer, _: u32| false;
        let always = |_: Peer, _: u32| true;
        for req in [
            Request::Status,
            Request::Switchover,
            Request::RejoinForce,
            Request::PromoteForce,
        ] {
            assert!(allowed(root, req, None, never));
        }
        assert!(allowed(member, Request::Status, Some(50), never));
        assert!(!allowed(member, Request::Switchover, Some(50), always));
        assert!(!allowed(member, Request::RejoinForce, Some(50), always));
        assert!(!allowed(member, Request::PromoteForce, Some(50), always));
        assert!(!allowed(other, Request::Status, Some(50), never));
        assert!(
            allowed(other, Request::Status, Some(50), always),
            "supplementary group"
        );
        assert!(
            !allowed(other, Request::Status, None, always),
            "no group configured"
        );
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let dir = std::env::temp_dir().join(format!("ha-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("passwd");
        std::fs::write(&file, "root:x:0:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(matches!(
            StatusServer::bind(&file, None),
            Err(BindError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "root:x:0:0");
        let sock = dir.join("s.sock");
        let s = StatusServer::bind(&sock, None).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            StatusServer::bind(&sock, None),
            Err(BindError::InUse { .. })
        ));
        drop(s);
        // No private directory is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".ha-agent-sock")
            })
            .collect();
        assert!(left.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
