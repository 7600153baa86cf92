//! What the billing core needs from a payment gateway. src/gateway implements it with Stripe; the
//! core only sees tokens, card summaries and outcomes, never card numbers.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a gateway tells about a saved card: enough for a receipt, never enough to charge it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    /// The gateway's own token for the method (pm_...).
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

#[derive(Debug, Clone)]
pub struct NewGatewayCustomer {
    pub customer_id: String,
    pub email: String,
    pub name: String,
}

/// One off-session charge: everything that goes into the request, so a retry of the same attempt
/// sends exactly the same parameters under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    /// Minor units of `currency`.
    pub amount: i64,
    /// ISO 4217, upper case (the gateway adapter converts to its own form).
    pub currency: String,
    pub gateway_customer_id: String,
    /// The payment method's gateway token (pm_...).
    pub payment_method: String,
    pub description: String,
    /// Sent as the PaymentIntent's metadata (`invoice_id`, `attempt`, ...), sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// One refund of a succeeded charge: everything that goes into the request, so a resend under
/// the same key is the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub idempotency_key: String,
    /// The charge's PaymentIntent (pi_...).
    pub payment_intent_id: String,
    /// Minor units.
    pub amount: i64,
    /// The payment's currency (ISO 4217, upper case).
    pub currency: String,
    /// Sent as the refund's metadata (`refund_id`: ours), sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// What the gateway says happened to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResult {
    /// The gateway's refund id (re_...).
    pub refund_id: String,
    pub status: RefundStatus,
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Succeeded,
    /// Not settled yet (`pending`, `requires_action`): ask again later.
    Pending,
    /// Failed or canceled: no money went back.
    Failed,
}

/// What the gateway says happened to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeResult {
    /// The PaymentIntent (pi_...): the payment's gateway id.
    pub payment_intent_id: String,
    pub status: ChargeStatus,
    /// Minor units actually received (0 unless succeeded).
    pub amount_received: i64,
    pub currency: String,
    /// The decline, when the charge failed.
    pub decline_code: Option<String>,
    pub failure_message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Succeeded,
    /// The gateway is still working on it (e.g. `processing`): ask again later.
    Pending,
    /// It did not go through and will not without a new attempt (declined, canceled, needs the
    /// customer to authenticate).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway refused the request as invalid (unknown token, wrong customer): the caller's fault.
    #[error("the gateway refused the request: {message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    /// The card was declined; the decline code decides whether dunning retries.
    #[error("the card was declined ({code}): {message}")]
    Declined {
        code: String,
        decline_code: Option<String>,
        message: String,
        payment_intent_id: Option<String>,
    },
    /// No gateway answer we can trust (timeout, connection error, 5xx, unparsable reply): the
    /// effect may or may not have happened and must be resolved by asking again, never by guessing.
    #[error("the gateway's answer is unknown: {0}")]
    Unknown(String),
    /// The gateway is not configured (no API key).
    #[error("no payment gateway is configured")]
    NotConfigured,
}

/// A card being saved in the customer's browser (Stripe's SetupIntent): the page hands the
/// client secret to the gateway's script, which sends the card straight to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSetup {
    pub id: String,
    pub client_secret: String,
}

/// Where a card setup stands, as the gateway says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSetupState {
    pub id: String,
    /// The card was saved (and may be charged off-session).
    pub succeeded: bool,
    pub gateway_customer_id: Option<String>,
    /// The saved payment method's token (pm_...), once succeeded.
    pub payment_method: Option<String>,
}

#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// The gateway's name as stored on payments ("stripe").
    fn name(&self) -> &'static str;

    /// Creates the customer at the gateway and returns its id (cus_...).
    async fn create_customer(&self, customer: &NewGatewayCustomer) -> Result<String, GatewayError>;

    /// Attaches a payment method token to the gateway customer and reads its card summary.
    async fn attach_payment_method(
        &self,
        gateway_customer_id: &str,
        token: &str,
    ) -> Result<CardSummary, GatewayError>;

    /// Detaches a payment method so it can no longer be charged.
    async fn detach_payment_method(&self, token: &str) -> Result<(), GatewayError>;

    /// Creates and confirms an off-session charge under the request's idempotency key. A decline
    /// is `Err(Declined)`; an answer that cannot be trusted is `Err(Unknown)`.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError>;

    /// Refunds part or all of a succeeded charge under the request's idempotency key. An answer
    /// that cannot be trusted is `Err(Unknown)`; a refusal (already refunded, disputed) is
    /// `Err(Invalid)`.
    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, GatewayError>;

    /// Looks a charge up by the metadata it was created with (for attempts whose idempotency key
    /// the gateway may have forgotten). `Ok(None)`: the gateway knows no such charge.
    async fn find_charge(
        &self,
        metadata: &[(String, String)],
    ) -> Result<Option<ChargeResult>, GatewayError>;

    /// Starts saving a card for off-session charges, entered in the customer's browser.
    async fn start_card_setup(
        &self,
        _gateway_customer_id: &str,
    ) -> Result<CardSetup, GatewayError> {
        Err(GatewayError::Invalid {
            message: format!("{} cannot save cards from a browser", self.name()),
            param: None,
        })
    }

    /// Reads a card setup back.
    async fn card_setup(&self, _id: &str) -> Result<CardSetupState, GatewayError> {
        Err(GatewayError::Invalid {
            message: format!("{} cannot save cards from a browser", self.name()),
            param: None,
        })
    }
}
