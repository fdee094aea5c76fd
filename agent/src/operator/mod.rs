//! The operator's surface: the command line, the config file and the secret
//! files it names, the status socket, the metrics endpoint and the
//! keepalived importer.

pub mod cli;
pub mod config;
pub mod keepalived;
pub mod metrics;
pub mod secret_file;
pub mod status;
