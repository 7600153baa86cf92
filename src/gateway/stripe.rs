//! Stripe through async-stripe.

use std::time::Duration;

use async_trait::async_trait;
use settled_jobs::gateway::{CardSummary, Gateway, GatewayError, NewGatewayCustomer};

use crate::config::Secret;

pub struct StripeGateway {
    _key: Secret,
}

impl StripeGateway {
    pub fn new(key: Secret, _base: &str, _timeout: Duration) -> anyhow::Result<Self> {
        Ok(StripeGateway { _key: key })
    }
}

#[async_trait]
impl Gateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }
    async fn create_customer(&self, _c: &NewGatewayCustomer) -> Result<String, GatewayError> {
        Err(GatewayError::NotConfigured)
    }
    async fn attach_payment_method(&self, _g: &str, _t: &str) -> Result<CardSummary, GatewayError> {
        Err(GatewayError::NotConfigured)
    }
    async fn detach_payment_method(&self, _t: &str) -> Result<(), GatewayError> {
        Err(GatewayError::NotConfigured)
    }
}
