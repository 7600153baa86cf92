//! The operator's commands (`settled customers|payment-methods|subscriptions|invoices|credit-notes|payments|jobs|emails|webhooks|clock ...`). They run
//! the admin API's own handlers in-process against the configured database, so the CLI and the
//! HTTP API validate, store and answer exactly alike, and no running daemon is needed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::http::{Method, Request, header};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::app::State;
use crate::progress::Progress;

#[derive(Subcommand, Debug)]
pub enum CustomersCommand {
    /// List customers (optionally those a billing contact receives bills for).
    #[command(
        after_help = "Examples:\n  settled customers list\n  settled customers list --billing-email ap@acme.example --json"
    )]
    List {
        #[arg(long)]
        billing_email: Option<String>,
    },
    /// Show one customer with its balances.
    #[command(after_help = "Example:\n  settled customers show cus_123")]
    Show { id: String },
    /// Create a customer.
    #[command(
        after_help = "Example:\n  settled customers create --email ap@acme.example --name Acme --currency USD --timezone America/New_York"
    )]
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        timezone: Option<String>,
        /// A billing contact; repeat for several.
        #[arg(long = "billing-email")]
        billing_emails: Vec<String>,
        /// Never charge this customer automatically.
        #[arg(long)]
        no_auto_charge: bool,
    },
    /// The statement of account: opening balance, every movement, running and closing balance.
    #[command(
        after_help = "Examples:\n  settled customers statement cus_123 --from 2027-01-01 --to 2027-02-01\n  settled customers statement cus_123 --csv > statement.csv"
    )]
    Statement {
        id: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Charge everything the customer owes in one payment with its default card.
    #[command(after_help = "Example:\n  settled customers charge-balance cus_123")]
    ChargeBalance { id: String },
}

#[derive(Args, Debug)]
pub struct SubscriptionAdd {
    #[arg(long)]
    customer: String,
    /// An item as "description|quantity|unit_amount[|tax_rate]"; repeat for several.
    #[arg(long = "item", required = true)]
    items: Vec<String>,
    /// day, week, month or year (or give --cron).
    #[arg(long, conflicts_with = "cron")]
    every: Option<String>,
    #[arg(long)]
    interval: Option<u32>,
    /// RFC 3339 anchor of the schedule (default: the start).
    #[arg(long)]
    anchor: Option<String>,
    /// A cron expression with seconds, e.g. "0 0 9 1 * *".
    #[arg(long)]
    cron: Option<String>,
    #[arg(long)]
    timezone: Option<String>,
    /// RFC 3339 start of the first period (default: now).
    #[arg(long)]
    start_at: Option<String>,
    /// all, latest or skip.
    #[arg(long)]
    catch_up: Option<String>,
    #[arg(long)]
    net_days: Option<u32>,
    #[arg(long)]
    no_auto_charge: bool,
}

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Create a subscription (a recurring invoice profile).
    #[command(
        after_help = "Example:\n  settled subscriptions add --customer cus_... --item 'Hosting|1|49.00|0.20' --every month --timezone Europe/Berlin"
    )]
    Add(SubscriptionAdd),
    /// List subscriptions (status: active, paused, canceled).
    #[command(
        after_help = "Examples:\n  settled subscriptions list --customer cus_123\n  settled subscriptions list --status paused --json"
    )]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one subscription with its next period start.
    #[command(after_help = "Example:\n  settled subscriptions show sub_123")]
    Show { id: String },
    /// No invoices for paused periods.
    #[command(after_help = "Example:\n  settled subscriptions pause sub_123")]
    Pause { id: String },
    /// The catch-up policy decides what the paused periods become.
    #[command(after_help = "Example:\n  settled subscriptions resume sub_123")]
    Resume { id: String },
    /// No further invoices; the current period's invoice stays.
    #[command(after_help = "Example:\n  settled subscriptions cancel sub_123")]
    Cancel { id: String },
    /// The next invoices exactly as they would be generated; nothing is stored.
    #[command(after_help = "Example:\n  settled subscriptions preview sub_123 --periods 12")]
    Preview {
        id: String,
        #[arg(long, default_value_t = 3)]
        periods: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum InvoicesCommand {
    /// List invoices, newest first (status: draft, open, partially_paid, paid, past_due, void,
    /// uncollectible).
    #[command(
        after_help = "Examples:\n  settled invoices list --customer cus_123\n  settled invoices list --status past_due --json"
    )]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one invoice with its lines, payments and charge attempts.
    #[command(after_help = "Example:\n  settled invoices show in_123 --json")]
    Show { id: String },
    /// Charge an invoice now with the customer's default card (or --payment-method).
    #[command(
        after_help = "Examples:\n  settled invoices charge in_123\n  settled invoices charge in_123 --amount 40.00"
    )]
    Charge {
        id: String,
        /// Part of the amount due (decimal string); default: all of it.
        #[arg(long)]
        amount: Option<String>,
        /// A saved method of the customer (spm_...).
        #[arg(long)]
        payment_method: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CreditNotesCommand {
    /// Issue a credit note: credit the customer holds, applied to its next invoices.
    #[command(
        after_help = "Example:\n  settled credit-notes create --customer cus_123 --amount 25.00 --currency USD --reason \"Service outage\""
    )]
    Create {
        #[arg(long)]
        customer: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: String,
    },
    /// A customer's credit notes with what remains of each.
    #[command(after_help = "Example:\n  settled credit-notes list --customer cus_123")]
    List {
        #[arg(long)]
        customer: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PaymentsCommand {
    /// Record an offline payment (wire, check, cash, other) for an invoice or, without --invoice,
    /// toward the customer's whole balance.
    #[command(
        after_help = "Examples:\n  settled payments record --invoice in_123 --amount 40.00 --method wire --reference TRX-1\n  settled payments record --customer cus_123 --amount 100.00 --method check"
    )]
    Record {
        #[arg(long, conflicts_with = "customer")]
        invoice: Option<String>,
        #[arg(long, required_unless_present = "invoice")]
        customer: Option<String>,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        method: String,
        #[arg(long)]
        reference: Option<String>,
    },
    /// List payments, oldest first.
    #[command(after_help = "Example:\n  settled payments list --customer cus_123")]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        invoice: Option<String>,
    },
    /// Show one payment with its refunds and allocations.
    #[command(after_help = "Example:\n  settled payments show pay_123")]
    Show { id: String },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List jobs, newest first (status: pending, queued, running, done, retrying, failed).
    #[command(
        after_help = "Examples:\n  settled jobs list --status failed\n  settled jobs list --status retrying --json"
    )]
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one job with its arguments and last error.
    #[command(after_help = "Example:\n  settled jobs show 01J9Z8Q4T1X3V5B7N9M2K4H6G8")]
    Show { id: String },
    /// Put a failed job back in the queue with fresh attempts.
    #[command(after_help = "Example:\n  settled jobs retry 01J9Z8Q4T1X3V5B7N9M2K4H6G8")]
    Retry { id: String },
}

#[derive(Subcommand, Debug)]
pub enum EmailsCommand {
    /// List emails, newest first (status: pending, sent, failed).
    #[command(after_help = "Example:\n  settled emails list --status failed")]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        invoice: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        template: Option<String>,
    },
    /// Show one email: recipients, subject, status, tries and the last error.
    #[command(after_help = "Example:\n  settled emails show em_123")]
    Show { id: String },
    /// Send a failed email again (a running daemon sends it at its next poll).
    #[command(after_help = "Example:\n  settled emails retry em_123")]
    Retry { id: String },
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// List stored events, newest first (status: received, processed, ignored, failed).
    #[command(
        after_help = "Examples:\n  settled webhooks list --status failed\n  settled webhooks list --source bank --json"
    )]
    List {
        #[arg(long)]
        status: Option<String>,
        /// Only this source (stripe, or a Standard Webhooks source name).
        #[arg(long)]
        source: Option<String>,
    },
    /// Show one stored event with its payload.
    #[command(after_help = "Example:\n  settled webhooks show whe_123 --json")]
    Show { id: String },
    /// Process stored events again: one by id, or every event with a status (and source). Their
    /// effects are idempotent; a running daemon processes them.
    #[command(
        after_help = "Examples:\n  settled webhooks replay whe_123\n  settled webhooks replay --status failed\n  settled webhooks replay --status failed --source stripe --wait"
    )]
    Replay {
        /// The event to replay.
        #[arg(required_unless_present = "status", conflicts_with = "status")]
        id: Option<String>,
        /// Replay every stored event with this status (received, processed, ignored, failed).
        #[arg(long)]
        status: Option<String>,
        /// With --status: only this source.
        #[arg(long, requires = "status")]
        source: Option<String>,
        /// With --status: wait until a running daemon has processed every replayed event.
        #[arg(long, requires = "status")]
        wait: bool,
        /// Give up waiting after this many seconds (exit 75).
        #[arg(long, default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClockCommand {
    /// Where the manual clock stands and whether all due work is done.
    #[command(after_help = "Example:\n  settled clock show")]
    Show,
    /// Move the manual clock forward (a running daemon picks it up on its next sweep). With
    /// --wait, wait until every piece of work due by then is done (all missed periods billed,
    /// charged and emailed), showing progress.
    #[command(
        after_help = "Examples:\n  settled clock advance 2027-02-01T00:00:00Z\n  settled clock advance 2028-01-01T00:00:00Z --wait --timeout 900"
    )]
    Advance {
        to: String,
        /// Wait until a running daemon has finished all work due by then.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 75).
        #[arg(long, default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PaymentMethodsCommand {
    /// A customer's saved payment methods (brand, last 4, expiry; the default first).
    #[command(after_help = "Example:\n  settled payment-methods list --customer cus_123")]
    List {
        #[arg(long)]
        customer: String,
    },
    /// Save a gateway payment method token (pm_...) for a customer; card details are read from
    /// the gateway. Card numbers are never accepted.
    #[command(
        after_help = "Examples:\n  settled payment-methods add --customer cus_123 --token pm_1Nx...\n  settled payment-methods add --customer cus_123 --token pm_1Nx... --no-default"
    )]
    Add {
        #[arg(long)]
        customer: String,
        /// The gateway's payment method token.
        #[arg(long)]
        token: String,
        /// Keep the current default (the first method saved is always the default).
        #[arg(long)]
        no_default: bool,
    },
    /// Make a saved method the customer's default (what automatic charges use).
    #[command(
        after_help = "Example:\n  settled payment-methods default --customer cus_123 spm_456"
    )]
    Default {
        #[arg(long)]
        customer: String,
        id: String,
    },
    /// Remove a saved method (detached at the gateway too).
    #[command(after_help = "Example:\n  settled payment-methods remove --customer cus_123 spm_456")]
    Remove {
        #[arg(long)]
        customer: String,
        id: String,
    },
}

/// What a command produced: an API answer to print.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Runs one admin API request in-process.
pub async fn call(
    state: &Arc<State>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let (status, bytes) = send(state, method, path, body, "application/json").await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

/// A CSV answer, printed as is.
async fn call_csv(state: &Arc<State>, path: &str) -> anyhow::Result<Answer> {
    let (status, bytes) = send(state, Method::GET, path, None, "text/csv").await?;
    let body = if status == 200 {
        json!({"csv": String::from_utf8_lossy(&bytes)})
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer { status, body })
}

/// One request through the admin router with the configured token; the status and raw body.
async fn send(
    state: &Arc<State>,
    method: Method,
    path: &str,
    body: Option<Value>,
    accept: &str,
) -> anyhow::Result<(u16, axum::body::Bytes)> {
    let token = state
        .tokens
        .first()
        .context("no admin token is configured")?
        .expose()
        .to_string();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept)
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })?;
    let response = crate::http::router(state.clone())
        .oneshot(request)
        .await
        .context("the request failed")?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await?;
    Ok((status, bytes))
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                format!(
                    "{k}={}",
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub async fn customers(state: &Arc<State>, cmd: CustomersCommand) -> anyhow::Result<Answer> {
    match cmd {
        CustomersCommand::List { billing_email } => {
            call(
                state,
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
            call(state, Method::GET, &format!("/v1/customers/{id}"), None).await
        }
        CustomersCommand::Statement { id, from, to, csv } => {
            let q = query(&[("from", &from), ("to", &to)]);
            let path = format!("/v1/customers/{id}/statement{q}");
            if csv {
                return call_csv(state, &path).await;
            }
            let mut answer = call(state, Method::GET, &path, None).await?;
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
                state,
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
            call(state, Method::POST, "/v1/customers", Some(body)).await
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

pub async fn subscriptions(
    state: &Arc<State>,
    cmd: SubscriptionsCommand,
) -> anyhow::Result<Answer> {
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
            call(state, Method::POST, "/v1/subscriptions", Some(body)).await
        }
        SubscriptionsCommand::List { customer, status } => {
            call(
                state,
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
            call(state, Method::GET, &format!("/v1/subscriptions/{id}"), None).await
        }
        SubscriptionsCommand::Pause { id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/subscriptions/{id}/pause"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Resume { id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/subscriptions/{id}/resume"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Cancel { id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/subscriptions/{id}/cancel"),
                Some(json!({})),
            )
            .await
        }
        SubscriptionsCommand::Preview { id, periods } => {
            call(
                state,
                Method::GET,
                &format!("/v1/subscriptions/{id}/preview?periods={periods}"),
                None,
            )
            .await
        }
    }
}

pub async fn invoices(state: &Arc<State>, cmd: InvoicesCommand) -> anyhow::Result<Answer> {
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
            call(state, Method::GET, &format!("/v1/invoices{q}"), None).await
        }
        InvoicesCommand::Show { id } => {
            call(state, Method::GET, &format!("/v1/invoices/{id}"), None).await
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
                state,
                Method::POST,
                &format!("/v1/invoices/{id}/charge"),
                Some(body),
            )
            .await
        }
    }
}

pub async fn credit_notes(state: &Arc<State>, cmd: CreditNotesCommand) -> anyhow::Result<Answer> {
    match cmd {
        CreditNotesCommand::Create {
            customer,
            amount,
            currency,
            reason,
        } => {
            call(
                state,
                Method::POST,
                "/v1/credit_notes",
                Some(json!({"customer_id": customer, "amount": amount, "currency": currency, "reason": reason})),
            )
            .await
        }
        CreditNotesCommand::List { customer } => {
            call(
                state,
                Method::GET,
                &format!("/v1/customers/{customer}/credit_notes"),
                None,
            )
            .await
        }
    }
}

pub async fn payments(state: &Arc<State>, cmd: PaymentsCommand) -> anyhow::Result<Answer> {
    match cmd {
        PaymentsCommand::List { customer, invoice } => {
            let q = query(&[("customer_id", &customer), ("invoice_id", &invoice)]);
            call(state, Method::GET, &format!("/v1/payments{q}"), None).await
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
            call(state, Method::POST, &path, Some(body)).await
        }
        PaymentsCommand::Show { id } => {
            call(state, Method::GET, &format!("/v1/payments/{id}"), None).await
        }
    }
}

pub async fn jobs(state: &Arc<State>, cmd: JobsCommand) -> anyhow::Result<Answer> {
    match cmd {
        JobsCommand::List { status } => {
            call(
                state,
                Method::GET,
                &format!("/v1/jobs{}", query(&[("status", &status)])),
                None,
            )
            .await
        }
        JobsCommand::Show { id } => call(state, Method::GET, &format!("/v1/jobs/{id}"), None).await,
        JobsCommand::Retry { id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                Some(json!({})),
            )
            .await
        }
    }
}

pub async fn emails(state: &Arc<State>, cmd: EmailsCommand) -> anyhow::Result<Answer> {
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
            call(state, Method::GET, &format!("/v1/emails{q}"), None).await
        }
        EmailsCommand::Show { id } => {
            call(state, Method::GET, &format!("/v1/emails/{id}"), None).await
        }
        EmailsCommand::Retry { id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/emails/{id}/retry"),
                Some(json!({})),
            )
            .await
        }
    }
}

pub async fn webhooks(state: &Arc<State>, cmd: WebhooksCommand) -> anyhow::Result<Answer> {
    match cmd {
        WebhooksCommand::List { status, source } => {
            let q = query(&[("status", &status), ("source", &source)]);
            call(state, Method::GET, &format!("/v1/webhook_events{q}"), None).await
        }
        WebhooksCommand::Show { id } => {
            call(
                state,
                Method::GET,
                &format!("/v1/webhook_events/{id}"),
                None,
            )
            .await
        }
        WebhooksCommand::Replay {
            id,
            status,
            source,
            wait,
            timeout,
        } => match (id, status) {
            (Some(id), _) => {
                call(
                    state,
                    Method::POST,
                    &format!("/v1/webhook_events/{id}/replay"),
                    Some(json!({})),
                )
                .await
            }
            (None, Some(status)) => {
                replay_all(state, status, source, wait, Duration::from_secs(timeout)).await
            }
            (None, None) => anyhow::bail!("give an event id or --status"),
        },
    }
}

pub async fn clock(state: &Arc<State>, cmd: ClockCommand) -> anyhow::Result<Answer> {
    match cmd {
        ClockCommand::Show => call(state, Method::GET, "/v1/clock", None).await,
        ClockCommand::Advance { to, wait, timeout } => {
            let answer = call(
                state,
                Method::POST,
                "/v1/clock/advance",
                Some(json!({"to": to})),
            )
            .await?;
            if !wait || answer.status != 202 {
                return Ok(answer);
            }
            wait_until_ready(state, Duration::from_secs(timeout)).await
        }
    }
}

/// The exit status a wait that ran out of time answers with (mapped to exit code 75).
pub const TIMED_OUT: u16 = 504;

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Waits until the clock says ready: every job finished and nothing more due. Progress counts
/// jobs finished since the wait began against those plus the ones still waiting, so a catch-up
/// of many periods shows a bar that grows as generation makes charges and emails due.
async fn wait_until_ready(state: &Arc<State>, within: Duration) -> anyhow::Result<Answer> {
    use crate::store::queue;
    let began = unix_secs() - 1;
    let deadline = Instant::now() + within;
    let mut progress = Progress::new("catching up", Some(0), Duration::from_secs(5));
    loop {
        let answer = call(state, Method::GET, "/v1/clock", None).await?;
        let finished = queue::finished_since(&state.db, began).await.unwrap_or(0) as u64;
        let waiting = queue::unfinished(&state.db).await.unwrap_or(0) as u64;
        progress.set_total(finished + waiting);
        if answer.status == 200 && answer.body["status"] == "ready" {
            progress.set(finished, "ready");
            progress.finish(&format!("ready: {finished} jobs finished"));
            return Ok(answer);
        }
        if answer.status != 200 && answer.status != 503 {
            return Ok(answer);
        }
        progress.set(finished, &format!("{waiting} jobs waiting or running"));
        if Instant::now() >= deadline {
            progress.finish("gave up waiting");
            return Ok(Answer {
                status: TIMED_OUT,
                body: json!({"error": {"code": "timeout", "message": format!(
                    "work due by the clock is not done after {} s ({waiting} jobs waiting); is a daemon with workers running on this database?",
                    within.as_secs()
                )}}),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn payment_methods(
    state: &Arc<State>,
    cmd: PaymentMethodsCommand,
) -> anyhow::Result<Answer> {
    match cmd {
        PaymentMethodsCommand::List { customer } => {
            call(
                state,
                Method::GET,
                &format!("/v1/customers/{customer}/payment_methods"),
                None,
            )
            .await
        }
        PaymentMethodsCommand::Add {
            customer,
            token,
            no_default,
        } => {
            call(
                state,
                Method::POST,
                &format!("/v1/customers/{customer}/payment_methods"),
                Some(json!({"gateway": "stripe", "token": token, "default": !no_default})),
            )
            .await
        }
        PaymentMethodsCommand::Default { customer, id } => {
            call(
                state,
                Method::POST,
                &format!("/v1/customers/{customer}/payment_methods/{id}/default"),
                Some(json!({})),
            )
            .await
        }
        PaymentMethodsCommand::Remove { customer, id } => {
            call(
                state,
                Method::DELETE,
                &format!("/v1/customers/{customer}/payment_methods/{id}"),
                None,
            )
            .await
        }
    }
}

/// Every stored event with `status` (and `source`), following pages.
async fn event_ids(
    state: &Arc<State>,
    status: &str,
    source: &Option<String>,
) -> anyhow::Result<Result<Vec<String>, Answer>> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = query(&[
            ("status", &Some(status.to_string())),
            ("source", source),
            ("starting_after", &after),
        ]);
        let sep = if q.is_empty() { "?" } else { "&" };
        let answer = call(
            state,
            Method::GET,
            &format!("/v1/webhook_events{q}{sep}limit=1000"),
            None,
        )
        .await?;
        if answer.status != 200 {
            return Ok(Err(answer));
        }
        let page = answer.body["data"].as_array().cloned().unwrap_or_default();
        ids.extend(
            page.iter()
                .filter_map(|e| e["id"].as_str().map(String::from)),
        );
        after = ids.last().cloned();
        if answer.body["has_more"] != true || page.is_empty() {
            return Ok(Ok(ids));
        }
    }
}

/// Replays every event with `status`, oldest first, with progress; with `wait`, then waits
/// until none of them is still waiting to be processed.
async fn replay_all(
    state: &Arc<State>,
    status: String,
    source: Option<String>,
    wait: bool,
    within: Duration,
) -> anyhow::Result<Answer> {
    let mut ids = match event_ids(state, &status, &source).await? {
        Ok(ids) => ids,
        Err(refused) => return Ok(refused),
    };
    ids.reverse();
    let total = ids.len();
    let mut progress = Progress::new("replaying", Some(total as u64), Duration::from_secs(2));
    let mut refused = Vec::new();
    for id in &ids {
        let answer = call(
            state,
            Method::POST,
            &format!("/v1/webhook_events/{id}/replay"),
            Some(json!({})),
        )
        .await?;
        if answer.status != 200 {
            refused.push(json!({"id": id, "status": answer.status, "error": answer.body["error"]}));
        }
        progress.inc(id);
    }
    progress.finish(&format!(
        "{} of {total} events replayed",
        total - refused.len()
    ));
    let mut summary = json!({
        "object": "replay_summary",
        "status": status,
        "selected": total,
        "replayed": total - refused.len(),
        "refused": refused,
    });
    if wait && total > 0 {
        let deadline = Instant::now() + within;
        let mut progress = Progress::new("processing", Some(total as u64), Duration::from_secs(5));
        loop {
            let mut pending = 0u64;
            let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
            for id in &ids {
                let event = crate::events::store::get(&state.db, id).await?;
                let s = event.map(|e| e.status).unwrap_or_else(|| "gone".into());
                if s == "received" {
                    pending += 1;
                } else {
                    *outcomes.entry(s).or_default() += 1;
                }
            }
            progress.set(total as u64 - pending, &format!("{pending} waiting"));
            if pending == 0 {
                progress.finish("every replayed event was processed");
                summary["outcomes"] = json!(outcomes);
                break;
            }
            if Instant::now() >= deadline {
                progress.finish("gave up waiting");
                return Ok(Answer {
                    status: TIMED_OUT,
                    body: json!({"error": {"code": "timeout", "message": format!(
                        "{pending} replayed events are still waiting after {} s; is a daemon with workers running on this database?",
                        within.as_secs()
                    )}}),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(Answer {
        status: 200,
        body: summary,
    })
}

/// Columns shown for each kind of object in table output.
fn columns(object: &str) -> &'static [&'static str] {
    match object {
        "customer" => &[
            "id",
            "name",
            "email",
            "currency",
            "outstanding",
            "credit_balance",
        ],
        "subscription" => &[
            "id",
            "customer_id",
            "status",
            "currency",
            "next_period_start",
            "catch_up",
        ],
        "invoice" => &[
            "id",
            "number",
            "status",
            "period_start",
            "total",
            "amount_due",
            "due_at",
        ],
        "invoice_preview" => &[
            "period_start",
            "period_end",
            "due_at",
            "subtotal",
            "tax",
            "total",
        ],
        "test_clock" => &["now", "status"],
        "payment_method" => &[
            "id",
            "brand",
            "last4",
            "exp_month",
            "exp_year",
            "default",
            "token",
            "deleted",
        ],
        "replay_summary" => &["status", "selected", "replayed", "refused", "outcomes"],
        "statement_entry" => &["at", "kind", "reference", "amount", "balance"],
        "credit_note" => &[
            "id",
            "amount",
            "remaining",
            "currency",
            "source",
            "reason",
            "created_at",
        ],
        "payment" => &[
            "id",
            "invoice_id",
            "amount",
            "currency",
            "method",
            "status",
            "at",
        ],
        "email" => &[
            "id",
            "template",
            "status",
            "attempts",
            "to",
            "subject",
            "sent_at",
            "last_error",
        ],
        "webhook_event" => &[
            "id",
            "source",
            "event_id",
            "type",
            "status",
            "received_at",
            "replays",
            "error",
        ],
        _ => &["id", "kind", "status", "attempts", "run_at", "last_error"],
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Renders an answer as a table (lists and single objects) for people.
pub fn render_table(body: &Value) -> String {
    let rows: Vec<&Value> = match body.get("data").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![body],
    };
    let object = rows
        .first()
        .and_then(|r| r.get("object"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let cols = columns(object);
    let mut table: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_uppercase()).collect()];
    for r in &rows {
        table.push(cols.iter().map(|c| cell(&r[*c])).collect());
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}
