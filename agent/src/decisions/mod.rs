//! Decisions: sans-IO state machines. Each takes events and the current
//! time and returns actions and its next deadline; none owns a socket, a
//! clock or a sleep, so every story is a fast deterministic test.

pub mod database;
pub mod election;
pub mod proxy;
pub mod reannounce;
pub mod session;
