//! `cargo xtask`: setup, build, test and the failover lab.

mod bench;
mod deb;
mod demo;
mod ebpf;
mod fuzz;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "ha-agent's build, test and lab tasks (run as root on Debian 12)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker.
    Setup {
        /// Only report what is missing (exit 1 if anything is).
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF object (nightly + bpf-linker) and print its path.
    BuildEbpf,
    /// Build the eBPF object, then the release agent with it embedded.
    Build,
    /// Build target/deb/ha-agent_<version>_amd64.deb (binary, unit, examples,
    /// man pages, completions).
    Deb {
        /// Then install it here, check it and remove it (root; what
        /// `cargo xtask test` runs).
        #[arg(long)]
        test: bool,
    },
    /// Setup, build, the unprivileged tests, then the privileged (namespace) tests.
    Test {
        /// Skip the prerequisite check/installation.
        #[arg(long)]
        no_setup: bool,
        /// Only run the privileged tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// The failover demo: two agents in a namespace lab, server1's links
    /// go down, server2 takes over; prints the timeline.
    Lab {
        /// Skip the prerequisite check/installation.
        #[arg(long)]
        no_setup: bool,
        /// Do not build; use $HA_AGENT_BIN or the existing release binary.
        #[arg(long)]
        no_build: bool,
        /// Check the lab's topology and every fault with pings first.
        #[arg(long)]
        self_test: bool,
        /// Only build the lab and run its self-test (no agent needed).
        #[arg(long)]
        topology_only: bool,
    },
    /// Benchmarks (root): `bench failover` runs ha-agent and keepalived side by side.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Runs every fuzz target (fuzz/, cargo-fuzz on nightly; installs
    /// cargo-fuzz if missing) one after another; fails on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory (honours CARGO_TARGET_DIR and .cargo/config.toml).
fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(cmd: &mut Command) -> Result<()> {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    println!("xtask: $ {s}");
    let status = cmd.status().with_context(|| format!("cannot run {s}"))?;
    if !status.success() {
        bail!("{s} failed ({status})");
    }
    Ok(())
}

/// Builds the eBPF object, then `cargo build --release -p ha-agent` with it
/// embedded; returns the agent binary.
fn build(root: &Path) -> Result<PathBuf> {
    println!("xtask: building the eBPF program");
    let object = ebpf::build_ebpf(root).context("building the eBPF program")?;
    println!("xtask: eBPF object: {}", object.display());
    run(Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "ha-agent"])
        .env("HA_AGENT_EBPF_OBJECT", &object))?;
    let bin = target_dir(root)?.join("release/ha-agent");
    if !bin.is_file() {
        bail!("the build did not produce {}", bin.display());
    }
    println!("xtask: agent: {}", bin.display());
    Ok(bin)
}

fn test(root: &Path, no_setup: bool, filter: Option<&str>) -> Result<()> {
    if !no_setup {
        setup::setup(false)?;
    }
    let bin = build(root)?;
    println!("xtask: unprivileged tests");
    run(Command::new(cargo())
        .current_dir(root)
        .args(["test", "--workspace"]))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the privileged tests need root (network namespaces, XDP, nftables)");
    }
    let stale = ha_lab::Lab::cleanup_orphans(ha_lab::DEFAULT_BASE)?;
    if !stale.is_empty() {
        println!("xtask: removed leftover lab namespaces of dead runs: {stale:?}");
    }
    println!("xtask: privileged tests (one at a time)");
    let mut failed = privileged_tests(root, &bin, filter)?;
    // The package test installs the .deb on this machine and removes it.
    if filter.is_none_or(|f| deb::TEST_NAME.contains(f)) {
        if let Err(e) = deb::install_test(root) {
            println!("xtask: {} ... FAILED: {e:#}", deb::TEST_NAME);
            failed.push(deb::TEST_NAME.to_string());
        }
    }
    if !failed.is_empty() {
        // No retry: on this 2-core machine a failed timing test has so far
        // always been a product fault (a false takeover, lost writes).
        bail!("privileged tests failed: {failed:?}");
    }
    Ok(())
}

/// Runs the privileged (`#[ignore]`d) tests, echoing their output; returns
/// the names of the tests that failed.
fn privileged_tests(root: &Path, bin: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    use std::io::BufRead;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        // --tests: lib, bin and integration tests; not doctests, where
        // `--ignored` would compile the ```ignore examples.
        .args([
            "test",
            "--workspace",
            "--tests",
            "--no-fail-fast",
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .env("HA_AGENT_BIN", bin)
        // The agent's own privileged tests load the kernel program from it
        // (their test build embeds none).
        .env("HA_TEST_EBPF_OBJECT", ebpf::object_path(root))
        .stdout(std::process::Stdio::piped());
    if let Some(f) = filter {
        cmd.arg(f);
    }
    println!(
        "xtask: $ cargo test --workspace --tests --no-fail-fast -- --ignored --test-threads=1 {}",
        filter.unwrap_or("")
    );
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let mut failed = Vec::new();
    let out = child.stdout.take().context("no stdout")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            failed.push(name.to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() && failed.is_empty() {
        bail!("cargo test failed ({status}) before running the tests (build error?)");
    }
    Ok(failed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.cmd {
        Cmd::Setup { check } => setup::setup(check),
        Cmd::BuildEbpf => ebpf::build_ebpf(&root).map(|p| println!("{}", p.display())),
        Cmd::Build => build(&root).map(|_| ()),
        Cmd::Deb { test: false } => deb::build(&root).map(|_| ()),
        Cmd::Deb { test: true } => deb::install_test(&root),
        Cmd::Test { no_setup, filter } => test(&root, no_setup, filter.as_deref()),
        Cmd::Lab {
            no_setup,
            no_build,
            self_test,
            topology_only,
        } => (|| {
            ha_lab::install_interrupt_handler();
            if !no_setup {
                setup::setup(false)?;
            }
            if topology_only {
                return demo::topology_only();
            }
            let bin = if no_build {
                ha_lab::agent_bin()?
            } else {
                build(&root)?
            };
            demo::run(&bin, self_test)
        })(),
        Cmd::Bench(cmd) => bench::main(&root, cmd),
        Cmd::Fuzz { secs, targets } => fuzz::run(&root, secs, &targets),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
