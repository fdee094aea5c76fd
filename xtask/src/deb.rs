//! `cargo xtask deb`: `target/deb/ha-agent_<version>_amd64.deb` with dpkg-deb,
//! and the package test `cargo xtask test` runs (install, verify, remove).
//!
//! Contents: /usr/sbin/ha-agent (eBPF object embedded), the systemd unit,
//! the example configs under /usr/share/doc/ha-agent/examples, man pages
//! (clap_mangen) and bash/zsh completions (clap_complete) made from the
//! agent's own CLI definition, and /etc/ha-agent (mode 0700).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use clap::CommandFactory;
use ha_agent::operator::cli::Cli;

const PACKAGE: &str = "ha-agent";
/// Where the package puts the binary (the unit in config/ names the
/// hand-installed /usr/local/sbin one).
const SBIN: &str = "/usr/sbin/ha-agent";
const UNIT: &str = "lib/systemd/system/ha-agent.service";

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds the agent and the package; returns the .deb's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let bin = crate::build(root)?;
    let out_dir = crate::target_dir(root)?.join("deb");
    let stage = out_dir.join(format!("{PACKAGE}_{}_amd64", version()));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<PathBuf> {
        let path = stage.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    };

    put(
        SBIN.trim_start_matches('/'),
        &std::fs::read(&bin).with_context(|| bin.display().to_string())?,
        0o755,
    )?;
    let unit = std::fs::read_to_string(root.join("config/ha-agent.service"))?;
    ensure!(
        unit.contains("/usr/local/sbin/ha-agent"),
        "config/ha-agent.service no longer names /usr/local/sbin/ha-agent: update the packaging"
    );
    let unit = unit
        .replace("/usr/local/sbin/ha-agent", SBIN)
        .replace(
            "file:///usr/local/share/doc/ha-agent/README.md",
            "man:ha-agent(1) file:///usr/share/doc/ha-agent/README.md",
        )
        .replace(
            "# systemd unit for ha-agent: install as /etc/systemd/system/ha-agent.service\n",
            "# systemd unit for ha-agent (Debian package).\n",
        );
    put(UNIT, unit.as_bytes(), 0o644)?;
    for f in ["server1.toml", "server2.toml"] {
        put(
            &format!("usr/share/doc/{PACKAGE}/examples/{f}"),
            &std::fs::read(root.join("config").join(f))?,
            0o644,
        )?;
    }
    put(
        &format!("usr/share/doc/{PACKAGE}/README.md"),
        &std::fs::read(root.join("README.md"))?,
        0o644,
    )?;
    put(
        &format!("usr/share/doc/{PACKAGE}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    for (name, page) in man_pages()? {
        let path = put(&format!("usr/share/man/man1/{name}.1"), &page, 0o644)?;
        crate::run(Command::new("gzip").args(["-9n", "-f"]).arg(&path))?;
    }
    let mut bash = Vec::new();
    let mut zsh = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut Cli::command(),
        PACKAGE,
        &mut bash,
    );
    clap_complete::generate(
        clap_complete::Shell::Zsh,
        &mut Cli::command(),
        PACKAGE,
        &mut zsh,
    );
    put(
        &format!("usr/share/bash-completion/completions/{PACKAGE}"),
        &bash,
        0o644,
    )?;
    put(
        &format!("usr/share/zsh/vendor-completions/_{PACKAGE}"),
        &zsh,
        0o644,
    )?;
    // The config directory holds the key and passwords: root only.
    let etc = stage.join("etc/ha-agent");
    std::fs::create_dir_all(&etc)?;
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700))?;

    let installed_kib = du_kib(&stage)?;
    put("DEBIAN/control", control(installed_kib).as_bytes(), 0o644)?;
    put("DEBIAN/postinst", MAINTSCRIPT.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", MAINTSCRIPT.as_bytes(), 0o755)?;
    // Directories as dpkg expects them: 0755 except /etc/ha-agent.
    fix_dir_modes(&stage, &etc)?;

    let deb = out_dir.join(format!("{PACKAGE}_{}_amd64.deb", version()));
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("xtask: package: {}", deb.display());
    Ok(deb)
}

/// `ha-agent.1` and one page per subcommand (`ha-agent-run.1`, ...).
fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let cmd = Cli::command();
    let mut pages = Vec::new();
    let mut main = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut main)?;
    pages.push((PACKAGE.to_string(), main));
    for sub in cmd.get_subcommands() {
        let name = format!("{PACKAGE}-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).version(version());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        pages.push((name, page));
    }
    Ok(pages)
}

fn control(installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}
Version: {}
Architecture: amd64
Maintainer: ha-agent developers <root@localhost>
Installed-Size: {installed_kib}
Depends: libc6 (>= 2.36)
Recommends: mariadb-client
Section: admin
Priority: optional
Description: sub-second, data-safe failover for a two-server web + MySQL stack
 One daemon per server watches the peer on every link with an eBPF
 program, owns the VIPs (never two holders, never preempting a healthy
 primary), promotes and rejoins MySQL/MariaDB with GTIDs and keeps the
 Atlas proxy's backends right. It replaces keepalived, its notify scripts
 and cron jobs; `ha-agent import-keepalived` translates a keepalived.conf.
 .
 Configure /etc/ha-agent/ha-agent.toml (examples in
 /usr/share/doc/ha-agent/examples), then: systemctl enable --now ha-agent
",
        version()
    )
}

/// postinst and postrm: let a running systemd see the unit (or forget it).
/// The service is not enabled: it needs a config and a key first.
const MAINTSCRIPT: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
";

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ha-agent

Files: *
License: MIT or Apache-2.0
";

fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += du_kib(&entry.path())?;
        } else {
            total += meta.len().div_ceil(1024);
        }
    }
    Ok(total)
}

fn fix_dir_modes(dir: &Path, keep: &Path) -> Result<()> {
    if dir != keep {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fix_dir_modes(&entry.path(), keep)?;
        }
    }
    Ok(())
}

/// The step `cargo xtask test` runs (root): install the package on this
/// machine, check it as an operator would, remove it, check nothing is left.
pub const TEST_NAME: &str = "deb_package_installs_verifies_and_removes";

pub fn install_test(root: &Path) -> Result<()> {
    let dpkg_status = |pkg: &str| -> Option<String> {
        let o = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Status}", pkg])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(s) = dpkg_status(PACKAGE).filter(|s| s != "not-installed") {
        bail!("{PACKAGE} is already known to dpkg here ({s}): the package test installs and removes it, so it will not touch an operator's install (dpkg -P {PACKAGE} first)");
    }
    let etc_existed = Path::new("/etc/ha-agent").exists();
    let deb = build(root)?;
    let out = |cmd: &mut Command| -> Result<String> {
        let o = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        ensure!(
            o.status.success(),
            "{cmd:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    println!("xtask: {TEST_NAME}");
    let listing = out(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for want in [
        "drwx------ root/root         0", // etc/ha-agent
        "./usr/sbin/ha-agent",
        "./lib/systemd/system/ha-agent.service",
        "./usr/share/doc/ha-agent/examples/server1.toml",
        "./usr/share/doc/ha-agent/examples/server2.toml",
        "./usr/share/man/man1/ha-agent.1.gz",
        "./usr/share/man/man1/ha-agent-import-keepalived.1.gz",
        "./usr/share/bash-completion/completions/ha-agent",
        "./usr/share/zsh/vendor-completions/_ha-agent",
    ] {
        ensure!(
            listing.contains(want),
            "{want:?} not in the package:\n{listing}"
        );
    }
    let result = (|| -> Result<()> {
        out(Command::new("dpkg").arg("-i").arg(&deb))?;
        let v = out(Command::new(SBIN).arg("--version"))?;
        ensure!(
            v.trim() == format!("ha-agent {}", version()),
            "--version: {v}"
        );
        println!("xtask:   {SBIN} --version: {}", v.trim());
        let man = out(Command::new("man").args(["-w", PACKAGE]))?;
        ensure!(
            man.trim() == "/usr/share/man/man1/ha-agent.1.gz",
            "man -w: {man}"
        );
        println!("xtask:   man -w ha-agent: {}", man.trim());
        out(Command::new("man").args(["-w", "ha-agent-import-keepalived"]))?;
        let unit = format!("/{UNIT}");
        out(Command::new("systemd-analyze").args(["verify", &unit]))?;
        println!("xtask:   systemd-analyze verify {unit}: ok");
        let meta = std::fs::metadata("/etc/ha-agent")?;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o700,
            "/etc/ha-agent has mode {:o}",
            meta.permissions().mode() & 0o777
        );
        // check-config reads the key and password files the examples name
        // (under /etc/ha-agent, which a test must not fill): copies of the
        // examples point at scratch ones.
        let scratch = std::env::temp_dir().join(format!("ha-deb-check-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))?;
        for (name, text) in [
            (
                "key",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
            ),
            ("mysql-password", "example\n"),
            ("repl-password", "example\n"),
            ("atlas-password", "example\n"),
        ] {
            let f = scratch.join(name);
            std::fs::write(&f, text)?;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        }
        let checked = (|| -> Result<()> {
            for example in ["server1.toml", "server2.toml"] {
                let text =
                    std::fs::read_to_string(format!("/usr/share/doc/ha-agent/examples/{example}"))?;
                let copy = scratch.join(example);
                std::fs::write(
                    &copy,
                    text.replace("/etc/ha-agent/", &format!("{}/", scratch.display())),
                )?;
                out(Command::new(SBIN).arg("check-config").arg(&copy))?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        checked?;
        println!("xtask:   the examples pass check-config (with their secret files); /etc/ha-agent is 0700");
        let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/ha-agent")?;
        ensure!(bash.contains("import-keepalived"), "bash completion");
        Ok(())
    })();
    // Always remove, also after a failed check; then purge the record dpkg
    // keeps because of the postrm (state config-files, no files).
    let removed = out(Command::new("dpkg").args(["-r", PACKAGE]));
    let after_remove = dpkg_status(PACKAGE);
    let listed = Command::new("dpkg").args(["-L", PACKAGE]).output();
    let purged = out(Command::new("dpkg").args(["-P", PACKAGE]));
    result?;
    removed?;
    ensure!(
        after_remove.as_deref() == Some("config-files"),
        "after dpkg -r: {after_remove:?}"
    );
    let listed = listed?;
    ensure!(
        !String::from_utf8_lossy(&listed.stdout).contains('/'),
        "dpkg -L after dpkg -r still lists files: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    purged?;
    ensure!(
        dpkg_status(PACKAGE).is_none_or(|s| s == "not-installed"),
        "dpkg still knows {PACKAGE} after dpkg -P: {:?}",
        dpkg_status(PACKAGE)
    );
    for gone in [
        SBIN,
        "/lib/systemd/system/ha-agent.service",
        "/usr/share/man/man1/ha-agent.1.gz",
        "/usr/share/doc/ha-agent",
        "/usr/share/bash-completion/completions/ha-agent",
    ] {
        ensure!(!Path::new(gone).exists(), "{gone} is left after dpkg -r");
    }
    if !etc_existed {
        ensure!(
            !Path::new("/etc/ha-agent").exists(),
            "/etc/ha-agent (empty) is left after dpkg -r"
        );
    }
    println!("xtask:   dpkg -r ha-agent: every file removed (dpkg keeps a config-files record for the postrm; dpkg -P clears it)");
    println!("xtask: {TEST_NAME} ... ok");
    Ok(())
}
