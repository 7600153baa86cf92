//! Shared test support: the Stripe-compatible gateway the daemon is pointed at.

pub mod smtp;
pub mod stripe_gateway;
