//! Stripe: the API client (`client`) and the webhook adapter (`events`: Stripe's event JSON
//! into the daemon's gateway-neutral events).

pub mod amounts;
pub mod client;
pub mod events;

use std::sync::Arc;

use settled_jobs::gateway::Gateway;

use crate::config::Config;

/// The name Stripe's rows carry (`payments.gateway`, `payment_methods.gateway`, the stored
/// events' `source`) and the path `/webhooks/stripe` takes its deliveries at.
pub const NAME: &str = "stripe";

/// The Stripe client when an API key is configured.
pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<dyn Gateway>>> {
    let key = config.stripe_api_key()?;
    if key.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(client::StripeGateway::new(
        key,
        &config.stripe.api_base,
        std::time::Duration::from_secs(config.stripe.request_timeout_seconds),
    )?)))
}
