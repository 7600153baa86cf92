//! Standard Webhooks senders other than card gateways (a bank telling of a transfer): their
//! event JSON in the daemon's own words. `payment.received {invoice_id | invoice_number, amount,
//! currency, reference}` is a payment toward an invoice; other types are ignored.

use serde_json::Value;
use settled_jobs::event::{GatewayEvent, InvoiceRef, Parsed, PaymentReceived};

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Reads one stored event; `delivery_id` is the delivery's `webhook-id`, the event's identity
/// when its body carries none.
pub fn parse(event: &Value, delivery_id: &str) -> Parsed {
    let kind = text(event, "type").unwrap_or("");
    if kind != "payment.received" {
        return Parsed::Ignored(format!("event type {kind} is not handled"));
    }
    let data = &event["data"];
    let payment_key = text(event, "id")
        .or_else(|| (!delivery_id.is_empty()).then_some(delivery_id))
        .or_else(|| text(data, "id"))
        .or_else(|| text(data, "reference"))
        .map(str::to_string);
    let invoice = match (text(data, "invoice_id"), text(data, "invoice_number")) {
        (Some(id), _) => InvoiceRef::Id(id.to_string()),
        (None, Some(number)) => InvoiceRef::Number(number.to_string()),
        (None, None) => {
            return Parsed::Ignored(
                "payment.received names no invoice_id or invoice_number".into(),
            );
        }
    };
    Parsed::Event(GatewayEvent::PaymentReceived(PaymentReceived {
        payment_key,
        invoice,
        amount: match data.get("amount") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        currency: text(data, "currency").unwrap_or("").to_uppercase(),
        reference: text(data, "reference").map(str::to_string),
    }))
}
