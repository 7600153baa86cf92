//! Monthly statements: customers who opt in get last month's statement of account once, after
//! midnight on the 1st in their own time zone, over a real SMTP listener.

use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::smtp::{Received, SmtpServer};

const WAIT: Duration = Duration::from_secs(60);

fn options(smtp: &SmtpServer, start: &str) -> DaemonOptions {
    let mut options = DaemonOptions::default()
        .env("SETTLED__EMAIL__SMTP_URL", smtp.url())
        .env(
            "SETTLED__EMAIL__FROM",
            "Example Billing <billing@example.com>",
        )
        .env("SETTLED__BUSINESS__NAME", "Example Ltd")
        .env("SETTLED__BUSINESS__SUPPORT_EMAIL", "help@example.com");
    options.manual_clock = Some(start.to_string());
    options
}

async fn customer(
    d: &Daemon,
    billing: &[&str],
    currency: &str,
    timezone: &str,
    statements: bool,
) -> String {
    let (status, body) = d
        .post(
            "/v1/customers",
            json!({"email": billing[0], "name": "Acme Corp", "currency": currency,
                   "timezone": timezone, "billing_emails": billing,
                   "statement_emails": statements}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["statement_emails"], statements, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// Issues a one-off invoice; returns its id and number.
async fn invoice(d: &Daemon, customer: &str, amount: &str) -> (String, String) {
    let (status, body) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer,
                   "items": [{"description": "Consulting", "unit_amount": amount}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["number"].as_str().unwrap().to_string(),
    )
}

/// The statement emails in the outbox, for one customer or for all.
async fn statements(d: &Daemon, customer: Option<&str>) -> Vec<Value> {
    let query = match customer {
        Some(c) => format!("/v1/emails?template=statement&customer_id={c}"),
        None => "/v1/emails?template=statement".to_string(),
    };
    let (status, body) = d.get(&query).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Waits until every statement email in the outbox has been sent.
async fn wait_all_sent(d: &Daemon) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = statements(d, None).await;
        if list.iter().all(|e| e["status"] == "sent") {
            return list;
        }
        if Instant::now() > deadline {
            panic!("statements not sent: {list:?}\n{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The statement messages that reached the SMTP listener (accepted or not), oldest first.
fn statement_messages(smtp: &SmtpServer) -> Vec<Received> {
    smtp.all()
        .into_iter()
        .filter(|m| {
            m.parsed()
                .subject()
                .is_some_and(|s| s.starts_with("Your statement for"))
        })
        .collect()
}

fn accepted_to(smtp: &SmtpServer, address: &str) -> Vec<Received> {
    statement_messages(smtp)
        .into_iter()
        .filter(|m| m.accepted() && m.rcpt_to.iter().any(|r| r == address))
        .collect()
}

fn text_of(m: &Received) -> String {
    m.parsed().body_text(0).unwrap().to_string()
}

fn csv_of(m: &Received) -> (String, String) {
    let parsed = m.parsed();
    let csv = parsed
        .attachments()
        .next()
        .expect("the statement carries its CSV");
    (
        csv.attachment_name().unwrap_or_default().to_string(),
        String::from_utf8(csv.contents().to_vec()).unwrap(),
    )
}

both!(
    an_opted_in_customer_gets_last_months_statement_once_on_the_first_with_both_balances,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let w = World::start_with(backend, options(&smtp, "2026-12-15T00:00:00Z")).await;
        let d = &w.daemon;
        let acme = customer(
            d,
            &["ap@acme.example", "cfo@acme.example"],
            "USD",
            "UTC",
            false,
        )
        .await;
        let other = customer(d, &["ap@other.example"], "USD", "UTC", false).await;
        let (first, _) = invoice(d, &acme, "100.00").await;
        invoice(d, &other, "50.00").await;

        d.advance("2027-01-10T00:00:00Z").await;
        assert!(
            statements(d, None).await.is_empty(),
            "nobody asked for statements"
        );

        // Opting in after December ended brings January's statement, not December's.
        let (status, body) = d
            .patch(
                &format!("/v1/customers/{acme}"),
                json!({"statement_emails": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["statement_emails"], true);
        d.advance("2027-01-15T00:00:00Z").await;
        assert!(statements(d, None).await.is_empty());

        let (status, pay) = d
            .post(
                &format!("/v1/invoices/{first}/payments"),
                json!({"amount": "40.00", "method": "wire"}),
            )
            .await;
        assert_eq!(status, 201, "{pay}");
        let (_, second) = invoice(d, &acme, "25.00").await;

        d.advance("2027-01-31T23:59:59Z").await;
        assert!(
            statements(d, None).await.is_empty(),
            "January has not ended"
        );

        // The first try is turned away for a while: the resend must be the same message.
        smtp.refuse_next(1, "451 4.3.0 try again later");
        d.advance("2027-02-01T00:00:00Z").await;
        let list = wait_all_sent(d).await;
        assert_eq!(list.len(), 1, "{list:?}");
        let e = &list[0];
        assert_eq!(e["customer_id"], acme);
        assert_eq!(e["to"], json!(["ap@acme.example", "cfo@acme.example"]));
        assert_eq!(
            e["subject"],
            "Your statement for January 2027 from Example Ltd"
        );
        assert_eq!(e["attempts"], 2, "{e}");

        // Past the 1st, twice: still one statement for January.
        d.advance("2027-02-01T00:00:01Z").await;
        d.advance("2027-02-02T00:00:00Z").await;
        assert_eq!(statements(d, None).await.len(), 1);
        assert!(statements(d, Some(&other)).await.is_empty());
        let tries = statement_messages(&smtp);
        assert_eq!(tries.len(), 2, "one refused try and one delivery");
        assert_eq!(tries[1].data, tries[0].data, "the resend is the same bytes");
        let accepted: Vec<&Received> = tries.iter().filter(|m| m.accepted()).collect();
        assert_eq!(accepted.len(), 1);
        let m = accepted[0];
        let mut rcpts = m.rcpt_to.clone();
        rcpts.sort();
        assert_eq!(rcpts, vec!["ap@acme.example", "cfo@acme.example"]);
        let parsed = m.parsed();
        assert_eq!(
            parsed.message_id(),
            Some(format!("statement.{acme}.202701@settled").as_str())
        );
        let text = text_of(m);
        for expected in [
            "for January 2027 (1 January 2027 – 31 January 2027), in USD",
            "Opening balance: $100.00  (1 January 2027)",
            "15 January 2027  Payment",
            ": -$40.00 (balance $60.00)",
            &format!("15 January 2027  Invoice {second}: $25.00 (balance $85.00)"),
            "Closing balance: $85.00  (31 January 2027)",
            "You owed $85.00 at the end of the month.",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        let html = parsed.body_html(0).unwrap().to_string();
        assert!(
            html.contains("Closing balance") && html.contains("$85.00") && html.contains("$100.00"),
            "{html}"
        );
        // The attachment says what the statement route says about the same month.
        let (name, csv) = csv_of(m);
        assert_eq!(name, "statement-2027-01.csv");
        let (status, api) = d
            .get(&format!(
                "/v1/customers/{acme}/statement?from=2027-01-01T00:00:00Z&to=2027-02-01T00:00:00Z"
            ))
            .await;
        assert_eq!(status, 200, "{api}");
        assert_eq!(api["opening_balance"], "100.00");
        assert_eq!(api["closing_balance"], "85.00");
        assert!(csv.starts_with("date,kind,reference,amount,balance\n,opening,,,100.00\n"));
        assert!(csv.ends_with(",closing,,,85.00\n"), "{csv}");
        assert_eq!(
            csv.lines().count(),
            api["entries"].as_array().unwrap().len() + 3,
            "{csv}"
        );

        // A month without a single movement still gets its statement, showing the balance.
        d.advance("2027-03-01T00:00:00Z").await;
        wait_all_sent(d).await;
        assert_eq!(statements(d, Some(&acme)).await.len(), 2);
        assert!(statements(d, Some(&other)).await.is_empty());
        let got = accepted_to(&smtp, "ap@acme.example");
        assert_eq!(got.len(), 2);
        let february = &got[1];
        assert_eq!(
            february.parsed().subject(),
            Some("Your statement for February 2027 from Example Ltd")
        );
        let text = text_of(february);
        for expected in [
            "Opening balance: $85.00",
            "No activity this month.",
            "Closing balance: $85.00",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert!(accepted_to(&smtp, "ap@other.example").is_empty());
    }
);

both!(
    a_customer_in_tokyo_gets_its_statement_at_midnight_in_tokyo,
    |backend| async move {
        let smtp = SmtpServer::start().await;
        let w = World::start_with(backend, options(&smtp, "2027-01-01T00:00:00Z")).await;
        let d = &w.daemon;
        let tokyo = customer(d, &["ap@tokyo.example"], "JPY", "Asia/Tokyo", true).await;
        let london = customer(d, &["ap@london.example"], "GBP", "Europe/London", true).await;
        invoice(d, &tokyo, "1000").await;

        // Both opted in during January in their own time: nothing for December.
        d.advance("2027-01-31T14:59:59Z").await;
        assert!(statements(d, None).await.is_empty());

        // 2027-02-01T00:00 in Tokyo.
        d.advance("2027-01-31T15:00:00Z").await;
        let list = wait_all_sent(d).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["customer_id"], tokyo);
        let got = accepted_to(&smtp, "ap@tokyo.example");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].parsed().subject(),
            Some("Your statement for January 2027 from Example Ltd")
        );
        let text = text_of(&got[0]);
        for expected in [
            "(1 January 2027 – 31 January 2027), in JPY",
            "Opening balance: ¥0",
            ": ¥1,000 (balance ¥1,000)",
            "Closing balance: ¥1,000  (31 January 2027)",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert!(!text.contains("¥1,000.00"), "{text}");
        let (_, csv) = csv_of(&got[0]);
        assert!(csv.ends_with(",closing,,,1000\n"), "{csv}");

        d.advance("2027-01-31T23:59:59Z").await;
        assert_eq!(
            statements(d, None).await.len(),
            1,
            "London is still in January"
        );

        // Midnight in London; a quiet month still brings a statement.
        d.advance("2027-02-01T00:00:00Z").await;
        let list = wait_all_sent(d).await;
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(statements(d, Some(&tokyo)).await.len(), 1);
        assert_eq!(statements(d, Some(&london)).await.len(), 1);
        let got = accepted_to(&smtp, "ap@london.example");
        assert_eq!(got.len(), 1);
        let text = text_of(&got[0]);
        for expected in [
            "Opening balance: £0.00",
            "No activity this month.",
            "Closing balance: £0.00",
            "Nothing was owed at the end of the month.",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert_eq!(accepted_to(&smtp, "ap@tokyo.example").len(), 1);
    }
);
