//! `cargo xtask setup`: checks, and installs what is missing, on Debian 12 (as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages the build and the tests need.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iputils-ping",
    "arping",
    "tcpdump",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "stress-ng",
    "keepalived",
    "mariadb-server",
    // mariadb-binlog: the forced rejoin's undo of errant transactions.
    "mariadb-client",
    // promtool: the metrics test validates what the agents serve.
    "prometheus",
    // The package test: man -w, systemd-analyze verify (dpkg-deb is in dpkg).
    "man-db",
    "systemd",
];

pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` runs the fuzz targets with it (and the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// PATH with ~/.cargo/bin (or $CARGO_HOME/bin) and LLVM 22's bin added.
pub fn tool_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(LLVM_BIN.into());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Keeps a nested `cargo +nightly` from inheriting the outer (stable)
/// cargo's compiler, flags and target directory.
pub fn clear_outer_toolchain(cmd: &mut Command) {
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

fn run_visible(cmd: &mut Command) -> Result<()> {
    println!("setup: $ {}", describe(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .env("PATH", tool_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env("PATH", tool_path())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .is_file()
        })
        .unwrap_or(false)
}

fn bpf_linker_version() -> Option<String> {
    Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", tool_path())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Checks every prerequisite; unless `check_only`, installs what is missing.
/// With `check_only`, fails if anything is missing.
pub fn setup(check_only: bool) -> Result<()> {
    let mut missing_report = Vec::new();

    // 1. Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages: all {} installed",
            APT_PACKAGES.len()
        );
    } else if check_only {
        println!("setup: Debian packages missing: {}", missing.join(" "));
        missing_report.push(format!("apt packages: {}", missing.join(" ")));
    } else {
        if !is_root() {
            bail!(
                "setup: Debian packages missing ({}) and not root: run as root",
                missing.join(" ")
            );
        }
        println!("setup: installing Debian packages: {}", missing.join(" "));
        run_visible(Command::new("apt-get").args(["update", "-q"]))?;
        run_visible(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        let still: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|p| !apt_installed(p))
            .collect();
        if !still.is_empty() {
            bail!(
                "setup: still missing after apt-get install: {}",
                still.join(" ")
            );
        }
    }

    // 2. Nightly with rust-src (the eBPF program is built with -Z build-std=core).
    if !has_nightly() {
        if check_only {
            println!("setup: the nightly toolchain is missing");
            missing_report.push("nightly toolchain".into());
        } else {
            println!("setup: the nightly toolchain is missing; installing it");
            run_visible(
                Command::new("rustup")
                    .args([
                        "toolchain",
                        "install",
                        "nightly",
                        "--profile",
                        "minimal",
                        "--component",
                        "rust-src",
                    ])
                    .env("PATH", tool_path()),
            )?;
        }
    }
    if has_nightly() {
        if has_rust_src() {
            println!("setup: nightly rust-src: installed");
        } else if check_only {
            println!("setup: nightly rust-src: missing");
            missing_report.push("nightly rust-src".into());
        } else {
            run_visible(
                Command::new("rustup")
                    .args(["component", "add", "rust-src", "--toolchain", "nightly"])
                    .env("PATH", tool_path()),
            )?;
            if !has_rust_src() {
                bail!("setup: rust-src still missing after rustup component add");
            }
        }
    }

    // 3. bpf-linker, built against LLVM 22.
    match bpf_linker_version() {
        Some(v) => println!("setup: {v}: installed"),
        None if check_only => {
            println!("setup: bpf-linker: missing");
            missing_report.push("bpf-linker".into());
        }
        None => {
            if !Path::new(LLVM_BIN).join("llvm-config").exists() {
                bail!("setup: {LLVM_BIN}/llvm-config not found: llvm-22-dev is needed to build bpf-linker");
            }
            println!(
                "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
            );
            run_visible(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        BPF_LINKER_VERSION,
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    .env("PATH", tool_path())
                    .env_remove("CARGO_TARGET_DIR"),
            )?;
            match bpf_linker_version() {
                Some(v) => println!("setup: {v}: installed"),
                None => bail!("setup: bpf-linker still not found after cargo install"),
            }
        }
    }

    // 4. cargo-fuzz, for `cargo xtask fuzz`.
    match cargo_fuzz_version() {
        Some(v) => println!("setup: {v}: installed"),
        None if check_only => {
            println!("setup: cargo-fuzz: missing");
            missing_report.push("cargo-fuzz".into());
        }
        None => install_cargo_fuzz()?,
    }

    // 5. Kernel features the lab uses (report only).
    if !Path::new("/proc/sys/net").exists() {
        println!("setup: warning: /proc/sys/net not found (network namespaces unusable?)");
    }
    if !is_root() {
        println!("setup: warning: not root: the privileged tests and the lab need root");
    }

    if !missing_report.is_empty() {
        bail!(
            "setup --check: missing: {} (run `cargo xtask setup` as root)",
            missing_report.join("; ")
        );
    }
    println!("setup: everything is in place");
    Ok(())
}

fn cargo_fuzz_version() -> Option<String> {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", tool_path())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn install_cargo_fuzz() -> Result<()> {
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute or two)");
    run_visible(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ])
            .env("PATH", tool_path())
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    match cargo_fuzz_version() {
        Some(v) => {
            println!("setup: {v}: installed");
            Ok(())
        }
        None => bail!("setup: cargo-fuzz still not found after cargo install"),
    }
}

/// Installs cargo-fuzz if it is missing (for `cargo xtask fuzz` alone).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_version().is_none() {
        install_cargo_fuzz()?;
    }
    Ok(())
}
