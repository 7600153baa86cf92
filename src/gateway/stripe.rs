//! Stripe through async-stripe. Only tokens and card summaries cross this boundary; an answer that
//! cannot be read after the call went out is an unknown outcome, never a decline.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use settled_jobs::gateway::{CardSummary, Gateway, GatewayError, NewGatewayCustomer};
use stripe::{ApiErrorsType, Client, ClientBuilder, StripeError};
use stripe_core::customer::CreateCustomer;
use stripe_payment::payment_method::{AttachPaymentMethod, DetachPaymentMethod};

use crate::config::Secret;

pub struct StripeGateway {
    client: Client,
}

impl StripeGateway {
    pub fn new(key: Secret, base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = ClientBuilder::new(key.expose())
            .url(base)
            .timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the Stripe client: {e}"))?;
        Ok(StripeGateway { client })
    }
}

/// Maps async-stripe's errors onto what the billing core decides on.
pub fn classify(err: StripeError) -> GatewayError {
    match err {
        StripeError::Stripe(api, status) => {
            let message = api
                .message
                .clone()
                .unwrap_or_else(|| format!("HTTP {status}"));
            match api.type_ {
                ApiErrorsType::CardError => GatewayError::Declined {
                    code: api
                        .code
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "card_declined".into()),
                    decline_code: api.decline_code.clone(),
                    message,
                    payment_intent_id: api.payment_intent.as_ref().map(|pi| pi.id.to_string()),
                },
                ApiErrorsType::InvalidRequestError | ApiErrorsType::IdempotencyError
                    if (400..500).contains(&status) =>
                {
                    GatewayError::Invalid {
                        message,
                        param: api.param.clone(),
                    }
                }
                _ => GatewayError::Unknown(format!("HTTP {status}: {message}")),
            }
        }
        other => GatewayError::Unknown(other.to_string()),
    }
}

#[async_trait]
impl Gateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_customer(&self, c: &NewGatewayCustomer) -> Result<String, GatewayError> {
        let customer = CreateCustomer::new()
            .email(c.email.as_str())
            .name(c.name.as_str())
            .metadata(HashMap::from([(
                "settled_customer_id".to_string(),
                c.customer_id.clone(),
            )]))
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(customer.id.to_string())
    }

    async fn attach_payment_method(
        &self,
        gateway_customer_id: &str,
        token: &str,
    ) -> Result<CardSummary, GatewayError> {
        let pm = AttachPaymentMethod::new(token)
            .customer(gateway_customer_id)
            .send(&self.client)
            .await
            .map_err(classify)?;
        let card = pm.card.ok_or_else(|| GatewayError::Invalid {
            message: "the payment method is not a card".into(),
            param: Some("token".into()),
        })?;
        Ok(CardSummary {
            token: pm.id.to_string(),
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        })
    }

    async fn detach_payment_method(&self, token: &str) -> Result<(), GatewayError> {
        DetachPaymentMethod::new(token)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
