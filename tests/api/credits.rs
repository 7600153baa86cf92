//! Credits, retainers, offline payments, voiding and statements, with the ledger invariant checked
//! after every test that moves money.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::StripeGateway;

/// Every balance equals the sum of its ledger rows.
pub async fn assert_ledger(d: &Daemon) {
    let (status, body) = d.get("/v1/ledger/check").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "ledger out of step: {body}");
}

async fn customer(d: &Daemon) -> String {
    d.customer("USD").await
}

async fn invoice(d: &Daemon, customer: &str, amount: &str, due: &str) -> Value {
    let (status, inv) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "due_at": due,
                   "items": [{"description": "Work", "unit_amount": amount}]}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    inv
}

async fn balances(d: &Daemon, id: &str) -> (String, String, String) {
    let (_, c) = d.get(&format!("/v1/customers/{id}")).await;
    (
        c["outstanding"].as_str().unwrap().to_string(),
        c["credit_balance"].as_str().unwrap().to_string(),
        c["retainer_balance"].as_str().unwrap().to_string(),
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

both!(
    credit_is_applied_oldest_first_on_finalising_and_can_cover_a_whole_invoice,
    |backend| async move {
        let gateway = StripeGateway::start().await;
        let w = World::start_with(
            backend,
            DaemonOptions::default()
                .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
                .env("SETTLED__STRIPE__API_BASE", gateway.base_url()),
        )
        .await;
        let d = &w.daemon;
        let cus = customer(d).await;
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        for (amount, reason) in [("15.00", "Outage"), ("20.00", "Goodwill")] {
            let (status, cn) = d
                .post(
                    "/v1/credit_notes",
                    json!({"customer_id": cus, "amount": amount, "currency": "USD", "reason": reason}),
                )
                .await;
            assert_eq!(status, 201, "{cn}");
            assert!(cn["id"].as_str().unwrap().starts_with("cn_"));
            d.advance(if reason == "Outage" {
                "2027-01-01T01:00:00Z"
            } else {
                "2027-01-01T02:00:00Z"
            })
            .await;
        }
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("35.00"), s("0.00")));
        // Fully covered: paid with no gateway call, even with auto-charge on.
        let (status, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "auto_charge": true,
                       "items": [{"description": "Work", "unit_amount": "10.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{inv}");
        assert_eq!(inv["status"], "paid");
        assert_eq!(inv["credits_applied"], "10.00");
        assert_eq!(inv["amount_due"], "0.00");
        // Partly covered: the rest is charged.
        let (_, inv2) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "auto_charge": true,
                       "items": [{"description": "Work", "unit_amount": "40.00"}]}),
            )
            .await;
        assert_eq!(inv2["credits_applied"], "25.00");
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let (_, inv2) = d
            .get(&format!("/v1/invoices/{}", inv2["id"].as_str().unwrap()))
            .await;
        assert_eq!(inv2["status"], "paid", "{inv2}");
        assert_eq!(inv2["amount_paid"], "15.00");
        assert_eq!(gateway.payment_intent_count(), 1);
        assert_eq!(gateway.payment_intents()[0]["amount"], 1500);
        let (_, notes) = d.get(&format!("/v1/customers/{cus}/credit_notes")).await;
        let remaining: Vec<&str> = notes["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["remaining"].as_str().unwrap())
            .collect();
        assert_eq!(remaining, vec!["0.00", "0.00"], "oldest first, all used");
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("0.00"), s("0.00")));
        assert_ledger(d).await;

        // Bad credit notes change nothing.
        for (body, what) in [
            (
                json!({"customer_id": cus, "amount": "0", "currency": "USD", "reason": "x"}),
                "zero",
            ),
            (
                json!({"customer_id": cus, "amount": "-1.00", "currency": "USD", "reason": "x"}),
                "negative",
            ),
            (
                json!({"customer_id": cus, "amount": 5, "currency": "USD", "reason": "x"}),
                "number",
            ),
            (
                json!({"customer_id": cus, "amount": "5.00", "currency": "EUR", "reason": "x"}),
                "currency",
            ),
            (
                json!({"customer_id": cus, "amount": "5.00", "currency": "USD", "reason": ""}),
                "reason",
            ),
            (
                json!({"customer_id": "cus_nope", "amount": "5.00", "currency": "USD", "reason": "x"}),
                "customer",
            ),
        ] {
            let (status, body) = d.post("/v1/credit_notes", body).await;
            assert_eq!(status, 422, "{what}: {body}");
        }
        assert_eq!(balances(d, &cus).await.1, "0.00");
    }
);

both!(
    offline_payments_pay_invoices_oldest_due_first_and_the_excess_becomes_credit,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cus = customer(d).await;
        let late = invoice(d, &cus, "30.00", "2027-02-01T00:00:00Z").await;
        let early = invoice(d, &cus, "20.00", "2027-01-10T00:00:00Z").await;
        let late_id = late["id"].as_str().unwrap();
        let early_id = early["id"].as_str().unwrap();

        let (status, pay) = d
            .post(
                &format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": "12.50", "method": "wire", "reference": "TRX-1"}),
            )
            .await;
        assert_eq!(status, 201, "{pay}");
        assert_eq!(pay["method"], "wire");
        let (_, late) = d.get(&format!("/v1/invoices/{late_id}")).await;
        assert_eq!(late["status"], "partially_paid");
        assert_eq!(late["amount_due"], "17.50");

        for (path, body, status, what) in [
            (
                format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": "0", "method": "wire"}),
                422,
                "zero",
            ),
            (
                format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": "5.00", "method": "barter"}),
                422,
                "method",
            ),
            (
                format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": 5, "method": "cash"}),
                422,
                "number",
            ),
            (
                format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": "5.00", "method": "cash", "currency": "EUR"}),
                422,
                "currency",
            ),
            (
                format!("/v1/customers/{cus}/payments"),
                json!({"amount": "-5.00", "method": "cash"}),
                422,
                "negative",
            ),
        ] {
            let (s2, body) = d.post(&path, body).await;
            assert_eq!(s2, status, "{what}: {body}");
        }
        assert_eq!(balances(d, &cus).await.0, "37.50");

        // 50.00 toward the balance: the earlier due date first, then the rest, 12.50 left as credit.
        let (status, pay) = d
            .post(
                &format!("/v1/customers/{cus}/payments"),
                json!({"amount": "50.00", "method": "check", "reference": "CHK-7"}),
            )
            .await;
        assert_eq!(status, 201, "{pay}");
        for id in [early_id, late_id] {
            let (_, inv) = d.get(&format!("/v1/invoices/{id}")).await;
            assert_eq!(inv["status"], "paid", "{inv}");
        }
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("12.50"), s("0.00")));
        let (status, body) = d
            .post(
                &format!("/v1/invoices/{late_id}/payments"),
                json!({"amount": "1.00", "method": "cash"}),
            )
            .await;
        assert_eq!(status, 409, "paid: {body}");
        // Overpaying one invoice: paid, and the customer's credit goes up by the excess.
        let third = invoice(d, &cus, "10.00", "2027-03-01T00:00:00Z").await;
        let third_id = third["id"].as_str().unwrap();
        assert_eq!(
            third["credits_applied"], "10.00",
            "credit applied on finalising"
        );
        let fourth = invoice(d, &cus, "10.00", "2027-03-01T00:00:00Z").await;
        let fourth_id = fourth["id"].as_str().unwrap();
        assert_eq!(fourth["amount_due"], "7.50");
        let (status, _) = d
            .post(
                &format!("/v1/invoices/{fourth_id}/payments"),
                json!({"amount": "10.00", "method": "cash"}),
            )
            .await;
        assert_eq!(status, 201);
        let (_, inv) = d.get(&format!("/v1/invoices/{third_id}")).await;
        assert_eq!(inv["status"], "paid");
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("2.50"), s("0.00")));
        assert_ledger(d).await;
    }
);

both!(
    retainers_are_deposited_applied_and_refunded,
    |backend| async move {
        let gateway = StripeGateway::start().await;
        let w = World::start_with(
            backend,
            DaemonOptions::default()
                .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
                .env("SETTLED__STRIPE__API_BASE", gateway.base_url()),
        )
        .await;
        let d = &w.daemon;
        let cus = customer(d).await;
        let (status, _) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201);
        // A retainer paid by card and one paid by wire.
        let (_, ret) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "kind": "retainer",
                       "items": [{"description": "Retainer", "unit_amount": "100.00"}]}),
            )
            .await;
        let ret_id = ret["id"].as_str().unwrap();
        let (status, _) = d
            .post(&format!("/v1/invoices/{ret_id}/charge"), json!({}))
            .await;
        assert_eq!(status, 200);
        d.advance("2027-01-02T00:00:00Z").await;
        let (_, ret2) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "kind": "retainer",
                       "items": [{"description": "Retainer", "unit_amount": "50.00"}]}),
            )
            .await;
        let (status, _) = d
            .post(
                &format!("/v1/invoices/{}/payments", ret2["id"].as_str().unwrap()),
                json!({"amount": "50.00", "method": "wire"}),
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("0.00"), s("150.00")));

        let work = invoice(d, &cus, "80.00", "2027-01-15T00:00:00Z").await;
        let work_id = work["id"].as_str().unwrap();
        assert_eq!(work["retainer_applied"], "0.00", "not opted in");
        let apply = format!("/v1/customers/{cus}/retainer/apply");
        for (body, status, what) in [
            (
                json!({"invoice_id": work_id, "amount": "200.00"}),
                409,
                "more than the balance",
            ),
            (json!({"invoice_id": work_id, "amount": "0"}), 422, "zero"),
            (json!({"invoice_id": ret_id}), 409, "a paid invoice"),
            (json!({"invoice_id": "in_nope"}), 422, "unknown invoice"),
        ] {
            let (s2, body) = d.post(&apply, body).await;
            assert_eq!(s2, status, "{what}: {body}");
        }
        let (status, inv) = d
            .post(&apply, json!({"invoice_id": work_id, "amount": "30.00"}))
            .await;
        assert_eq!(status, 200, "{inv}");
        assert_eq!(inv["retainer_applied"], "30.00");
        assert_eq!(inv["amount_due"], "50.00");
        assert_eq!(
            balances(d, &cus).await,
            (s("50.00"), s("0.00"), s("120.00"))
        );

        // Opting in applies it on finalising.
        let (status, _) = d
            .patch(
                &format!("/v1/customers/{cus}"),
                json!({"apply_retainer": true}),
            )
            .await;
        assert_eq!(status, 200);
        let next = invoice(d, &cus, "20.00", "2027-01-20T00:00:00Z").await;
        assert_eq!(next["retainer_applied"], "20.00");
        assert_eq!(next["status"], "paid");
        assert_eq!(
            balances(d, &cus).await,
            (s("50.00"), s("0.00"), s("100.00"))
        );

        // Refunds: more than is left is refused; the newest deposit (wire) is refunded by record,
        // the rest through the gateway.
        let refund = format!("/v1/customers/{cus}/retainer/refund");
        let (status, body) = d.post(&refund, json!({"amount": "100.01"})).await;
        assert_eq!(status, 409, "{body}");
        assert!(gateway.refunds().is_empty());
        let (status, body) = d.post(&refund, json!({"amount": "70.00"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["retainer_balance"], "30.00");
        let refunds = gateway.refunds();
        assert_eq!(refunds.len(), 1, "{refunds:?}");
        assert_eq!(refunds[0]["amount"], 2000, "the card part: 70 - 50 by wire");
        assert_eq!(balances(d, &cus).await, (s("50.00"), s("0.00"), s("30.00")));
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={ret_id}")).await;
        assert_eq!(payments["data"][0]["status"], "partially_refunded");
        assert_eq!(payments["data"][0]["amount_refunded"], "20.00");
        assert_ledger(d).await;
    }
);

both!(
    voiding_releases_credit_and_is_refused_with_payments,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cus = customer(d).await;
        let (status, _) = d
            .post(
                "/v1/credit_notes",
                json!({"customer_id": cus, "amount": "5.00", "currency": "USD", "reason": "x"}),
            )
            .await;
        assert_eq!(status, 201);
        let inv = invoice(d, &cus, "20.00", "2027-01-15T00:00:00Z").await;
        let id = inv["id"].as_str().unwrap();
        assert_eq!(inv["credits_applied"], "5.00");
        assert_eq!(balances(d, &cus).await, (s("15.00"), s("0.00"), s("0.00")));
        let (status, voided) = d.post(&format!("/v1/invoices/{id}/void"), json!({})).await;
        assert_eq!(status, 200, "{voided}");
        assert_eq!(voided["status"], "void");
        assert_eq!(balances(d, &cus).await, (s("0.00"), s("5.00"), s("0.00")));
        let (status, body) = d.post(&format!("/v1/invoices/{id}/void"), json!({})).await;
        assert_eq!(status, 409, "{body}");
        let (status, body) = d
            .post(
                &format!("/v1/invoices/{id}/payments"),
                json!({"amount": "1.00", "method": "cash"}),
            )
            .await;
        assert_eq!(status, 409, "void takes no payment: {body}");

        let paid = invoice(d, &cus, "20.00", "2027-01-15T00:00:00Z").await;
        let paid_id = paid["id"].as_str().unwrap();
        let (status, _) = d
            .post(
                &format!("/v1/invoices/{paid_id}/payments"),
                json!({"amount": "2.00", "method": "cash"}),
            )
            .await;
        assert_eq!(status, 201);
        let (status, body) = d
            .post(&format!("/v1/invoices/{paid_id}/void"), json!({}))
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "invoice_has_payments");
        let (status, _) = d.post("/v1/invoices/in_nope/void", json!({})).await;
        assert_eq!(status, 404);
        assert_ledger(d).await;
    }
);

both!(
    the_statement_shows_opening_entries_running_and_closing_balances,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cus = customer(d).await;
        invoice(d, &cus, "100.00", "2027-01-10T00:00:00Z").await;
        d.advance("2027-01-05T00:00:00Z").await;
        let (status, _) = d
            .post(
                &format!("/v1/customers/{cus}/payments"),
                json!({"amount": "40.00", "method": "wire", "reference": "W-1"}),
            )
            .await;
        assert_eq!(status, 201);
        d.advance("2027-02-01T00:00:00Z").await;
        invoice(d, &cus, "25.00", "2027-02-10T00:00:00Z").await;
        let (status, _) = d
            .post("/v1/credit_notes", json!({"customer_id": cus, "amount": "5.00", "currency": "USD", "reason": "Late delivery"}))
            .await;
        assert_eq!(status, 201);

        let (status, st) = d
            .get(&format!(
                "/v1/customers/{cus}/statement?from=2027-01-02T00:00:00Z&to=2027-03-01T00:00:00Z"
            ))
            .await;
        assert_eq!(status, 200, "{st}");
        assert_eq!(st["currency"], "USD");
        assert_eq!(st["opening_balance"], "100.00");
        let entries = st["entries"].as_array().unwrap();
        let summary: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap(),
                    e["amount"].as_str().unwrap(),
                    e["balance"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("payment", "-40.00", "60.00"),
                ("invoice", "25.00", "85.00"),
                ("credit", "-5.00", "80.00"),
            ]
        );
        assert_eq!(st["closing_balance"], "80.00");
        assert_eq!(entries[0]["reference"], "W-1");

        let r = d
            .http
            .get(d.url(&format!(
                "/v1/customers/{cus}/statement?from=2027-01-02&to=2027-03-01"
            )))
            .bearer_auth(TOKEN)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let csv = r.text().await.unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "date,kind,reference,amount,balance");
        assert_eq!(lines[1], ",opening,,,100.00");
        assert!(lines[2].ends_with(",payment,W-1,-40.00,60.00"), "{csv}");
        assert_eq!(lines.last().unwrap(), &",closing,,,80.00");

        // The same statement as a PDF: opening, each movement with its balance, closing.
        let r = d
            .http
            .get(d.url(&format!(
                "/v1/customers/{cus}/statement?from=2027-01-02&to=2027-03-01"
            )))
            .bearer_auth(TOKEN)
            .header("accept", "application/pdf")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        let pdf = r.bytes().await.unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&pdf);
        for needle in [
            "(STATEMENT)",
            "(Opening balance)",
            "W-1)",
            "(Closing balance)",
            "($80.00)",
        ] {
            assert!(text.contains(needle), "{needle} not in the statement PDF");
        }

        let out = std::process::Command::new(binary())
            .args([
                "customers",
                "statement",
                &cus,
                "--from",
                "2027-01-02",
                "--to",
                "2027-03-01",
                "--csv",
            ])
            .envs(d.env().iter().cloned())
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), csv);
        let (status, _) = d
            .get(&format!("/v1/customers/{cus}/statement?from=yesterday"))
            .await;
        assert_eq!(status, 422);
        assert_ledger(d).await;
    }
);

/// One operation of the random sequences below.
#[derive(Debug, Clone)]
enum Op {
    Invoice(u32),
    CreditNote(u32),
    PayInvoice(usize, u32),
    PayBalance(u32),
    Void(usize),
    Retainer(u32),
    ApplyRetainer(usize),
    RefundRetainer(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..5000).prop_map(Op::Invoice),
        (1u32..3000).prop_map(Op::CreditNote),
        (0usize..8, 1u32..6000).prop_map(|(i, a)| Op::PayInvoice(i, a)),
        (1u32..8000).prop_map(Op::PayBalance),
        (0usize..8).prop_map(Op::Void),
        (1u32..5000).prop_map(Op::Retainer),
        (0usize..8).prop_map(Op::ApplyRetainer),
        (1u32..3000).prop_map(Op::RefundRetainer),
    ]
}

fn cents(n: u32) -> String {
    format!("{}.{:02}", n / 100, n % 100)
}

/// Whatever sequence of money movements the API accepts or refuses, the ledger stays in step
/// with every balance.
async fn run_sequence(backend: Backend, ops: Vec<Op>) {
    let w = World::start(backend).await;
    let d = &w.daemon;
    let cus = customer(d).await;
    let mut invoices: Vec<String> = Vec::new();
    for op in ops {
        let pick = |i: usize| invoices.get(i % invoices.len().max(1)).cloned();
        let (status, body) = match &op {
            Op::Invoice(a) => {
                let inv = invoice(d, &cus, &cents(*a), "2027-01-15T00:00:00Z").await;
                invoices.push(inv["id"].as_str().unwrap().to_string());
                (201, inv)
            }
            Op::CreditNote(a) => {
                d.post("/v1/credit_notes", json!({"customer_id": cus, "amount": cents(*a), "currency": "USD", "reason": "test"}))
                    .await
            }
            Op::PayInvoice(i, a) => match pick(*i) {
                Some(id) => {
                    d.post(&format!("/v1/invoices/{id}/payments"), json!({"amount": cents(*a), "method": "cash"}))
                        .await
                }
                None => continue,
            },
            Op::PayBalance(a) => {
                d.post(&format!("/v1/customers/{cus}/payments"), json!({"amount": cents(*a), "method": "wire"}))
                    .await
            }
            Op::Void(i) => match pick(*i) {
                Some(id) => d.post(&format!("/v1/invoices/{id}/void"), json!({})).await,
                None => continue,
            },
            Op::Retainer(a) => {
                let (_, inv) = d
                    .post("/v1/invoices", json!({"customer_id": cus, "kind": "retainer",
                        "items": [{"description": "Retainer", "unit_amount": cents(*a)}]}))
                    .await;
                let id = inv["id"].as_str().unwrap();
                d.post(&format!("/v1/invoices/{id}/payments"), json!({"amount": cents(*a), "method": "wire"}))
                    .await
            }
            Op::ApplyRetainer(i) => match pick(*i) {
                Some(id) => d.post(&format!("/v1/customers/{cus}/retainer/apply"), json!({"invoice_id": id})).await,
                None => continue,
            },
            Op::RefundRetainer(a) => {
                d.post(&format!("/v1/customers/{cus}/retainer/refund"), json!({"amount": cents(*a)}))
                    .await
            }
        };
        assert!(
            [200, 201, 409, 422].contains(&status),
            "{op:?} answered {status} {body}\n{}",
            d.log_text()
        );
        assert_ledger(d).await;
    }
}

both!(
    random_sequences_of_money_movements_keep_the_ledger_in_step,
    |backend| async move {
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 3,
            failure_persistence: None,
            ..Default::default()
        });
        let strategy = proptest::collection::vec(op(), 6..14);
        for _ in 0..3 {
            let ops = strategy
                .new_tree(&mut runner)
                .expect("a sequence")
                .current();
            run_sequence(backend, ops).await;
        }
    }
);

/// The same credit applied by two daemons finalising two invoices at once is spent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applications_of_one_credit_never_spend_it_twice() {
    let w = World::start(Backend::Postgres).await;
    let d = &w.daemon;
    let mut options = DaemonOptions {
        manual_clock: None,
        with_token: false,
        ..DaemonOptions::default()
    };
    options.env = d.env().to_vec();
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = Daemon::start(twin_dir.path(), &w.db.url, options).await;
    for round in 0..5 {
        let cus = customer(d).await;
        let (status, _) = d
            .post(
                "/v1/credit_notes",
                json!({"customer_id": cus, "amount": "50.00", "currency": "USD", "reason": "race"}),
            )
            .await;
        assert_eq!(status, 201);
        let a = invoice(d, &cus, "40.00", "2027-01-15T00:00:00Z");
        let b = invoice(&twin, &cus, "40.00", "2027-01-15T00:00:00Z");
        let (a, b) = tokio::join!(a, b);
        let applied: Vec<&str> = [&a, &b]
            .iter()
            .map(|i| i["credits_applied"].as_str().unwrap())
            .collect();
        let mut sorted = applied.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["10.00", "40.00"], "round {round}: {applied:?}");
        assert_eq!(balances(d, &cus).await, (s("30.00"), s("0.00"), s("0.00")));
    }
    assert_ledger(d).await;
}

both!(
    a_year_of_activity_closes_on_the_customers_balance,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cus = customer(d).await;
        let (status, sub) = d
            .post(
                "/v1/subscriptions",
                json!({"customer_id": cus, "items": [{"description": "Plan", "unit_amount": "49.90", "tax_rate": "0.20"}],
                       "schedule": {"every": "month", "anchor": "2027-01-31T00:00:00Z"}, "start_at": "2027-01-31T00:00:00Z",
                       "net_days": 14}),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        for month in 1..=12 {
            d.advance(&format!("2027-{month:02}-28T12:00:00Z")).await;
            match month % 4 {
                0 => {
                    let (status, _) = d
                        .post(&format!("/v1/customers/{cus}/payments"),
                              json!({"amount": "150.00", "method": "wire", "reference": format!("W-{month}")}))
                        .await;
                    assert_eq!(status, 201);
                }
                2 => {
                    let (status, _) = d
                        .post("/v1/credit_notes",
                              json!({"customer_id": cus, "amount": "7.25", "currency": "USD", "reason": "discount"}))
                        .await;
                    assert_eq!(status, 201);
                }
                _ => {}
            }
        }
        d.advance("2028-01-15T00:00:00Z").await;
        let (status, st) = d
            .get(&format!(
                "/v1/customers/{cus}/statement?from=2027-01-01&to=2028-01-01"
            ))
            .await;
        assert_eq!(status, 200, "{st}");
        assert_eq!(st["opening_balance"], "0.00");
        let minor = |v: &Value| -> i64 {
            let t = v.as_str().unwrap().replace('.', "");
            t.parse().unwrap()
        };
        let entries = st["entries"].as_array().unwrap();
        // Eleven invoices fall in the year (December's is finalised when the clock reaches January), three
        // payments (April, August, December), three credit notes (February, June, October).
        assert_eq!(entries.len(), 11 + 3 + 3, "{entries:?}");
        let sum: i64 = entries.iter().map(|e| minor(&e["amount"])).sum();
        assert_eq!(
            minor(&st["closing_balance"]),
            sum,
            "closing = opening + entries"
        );
        let mut running = 0;
        for e in entries {
            running += minor(&e["amount"]);
            assert_eq!(minor(&e["balance"]), running);
        }
        // Up to now (December's invoice included), the statement closes on the customer's balance.
        let (out, credit, retainer) = balances(d, &cus).await;
        let net = minor(&json!(out)) - minor(&json!(credit)) - minor(&json!(retainer));
        let (_, to_now) = d.get(&format!("/v1/customers/{cus}/statement")).await;
        assert_eq!(
            minor(&to_now["closing_balance"]),
            net,
            "the customer's balance"
        );
        assert_eq!(
            minor(&to_now["closing_balance"]) - minor(&st["closing_balance"]),
            5988
        );
        assert_ledger(d).await;
    }
);
