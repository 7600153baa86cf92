//! Stripe through async-stripe. Only tokens and card summaries cross this boundary; an answer that
//! cannot be read after the call went out is an unknown outcome, never a decline.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use settled_jobs::gateway::{
    CardSetup, CardSetupState, CardSummary, ChargeRequest, ChargeResult, ChargeStatus, Gateway,
    GatewayError, NewGatewayCustomer, RefundRequest, RefundResult, RefundStatus,
};
use stripe::{
    ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError,
    StripeRequest,
};
use stripe_client_core::{RequestBuilder, StripeMethod};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::SearchPaymentIntent;
use stripe_core::{PaymentIntent, PaymentIntentStatus};
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

/// The PaymentIntent one charge attempt creates and confirms. Its own request type rather than
/// async-stripe's builder, whose metadata is a `HashMap` and so comes out in a different order on
/// every send: a resend under the same Idempotency-Key must be the same request byte for byte,
/// or a strict gateway refuses it (`idempotency_error`). Fields go out in this order, metadata
/// sorted by key.
#[derive(Debug, serde::Serialize)]
struct ChargeParams<'a> {
    allowed_payment_method_types: [&'static str; 1],
    amount: i64,
    confirm: bool,
    currency: String,
    customer: &'a str,
    description: &'a str,
    metadata: std::collections::BTreeMap<&'a str, &'a str>,
    off_session: bool,
    payment_method: &'a str,
}

struct CreateCharge<'a> {
    params: ChargeParams<'a>,
}

impl<'a> CreateCharge<'a> {
    fn of(r: &'a ChargeRequest) -> Result<Self, GatewayError> {
        Ok(CreateCharge {
            params: ChargeParams {
                allowed_payment_method_types: ["card"],
                amount: stripe_amount(&r.currency, r.amount)?,
                confirm: true,
                currency: r.currency.to_lowercase(),
                customer: &r.gateway_customer_id,
                description: &r.description,
                metadata: r
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                off_session: true,
                payment_method: &r.payment_method,
            },
        })
    }
}

/// Our amount as Stripe counts it (see `super::amounts`); one Stripe cannot charge is refused
/// before anything is sent.
fn stripe_amount(currency: &str, minor: i64) -> Result<i64, GatewayError> {
    super::amounts::to_stripe(currency, minor).map_err(|message| GatewayError::Invalid {
        message,
        param: Some("amount".into()),
    })
}

/// A refund, in a fixed order for the same reason as [`ChargeParams`].
#[derive(Debug, serde::Serialize)]
struct RefundParams<'a> {
    amount: i64,
    metadata: std::collections::BTreeMap<&'a str, &'a str>,
    payment_intent: &'a str,
}

struct CreateRefund<'a> {
    params: RefundParams<'a>,
}

impl<'a> CreateRefund<'a> {
    fn of(r: &'a RefundRequest) -> Result<Self, GatewayError> {
        Ok(CreateRefund {
            params: RefundParams {
                amount: stripe_amount(&r.currency, r.amount)?,
                metadata: r
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                payment_intent: &r.payment_intent_id,
            },
        })
    }
}

impl StripeRequest for CreateRefund<'_> {
    type Output = stripe_core::Refund;

    fn build(&self) -> RequestBuilder {
        RequestBuilder::new(StripeMethod::Post, "/refunds").form(&self.params)
    }
}

impl StripeRequest for CreateCharge<'_> {
    type Output = PaymentIntent;

    fn build(&self) -> RequestBuilder {
        RequestBuilder::new(StripeMethod::Post, "/payment_intents").form(&self.params)
    }
}

/// A SetupIntent, only the fields read here (miniserde ignores the rest). Its own type rather
/// than async-stripe's `setup_intent` feature, which would build all of Stripe's SetupIntent
/// model for four fields.
#[derive(Debug, miniserde::Deserialize)]
struct SetupIntentObject {
    id: String,
    client_secret: Option<String>,
    status: String,
    customer: Option<String>,
    payment_method: Option<String>,
}

/// `POST /v1/setup_intents` for a card to charge later, off-session.
#[derive(Debug, serde::Serialize)]
struct SetupParams<'a> {
    customer: &'a str,
    payment_method_types: [&'static str; 1],
    usage: &'static str,
}

struct CreateSetupIntent<'a> {
    params: SetupParams<'a>,
}

impl StripeRequest for CreateSetupIntent<'_> {
    type Output = SetupIntentObject;

    fn build(&self) -> RequestBuilder {
        RequestBuilder::new(StripeMethod::Post, "/setup_intents").form(&self.params)
    }
}

struct RetrieveSetupIntent<'a> {
    id: &'a str,
}

impl StripeRequest for RetrieveSetupIntent<'_> {
    type Output = SetupIntentObject;

    fn build(&self) -> RequestBuilder {
        RequestBuilder::new(StripeMethod::Get, format!("/setup_intents/{}", self.id))
    }
}

/// Maps async-stripe's errors onto what the billing core decides on, in one place:
///
/// | answer | class |
/// | --- | --- |
/// | `card_error` (HTTP 402) | declined: dunning decides by the decline code |
/// | 409 (the same key still running), 429, 5xx, `idempotency_error`, no answer, a 2xx that cannot be read | unknown: asked again under the same key |
/// | 401, 403 (the API key is wrong or lacks the right) | unknown: nothing happened, and a charge waits for a working key rather than failing |
/// | any other 4xx | rejected (`Invalid`): the request itself is wrong |
pub fn classify(err: StripeError) -> GatewayError {
    match err {
        StripeError::Stripe(api, status) => {
            let message = api
                .message
                .clone()
                .unwrap_or_else(|| format!("HTTP {status}"));
            let unknown = || GatewayError::Unknown(format!("HTTP {status}: {message}"));
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
                // The key was used with other parameters: whatever happened under it is not
                // known from this answer.
                ApiErrorsType::IdempotencyError => unknown(),
                _ if matches!(status, 401 | 403 | 409 | 429) || status >= 500 => unknown(),
                _ if (400..500).contains(&status) => GatewayError::Invalid {
                    message,
                    param: api.param.clone(),
                },
                _ => unknown(),
            }
        }
        other => GatewayError::Unknown(other.to_string()),
    }
}

#[async_trait]
impl Gateway for StripeGateway {
    fn name(&self) -> &'static str {
        super::NAME
    }

    async fn create_customer(&self, c: &NewGatewayCustomer) -> Result<String, GatewayError> {
        timed("customer", async {
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
        })
        .await
    }

    async fn attach_payment_method(
        &self,
        gateway_customer_id: &str,
        token: &str,
    ) -> Result<CardSummary, GatewayError> {
        timed("payment_method", async {
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
        })
        .await
    }

    async fn detach_payment_method(&self, token: &str) -> Result<(), GatewayError> {
        timed("detach", async {
            DetachPaymentMethod::new(token)
                .send(&self.client)
                .await
                .map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn charge(&self, r: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        timed("charge", async {
            let key = IdempotencyKey::new(&r.idempotency_key)
                .map_err(|e| GatewayError::Unknown(format!("unusable idempotency key: {e}")))?;
            let pi = CreateCharge::of(r)?
                .customize()
                .request_strategy(RequestStrategy::Idempotent(key))
                .send(&self.client)
                .await;
            match pi {
                Ok(pi) => charge_result(pi),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    async fn refund(&self, r: &RefundRequest) -> Result<RefundResult, GatewayError> {
        timed("refund", async {
            let key = IdempotencyKey::new(&r.idempotency_key)
                .map_err(|e| GatewayError::Unknown(format!("unusable idempotency key: {e}")))?;
            let refund = CreateRefund::of(r)?
                .customize()
                .request_strategy(RequestStrategy::Idempotent(key))
                .send(&self.client)
                .await
                .map_err(classify)?;
            let status = match refund.status.as_deref() {
                Some("succeeded") => RefundStatus::Succeeded,
                Some("failed" | "canceled") => RefundStatus::Failed,
                _ => RefundStatus::Pending,
            };
            Ok(RefundResult {
                refund_id: refund.id.to_string(),
                status,
                failure_reason: refund.failure_reason.map(|f| f.to_string()),
            })
        })
        .await
    }

    async fn find_charge(
        &self,
        metadata: &[(String, String)],
    ) -> Result<Option<ChargeResult>, GatewayError> {
        timed("lookup", async {
            let query = metadata
                .iter()
                .map(|(k, v)| metadata_clause(k, v))
                .collect::<Vec<_>>()
                .join(" AND ");
            let found = SearchPaymentIntent::new(query)
                .limit(10)
                .send(&self.client)
                .await
                .map_err(classify)?;
            // Several matches cannot come from one key; prefer the one that moved money.
            let mut results = found
                .data
                .into_iter()
                .map(charge_result)
                .collect::<Result<Vec<_>, _>>()?;
            results.sort_by_key(|r| match r.status {
                ChargeStatus::Succeeded => 0,
                ChargeStatus::Pending => 1,
                ChargeStatus::Failed => 2,
            });
            Ok(results.into_iter().next())
        })
        .await
    }

    async fn start_card_setup(&self, gateway_customer_id: &str) -> Result<CardSetup, GatewayError> {
        let si = CreateSetupIntent {
            params: SetupParams {
                customer: gateway_customer_id,
                payment_method_types: ["card"],
                usage: "off_session",
            },
        }
        .customize()
        .send(&self.client)
        .await
        .map_err(classify)?;
        let client_secret = si.client_secret.ok_or_else(|| {
            GatewayError::Unknown(format!(
                "SetupIntent {} came without a client secret",
                si.id
            ))
        })?;
        Ok(CardSetup {
            id: si.id,
            client_secret,
        })
    }

    async fn card_setup(&self, id: &str) -> Result<CardSetupState, GatewayError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(GatewayError::Invalid {
                message: "not a SetupIntent id".into(),
                param: Some("setup_intent".into()),
            });
        }
        let si = RetrieveSetupIntent { id }
            .customize()
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(CardSetupState {
            succeeded: si.status == "succeeded",
            id: si.id,
            gateway_customer_id: si.customer,
            payment_method: si.payment_method,
        })
    }
}

/// Runs one gateway request, timing it and counting its outcome (`settled_gateway_request_*`).
async fn timed<T>(
    operation: &'static str,
    request: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    let started = std::time::Instant::now();
    let result = request.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(GatewayError::Declined { .. }) => "declined",
        Err(GatewayError::Unknown(_)) => "unknown",
        Err(_) => "error",
    };
    crate::metrics::gateway_request(super::NAME, operation, outcome, started.elapsed());
    result
}

/// Reads a PaymentIntent into what the billing core decides on.
/// An amount Stripe reports that is not a whole number of our minor units cannot be counted: the
/// answer is unreadable, so the outcome is unknown and is asked again.
fn charge_result(pi: PaymentIntent) -> Result<ChargeResult, GatewayError> {
    let status = match pi.status {
        PaymentIntentStatus::Succeeded => ChargeStatus::Succeeded,
        PaymentIntentStatus::Processing | PaymentIntentStatus::RequiresCapture => {
            ChargeStatus::Pending
        }
        PaymentIntentStatus::RequiresConfirmation => ChargeStatus::Pending,
        _ => ChargeStatus::Failed,
    };
    let (decline_code, failure_message) = match (&status, &pi.last_payment_error) {
        (ChargeStatus::Failed, Some(err)) => (
            err.decline_code
                .clone()
                .or_else(|| err.code.as_ref().map(|c| c.to_string())),
            err.message.clone(),
        ),
        (ChargeStatus::Failed, None) => (
            Some(match pi.status {
                PaymentIntentStatus::RequiresAction => "authentication_required".to_string(),
                PaymentIntentStatus::Canceled => "canceled".to_string(),
                _ => "card_declined".to_string(),
            }),
            None,
        ),
        _ => (None, None),
    };
    let currency = pi.currency.to_string().to_uppercase();
    let amount_received =
        super::amounts::from_stripe(&currency, pi.amount_received).ok_or_else(|| {
            GatewayError::Unknown(format!(
                "PaymentIntent {} received {} in Stripe's {currency} units, not a whole amount",
                pi.id, pi.amount_received
            ))
        })?;
    Ok(ChargeResult {
        payment_intent_id: pi.id.to_string(),
        status,
        amount_received,
        currency,
        decline_code,
        failure_message,
    })
}

/// A search query term for one metadata pair (values are our own ids and numbers, but quote
/// escaping keeps the query well-formed whatever they hold).
fn metadata_clause(key: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("metadata['{key}']:\"{escaped}\"")
}
