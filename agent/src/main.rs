//! The `ha-agent` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ha_agent::operator::config::Config;
use ha_agent::operator::status::{self, Reply};

#[derive(Parser)]
#[command(
    name = "ha-agent",
    version,
    about = "Sub-second, data-safe failover for a two-server web + MySQL stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as root or with the capabilities of config/ha-agent.service).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Check a config file; every bad field is named with the reason.
    CheckConfig { file: PathBuf },
    /// Show the running agent's state.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Hand the VIPs to the peer now (on the holder), or ask for them (on the backup).
    Switchover {
        #[command(flatten)]
        target: Target,
    },
    /// On a BACKUP whose database refuses to replicate from the MASTER
    /// because it holds transactions the MASTER lacks (errant GTIDs): give
    /// them up and replicate. Prints what was discarded. The agent rejoins
    /// on its own otherwise; save the transactions first (mysqlbinlog).
    Rejoin {
        /// Required: discard this server's errant transactions.
        #[arg(long, required = true)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// On a MASTER whose database promotion is held (durability =
    /// "strict": the old primary last said it acknowledged writes without
    /// this replica, or was never heard say semi-sync was effective):
    /// promote anyway. Writes the old primary acknowledged alone are lost
    /// to the new primary (they stay in the old one's binary log).
    Promote {
        /// Required: accept that acknowledged writes may be lost.
        #[arg(long, required = true)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// A forced rejoin may wait for connections and replication threads.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
struct Target {
    /// The agent's status socket.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the status socket's path from this config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ha-agent/ha-agent.toml"));
        if !path.exists() && self.config.is_none() {
            return Ok(PathBuf::from("/run/ha-agent/ha-agent.sock"));
        }
        Ok(Config::load(&path)?.node.status_socket)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ha-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config, json_logs } => {
            init_logging(json_logs);
            let cfg = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(ha_agent::daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Status { target, json } => {
            let reply = ask(&target.socket()?, "status")?;
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
        Command::Switchover { target } => answer(ask(&target.socket()?, "switchover")?),
        Command::Rejoin { force, target } => {
            // clap requires --force; this only documents why.
            anyhow::ensure!(
                force,
                "rejoin needs --force (the agent rejoins on its own otherwise)"
            );
            answer(ask_within(
                &target.socket()?,
                "rejoin-force",
                REJOIN_TIMEOUT,
            )?)
        }
        Command::Promote { force, target } => {
            anyhow::ensure!(
                force,
                "promote needs --force (the agent promotes on its own when it is safe)"
            );
            answer(ask_within(
                &target.socket()?,
                "promote-force",
                REJOIN_TIMEOUT,
            )?)
        }
    }
}

fn check_config(file: &Path) -> Result<ExitCode> {
    match Config::load(file) {
        Ok(cfg) => {
            println!(
                "{}: ok (node {}, {} link(s), {} VIP(s){})",
                file.display(),
                cfg.node.name,
                cfg.links.len(),
                cfg.vips.len(),
                if cfg.witnesses_configured() {
                    ""
                } else {
                    "; WARNING: no witness configured, a partition can produce two VIP holders"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
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

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HA_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
