//! Payment gateways, by the name stored on the rows they made (`payment_methods.gateway`,
//! `payments.gateway`). Adding a gateway is a folder here with its client (the
//! `settled_jobs::gateway::Gateway` trait) and its webhook adapter (JSON into
//! `settled_jobs::event::GatewayEvent`), plus its entry in [`Gateways::from_config`].

/// The `gateway` of payments recorded by an operator (wire, cheque, cash) and of refunds paid
/// back by other means: no gateway at all.
pub const OFFLINE: &str = "offline";

pub mod standard;
pub mod stripe;

use std::collections::BTreeMap;
use std::sync::Arc;

use settled_jobs::gateway::Gateway;

use crate::config::Config;

/// The gateways this daemon can talk to, configured or not: a payment one of them took is
/// refunded through it (and refused while it is not configured), anything else by record.
pub const SUPPORTED: &[&str] = &[stripe::NAME];

pub fn supports(name: &str) -> bool {
    SUPPORTED.contains(&name)
}

/// The configured gateways by name.
#[derive(Clone, Default)]
pub struct Gateways {
    by_name: BTreeMap<&'static str, Arc<dyn Gateway>>,
}

impl Gateways {
    /// Every gateway the configuration sets up; none when no API key is set (customers and
    /// invoices still work; anything that needs a card says so).
    pub fn from_config(config: &Config) -> anyhow::Result<Gateways> {
        let mut gateways = Gateways::default();
        if let Some(stripe) = stripe::from_config(config)? {
            gateways.add(stripe);
        }
        Ok(gateways)
    }

    /// Registers a gateway under its own name (tests add stand-ins this way).
    pub fn add(&mut self, gateway: Arc<dyn Gateway>) {
        self.by_name.insert(gateway.name(), gateway);
    }

    /// The gateway a stored row names, if it is configured.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Gateway>> {
        self.by_name.get(name)
    }

    /// The gateway new cards are saved with when the request names none: the only one
    /// configured, else Stripe's.
    pub fn default_name(&self) -> &'static str {
        match self.by_name.keys().next() {
            Some(name) if self.by_name.len() == 1 => name,
            _ => stripe::NAME,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Reads a stored event of `source` with the adapter that speaks its format: Stripe's for
/// `/webhooks/stripe`, Standard Webhooks' for every configured source. `delivery_id` is the
/// delivery's own id (a Standard Webhooks `webhook-id`).
pub fn parse_event(
    source: &str,
    body: &serde_json::Value,
    delivery_id: &str,
) -> settled_jobs::event::Parsed {
    if source == stripe::NAME {
        stripe::events::parse(body)
    } else {
        standard::parse(body, delivery_id)
    }
}
