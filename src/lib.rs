//! settled: a daemon that runs a business's receivables. `main.rs` is a thin CLI over this library,
//! so tests start the very same `Application`.

pub mod admin_cli;
pub mod app;
pub mod billing;
pub mod charges;
pub mod cli;
pub mod config;
pub mod credits;
pub mod events;
pub mod gateway;
pub mod generation;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod payments;
pub mod progress;
pub mod runner;
pub mod store;
pub mod telemetry;
