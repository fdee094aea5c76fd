//! The operator's surface: the config file and the status socket.

pub mod config;
pub mod status;
