//! The email outbox: what is sent, to whom, once, over a real SMTP listener.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::smtp::SmtpServer;
use crate::support::stripe_gateway::StripeGateway;

const WAIT: Duration = Duration::from_secs(60);

fn options(smtp: &SmtpServer) -> DaemonOptions {
    DaemonOptions::default()
        .env("SETTLED__EMAIL__SMTP_URL", smtp.url())
        .env(
            "SETTLED__EMAIL__FROM",
            "Example Billing <billing@example.com>",
        )
        .env("SETTLED__BUSINESS__NAME", "Example Ltd")
        .env("SETTLED__BUSINESS__ADDRESS", "1 Main Street\nSpringfield")
        .env("SETTLED__BUSINESS__SUPPORT_EMAIL", "help@example.com")
        .env(
            "SETTLED__BUSINESS__PAYMENT_INSTRUCTIONS",
            "\"Example Bank\\nIBAN DE89 3704 0044 0532 0130 00\\nReference: your invoice number\"",
        )
}

async fn customer(d: &Daemon, billing: &[&str], currency: &str) -> String {
    let (status, body) = d
        .post(
            "/v1/customers",
            json!({"email": billing[0], "name": "Acme Corp", "currency": currency,
                   "timezone": "Europe/Berlin", "billing_emails": billing}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn invoice(d: &Daemon, customer: &str, amount: &str) -> String {
    let (status, body) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "items": [{"description": "Consulting", "unit_amount": amount}],
                   "due_at": "2027-01-31T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn emails(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = d.get(&format!("/v1/emails?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// The one email about `invoice_id` of `template`, once `done` says it is where the test wants it.
async fn wait_email(
    d: &Daemon,
    invoice_id: &str,
    template: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = emails(d, &format!("invoice_id={invoice_id}&template={template}")).await;
        assert!(
            list.len() <= 1,
            "one {template} email per invoice: {list:?}"
        );
        if let Some(e) = list.first()
            && done(e)
        {
            return e.clone();
        }
        if Instant::now() > deadline {
            panic!("email not as expected: {list:?}\n{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["status"] == status
}

/// Runs SQL directly against the test database (to plant data the API would refuse).
async fn execute(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

both!(
    an_issued_invoice_reaches_every_billing_contact_with_text_html_and_the_pdf,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let w = World::start_with(backend, options(&smtp)).await;
        let d = &w.daemon;
        let customer = customer(d, &["ap@acme.example", "cfo@acme.example"], "USD").await;
        let invoice_id = invoice(d, &customer, "19.99").await;

        let got = smtp.wait_accepted(1, WAIT).await;
        assert_eq!(got.len(), 1);
        let m = &got[0];
        let mut rcpts = m.rcpt_to.clone();
        rcpts.sort();
        assert_eq!(rcpts, vec!["ap@acme.example", "cfo@acme.example"]);
        assert_eq!(m.mail_from, "billing@example.com");
        let parsed = m.parsed();
        assert_eq!(
            parsed.subject(),
            Some("Invoice INV-2027-000001 from Example Ltd")
        );
        let to: Vec<&str> = parsed
            .to()
            .unwrap()
            .iter()
            .filter_map(|a| a.address())
            .collect();
        assert_eq!(to, vec!["ap@acme.example", "cfo@acme.example"]);
        assert_eq!(
            parsed
                .reply_to()
                .and_then(|r| r.first())
                .and_then(|a| a.address()),
            Some("help@example.com")
        );
        assert_eq!(
            parsed.message_id(),
            Some(format!("invoice.{invoice_id}.0@settled").as_str())
        );
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(text.contains("Amount due:      $19.99"), "{text}");
        assert!(text.contains("Due:             31 January 2027"), "{text}");
        assert!(text.contains("Consulting"), "{text}");
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let at = lines
            .iter()
            .position(|l| *l == "To pay by bank transfer:")
            .expect("wire details in the invoice email");
        assert_eq!(
            lines[at + 1..at + 3],
            ["  Example Bank", "  IBAN DE89 3704 0044 0532 0130 00"],
            "{text}"
        );
        let html = parsed.body_html(0).unwrap().to_string();
        assert!(html.contains("<table") && html.contains("$19.99"), "{html}");
        assert!(html.contains("IBAN DE89 3704 0044 0532 0130 00"), "{html}");
        assert!(html.contains("Example Ltd") && html.contains("1 Main Street"));
        let raw = String::from_utf8_lossy(&m.data);
        assert!(
            raw.contains("multipart/alternative") && raw.contains("text/html"),
            "{raw}"
        );
        let pdfs: Vec<_> = parsed.attachments().collect();
        assert_eq!(pdfs.len(), 1);
        assert_eq!(
            pdfs[0].attachment_name(),
            Some("invoice-INV-2027-000001.pdf")
        );
        assert!(pdfs[0].contents().starts_with(b"%PDF-"));
        let pdf_text = String::from_utf8_lossy(pdfs[0].contents());
        assert!(
            pdf_text.contains("(IBAN DE89 3704 0044 0532 0130 00)"),
            "wire details in the PDF"
        );
        // The API hands out the same document, byte for byte.
        let r = d
            .http
            .get(d.url(&format!("/v1/invoices/{invoice_id}/pdf")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert_eq!(
            r.headers()["content-disposition"],
            "inline; filename=\"invoice-INV-2027-000001.pdf\""
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), pdfs[0].contents());
        let (status, missing) = d.get("/v1/invoices/in_missing/pdf").await;
        assert_eq!(status, 404, "{missing}");

        let e = wait_email(d, &invoice_id, "invoice", status_is("sent")).await;
        assert_eq!(e["template"], "invoice");
        assert_eq!(e["to"], json!(["ap@acme.example", "cfo@acme.example"]));
        assert_eq!(e["subject"], "Invoice INV-2027-000001 from Example Ltd");
        assert_eq!(e["attempts"], 1);
        assert_eq!(e["sent_at"], "2027-01-01T00:00:00Z");
        assert_eq!(e["last_error"], Value::Null);
        assert_eq!(e["customer_id"], customer);
        let id = e["id"].as_str().unwrap();
        assert!(id.starts_with("em_"));
        let (status, one) = d.get(&format!("/v1/emails/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(one["status"], "sent");
        assert_eq!(
            emails(d, &format!("customer_id={customer}&status=sent"))
                .await
                .len(),
            1
        );
        assert!(emails(d, "status=failed").await.is_empty());
        let (status, _) = d.get("/v1/emails?status=lost").await;
        assert_eq!(status, 422);
        let (status, _) = d.get("/v1/emails/em_missing").await;
        assert_eq!(status, 404);
    }
);

both!(
    a_temporary_refusal_is_retried_and_the_resend_is_byte_for_byte_the_same_message,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        smtp.refuse_next(2, "451 4.3.0 mailbox busy, try again later");
        let w = World::start_with(backend, options(&smtp)).await;
        let d = &w.daemon;
        let customer = customer(d, &["ap@acme.example"], "JPY").await;
        let invoice_id = invoice(d, &customer, "1000").await;

        let waiting = wait_email(d, &invoice_id, "invoice", |e| {
            e["last_error"].as_str().is_some_and(|l| l.contains("451"))
        })
        .await;
        assert_eq!(waiting["status"], "pending", "a 4xx is not a failure");
        let e = wait_email(d, &invoice_id, "invoice", status_is("sent")).await;
        assert_eq!(e["attempts"], 3);
        assert_eq!(e["last_error"], Value::Null);

        let all = smtp.all();
        assert_eq!(all.len(), 3, "two refused tries and one delivery");
        assert_eq!(smtp.accepted().len(), 1, "delivered once");
        for m in &all[1..] {
            assert_eq!(m.data, all[0].data, "every try is the same bytes");
        }
        let parsed = all[2].parsed();
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(text.contains("Amount due:      ¥1,000"), "{text}");
        assert!(!text.contains("¥1,000.00"), "{text}");
        let pdf = parsed.attachments().next().unwrap().contents().to_vec();
        assert!(pdf.starts_with(b"%PDF-"));
        let first_pdf = all[0]
            .parsed()
            .attachments()
            .next()
            .unwrap()
            .contents()
            .to_vec();
        assert_eq!(pdf, first_pdf);
    }
);

both!(
    while_smtp_is_down_emails_wait_and_all_go_out_once_when_it_returns,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        smtp.set_down(true);
        let w = World::start_with(backend, options(&smtp)).await;
        let d = &w.daemon;
        let mut invoices = Vec::new();
        for i in 0..3 {
            let c = customer(d, &[&format!("ap{i}@acme.example")], "EUR").await;
            invoices.push(invoice(d, &c, "10.00").await);
        }
        for inv in &invoices {
            let e = wait_email(d, inv, "invoice", |e| e["attempts"].as_i64() >= Some(1)).await;
            assert_eq!(e["status"], "pending", "{e}");
            assert!(e["last_error"].as_str().is_some(), "{e}");
        }
        assert!(smtp.all().is_empty());
        smtp.set_down(false);
        for inv in &invoices {
            wait_email(d, inv, "invoice", status_is("sent")).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let accepted = smtp.accepted();
        assert_eq!(accepted.len(), 3, "none lost, none doubled");
        let ids: HashSet<String> = accepted
            .iter()
            .map(|m| m.parsed().message_id().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 3);
    }
);

both!(
    a_refused_address_fails_visibly_without_holding_up_others_and_can_be_retried,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        smtp.refuse_recipient("nobody@bad.example", "550 5.1.1 no such user here");
        let w = World::start_with(backend, options(&smtp)).await;
        let d = &w.daemon;
        let bad = customer(d, &["nobody@bad.example"], "USD").await;
        let good = customer(d, &["ap@good.example"], "USD").await;
        let bad_invoice = invoice(d, &bad, "5.00").await;
        let good_invoice = invoice(d, &good, "6.00").await;

        let failed = wait_email(d, &bad_invoice, "invoice", status_is("failed")).await;
        assert!(
            failed["last_error"].as_str().unwrap().contains("550"),
            "{failed}"
        );
        assert_eq!(failed["attempts"], 1);
        let sent = wait_email(d, &good_invoice, "invoice", status_is("sent")).await;
        let listed = emails(d, "status=failed").await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["id"], failed["id"]);

        let failed_id = failed["id"].as_str().unwrap();
        let (status, body) = d
            .post(
                &format!("/v1/emails/{}/retry", sent["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        let (status, _) = d.post("/v1/emails/em_missing/retry", json!({})).await;
        assert_eq!(status, 404);

        smtp.accept_recipient("nobody@bad.example");
        let (status, retried) = d
            .post(&format!("/v1/emails/{failed_id}/retry"), json!({}))
            .await;
        assert_eq!(status, 200, "{retried}");
        assert_eq!(retried["status"], "pending");
        let e = wait_email(d, &bad_invoice, "invoice", status_is("sent")).await;
        assert_eq!(e["attempts"], 2);
        let to_bad = smtp
            .accepted()
            .iter()
            .filter(|m| m.rcpt_to == vec!["nobody@bad.example".to_string()])
            .count();
        assert_eq!(to_bad, 1);

        // The same through the CLI, against the daemon's database.
        smtp.refuse_recipient("nobody@bad.example", "550 5.1.1 no such user here");
        let second = invoice(d, &bad, "7.00").await;
        let failed = wait_email(d, &second, "invoice", status_is("failed")).await;
        let failed_id = failed["id"].as_str().unwrap().to_string();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(binary())
                .args(args)
                .env("SETTLED__DATABASE__URL", &d.database_url)
                .env("SETTLED__DAEMON__STATE_DIR", &d.state_dir)
                .env("SETTLED__ADMIN__TOKENS", format!("[\"{TOKEN}\"]"))
                .env("SETTLED__CLOCK__MODE", "manual")
                .env("SETTLED__CLOCK__START", "2027-01-01T00:00:00Z")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, out, err) = run(&["emails", "list", "--status", "failed"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&failed_id) && out.contains("550"), "{out}");
        assert!(out.contains("nobody@bad.example"), "{out}");
        smtp.accept_recipient("nobody@bad.example");
        let (code, out, err) = run(&["emails", "retry", &failed_id, "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["status"], "pending");
        wait_email(d, &second, "invoice", status_is("sent")).await;
        let (code, out, _) = run(&["emails", "show", &failed_id]);
        assert_eq!(code, Some(0));
        assert!(out.contains("sent"), "{out}");
        let (code, _, _) = run(&["emails", "retry", &failed_id]);
        assert_eq!(code, Some(3), "a sent email is not retried");
    }
);

both!(
    a_customer_without_a_deliverable_address_gets_a_failed_email_and_nothing_else_waits,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let w = World::start_with(backend, options(&smtp)).await;
        let d = &w.daemon;
        let lost = customer(d, &["old@acme.example"], "USD").await;
        let fine = customer(d, &["ap@fine.example"], "USD").await;
        // Planted behind the API's back: the API refuses such an address.
        execute(
            &d.database_url,
            &format!(
                "UPDATE customer_billing_emails SET email = 'not-an-address' WHERE customer_id = '{lost}'"
            ),
        )
        .await;
        let lost_invoice = invoice(d, &lost, "1.00").await;
        let fine_invoice = invoice(d, &fine, "2.00").await;
        let failed = wait_email(d, &lost_invoice, "invoice", status_is("failed")).await;
        let reason = failed["last_error"].as_str().unwrap();
        assert!(
            reason.contains("no deliverable address") && reason.contains("not-an-address"),
            "{reason}"
        );
        wait_email(d, &fine_invoice, "invoice", status_is("sent")).await;
        let accepted = smtp.wait_accepted(1, WAIT).await;
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].rcpt_to, vec!["ap@fine.example"]);
    }
);

both!(
    addresses_the_mailer_cannot_use_are_refused_at_the_api,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        for bad in [
            "ap@",
            "ap acme@example.com",
            "ap@acme..example",
            "<ap@acme.example>",
            "ap@acme.example, cfo@acme.example",
        ] {
            let (status, body) = d
                .post(
                    "/v1/customers",
                    json!({"email": "ok@acme.example", "name": "Acme", "currency": "USD",
                           "billing_emails": ["ok@acme.example", bad]}),
                )
                .await;
            assert_eq!(status, 422, "{bad}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("billing_emails[1]"),
                "{body}"
            );
            let (status, _) = d
                .post(
                    "/v1/customers",
                    json!({"email": bad, "name": "Acme", "currency": "USD"}),
                )
                .await;
            assert_eq!(status, 422, "{bad}");
        }
        let id = d.customer("USD").await;
        let (status, _) = d
            .patch(
                &format!("/v1/customers/{id}"),
                json!({"billing_emails": ["ap@acme..example"]}),
            )
            .await;
        assert_eq!(status, 422);
        let (_, c) = d.get(&format!("/v1/customers/{id}")).await;
        assert_eq!(c["billing_emails"], json!(["ada@example.com"]), "unchanged");
        let (_, all) = d.get("/v1/customers").await;
        assert_eq!(all["data"].as_array().unwrap().len(), 1);
    }
);

both!(
    one_invoice_email_per_invoice_when_two_daemons_generate_the_same_periods,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let w = World::start_with(backend, options(&smtp)).await;
        let a = &w.daemon;
        let b = Daemon::start(w.dir.path(), &w.db.url, options(&smtp)).await;
        let customer = customer(a, &["ap@acme.example"], "USD").await;
        let (status, sub) = a
            .post(
                "/v1/subscriptions",
                json!({"customer_id": customer, "items": [{"description": "Daily", "unit_amount": "1.00"}],
                       "schedule": {"every": "day"}, "start_at": "2027-01-02T00:00:00Z", "auto_charge": false}),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        let (ra, rb) = tokio::join!(
            a.post("/v1/clock/advance", json!({"to": "2027-01-07T00:00:00Z"})),
            b.post("/v1/clock/advance", json!({"to": "2027-01-07T00:00:00Z"})),
        );
        assert_eq!((ra.0, rb.0), (202, 202));
        a.wait_clock_ready(WAIT).await;
        b.wait_clock_ready(WAIT).await;
        let invoices = a.invoices("").await;
        assert_eq!(invoices.len(), 6, "Jan 2 to Jan 7");
        let listed = emails(a, "template=invoice").await;
        assert_eq!(listed.len(), 6);
        assert!(listed.iter().all(|e| e["status"] == "sent"), "{listed:?}");
        let accepted = smtp.wait_accepted(6, WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(smtp.accepted().len(), 6);
        let subjects: HashSet<String> = accepted
            .iter()
            .map(|m| m.parsed().subject().unwrap().to_string())
            .collect();
        assert_eq!(subjects.len(), 6, "{subjects:?}");
    }
);

both!(
    an_auto_charge_customer_is_reminded_days_before_the_next_period_once,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let gateway = StripeGateway::start().await;
        let opts = options(&smtp)
            .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url());
        let w = World::start_with(backend, opts).await;
        let d = &w.daemon;
        let customer = customer(d, &["ap@acme.example", "cfo@acme.example"], "USD").await;
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{customer}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        // A customer who is not charged automatically is never reminded.
        let manual = customer_without_auto_charge(d).await;
        for (who, auto) in [(&customer, true), (&manual, true)] {
            let (status, sub) = d
                .post(
                    "/v1/subscriptions",
                    json!({"customer_id": who, "items": [{"description": "Hosting", "unit_amount": "19.99"}],
                           "schedule": {"every": "month", "timezone": "Europe/Berlin"},
                           "start_at": "2027-01-01T00:00:00Z", "auto_charge": auto}),
                )
                .await;
            assert_eq!(status, 201, "{sub}");
        }
        d.advance("2027-01-28T00:00:00Z").await;
        assert!(emails(d, "template=upcoming_charge").await.is_empty());
        // February's period starts 2027-02-01T00:00Z; three days before is Jan 29.
        d.advance("2027-01-29T00:00:00Z").await;
        let reminders = emails(d, "template=upcoming_charge").await;
        assert_eq!(reminders.len(), 1, "{reminders:?}");
        assert_eq!(reminders[0]["customer_id"], customer);
        assert_eq!(reminders[0]["status"], "sent");
        assert_eq!(
            reminders[0]["to"],
            json!(["ap@acme.example", "cfo@acme.example"])
        );
        d.advance("2027-01-30T12:00:00Z").await;
        assert_eq!(emails(d, "template=upcoming_charge").await.len(), 1);
        let reminder = smtp
            .accepted()
            .into_iter()
            .find(|m| {
                m.parsed()
                    .subject()
                    .is_some_and(|s| s.starts_with("Upcoming charge"))
            })
            .expect("the reminder arrived");
        let parsed = reminder.parsed();
        assert_eq!(
            parsed.subject(),
            Some("Upcoming charge of $19.99 on 1 February 2027")
        );
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(text.contains("Visa ending in 4242"), "{text}");
        assert!(!text.contains("pm_"), "no gateway token in an email");
        assert!(parsed.body_html(0).unwrap().contains("Hosting"));
    }
);

async fn customer_without_auto_charge(d: &Daemon) -> String {
    let (status, body) = d
        .post(
            "/v1/customers",
            json!({"email": "manual@acme.example", "name": "Manual Co", "currency": "USD",
                   "timezone": "Europe/Berlin", "auto_charge": false}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The message of `template` about `invoice_id`, as it reached the SMTP listener.
async fn delivered(
    smtp: &SmtpServer,
    d: &Daemon,
    invoice_id: &str,
    template: &str,
) -> crate::support::smtp::Received {
    let e = wait_email(d, invoice_id, template, status_is("sent")).await;
    let subject = e["subject"].as_str().unwrap().to_string();
    smtp.accepted()
        .into_iter()
        .find(|m| m.parsed().subject() == Some(subject.as_str()))
        .unwrap_or_else(|| panic!("no message with subject {subject}"))
}

both!(
    card_payments_bring_one_receipt_each_with_the_remaining_balance,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let gateway = StripeGateway::start().await;
        let opts = options(&smtp)
            .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
            .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "2");
        let w = World::start_with(backend, opts).await;
        let d = &w.daemon;
        let cus = customer(d, &["ap@acme.example", "cfo@acme.example"], "USD").await;
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        let invoice_id = invoice(d, &cus, "100.00").await;
        // The gateway's answer is lost twice: the outcome is asked for again under the same key.
        gateway.fail_next_after_charge(crate::support::stripe_gateway::FailMode::ServerError);
        let (status, inv) = d
            .post(
                &format!("/v1/invoices/{invoice_id}/charge"),
                json!({"amount": "40.00"}),
            )
            .await;
        assert_eq!(status, 202, "{inv}");
        let m = delivered(&smtp, d, &invoice_id, "receipt").await;
        let parsed = m.parsed();
        assert_eq!(parsed.subject(), Some("Receipt for INV-2027-000001"));
        let mut rcpts = m.rcpt_to.clone();
        rcpts.sort();
        assert_eq!(rcpts, vec!["ap@acme.example", "cfo@acme.example"]);
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(text.contains("$40.00"), "{text}");
        assert!(text.contains("$60.00"), "remaining balance: {text}");
        assert!(
            text.contains("4242") && text.to_lowercase().contains("visa"),
            "{text}"
        );
        assert!(!text.contains("4242424242424242"));
        assert!(parsed.body_html(0).is_some());
        let attached = parsed
            .attachments()
            .find(|a| a.contents().starts_with(b"%PDF-"))
            .expect("the receipt PDF")
            .contents()
            .to_vec();
        // The same receipt through the API.
        let (_, payments) = d
            .get(&format!("/v1/payments?invoice_id={invoice_id}"))
            .await;
        let payment = payments["data"][0]["id"].as_str().unwrap().to_string();
        let r = d
            .http
            .get(d.url(&format!("/v1/payments/{payment}/receipt.pdf")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert_eq!(r.bytes().await.unwrap().as_ref(), attached.as_slice());
        // The rest, on demand: a second receipt, for the second payment, with nothing left.
        let (status, inv) = d
            .post(&format!("/v1/invoices/{invoice_id}/charge"), json!({}))
            .await;
        assert_eq!(status, 200, "{inv}");
        d.wait_clock_ready(WAIT).await;
        let receipts = emails(d, &format!("invoice_id={invoice_id}&template=receipt")).await;
        assert_eq!(receipts.len(), 2, "one receipt per payment: {receipts:?}");
        assert_eq!(gateway.payment_intent_count(), 2);
    }
);

both!(
    dunning_sends_payment_failed_notices_and_a_final_notice,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let gateway = StripeGateway::start().await;
        let opts = options(&smtp)
            .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
            .env("SETTLED__BILLING__RETRY_DAYS", "[2]");
        let w = World::start_with(backend, opts).await;
        let d = &w.daemon;
        let cus = customer(d, &["ap@acme.example"], "EUR").await;
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_chargeDeclinedInsufficientFunds"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        let (status, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "auto_charge": true,
                       "items": [{"description": "Plan", "unit_amount": "25.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{inv}");
        let invoice_id = inv["id"].as_str().unwrap();
        d.wait_clock_ready(WAIT).await;
        let failed = emails(
            d,
            &format!("invoice_id={invoice_id}&template=payment_failed"),
        )
        .await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        let m = delivered(&smtp, d, invoice_id, "payment_failed").await;
        let text = m.parsed().body_text(0).unwrap().to_string();
        assert!(text.contains("3 January 2027"), "next attempt date: {text}");
        d.advance("2027-01-03T00:00:00Z").await;
        let failed = emails(
            d,
            &format!("invoice_id={invoice_id}&template=payment_failed"),
        )
        .await;
        assert_eq!(failed.len(), 2, "{failed:?}");
        let m = delivered(&smtp, d, invoice_id, "final_notice").await;
        assert!(m.parsed().subject().is_some());
        let (_, inv) = d.get(&format!("/v1/invoices/{invoice_id}")).await;
        assert_eq!(inv["status"], "past_due");
    }
);
