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

/// `check-config --connect`: one read-only request with the configured key (`GET /v1/balance`
/// at `stripe.api_base`). What it showed, or why it failed; the key is never printed. None when
/// no key is configured.
pub async fn check(config: &Config) -> Option<anyhow::Result<String>> {
    let key = match config.stripe_api_key() {
        Ok(k) if k.is_empty() => return None,
        Ok(k) => k,
        Err(e) => return Some(Err(e)),
    };
    let url = format!(
        "{}/v1/balance",
        config.stripe.api_base.trim_end_matches('/')
    );
    let started = std::time::Instant::now();
    let result = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(
                config.stripe.request_timeout_seconds.max(1),
            ))
            .build()?;
        let response = client
            .get(&url)
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("no answer from {url}: {}", e.without_url()))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            let mode = if body["livemode"] == true {
                "live"
            } else {
                "test"
            };
            return Ok(format!("GET {url} answered {status} ({mode} mode)"));
        }
        if status.as_u16() == 401 {
            // Stripe's message would quote the key's first and last characters: not repeated.
            anyhow::bail!("GET {url} answered {status}: the API key was refused");
        }
        let message = body["error"]["message"].as_str().unwrap_or("");
        anyhow::bail!("GET {url} answered {status}: {message}")
    }
    .await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::metrics::gateway_request(NAME, "check", outcome, started.elapsed());
    Some(result)
}
