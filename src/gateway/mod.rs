//! Payment gateways the daemon talks to. Stripe is the one there is.

pub mod stripe;

use std::sync::Arc;

use settled_jobs::gateway::Gateway;

use crate::config::Config;

/// The configured gateway, or none when no API key is set (customers and invoices still work;
/// anything that needs a card says so).
pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<dyn Gateway>>> {
    let key = config.stripe_api_key()?;
    if key.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(stripe::StripeGateway::new(
        key,
        &config.stripe.api_base,
        std::time::Duration::from_secs(config.stripe.request_timeout_seconds),
    )?)))
}
