//! settled: a daemon that runs a business's receivables. `main.rs` is a thin CLI over this
//! library, so tests start the very same `Application`.
//!
//! The layers, from the bottom: `settled_jobs` (the pure billing core: money, schedules, rules,
//! statuses, the job and event vocabularies), `config`, `store` (rows and queries, the only
//! place SQL is written), `gateway` / `mail` / `metrics` (the world outside), `outbox` (email
//! rows and sending them), `billing` (the money workflows over all of these), `runner` (the job
//! queue, the sweep, the invoice writer), `http` (routes and views), `app` (builds the whole) and
//! `cli`. Each layer imports only the ones below it; `.ci/run` checks that:
//! - `billing/` never imports `http`, `app` or `runner`; `store/` never imports `billing` or
//!   `outbox`; `http/` contains no `sqlx`; `on_db!`, `on_tx!` and `Tx::Postgres` appear only
//!   under `store/`;
//! - one module writes each table (`store/<table>.rs`, the ledger only through
//!   `billing::ledger`), and the batch writer calls the same functions as single writes.

pub mod app;
pub mod billing;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pipeline;
pub mod portal;
pub mod progress;
pub mod runner;
pub mod store;
pub mod telemetry;
