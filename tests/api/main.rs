//! Black-box tests: each starts the real daemon process on port 0 with a fresh database and drives
//! it through its HTTP API. Every storage-touching test runs on SQLite and on PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod charges;
mod credits;
mod customers;
mod deployment;
mod emails;
mod fault_model;
mod foundation;
mod gateway_events;
mod generation;
mod invoices;
mod lifecycle;
mod listener;
mod metrics;
mod money_paths;
mod money_safety;
mod openapi;
mod operations;
mod operator_cli;
mod operator_host;
mod operator_money;
mod portal;
mod portal_browser;
mod portal_support;
mod reload;
mod statements;
mod subscriptions;
mod webhooks;
