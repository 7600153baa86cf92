//! Stored gateway events: intake verifies and stores them (`intake`, `signature`, `store`), the
//! process_event job applies them (`process`, which calls `apply`).

pub mod apply;
pub mod intake;
pub mod process;
pub mod signature;
pub mod store;

pub use process::process_event;
