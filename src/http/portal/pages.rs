//! Rendering: the portal's minijinja templates (embedded, HTML auto-escaped), the parts every page
//! shares (the business, who is looking, the account switch, the CSRF token), and amounts and
//! dates formatted for people.

use std::sync::OnceLock;

use axum::response::Html;
use chrono::TimeZone;
use minijinja::Environment;
use serde_json::{Value, json};
use settled_jobs::money::{Currency, Money};

use super::{PageError, Viewer};
use crate::config::Config;

/// The embedded templates, by name.
fn source(name: &str) -> Option<&'static str> {
    Some(match name {
        "layout.html" => include_str!("templates/layout.html"),
        "message.html" => include_str!("templates/message.html"),
        "sign_in.html" => include_str!("templates/sign_in.html"),
        "confirm.html" => include_str!("templates/confirm.html"),
        "dashboard.html" => include_str!("templates/dashboard.html"),
        "invoices.html" => include_str!("templates/invoices.html"),
        "invoice.html" => include_str!("templates/invoice.html"),
        "payments.html" => include_str!("templates/payments.html"),
        "statement.html" => include_str!("templates/statement.html"),
        "payment_methods.html" => include_str!("templates/payment_methods.html"),
        "new_card.html" => include_str!("templates/new_card.html"),
        "subscriptions.html" => include_str!("templates/subscriptions.html"),
        _ => return None,
    })
}

/// Built once per process: the templates are the same for every daemon.
fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.set_loader(|name| Ok(source(name).map(str::to_string)));
        env
    })
}

/// Renders one page.
pub fn render(name: &str, ctx: &Value) -> Result<Html<String>, PageError> {
    environment()
        .get_template(name)
        .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(ctx))))
        .map(Html)
        .map_err(|e| PageError::Unexpected(anyhow::anyhow!("rendering {name}: {e:#}")))
}

/// A page that says one thing (errors, "check your email").
pub fn message_page(title: &str, message: &str) -> Html<String> {
    render(
        "message.html",
        &json!({"title": title, "message": message, "business": Value::Null}),
    )
    .unwrap_or_else(|_| {
        Html(format!(
            "<!doctype html><title>{title}</title><p>{title}</p>"
        ))
    })
}

/// What every page shows: the business, and for a visitor their accounts and form token.
pub fn chrome(config: &Config, viewer: Option<&Viewer>, nav: &str) -> Value {
    let business = &config.business;
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut ctx = json!({
        "business": {
            "name": business.name,
            "address_lines": lines(&business.address),
            "support_email": business.support_email,
            "payment_instructions": lines(&business.payment_instructions),
        },
        "nav": nav,
    });
    if let Some(v) = viewer {
        let current = v.account();
        ctx["viewer"] = json!({
            "full": v.full(),
            "email": v.session.email,
            "csrf": v.session.csrf,
            "accounts": v.accounts.iter().map(|c| json!({
                "id": c.row.id, "name": c.row.name, "current": c.row.id == current.row.id,
            })).collect::<Vec<_>>(),
            "account": {
                "id": current.row.id,
                "name": current.row.name,
                "email": current.row.email,
                "currency": current.row.currency,
                "billing_emails": current.billing_emails,
            },
        });
    }
    ctx
}

/// Adds `more`'s fields to `ctx`.
pub fn with(mut ctx: Value, more: Value) -> Value {
    if let (Some(c), Value::Object(m)) = (ctx.as_object_mut(), more) {
        c.extend(m);
    }
    ctx
}

/// "$19.99", "¥1,000", "KWD 1.500".
pub fn money(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => Money::new(minor, c).display(),
        Err(_) => format!("{minor} {currency}"),
    }
}

/// "19.99": what an amount field holds.
pub fn decimal(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => Money::new(minor, c).to_decimal_string(),
        Err(_) => minor.to_string(),
    }
}

/// "31 January 2027" in the customer's time zone.
pub fn day(at_ms: i64, timezone: &str) -> String {
    let tz: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::UTC);
    tz.timestamp_millis_opt(at_ms)
        .single()
        .map(|t| t.format("%-d %B %Y").to_string())
        .unwrap_or_default()
}

/// "2027-01-31" in the customer's time zone (date fields).
pub fn iso_day(at_ms: i64, timezone: &str) -> String {
    let tz: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::UTC);
    tz.timestamp_millis_opt(at_ms)
        .single()
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// An invoice status for people.
pub fn status_label(status: &str) -> &'static str {
    match status {
        "open" => "Open",
        "partially_paid" => "Partially paid",
        "paid" => "Paid",
        "past_due" => "Past due",
        "void" => "Void",
        "uncollectible" => "Uncollectible",
        "draft" => "Draft",
        _ => "Unknown",
    }
}
