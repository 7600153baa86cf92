use super::*;
use crate::outbox::snapshot;
use crate::store::testing::{exec, open, rows};
use crate::store::{Db, from_ms};

const START: i64 = 1_801_440_000_000; // 2027-02-01T00:00:00Z

fn settings(db: &Db) -> Billing {
    crate::billing::testing::billing(db, from_ms(START + 60_000))
}

async fn customer(db: &Db, id: &str, apply_retainer: bool) {
    exec(
        db,
        &format!(
            "INSERT INTO customers (id, email, name, currency, timezone, apply_retainer, created_at, \
             updated_at) VALUES ('{id}', '{id}@example.com', 'Customer {id}', 'EUR', 'UTC', \
             {apply_retainer}, 0, 0)"
        ),
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES \
             ('{id}', 0, 'ap@{id}.example'), ('{id}', 1, 'cfo@{id}.example')"
        ),
    )
    .await;
}

async fn subscription(db: &Db, id: &str, customer: &str, unit_amount: i64) {
    let items = format!(
        r#"[{{"description":"Plan","quantity":"1","unit_amount":{unit_amount},"tax_rate":"0.20"}}]"#
    );
    let schedule =
        r#"{"every":"month","interval":1,"anchor":"2027-02-01T00:00:00Z","timezone":"UTC"}"#;
    exec(
        db,
        &format!(
            "INSERT INTO subscriptions (id, customer_id, currency, items, schedule, timezone, start_at, \
             next_period_start, net_days, created_at, updated_at) VALUES ('{id}', '{customer}', 'EUR', \
             '{items}', '{schedule}', 'UTC', {START}, {START}, 14, 0, 0)"
        ),
    )
    .await;
}

async fn invoice_of(db: &Db, sub: &str) -> crate::store::invoices::InvoiceRow {
    let list = crate::store::invoices::list(
        db,
        &crate::store::invoices::InvoiceFilter {
            subscription_id: Some(sub),
            ..Default::default()
        },
        10,
        None,
    )
    .await
    .unwrap();
    assert_eq!(list.len(), 1, "{sub}: {list:?}");
    list.into_iter().next().unwrap()
}

/// One batch writes what finalising one invoice at a time writes: the same numbers, rows,
/// email snapshots and charge attempts, and spends credit through the common routine.
async fn a_batch_finalises_like_one_invoice_at_a_time(postgres: bool) {
    let t = open(postgres).await;
    let db = &t.db;
    // plain: two subscriptions and a card, so both invoices are charged; credit: holds credit;
    // retainer: opted in to retainers but holds none.
    customer(db, "cus_plain", false).await;
    customer(db, "cus_credit", false).await;
    customer(db, "cus_retainer", true).await;
    exec(
        db,
        "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, \
         exp_year, is_default, created_at) VALUES ('spm_1', 'cus_plain', 'stripe', 'pm_1', \
         'visa', '4242', 12, 2030, TRUE, 0)",
    )
    .await;
    let mut tx = db.begin().await.unwrap();
    crate::billing::credits::add_credit(
        &mut tx,
        "cus_credit",
        "EUR",
        500,
        settled_jobs::status::CreditSource::Manual,
        None,
        "goodwill",
        from_ms(0),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    subscription(db, "sub_a", "cus_plain", 1000).await;
    subscription(db, "sub_b", "cus_plain", 2500).await;
    subscription(db, "sub_c", "cus_credit", 1000).await;
    subscription(db, "sub_d", "cus_retainer", 0).await;

    let s = settings(db);
    assert_eq!(drain(&s).await.unwrap(), 4, "one batch takes all four");

    let a = invoice_of(db, "sub_a").await;
    let b = invoice_of(db, "sub_b").await;
    let c = invoice_of(db, "sub_c").await;
    let d = invoice_of(db, "sub_d").await;
    let mut numbers: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|i| i.number.clone().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=4)
            .map(|n| format!("INV-2027-{n:06}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (a.status.as_str(), a.total, a.amount_due),
        ("open", 1200, 1200)
    );
    assert_eq!(a.due_at, Some(START + 14 * 86_400_000));
    assert_eq!(a.period_end, Some(1_803_859_200_000)); // 2027-03-01
    assert_eq!((c.credits_applied, c.amount_due), (500, 700));
    assert_eq!(
        (d.status.as_str(), d.total, d.paid_at),
        ("paid", 0, Some(START + 60_000))
    );

    // Each invoice email holds what the common routine would have read back.
    let emails = crate::store::emails::list(
        db,
        &crate::store::emails::EmailFilter {
            template: Some("invoice"),
            ..Default::default()
        },
        100,
        None,
    )
    .await
    .unwrap();
    assert_eq!(emails.len(), 4);
    let mut tx = db.begin().await.unwrap();
    for e in &emails {
        let id = e.invoice_id.clone().unwrap();
        let stored: snapshot::Snapshot = serde_json::from_str(&e.context).unwrap();
        let (read, customer_id) = snapshot::invoice(&mut tx, &id).await.unwrap().unwrap();
        assert_eq!(stored.invoice.as_ref(), Some(&read), "{id}");
        assert_eq!(stored.customer.id, customer_id);
        assert_eq!(stored.customer.name, format!("Customer {customer_id}"));
        let contacts = format!(r#"["ap@{customer_id}.example","cfo@{customer_id}.example"]"#);
        assert_eq!(e.recipients, contacts);
        assert_eq!(e.message_id, emails::message_id("invoice", &id, 0));
    }
    tx.commit().await.unwrap();
    // Outstanding after each of the plain customer's invoices: the later one shows both.
    let mut plain: Vec<(i64, String)> = emails
        .iter()
        .filter(|e| e.customer_id.as_deref() == Some("cus_plain"))
        .map(|e| {
            let s: snapshot::Snapshot = serde_json::from_str(&e.context).unwrap();
            (s.outstanding, s.invoice.unwrap().number.unwrap())
        })
        .collect();
    plain.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        plain.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1200, 4200]
    );

    // The plain customer's two invoices are charged; nobody else's.
    let attempts: Vec<(String, i64, String, i64)> = rows(
        db,
        "SELECT invoice_id, attempt, idempotency_key, amount FROM charge_attempts ORDER BY amount",
    )
    .await;
    assert_eq!(
        attempts,
        vec![
            (a.id.clone(), 1, format!("settled:{}:1", a.id), 1200),
            (b.id.clone(), 1, format!("settled:{}:1", b.id), 3000),
        ]
    );
    // Each email and each attempt is due work of its own; nothing went into the queue; the
    // ledger adds up.
    let now = s.now();
    let wall = crate::store::wall_ms();
    assert_eq!(
        crate::store::emails::due_count(db, now, wall, false)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        crate::store::charge_attempts::due_count(db, now)
            .await
            .unwrap(),
        2
    );
    let queued: Vec<(i64,)> = rows(db, &format!("SELECT COUNT(*) FROM {}", db.queue_table())).await;
    assert_eq!(queued, vec![(0,)]);
    assert_eq!(
        crate::billing::ledger::check(db).await.unwrap(),
        Vec::<String>::new()
    );

    // Another drain (a second daemon, a repeated sweep): nothing is due any more.
    assert_eq!(drain(&s).await.unwrap(), 0);
    let next: Vec<(Option<i64>,)> = rows(
        db,
        "SELECT next_period_start FROM subscriptions ORDER BY id",
    )
    .await;
    assert_eq!(next, vec![(Some(1_803_859_200_000),); 4]);
}

#[tokio::test]
async fn batch_on_sqlite() {
    a_batch_finalises_like_one_invoice_at_a_time(false).await;
}

#[tokio::test]
async fn batch_on_postgres() {
    a_batch_finalises_like_one_invoice_at_a_time(true).await;
}

/// A period that cannot be written fails alone: the rest of its batch is written.
async fn one_bad_period_does_not_fail_its_batch(postgres: bool) {
    let t = open(postgres).await;
    let db = &t.db;
    customer(db, "cus_1", false).await;
    subscription(db, "sub_a", "cus_1", 1000).await;
    // Unreadable items: refused before anything is written.
    subscription(db, "sub_b", "cus_1", 1000).await;
    exec(db, "UPDATE subscriptions SET items = '[{\"description\":\"Plan\",\"quantity\":\"two\",\"unit_amount\":1}]' WHERE id = 'sub_b'").await;
    // A negative total: the database refuses the row (amount_due >= 0), failing the batch's
    // transaction, so each period is then written alone.
    subscription(db, "sub_c", "cus_1", -1000).await;
    subscription(db, "sub_d", "cus_1", 2000).await;
    let s = settings(db);
    assert_eq!(drain(&s).await.unwrap(), 4);
    // Both bad periods are set aside, each with its own next try and its reason.
    let set_aside = crate::store::work_failures::list(db, Some(WorkKind::Periods), None, 10, None)
        .await
        .unwrap();
    let mut ids: Vec<&str> = set_aside.iter().map(|f| f.item_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["sub_b", "sub_c"], "{set_aside:?}");
    assert!(set_aside.iter().all(|f| f.tries == 1 && f.retry_at > 0));
    // Nothing more is taken until their next try comes.
    assert_eq!(drain(&s).await.unwrap(), 0);
    let a = invoice_of(db, "sub_a").await;
    let d = invoice_of(db, "sub_d").await;
    let mut numbers = vec![a.number.unwrap(), d.number.unwrap()];
    numbers.sort();
    assert_eq!(numbers, vec!["INV-2027-000001", "INV-2027-000002"]);
    let stuck: Vec<(Option<i64>,)> = rows(
        db,
        "SELECT next_period_start FROM subscriptions WHERE id IN ('sub_b', 'sub_c') ORDER BY id",
    )
    .await;
    assert_eq!(stuck, vec![(Some(START),), (Some(START),)]);
}

/// A paused subscription's due period waits; once it resumes, the next drain bills it.
async fn resuming_requeues_a_period_its_job_skipped_while_paused(postgres: bool) {
    use crate::store::subscriptions::{Action, transition};
    let t = open(postgres).await;
    let db = &t.db;
    customer(db, "cus_1", false).await;
    subscription(db, "sub_a", "cus_1", 1000).await;
    let s = settings(db);
    let now = s.now();
    assert!(
        transition(db, "sub_a", "active", Action::Pause, now)
            .await
            .unwrap()
    );
    assert_eq!(
        drain(&s).await.unwrap(),
        0,
        "a paused subscription is not due"
    );
    assert!(
        transition(db, "sub_a", "paused", Action::Resume, now)
            .await
            .unwrap()
    );
    assert_eq!(drain(&s).await.unwrap(), 1);
    invoice_of(db, "sub_a").await;
}

#[tokio::test]
async fn resume_on_sqlite() {
    resuming_requeues_a_period_its_job_skipped_while_paused(false).await;
}

#[tokio::test]
async fn resume_on_postgres() {
    resuming_requeues_a_period_its_job_skipped_while_paused(true).await;
}

#[tokio::test]
async fn isolation_on_sqlite() {
    one_bad_period_does_not_fail_its_batch(false).await;
}

#[tokio::test]
async fn isolation_on_postgres() {
    one_bad_period_does_not_fail_its_batch(true).await;
}
