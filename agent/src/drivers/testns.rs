//! Throwaway network namespaces for the privileged tests (`#[ignore]`d; run as
//! root by `cargo xtask test`).
//!
//! Everything a test creates lives inside namespaces made here and deleted on
//! drop, so a test can never add an address or a route to the host's own
//! (root) namespace. Code under test runs on a dedicated thread that has
//! entered the namespace with `setns`, because `setns` changes only the
//! calling thread and test threads are shared.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named namespace (`/run/netns/<name>`), deleted on drop.
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `hatest-<tag>-<pid>-<n>` (unique across parallel tests and runs).
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hatest-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`; panics with ip's stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: plain syscall on a valid fd; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                // Belt and braces: refuse to run the body unless this thread is
                // really in the test namespace (never the root one).
                let want = std::fs::metadata(&path).expect("stat netns").ino();
                let have = std::fs::metadata("/proc/thread-self/ns/net")
                    .expect("stat own netns")
                    .ino();
                assert_eq!(have, want, "thread is not inside {path}");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs `f` inside the namespace on a current-thread tokio runtime.
    pub fn block_on<T: Send, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce() -> F + Send,
    ) -> T {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys every interface and address in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair `va` (in `a`) <-> `vb` (in `b`), both
/// up, with `ip_a`/`ip_b` (CIDR) on them. The pair is created directly inside
/// the namespaces, never in the root one.
pub(crate) fn veth_pair(tag: &str, ip_a: &str, ip_b: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", ip_a, "dev", "va"]);
    b.ip(&["addr", "add", ip_b, "dev", "vb"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    (a, b)
}

/// The MAC of `dev` in `ns`, from `ip -br link`.
pub(crate) fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", "dev", dev]);
    let text = out.split_whitespace().nth(2).expect("mac column");
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).expect("hex mac");
    }
    mac
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The index of `dev` in `ns`, from `ip -o link` ("5: va@if4: ...").
pub(crate) fn ifindex_of(ns: &Netns, dev: &str) -> u32 {
    ns.ip(&["-o", "link", "show", "dev", dev])
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("ifindex")
}
