//! The operator's surface: the command line, the config file, the status
//! socket, the metrics endpoint and the keepalived importer.

pub mod cli;
pub mod config;
pub mod keepalived;
pub mod metrics;
pub mod status;
