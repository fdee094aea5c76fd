//! The `ha-agent` binary: dispatches the command line (defined in
//! `ha_agent::operator::cli`) and sets up logging.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ha_agent::operator::cli::{Cli, Command, Target};
use ha_agent::operator::config::Config;
use ha_agent::operator::keepalived::{self, ImportError, ImportOptions, Source};
use ha_agent::operator::status::{self, Reply};

/// A forced rejoin may wait for connections and replication threads.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

fn socket_of(target: &Target) -> Result<PathBuf> {
    if let Some(s) = &target.socket {
        return Ok(s.clone());
    }
    let path = target
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ha-agent/ha-agent.toml"));
    if !path.exists() && target.config.is_none() {
        return Ok(PathBuf::from("/run/ha-agent/ha-agent.sock"));
    }
    Ok(Config::load(&path)?.node.status_socket)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ha-agent: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each said once: most of our
/// errors already include their cause's text ("cannot connect to ...: No
/// such file or directory"), and `{:#}` would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config, json_logs } => {
            init_logging(json_logs);
            // From here on everything is reported through the log (journald
            // under systemd), once.
            match run(&config) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    tracing::error!(error = %one_line(&e), "ha-agent stopped on an error");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Status { target, json } => {
            let reply = ask(&socket_of(&target)?, "status")?;
            match reply {
                Reply::Status(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        print!("{}", status::render(&s));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => answer(other),
            }
        }
        Command::Switchover { target } => answer(ask(&socket_of(&target)?, "switchover")?),
        Command::Rejoin { force, target } => {
            // clap requires --force; this only documents why.
            anyhow::ensure!(
                force,
                "rejoin needs --force (the agent rejoins on its own otherwise)"
            );
            answer(ask_within(
                &socket_of(&target)?,
                "rejoin-force",
                REJOIN_TIMEOUT,
            )?)
        }
        Command::Promote { force, target } => {
            // clap requires --force; this only documents why.
            anyhow::ensure!(
                force,
                "promote needs --force (the agent promotes on its own when it is safe)"
            );
            answer(ask_within(
                &socket_of(&target)?,
                "promote-force",
                REJOIN_TIMEOUT,
            )?)
        }
        Command::ImportKeepalived {
            file,
            peer_config,
            output,
            name,
            local_ip,
            peer_ip,
            witness,
        } => {
            let mut opts = ImportOptions {
                name,
                hostname: hostname(),
                ..Default::default()
            };
            ImportOptions::add_addresses(&mut opts.local_ips, "--local-ip", &local_ip)?;
            ImportOptions::add_addresses(&mut opts.peer_ips, "--peer-ip", &peer_ip)?;
            ImportOptions::add_addresses(&mut opts.witnesses, "--witness", &witness)?;
            import_keepalived(&file, peer_config.as_deref(), output.as_deref(), opts)
        }
    }
}

fn run(config: &Path) -> Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.display(),
        "ha-agent starting"
    );
    // The same reading and checks as check-config, before anything else.
    let checked = ha_agent::operator::config::Checked::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(ha_agent::daemon::run(checked))
}

/// Everything `run` checks before touching the network: the config, the
/// key and password files, the status socket's path, the hook commands.
/// Exit code 2 when anything is wrong, every problem named.
fn check_config(file: &Path) -> Result<ExitCode> {
    use ha_agent::operator::config::Checked;
    use ha_agent::operator::status::server;
    match Checked::load(file) {
        Ok(Checked {
            config: cfg,
            secrets,
            status_gid,
        }) => {
            let passwords =
                secrets.mysql.as_ref().map_or(0, |_| 2) + secrets.atlas.as_ref().map_or(0, |_| 1);
            println!(
                "{}: ok (node {}, {} link(s), {} VIP(s); key file, {passwords} password file(s) and {} hook command(s) checked{})",
                file.display(),
                cfg.node.name,
                cfg.links.len(),
                cfg.vips.len(),
                cfg.hooks.commands().count(),
                if cfg.witnesses_configured() {
                    ""
                } else {
                    "; WARNING: no witness configured, a partition can produce two VIP holders"
                }
            );
            let shut_out =
                status_gid.and_then(|gid| server::closed_to_group(&cfg.node.status_socket, gid));
            if let Some(dir) = shut_out {
                println!("WARNING: {}", server::shut_out_warning(&dir));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn import_keepalived(
    file: &Path,
    peer: Option<&Path>,
    output: Option<&Path>,
    mut opts: ImportOptions,
) -> Result<ExitCode> {
    let text = Source::load(file)?;
    let peer_text = peer.map(Source::load).transpose()?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let imported = loop {
        let result = keepalived::import(
            Source {
                path: file,
                text: &text,
            },
            peer.zip(peer_text.as_deref())
                .map(|(path, text)| Source { path, text }),
            &opts,
        );
        match result {
            Ok(i) => break i,
            Err(ImportError::MissingAddresses(missing)) if interactive => {
                for m in missing {
                    let ip = prompt_ip(&m.question())?;
                    let map: &mut BTreeMap<String, Ipv4Addr> = if m.local {
                        &mut opts.local_ips
                    } else {
                        &mut opts.peer_ips
                    };
                    map.insert(m.interface, ip);
                }
            }
            Err(e @ (ImportError::Refused(_) | ImportError::MissingAddresses(_))) => {
                eprintln!("ha-agent import-keepalived: {e}");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        }
    };
    match output {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing file is never overwritten)",
                        path.display()
                    )
                })?;
            f.write_all(imported.toml.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", imported.toml),
    }
    for n in &imported.notes {
        eprintln!("review: {n}");
    }
    for n in &imported.untranslated {
        eprintln!("not translated: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

fn prompt_ip(what: &str) -> Result<Ipv4Addr> {
    let stdin = std::io::stdin();
    for _ in 0..3 {
        eprint!("{what}");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        match line.trim().parse() {
            Ok(ip) => return Ok(ip),
            Err(_) => eprintln!("{:?} is not an IPv4 address", line.trim()),
        }
    }
    anyhow::bail!("no address given for: {what}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "server".into())
}

fn ask(socket: &Path, command: &str) -> Result<Reply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(status::request(socket, command))?)
}

fn ask_within(socket: &Path, command: &str, timeout: Duration) -> Result<Reply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(status::request_within(socket, command, timeout))?)
}

fn answer(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Ok { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { message } => {
            eprintln!("{message}");
            Ok(ExitCode::from(1))
        }
        Reply::Status(s) => {
            print!("{}", status::render(&s));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr: colours only on a terminal and without NO_COLOR
/// (journald and log files get plain text), JSON lines with `--json-logs`.
fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HA_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Colours only for a person at a terminal: never into a file, a pipe or
/// journald, and never when NO_COLOR is set to anything (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(use_colour(true, Some(OsStr::new(""))));
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot connect to /x.sock: {text}"));
        let line = one_line(&e);
        assert_eq!(line.matches(&text).count(), 1, "{line}");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
