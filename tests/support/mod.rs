//! Shared test support: the Stripe-compatible gateway the daemon is pointed at, and an
//! independent HMAC-SHA256 for signing webhooks.

pub mod sha256;
pub mod smtp;
pub mod stripe_gateway;
pub mod webdriver;
