//! The billing core of settled: the rules money follows (amounts, schedules, what a due period
//! turns into, dunning, the order credit and payments are spread in), the states records move
//! through, the vocabulary of the work queue and of payment events, and the traits through which
//! the daemon lends it a clock, a gateway and a mailer. It does no I/O of its own; `src/` reads
//! and writes the database and calls the world, and hands these rules what they decide about.

pub mod allocation;
pub mod clock;
pub mod dunning;
pub mod error;
pub mod event;
pub mod gateway;
pub mod generate;
pub mod ids;
pub mod invoice;
pub mod job;
pub mod mailer;
pub mod money;
pub mod records;
pub mod schedule;
pub mod statement;
pub mod status;
pub mod template;
