//! What a payment source told us, whatever its wire format: a gateway's webhook (Stripe's JSON),
//! a Standard Webhooks sender (a bank), or our own charge's reply. Each source's adapter turns its
//! format into a [`GatewayEvent`]; the billing code applies only these, so a second gateway is a
//! new adapter and nothing else.

/// Which of our charge attempts a gateway payment belongs to, from the metadata we sent with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptRef {
    /// An invoice's attempt `settled:{invoice_id}:{attempt}`.
    Invoice { invoice_id: String, attempt: i64 },
    /// A whole-balance charge, by the attempt's own id.
    Balance { charge_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// A payment went through at the gateway.
    PaymentSucceeded(PaymentSucceeded),
    /// A payment attempt failed at the gateway.
    PaymentFailed(PaymentFailed),
    /// Some or all of a payment was given back.
    Refunded(Refunded),
    /// A cardholder disputed a payment, or a dispute ended.
    Dispute(Dispute),
    /// Money arrived by other means (a bank transfer) for an invoice.
    PaymentReceived(PaymentReceived),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSucceeded {
    /// The gateway's payment id (a PaymentIntent, pi_...).
    pub gateway_payment_id: String,
    /// Minor units received, as the gateway counts them.
    pub amount: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    /// Set when the payment is one of our charge attempts.
    pub attempt: Option<AttemptRef>,
    /// The invoice the payer meant (a portal's "Pay Now" names it).
    pub invoice_id: Option<String>,
    /// Our customer, when the metadata names one.
    pub customer_id: Option<String>,
    /// The gateway's customer (cus_...), when the payment names one.
    pub gateway_customer_id: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentFailed {
    pub gateway_payment_id: String,
    pub attempt: Option<AttemptRef>,
    /// The decline code, else the error code.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The gateway's refund id (re_...).
    pub id: String,
    pub amount: i64,
    /// The gateway's word for it (succeeded, pending, failed, canceled), when it says.
    pub status: Option<String>,
    /// Our own refund's id, when the daemon asked for it (the refund's metadata `refund_id`).
    pub ours: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refunded {
    /// The payment refunded (its PaymentIntent).
    pub gateway_payment_id: String,
    /// The gateway's charge id, which keys a refund the event does not list.
    pub charge_id: Option<String>,
    /// Everything refunded of the payment so far.
    pub amount_refunded: i64,
    /// The refunds the event lists (may be empty).
    pub refunds: Vec<Refund>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputePhase {
    Opened,
    /// Closed in the business's favour: the money stays.
    Won,
    /// Closed in the cardholder's favour: the money went back.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    /// The gateway's dispute id (du_...).
    pub id: Option<String>,
    pub gateway_payment_id: Option<String>,
    pub charge_id: Option<String>,
    pub phase: DisputePhase,
    /// The gateway's status word (needs_response, won, lost, ...).
    pub status: String,
    pub amount: i64,
    pub reason: Option<String>,
}

/// Which invoice a payment from another source is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceRef {
    Id(String),
    Number(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentReceived {
    /// What makes the payment unique within its source (the delivery's event id).
    pub payment_key: Option<String>,
    pub invoice: InvoiceRef,
    /// A decimal string in the currency's major unit ("19.99"), checked when applied.
    pub amount: Option<String>,
    pub currency: String,
    pub reference: Option<String>,
}

/// What an adapter made of a stored body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Event(GatewayEvent),
    /// Stored but nothing to do (a type not handled, not about anything of ours): the reason is
    /// shown to operators on the stored event.
    Ignored(String),
    /// A type that is handled, but the body cannot be read as one (its object has no string
    /// id, say): refused at intake, so it is never stored to fail later.
    Malformed(String),
}
