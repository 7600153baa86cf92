//! The operator's commands, run through the admin API: its own handlers in-process against the
//! configured database (no running daemon needed), or a running daemon's over `--url`; either
//! way the CLI and the HTTP API validate, store and answer exactly alike.

use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{Value, json};

use super::commands::*;
use super::request::{Answer, Target, call, call_csv, query};
use crate::progress::Progress;

pub async fn customers(target: &Target, cmd: CustomersCommand) -> anyhow::Result<Answer> {
    match cmd {
        CustomersCommand::List { billing_email } => {
            call(
                target,
                Method::GET,
                &format!(
                    "/v1/customers{}",
                    query(&[("billing_email", &billing_email)])
                ),
                None,
            )
            .await
        }
        CustomersCommand::Show { id } => {
            call(target, Method::GET, &format!("/v1/customers/{id}"), None).await
        }
        CustomersCommand::Statement { id, from, to, csv } => {
            let q = query(&[("from", &from), ("to", &to)]);
            let path = format!("/v1/customers/{id}/statement{q}");
            if csv {
                return call_csv(target, &path).await;
            }
            let mut answer = call(target, Method::GET, &path, None).await?;
            // As a table: one row per entry, with the opening and closing balances around them.
            if answer.status == 200 {
                let b = &answer.body;
                let mut rows = vec![
                    json!({"object": "statement_entry", "kind": "opening", "balance": b["opening_balance"]}),
                ];
                rows.extend(
                    b["entries"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|mut e| {
                            e["object"] = json!("statement_entry");
                            e
                        }),
                );
                rows.push(json!({"object": "statement_entry", "kind": "closing", "balance": b["closing_balance"]}));
                answer.body = json!({"data": rows, "statement": b});
            }
            Ok(answer)
        }
        CustomersCommand::ChargeBalance { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/customers/{id}/charge_balance"),
                Some(json!({})),
            )
            .await
        }
        CustomersCommand::Create {
            email,
            name,
            currency,
            timezone,
            billing_emails,
            no_auto_charge,
        } => {
            let mut body = json!({"email": email, "name": name, "currency": currency, "auto_charge": !no_auto_charge});
            if let Some(tz) = timezone {
                body["timezone"] = json!(tz);
            }
            if !billing_emails.is_empty() {
                body["billing_emails"] = json!(billing_emails);
            }
            call(target, Method::POST, "/v1/customers", Some(body)).await
        }
    }
}

fn parse_item(s: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = s.split('|').collect();
    if !(3..=4).contains(&parts.len()) {
        anyhow::bail!("--item {s:?} must be \"description|quantity|unit_amount[|tax_rate]\"");
    }
    let mut item = json!({"description": parts[0], "quantity": parts[1], "unit_amount": parts[2]});
    if let Some(rate) = parts.get(3) {
        item["tax_rate"] = json!(rate);
    }
    Ok(item)
}

pub async fn subscriptions(target: &Target, cmd: SubscriptionsCommand) -> anyhow::Result<Answer> {
    match cmd {
        SubscriptionsCommand::Add(a) => {
            let items = a
                .items
                .iter()
                .map(|i| parse_item(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut schedule = json!({});
            if let Some(e) = a.every {
                schedule["every"] = json!(e);
            }
            if let Some(i) = a.interval {
                schedule["interval"] = json!(i);
            }
            if let Some(x) = a.anchor {
                schedule["anchor"] = json!(x);
            }
            if let Some(c) = a.cron {
                schedule["cron"] = json!(c);
            }
            if let Some(tz) = a.timezone {
                schedule["timezone"] = json!(tz);
            }
            let mut body = json!({"customer_id": a.customer, "items": items, "schedule": schedule, "auto_charge": !a.no_auto_charge});
            if let Some(s) = a.start_at {
                body["start_at"] = json!(s);
            }
            if let Some(c) = a.catch_up {
                body["catch_up"] = json!(c);
            }
            if let Some(n) = a.net_days {
                body["net_days"] = json!(n);
            }
            call(target, Method::POST, "/v1/subscriptions", Some(body)).await
        }
        SubscriptionsCommand::List { customer, status } => {
            call(
                target,
                Method::GET,
                &format!(
                    "/v1/subscriptions{}",
                    query(&[("customer_id", &customer), ("status", &status)])
                ),
                None,
            )
            .await
        }
        SubscriptionsCommand::Show { id } => {
            call(
                target,
                Method::GET,
                &format!("/v1/subscriptions/{id}"),
                None,
            )
            .await
        }
        SubscriptionsCommand::Pause { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/subscriptions/{id}/pause"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Resume { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/subscriptions/{id}/resume"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Cancel { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/subscriptions/{id}/cancel"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Preview { id, periods } => {
            call(
                target,
                Method::GET,
                &format!("/v1/subscriptions/{id}/preview?periods={periods}"),
                None,
            )
            .await
        }
    }
}

pub async fn invoices(target: &Target, cmd: InvoicesCommand) -> anyhow::Result<Answer> {
    match cmd {
        InvoicesCommand::List {
            customer,
            subscription,
            status,
        } => {
            let q = query(&[
                ("customer_id", &customer),
                ("subscription_id", &subscription),
                ("status", &status),
            ]);
            call(target, Method::GET, &format!("/v1/invoices{q}"), None).await
        }
        InvoicesCommand::Show { id } => {
            call(target, Method::GET, &format!("/v1/invoices/{id}"), None).await
        }
        InvoicesCommand::Charge {
            id,
            amount,
            payment_method,
        } => {
            let mut body = json!({});
            if let Some(a) = amount {
                body["amount"] = json!(a);
            }
            if let Some(pm) = payment_method {
                body["payment_method"] = json!(pm);
            }
            call(
                target,
                Method::POST,
                &format!("/v1/invoices/{id}/charge"),
                Some(body),
            )
            .await
        }
    }
}

pub async fn credit_notes(target: &Target, cmd: CreditNotesCommand) -> anyhow::Result<Answer> {
    match cmd {
        CreditNotesCommand::Create {
            customer,
            amount,
            currency,
            reason,
        } => {
            call(
                target,
                Method::POST,
                "/v1/credit_notes",
                Some(json!({"customer_id": customer, "amount": amount, "currency": currency, "reason": reason})),
            )
            .await
        }
        CreditNotesCommand::List { customer } => {
            call(
                target,
                Method::GET,
                &format!("/v1/customers/{customer}/credit_notes"),
                None,
            )
            .await
        }
    }
}

pub async fn payments(target: &Target, cmd: PaymentsCommand) -> anyhow::Result<Answer> {
    match cmd {
        PaymentsCommand::List { customer, invoice } => {
            let q = query(&[("customer_id", &customer), ("invoice_id", &invoice)]);
            call(target, Method::GET, &format!("/v1/payments{q}"), None).await
        }
        PaymentsCommand::Record {
            invoice,
            customer,
            amount,
            method,
            reference,
        } => {
            let mut body = json!({"amount": amount, "method": method});
            if let Some(r) = reference {
                body["reference"] = json!(r);
            }
            let path = match (invoice, customer) {
                (Some(i), _) => format!("/v1/invoices/{i}/payments"),
                (None, Some(c)) => format!("/v1/customers/{c}/payments"),
                (None, None) => anyhow::bail!("--invoice or --customer is required"),
            };
            call(target, Method::POST, &path, Some(body)).await
        }
        PaymentsCommand::Show { id } => {
            call(target, Method::GET, &format!("/v1/payments/{id}"), None).await
        }
        PaymentsCommand::Refund {
            id,
            amount,
            reason,
            as_credit,
        } => {
            let mut body = json!({"as_credit": as_credit});
            if let Some(a) = amount {
                body["amount"] = json!(a);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            call(
                target,
                Method::POST,
                &format!("/v1/payments/{id}/refunds"),
                Some(body),
            )
            .await
        }
    }
}

pub async fn jobs(target: &Target, cmd: JobsCommand) -> anyhow::Result<Answer> {
    match cmd {
        JobsCommand::List { status } => {
            call(
                target,
                Method::GET,
                &format!("/v1/jobs{}", query(&[("status", &status)])),
                None,
            )
            .await
        }
        JobsCommand::Show { id } => {
            call(target, Method::GET, &format!("/v1/jobs/{id}"), None).await
        }
        JobsCommand::Retry { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                Some(json!({})),
            )
            .await
        }
    }
}

pub async fn emails(target: &Target, cmd: EmailsCommand) -> anyhow::Result<Answer> {
    match cmd {
        EmailsCommand::List {
            customer,
            invoice,
            status,
            template,
        } => {
            let q = query(&[
                ("customer_id", &customer),
                ("invoice_id", &invoice),
                ("status", &status),
                ("template", &template),
            ]);
            call(target, Method::GET, &format!("/v1/emails{q}"), None).await
        }
        EmailsCommand::Show { id } => {
            call(target, Method::GET, &format!("/v1/emails/{id}"), None).await
        }
        EmailsCommand::Retry { id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/emails/{id}/retry"),
                Some(json!({})),
            )
            .await
        }
    }
}

pub async fn clock(target: &Target, cmd: ClockCommand) -> anyhow::Result<Answer> {
    match cmd {
        ClockCommand::Show => call(target, Method::GET, "/v1/clock", None).await,
        ClockCommand::Advance { to, wait, timeout } => {
            // Counted before the advance: a running daemon may write invoices at once.
            let invoices_before = invoice_count(target).await;
            let answer = call(
                target,
                Method::POST,
                "/v1/clock/advance",
                Some(json!({"to": to})),
            )
            .await?;
            if !wait || answer.status != 202 {
                return Ok(answer);
            }
            wait_until_ready(target, invoices_before, Duration::from_secs(timeout)).await
        }
    }
}

/// Invoices in the database (0 over --url, where the count is not known).
async fn invoice_count(target: &Target) -> i64 {
    match target.local() {
        Some(state) => crate::store::invoices::count(&state.billing.db)
            .await
            .unwrap_or(0),
        None => 0,
    }
}

/// The exit status a wait that ran out of time answers with (mapped to exit code 75).
pub const TIMED_OUT: u16 = 504;

/// Waits until the clock says ready: every piece of work due by then done. Progress counts what
/// was done since the wait began (invoices written, and every other item of work that left the
/// pending count) against that plus what is still pending, so a catch-up of many periods shows a
/// bar that grows as generation makes charges and emails due.
async fn wait_until_ready(
    target: &Target,
    invoices_before: i64,
    within: Duration,
) -> anyhow::Result<Answer> {
    use settled_jobs::job::WorkKind;
    let deadline = Instant::now() + within;
    let mut progress = Progress::new("catching up", Some(0), Duration::from_secs(5));
    let mut other_done: u64 = 0;
    let mut last_other: Option<u64> = None;
    loop {
        let answer = call(target, Method::GET, "/v1/clock", None).await?;
        // Against a running daemon over --url only the clock's own answer is known.
        let pending = match target.local() {
            Some(state) => state.scheduler.pending().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let count = |periods: bool| -> u64 {
            pending
                .iter()
                .filter(|(k, _)| (*k == WorkKind::Periods) == periods)
                .map(|(_, n)| (*n).max(0) as u64)
                .sum()
        };
        let (periods, other) = (count(true), count(false));
        if let Some(before) = last_other
            && other < before
        {
            other_done += before - other;
        }
        last_other = Some(other);
        let invoices = (invoice_count(target).await - invoices_before).max(0) as u64;
        let done = invoices + other_done;
        let pending = periods + other;
        progress.set_total(done + pending);
        if answer.status == 200 && answer.body["status"] == "ready" {
            progress.set(done, "ready");
            progress.finish(&format!(
                "ready: {invoices} invoices written, {other_done} other items of work done"
            ));
            return Ok(answer);
        }
        if answer.status != 200 && answer.status != 503 {
            return Ok(answer);
        }
        progress.set(done, &format!("{pending} items of work pending"));
        if Instant::now() >= deadline {
            progress.finish("gave up waiting");
            return Ok(Answer {
                status: TIMED_OUT,
                body: json!({"error": {"code": "timeout", "message": format!(
                    "work due by the clock is not done after {} s ({pending} items pending); is a daemon with workers running on this database?",
                    within.as_secs()
                )}}),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn payment_methods(
    target: &Target,
    cmd: PaymentMethodsCommand,
) -> anyhow::Result<Answer> {
    match cmd {
        PaymentMethodsCommand::List { customer } => {
            call(
                target,
                Method::GET,
                &format!("/v1/customers/{customer}/payment_methods"),
                None,
            )
            .await
        }
        PaymentMethodsCommand::Add {
            customer,
            token,
            gateway,
            no_default,
        } => {
            call(
                target,
                Method::POST,
                &format!("/v1/customers/{customer}/payment_methods"),
                Some(json!({"gateway": gateway, "token": token, "default": !no_default})),
            )
            .await
        }
        PaymentMethodsCommand::Default { customer, id } => {
            call(
                target,
                Method::POST,
                &format!("/v1/customers/{customer}/payment_methods/{id}/default"),
                Some(json!({})),
            )
            .await
        }
        PaymentMethodsCommand::Remove { customer, id } => {
            call(
                target,
                Method::DELETE,
                &format!("/v1/customers/{customer}/payment_methods/{id}"),
                None,
            )
            .await
        }
    }
}
