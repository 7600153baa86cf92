//! The billing core of settled: every unit of work as a job, with the rules it applies. It does no
//! I/O of its own; it reaches the world through the traits it defines (clock, store, gateway, mailer), which
//! the daemon implements.

pub mod clock;
pub mod dunning;
pub mod error;
pub mod gateway;
pub mod generate;
pub mod ids;
pub mod invoice;
pub mod job;
pub mod mailer;
pub mod money;
pub mod schedule;
pub mod store;
