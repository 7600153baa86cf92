//! Stripe's webhook events in the daemon's own words: the JSON of a stored event becomes a
//! [`GatewayEvent`], or a reason it is ignored. Only the fields the billing rules need are read;
//! nothing here touches the database.

use serde_json::Value;
use settled_jobs::event::{
    AttemptRef, Dispute, DisputePhase, GatewayEvent, Parsed, PaymentFailed, PaymentSucceeded,
    Refund, Refunded,
};
use settled_jobs::money::Currency;

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An amount field of a Stripe object in our minor units (see `super::amounts`), the object's
/// own `currency` deciding; `None` when absent or not a whole amount of ours.
fn amount_of(v: &Value, key: &str) -> Option<i64> {
    let currency = text(v, "currency").unwrap_or("");
    super::amounts::from_stripe(currency, v.get(key)?.as_i64()?)
}

/// A bare amount in the currency of `parent` (a refund listed without its own currency).
fn amount_in(parent: &Value, amount: i64) -> Option<i64> {
    super::amounts::from_stripe(text(parent, "currency").unwrap_or(""), amount)
}

/// The id of an expandable field: `"ch_1"` or `{"id": "ch_1", ...}`.
fn id_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// Reads one stored Stripe event (its parsed JSON body).
pub fn parse(event: &Value) -> Parsed {
    let kind = text(event, "type").unwrap_or("");
    let object = &event["data"]["object"];
    match kind {
        "payment_intent.succeeded" => succeeded(object),
        "payment_intent.payment_failed" => failed(object),
        "charge.refunded" => refunded(object),
        "charge.dispute.created" | "charge.dispute.closed" => {
            dispute(object, kind == "charge.dispute.created")
        }
        other => Parsed::Ignored(format!("event type {other} is not handled")),
    }
}

/// Which of our attempts a PaymentIntent is, from the metadata we created it with.
fn attempt_ref(pi: &Value) -> Option<AttemptRef> {
    let meta = &pi["metadata"];
    let attempt: Option<i64> = text(meta, "attempt").and_then(|a| a.parse().ok());
    match (text(meta, "invoice_id"), text(meta, "charge_id"), attempt) {
        (Some(invoice), _, Some(n)) => Some(AttemptRef::Invoice {
            invoice_id: invoice.to_string(),
            attempt: n,
        }),
        (None, Some(charge), _) => Some(AttemptRef::Balance {
            charge_id: charge.to_string(),
        }),
        _ => None,
    }
}

fn succeeded(pi: &Value) -> Parsed {
    let Some(pi_id) = text(pi, "id") else {
        return Parsed::Malformed("the PaymentIntent has no string id".into());
    };
    let amount = amount_of(pi, "amount_received").unwrap_or(0);
    let currency = text(pi, "currency").unwrap_or("").to_uppercase();
    if amount <= 0 || Currency::parse(&currency).is_err() {
        return Parsed::Ignored(format!("PaymentIntent {pi_id} received no usable amount"));
    }
    Parsed::Event(GatewayEvent::PaymentSucceeded(PaymentSucceeded {
        gateway_payment_id: pi_id.to_string(),
        amount,
        currency,
        attempt: attempt_ref(pi),
        invoice_id: text(&pi["metadata"], "invoice_id").map(str::to_string),
        customer_id: text(&pi["metadata"], "customer_id").map(str::to_string),
        gateway_customer_id: id_of(pi, "customer").map(str::to_string),
        description: text(pi, "description").map(str::to_string),
    }))
}

fn failed(pi: &Value) -> Parsed {
    let Some(pi_id) = text(pi, "id") else {
        return Parsed::Malformed("the PaymentIntent has no string id".into());
    };
    let err = &pi["last_payment_error"];
    Parsed::Event(GatewayEvent::PaymentFailed(PaymentFailed {
        gateway_payment_id: pi_id.to_string(),
        attempt: attempt_ref(pi),
        code: text(err, "decline_code")
            .or_else(|| text(err, "code"))
            .unwrap_or("card_declined")
            .to_string(),
        message: text(err, "message")
            .unwrap_or("the charge did not go through")
            .to_string(),
    }))
}

fn refunded(charge: &Value) -> Parsed {
    let Some(pi_id) = id_of(charge, "payment_intent") else {
        return Parsed::Ignored("the refunded charge has no PaymentIntent".into());
    };
    let refunds = charge["refunds"]["data"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|r| {
                    Some(Refund {
                        id: text(r, "id")?.to_string(),
                        amount: amount_of(r, "amount")
                            .or_else(|| amount_in(charge, r["amount"].as_i64()?))?,
                        status: text(r, "status").map(str::to_string),
                        ours: r["metadata"]["refund_id"].as_str().map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Parsed::Event(GatewayEvent::Refunded(Refunded {
        gateway_payment_id: pi_id.to_string(),
        charge_id: text(charge, "id").map(str::to_string),
        amount_refunded: amount_of(charge, "amount_refunded").unwrap_or(0),
        refunds,
    }))
}

fn dispute(d: &Value, opened: bool) -> Parsed {
    let pi = id_of(d, "payment_intent");
    let charge = id_of(d, "charge");
    if pi.is_none() {
        return Parsed::Ignored(format!(
            "dispute on charge {} names no PaymentIntent",
            charge.unwrap_or("?")
        ));
    }
    let status = text(d, "status").unwrap_or("").to_string();
    let phase = if opened {
        DisputePhase::Opened
    } else if status == "won" || status == "warning_closed" {
        DisputePhase::Won
    } else {
        DisputePhase::Lost
    };
    Parsed::Event(GatewayEvent::Dispute(Dispute {
        id: text(d, "id").map(str::to_string),
        gateway_payment_id: pi.map(str::to_string),
        charge_id: charge.map(str::to_string),
        phase,
        status,
        amount: amount_of(d, "amount").unwrap_or(0),
        reason: text(d, "reason").map(str::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn our_own_charge_is_recognised_by_its_metadata() {
        let event = json!({"type": "payment_intent.succeeded", "data": {"object": {
            "id": "pi_1", "amount_received": 1200, "currency": "eur",
            "metadata": {"invoice_id": "in_1", "attempt": "2"}}}});
        let Parsed::Event(GatewayEvent::PaymentSucceeded(p)) = parse(&event) else {
            panic!("not a payment");
        };
        assert_eq!(p.currency, "EUR");
        assert_eq!(
            p.attempt,
            Some(AttemptRef::Invoice {
                invoice_id: "in_1".into(),
                attempt: 2
            })
        );
    }

    #[test]
    fn unhandled_types_and_missing_ids_are_ignored_with_a_reason() {
        assert!(matches!(
            parse(&json!({"type": "customer.created"})),
            Parsed::Ignored(r) if r.contains("customer.created")
        ));
        assert!(matches!(
            parse(&json!({"type": "charge.refunded", "data": {"object": {"id": "ch_1"}}})),
            Parsed::Ignored(_)
        ));
    }
}
