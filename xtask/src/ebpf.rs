//! Building the eBPF object (`agent-ebpf`, program `ha_xdp`).
//!
//! The kernel side needs nightly Rust (`-Z build-std=core` for the
//! `bpfel-unknown-none` target, with the `rust-src` component) and
//! `bpf-linker` (LLVM 22 build), which also emits the BTF the kernel needs for
//! the `bpf_timer` map. The exact command is:
//!
//! ```text
//! CARGO_ENCODED_RUSTFLAGS=$'-Cdebuginfo=2\x1f-Clink-arg=--btf' \
//!   cargo +nightly build -p agent-ebpf --bin agent-ebpf --release \
//!   --target bpfel-unknown-none -Z build-std=core --target-dir target/ebpf
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

const TOOLCHAIN: &str = "nightly";
const TARGET: &str = "bpfel-unknown-none";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

const INSTALL_NIGHTLY: &str =
    "rustup toolchain install nightly --profile minimal --component rust-src";
const INSTALL_RUST_SRC: &str = "rustup component add rust-src --toolchain nightly";
const INSTALL_BPF_LINKER: &str = "apt-get install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
     && PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --no-default-features --features llvm-22";

fn target_dir(workspace_root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("ebpf")
}

/// Where [`build_ebpf`] puts the object.
pub fn object_path(workspace_root: &Path) -> PathBuf {
    target_dir(workspace_root)
        .join(TARGET)
        .join("release")
        .join("agent-ebpf")
}

/// Builds the eBPF object and returns its path
/// (`${CARGO_TARGET_DIR:-<root>/target}/ebpf/bpfel-unknown-none/release/agent-ebpf`).
pub fn build_ebpf(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    let path = search_path();
    check_tools(&path)?;

    let target_dir = target_dir(workspace_root);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root)
        .arg(format!("+{TOOLCHAIN}"))
        .args([
            "build",
            "-p",
            "agent-ebpf",
            "--bin",
            "agent-ebpf",
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", &path)
        // bpf-linker turns the DWARF into BTF (needed for the bpf_timer map).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    crate::setup::clear_outer_toolchain(&mut cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("building the eBPF program failed ({status}); command: {cmd:?}");
    }

    let object = object_path(workspace_root);
    let bytes = std::fs::read(&object)
        .with_context(|| format!("the build did not produce {}", object.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF object", object.display());
    }
    if !bytes.windows(5).any(|w| w == b".BTF\0") {
        bail!(
            "{} has no BTF section: bpf-linker must be run with --btf (is it bpf-linker >= 0.10?)",
            object.display()
        );
    }
    Ok(object)
}

/// PATH with ~/.cargo/bin and LLVM 22's tools added (bpf-linker lives in the
/// former and may need the latter).
fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    } else if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if Path::new(LLVM_BIN).is_dir() {
        dirs.push(LLVM_BIN.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn check_tools(path: &std::ffi::OsStr) -> anyhow::Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env("PATH", path)
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        Ok(_) => bail!(
            "the nightly Rust toolchain is not installed (the eBPF program needs it); \
             install it with: {INSTALL_NIGHTLY}"
        ),
        Err(e) => bail!(
            "cannot run rustup ({e}): the eBPF program needs a rustup-managed nightly toolchain; \
             install rustup, then: {INSTALL_NIGHTLY}"
        ),
    };
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        bail!(
            "nightly's rust-src component is missing ({} not found); install it with: {INSTALL_RUST_SRC}",
            core.display()
        );
    }
    match Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path)
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "bpf-linker does not run ({}): {}; reinstall it with: {INSTALL_BPF_LINKER}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => bail!("bpf-linker not found ({e}); install it with: {INSTALL_BPF_LINKER}"),
    }
}
