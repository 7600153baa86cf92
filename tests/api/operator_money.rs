//! The operator's money actions, end to end: refunds through the gateway (part, then the rest as
//! credit) whose webhooks count nothing twice, a wire payment refunded by record, a charge with
//! a chosen saved card, and the PDFs the API serves (invoice, receipt, statement), each read as a
//! PDF (its cross-reference table and objects) and showing the invoice number, the amounts and,
//! on the invoice, the wire instructions.

use serde_json::{Value, json};

use crate::both;
use crate::credits::assert_ledger;
use crate::gateway_events::{card_customer, deliver, invoice, payments_of, settle, show, world};
use crate::helpers::*;
use crate::portal_support::{PortalWorld, WIRE};

/// Stripe's `charge.refunded` charge for a PaymentIntent, listing its refunds so far.
fn refunded_charge(pi: &Value, amount_refunded: i64, refunds: Vec<Value>) -> Value {
    json!({"id": pi["latest_charge"], "object": "charge", "payment_intent": pi["id"],
           "amount": pi["amount"], "amount_refunded": amount_refunded, "currency": "usd",
           "refunded": Some(amount_refunded) == pi["amount"].as_i64(),
           "refunds": {"object": "list", "data": refunds}})
}

async fn payment(d: &Daemon, id: &str) -> Value {
    d.get(&format!("/v1/payments/{id}")).await.1
}

async fn customer(d: &Daemon, id: &str) -> Value {
    d.get(&format!("/v1/customers/{id}")).await.1
}

both!(
    refunds_through_the_gateway_reopen_or_credit_and_their_webhooks_count_once,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _, _) = card_customer(d, false).await;
        let inv = invoice(d, &cus, "100.00").await;
        let (status, paid) = d
            .post(&format!("/v1/invoices/{inv}/charge"), json!({}))
            .await;
        assert_eq!(status, 200, "{paid}");
        assert_eq!(paid["status"], "paid");
        let pay = payments_of(d, &cus).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let pi = gateway.payment_intents()[0].clone();

        // Part of it: the invoice owes that part again.
        let (status, r1) = d
            .post(
                &format!("/v1/payments/{pay}/refunds"),
                json!({"amount": "30.00", "reason": "goodwill"}),
            )
            .await;
        assert_eq!(status, 201, "{r1}");
        assert_eq!(r1["status"], "succeeded", "{r1}");
        let sent = gateway.refunds();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["amount"], 3000);
        assert_eq!(sent[0]["payment_intent"], pi["id"]);
        let keys = || -> Vec<String> {
            gateway
                .requests()
                .into_iter()
                .filter(|r| r.path == "/v1/refunds")
                .filter_map(|r| r.idempotency_key)
                .collect()
        };
        // Stored with the refund's row before the call, so a resend reuses it: the payment's
        // first refund of ours.
        assert_eq!(keys(), vec![format!("settled:refund:{pay}:1")]);
        let inv_now = show(d, &inv).await;
        assert_eq!(inv_now["amount_due"], "30.00", "{inv_now}");
        assert_ne!(inv_now["status"], "paid");
        let p = payment(d, &pay).await;
        assert_eq!(p["amount_refunded"], "30.00");
        assert_eq!(p["status"], "partially_refunded");

        // Its webhook: nothing new.
        deliver(
            d,
            &gateway.event_json("charge.refunded", refunded_charge(&pi, 3000, sent)),
        )
        .await;
        settle(d).await;
        let p = payment(d, &pay).await;
        assert_eq!(p["amount_refunded"], "30.00", "{p}");
        assert_eq!(p["refunds"].as_array().unwrap().len(), 1, "{p}");
        assert_eq!(show(d, &inv).await["amount_due"], "30.00");

        // The rest, kept as credit: the invoice stays as it was, the customer holds 70.00.
        let (status, r2) = d
            .post(
                &format!("/v1/payments/{pay}/refunds"),
                json!({"as_credit": true}),
            )
            .await;
        assert_eq!(status, 201, "{r2}");
        let sent = gateway.refunds();
        assert_eq!(sent.len(), 2);
        assert_eq!(keys().last(), Some(&format!("settled:refund:{pay}:2")));
        assert_eq!(
            sent.iter()
                .map(|r| r["amount"].as_i64().unwrap())
                .sum::<i64>(),
            10_000
        );
        deliver(
            d,
            &gateway.event_json("charge.refunded", refunded_charge(&pi, 10_000, sent)),
        )
        .await;
        settle(d).await;
        let p = payment(d, &pay).await;
        assert_eq!(p["amount_refunded"], "100.00", "{p}");
        assert_eq!(p["status"], "refunded");
        assert_eq!(p["refunds"].as_array().unwrap().len(), 2, "{p}");
        assert_eq!(show(d, &inv).await["amount_due"], "30.00");
        assert_eq!(customer(d, &cus).await["credit_balance"], "70.00");
        // Nothing is left to refund.
        let (status, none) = d
            .post(
                &format!("/v1/payments/{pay}/refunds"),
                json!({"amount": "1.00"}),
            )
            .await;
        assert!(status == 409 || status == 422, "{status} {none}");
        assert_eq!(gateway.refunds().len(), 2);
        assert_ledger(d).await;
    }
);

both!(
    a_wire_payment_is_refunded_by_record_and_its_invoice_reopens,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let inv = invoice(d, &cus, "80.00").await;
        let (status, paid) = d
            .post(
                &format!("/v1/invoices/{inv}/payments"),
                json!({"amount": "80.00", "method": "wire", "reference": "W-1"}),
            )
            .await;
        assert_eq!(status, 201, "{paid}");
        assert_eq!(show(d, &inv).await["status"], "paid");
        let pay = payments_of(d, &cus).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, refund) = d
            .post(
                &format!("/v1/payments/{pay}/refunds"),
                json!({"reason": "sent back"}),
            )
            .await;
        assert_eq!(status, 201, "{refund}");
        assert_eq!(refund["status"], "succeeded");
        assert!(gateway.refunds().is_empty(), "no gateway call for a wire");
        let inv_now = show(d, &inv).await;
        assert_eq!(inv_now["amount_due"], "80.00", "{inv_now}");
        assert_ne!(inv_now["status"], "paid");
        let p = payment(d, &pay).await;
        assert_eq!(
            (p["status"].as_str(), p["amount_refunded"].as_str()),
            (Some("refunded"), Some("80.00"))
        );
        assert_eq!(customer(d, &cus).await["outstanding"], "80.00");
        assert_ledger(d).await;
    }
);

both!(
    a_charge_with_a_chosen_card_charges_that_card,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _, visa) = card_customer(d, false).await;
        let (status, mc) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_mastercard", "default": false}),
            )
            .await;
        assert_eq!(status, 201, "{mc}");
        let inv = invoice(d, &cus, "25.00").await;
        let (status, paid) = d
            .post(
                &format!("/v1/invoices/{inv}/charge"),
                json!({"payment_method_id": mc["id"]}),
            )
            .await;
        assert_eq!(status, 200, "{paid}");
        assert_eq!(paid["status"], "paid");
        let pis = gateway.payment_intents();
        assert_eq!(pis.len(), 1);
        assert_eq!(pis[0]["payment_method"], mc["token"]);
        assert_ne!(pis[0]["payment_method"], visa.as_str());
        let p = &payments_of(d, &cus).await[0];
        assert_eq!(
            (p["brand"].as_str(), p["last4"].as_str()),
            (Some("mastercard"), Some("4444"))
        );
        // The balance too, with the chosen card.
        let second = invoice(d, &cus, "10.00").await;
        let (status, bal) = d
            .post(
                &format!("/v1/customers/{cus}/charge_balance"),
                json!({"payment_method_id": mc["id"]}),
            )
            .await;
        assert_eq!(status, 200, "{bal}");
        assert_eq!(gateway.payment_intents()[1]["payment_method"], mc["token"]);
        assert_eq!(show(d, &second).await["status"], "paid");
        assert_ledger(d).await;
    }
);

/// The text strings a PDF draws (`(...) Tj`), once its structure reads as a PDF: the header, the
/// trailer's `startxref` pointing at an `xref` table whose every in-use entry points at the
/// object it numbers, and `%%EOF`.
fn pdf_strings(pdf: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pdf);
    assert!(text.starts_with("%PDF-1."), "no PDF header");
    assert!(text.trim_end().ends_with("%%EOF"), "no %%EOF");
    let start: usize = text
        .rsplit_once("startxref")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("startxref");
    let xref = &pdf[start..];
    assert!(
        xref.starts_with(b"xref"),
        "startxref does not point at the xref table"
    );
    let table = String::from_utf8_lossy(xref);
    let mut lines = table.lines().skip(1);
    let header = lines.next().unwrap();
    let (first, count): (usize, usize) = {
        let mut it = header.split_whitespace().map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(count > 2, "an xref table with objects");
    for (i, line) in lines.take(count).enumerate() {
        let mut parts = line.split_whitespace();
        let offset: usize = parts.next().unwrap().parse().unwrap();
        let (_, kind) = (parts.next(), parts.next().unwrap());
        if kind == "n" {
            let obj = format!("{} 0 obj", first + i);
            assert!(
                pdf[offset..].starts_with(obj.as_bytes()),
                "object {} misplaced",
                first + i
            );
        }
    }
    let mut out = Vec::new();
    let mut rest = &text[..];
    while let Some(at) = rest.find(") Tj") {
        let head = &rest[..at];
        if let Some(open) = head.rfind('(') {
            out.push(head[open + 1..].replace("\\(", "(").replace("\\)", ")"));
        }
        rest = &rest[at + 4..];
    }
    out
}

async fn pdf_of(d: &Daemon, path: &str, accept: Option<&str>) -> Vec<String> {
    let mut req = d.http.get(d.url(path)).bearer_auth(TOKEN);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(r.headers()["content-type"], "application/pdf");
    pdf_strings(&r.bytes().await.unwrap())
}

fn shows(strings: &[String], needle: &str, what: &str) {
    assert!(
        strings.iter().any(|s| s.contains(needle)),
        "{needle:?} not in the {what} PDF: {strings:?}"
    );
}

both!(
    each_pdf_reads_as_a_pdf_with_the_number_amounts_and_wire_details,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let cus = p
            .customer("Acme Corp", &["ap@acme.example"], &["pm_card_visa"])
            .await;
        let inv = p.invoice(&cus, "100.00").await;
        let (id, number) = (inv["id"].as_str().unwrap(), inv["number"].as_str().unwrap());
        let (status, _) = d
            .post(
                &format!("/v1/invoices/{id}/charge"),
                json!({"amount": "40.00"}),
            )
            .await;
        assert_eq!(status, 200);
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        let pay = payments_of(d, &cus).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();

        let invoice_pdf = pdf_of(d, &format!("/v1/invoices/{id}/pdf"), None).await;
        for needle in [number, "$100.00", "Consulting", "Example Bank", WIRE] {
            shows(&invoice_pdf, needle, "invoice");
        }
        let receipt = pdf_of(d, &format!("/v1/payments/{pay}/receipt.pdf"), None).await;
        for needle in [number, "$40.00", "$60.00"] {
            shows(&receipt, needle, "receipt");
        }
        let statement = pdf_of(
            d,
            &format!("/v1/customers/{cus}/statement?from=2027-01-01&to=2027-02-01"),
            Some("application/pdf"),
        )
        .await;
        for needle in [number, "$100.00", "$40.00", "$60.00"] {
            shows(&statement, needle, "statement");
        }
    }
);
