//! The email outbox: what is sent, to whom, once, over a real SMTP listener.
