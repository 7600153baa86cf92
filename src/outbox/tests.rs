use std::time::Duration;

use super::send::{deliverable, retry_delay};
use super::snapshot::Snapshot;
use super::*;
use crate::config::Config;
use crate::store::testing::{exec, open};
use crate::store::{emails, from_ms};

#[test]
fn retries_back_off_to_an_hour() {
    assert_eq!(retry_delay(1), Duration::from_secs(2));
    assert_eq!(retry_delay(2), Duration::from_secs(4));
    assert_eq!(retry_delay(11), Duration::from_secs(2048));
    assert_eq!(retry_delay(12), Duration::from_secs(3600));
    assert_eq!(retry_delay(70), Duration::from_secs(3600));
}

#[test]
fn undeliverable_addresses_are_left_out_and_named() {
    let (ok, note) = deliverable(r#"["ap@acme.example", "not an address", "cfo@acme.example"]"#);
    assert_eq!(ok, vec!["ap@acme.example", "cfo@acme.example"]);
    assert_eq!(
        note.as_deref(),
        Some("undeliverable address left out: not an address")
    );
    let (ok, note) = deliverable("[]");
    assert!(ok.is_empty() && note.is_none());
}

const FIXTURE: &[&str] = &[
    "INSERT INTO customers (id, email, name, currency, timezone, created_at, updated_at) \
     VALUES ('cus_1', 'ap@acme.example', 'Acme Corp', 'EUR', 'Europe/Berlin', 0, 0)",
    "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES \
     ('cus_1', 0, 'ap@acme.example'), ('cus_1', 1, 'cfo@acme.example')",
    "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, exp_year, \
     is_default, created_at) VALUES ('spm_1', 'cus_1', 'stripe', 'pm_1', 'visa', '4242', 12, 2030, TRUE, 0)",
    "INSERT INTO invoices (id, number, customer_id, status, currency, subtotal, tax, total, amount_paid, \
     amount_due, due_at, finalized_at, created_at, updated_at) VALUES ('in_1', 'INV-2027-000042', \
     'cus_1', 'partially_paid', 'EUR', 10000, 0, 10000, 4000, 6000, 1801440000000, 1801440000000, \
     1801440000000, 1801440000000)",
    "INSERT INTO invoice_lines (id, invoice_id, position, description, quantity, unit_amount, amount) \
     VALUES ('il_1', 'in_1', 0, 'Hosting', '1', 10000, 10000)",
    "INSERT INTO payments (id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
     method, brand, last4, status, at, created_at) VALUES ('pay_1', 'cus_1', 'in_1', 4000, 'EUR', \
     'stripe', 'pi_1', 'card', 'visa', '4242', 'succeeded', 1801474200000, 1801474200000)",
    "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ('pay_1', 'in_1', 4000)",
    "INSERT INTO refunds (id, payment_id, amount, currency, gateway, to_credit, reason, at) VALUES \
     ('re_1', 'pay_1', 1000, 'EUR', 'stripe', FALSE, 'duplicate', 1801474200000)",
    "INSERT INTO credit_notes (id, customer_id, amount, remaining, currency, source, reason, created_at) \
     VALUES ('cn_1', 'cus_1', 2500, 2500, 'EUR', 'manual', 'Goodwill', 1801474200000)",
    "INSERT INTO charge_attempts (id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, \
     payment_method_id, status, decline_code, next_attempt_at, scheduled_at) VALUES ('ca_1', 'in_1', \
     'cus_1', 1, 'settled:in_1:1', 6000, 'EUR', 'spm_1', 'failed', 'insufficient_funds', \
     1801656000000, 1801474200000)",
];

async fn entry_points_write_one_row_each_and_enqueue_its_job(postgres: bool) {
    let t = open(postgres).await;
    for sql in FIXTURE {
        exec(&t.db, sql).await;
    }
    let now = from_ms(1_801_474_200_000);
    for _ in 0..2 {
        // Twice: a retried job or a replayed webhook writes nothing new.
        let mut tx = t.db.begin().await.unwrap();
        invoice_issued(&mut tx, "in_1", now).await.unwrap();
        receipt(&mut tx, "pay_1", now).await.unwrap();
        let next = Some(from_ms(1_801_656_000_000));
        payment_failed(&mut tx, "in_1", 1, next, now).await.unwrap();
        final_notice(&mut tx, "in_1", now).await.unwrap();
        refund(&mut tx, "re_1", now).await.unwrap();
        credit_note(&mut tx, "cn_1", now).await.unwrap();
        // A subject that does not exist writes nothing and fails nothing.
        receipt(&mut tx, "pay_missing", now).await.unwrap();
        tx.commit().await.unwrap();
    }
    let rows = emails::list(&t.db, &emails::EmailFilter::default(), 100, None)
        .await
        .unwrap();
    let mut kinds: Vec<&str> = rows.iter().map(|r| r.template.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "credit_note",
            "final_notice",
            "invoice",
            "payment_failed",
            "receipt",
            "refund"
        ]
    );

    let config = Config::load_from(
        None,
        [(
            "SETTLED__BUSINESS__NAME".to_string(),
            "Example Ltd".to_string(),
        )],
    )
    .unwrap();
    for row in &rows {
        assert_eq!(row.recipients, r#"["ap@acme.example","cfo@acme.example"]"#);
        assert_eq!(row.customer_id.as_deref(), Some("cus_1"));
        let snap: Snapshot = serde_json::from_str(&row.context).unwrap();
        let r = super::render::render(&config, &row.template, &snap)
            .unwrap_or_else(|e| panic!("{}: {e}", row.template));
        match row.template.as_str() {
            "receipt" => {
                assert_eq!(r.subject, "Receipt for INV-2027-000042");
                assert!(r.text.contains("Still to pay:    €60.00"), "{}", r.text);
                assert!(r.text.contains("Visa ending in 4242"), "{}", r.text);
                assert_eq!(row.payment_id.as_deref(), Some("pay_1"));
                assert_eq!(row.invoice_id.as_deref(), Some("in_1"));
            }
            "payment_failed" => {
                assert_eq!(row.attempt, 1);
                assert!(r.text.contains("insufficient funds"), "{}", r.text);
                assert!(r.text.contains("3 February 2027"), "{}", r.text);
            }
            "refund" => assert_eq!(r.subject, "Refund of €10.00 from Example Ltd"),
            "credit_note" => assert!(r.text.contains("Credit balance:  €25.00")),
            "final_notice" => assert!(r.text.contains("Amount due:      €60.00")),
            _ => assert_eq!(r.subject, "Invoice INV-2027-000042 from Example Ltd"),
        }
    }
    // Every row is due work of its own: nothing else needs to exist for it to be sent.
    let wall = crate::store::wall_ms();
    assert_eq!(
        emails::due_count(&t.db, now, wall, true).await.unwrap(),
        1,
        "a claimable row exists"
    );
    assert_eq!(emails::due_count(&t.db, now, wall, false).await.unwrap(), 6);
}

#[tokio::test]
async fn entry_points_on_sqlite() {
    entry_points_write_one_row_each_and_enqueue_its_job(false).await;
}

#[tokio::test]
async fn entry_points_on_postgres() {
    entry_points_write_one_row_each_and_enqueue_its_job(true).await;
}
