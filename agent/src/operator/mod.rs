//! The operator's surface: the config file, the secret files it names and
//! the status socket.

pub mod config;
pub mod secret_file;
pub mod status;
