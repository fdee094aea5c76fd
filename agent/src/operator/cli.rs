//! The `ha-agent` command line, defined here (not in the binary) so that
//! `cargo xtask deb` can generate the man page and the shell completions
//! from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ha-agent",
    version,
    about = "Sub-second, data-safe failover for a two-server web + MySQL stack",
    long_about = "Sub-second, data-safe failover for a two-server web + MySQL stack.\n\n\
        One daemon per server watches the peer on every link (eBPF), owns the VIPs \
        (never two holders, never preempting a healthy primary), promotes and rejoins \
        MySQL/MariaDB with GTIDs, and keeps the Atlas proxy's backends right. It \
        replaces keepalived, its notify scripts and cron jobs.\n\n\
        Config: /etc/ha-agent/ha-agent.toml (examples in /usr/share/doc/ha-agent/examples). \
        Logs go to stderr (journald under systemd); set HA_AGENT_LOG to change the level \
        (e.g. HA_AGENT_LOG=debug), NO_COLOR to disable colours on a terminal."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent (as root or with the capabilities of config/ha-agent.service).
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Check a config file; every bad field is named with the reason.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
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
    /// Translate a keepalived.conf into an ha-agent config.
    ///
    /// vrrp_sync_group becomes the group, each vrrp_instance a link with its
    /// VIPs; priority, nopreempt, preempt_delay, unicast_src_ip/unicast_peer
    /// and the notify scripts carry over; what has no equivalent is listed.
    /// Anything keepalived would ignore with only a warning (an unknown or
    /// misspelt keyword) is refused with its file and line. Addresses that
    /// keepalived.conf does not hold come from --peer-config, the options
    /// below, or a prompt on a terminal. The result passes check-config.
    ImportKeepalived {
        /// This server's keepalived.conf.
        #[arg(value_name = "KEEPALIVED_CONF")]
        file: PathBuf,
        /// The other server's keepalived.conf (its addresses, and a check
        /// that both describe the same instances and VIPs).
        #[arg(long, value_name = "FILE")]
        peer_config: Option<PathBuf>,
        /// Write the config here instead of standard output (refuses to
        /// overwrite an existing file).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// This server's name (default: global_defs router_id, else the host name).
        #[arg(long)]
        name: Option<String>,
        /// This server's address on an interface, e.g. eth1=192.168.1.100 (repeatable).
        #[arg(long, value_name = "IFACE=IP")]
        local_ip: Vec<String>,
        /// The peer's address on an interface, e.g. eth1=192.168.1.101 (repeatable).
        #[arg(long, value_name = "IFACE=IP")]
        peer_ip: Vec<String>,
        /// A witness (the gateway) on an interface, e.g. eth0=10.96.153.1 (repeatable).
        #[arg(long, value_name = "IFACE=IP")]
        witness: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The agent's status socket.
    #[arg(long, conflicts_with = "config", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read the status socket's path from this config file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn import_keepalived_takes_repeated_addresses() {
        let cli = Cli::try_parse_from([
            "ha-agent",
            "import-keepalived",
            "/etc/keepalived/keepalived.conf",
            "--peer-config",
            "other.conf",
            "--local-ip",
            "eth0=10.0.0.1",
            "--local-ip",
            "eth1=10.0.1.1",
        ])
        .unwrap();
        match cli.command {
            Command::ImportKeepalived {
                local_ip,
                peer_config,
                ..
            } => {
                assert_eq!(local_ip, ["eth0=10.0.0.1", "eth1=10.0.1.1"]);
                assert_eq!(peer_config, Some(PathBuf::from("other.conf")));
            }
            other => panic!("{other:?}"),
        }
    }
}
