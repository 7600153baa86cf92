//! Stored gateway events: intake writes them, the process_event job applies them.

pub mod apply;
