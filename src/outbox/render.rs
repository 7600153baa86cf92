//! Rendering an outbox row: the snapshot becomes a view (amounts formatted for their currency,
//! dates in the customer's time zone, cards as brand and last 4), and the view goes through the
//! kind's templates: `NAME.subject.txt`, `NAME.txt` and `NAME.html`. The embedded templates can
//! be replaced file by file from `email.templates_dir`.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};
use settled_jobs::mailer::Attachment;
use settled_jobs::money::{Currency, Money};
use settled_jobs::template::Template;

use super::snapshot::{Snapshot, StatementSnap};
use super::view::{money_for_people, view};
use crate::config::Config;

/// The embedded files of one kind of message: its subject, text and HTML templates.
macro_rules! kind_files {
    ($name:literal) => {
        [
            include_str!(concat!("../templates/", $name, ".subject.txt")),
            include_str!(concat!("../templates/", $name, ".txt")),
            include_str!(concat!("../templates/", $name, ".html")),
        ]
    };
}

/// Every kind's embedded templates. A match, so a new kind of message does not build until its
/// files are here.
fn kind_files(kind: Template) -> [&'static str; 3] {
    match kind {
        Template::Invoice => kind_files!("invoice"),
        Template::Receipt => kind_files!("receipt"),
        Template::PaymentFailed => kind_files!("payment_failed"),
        Template::FinalNotice => kind_files!("final_notice"),
        Template::Refund => kind_files!("refund"),
        Template::CreditNote => kind_files!("credit_note"),
        Template::UpcomingCharge => kind_files!("upcoming_charge"),
        Template::Statement => kind_files!("statement"),
        Template::SignIn => kind_files!("sign_in"),
    }
}

/// An embedded template by file name: `layout.html`, `footer.txt`, or `NAME.subject.txt`,
/// `NAME.txt`, `NAME.html` of a kind of message.
pub fn embedded(name: &str) -> Option<&'static str> {
    match name {
        "layout.html" => return Some(include_str!("../templates/layout.html")),
        "footer.txt" => return Some(include_str!("../templates/footer.txt")),
        _ => {}
    }
    let (stem, part) = if let Some(stem) = name.strip_suffix(".subject.txt") {
        (stem, 0)
    } else if let Some(stem) = name.strip_suffix(".txt") {
        (stem, 1)
    } else if let Some(stem) = name.strip_suffix(".html") {
        (stem, 2)
    } else {
        return None;
    };
    Template::parse(stem).map(|kind| kind_files(kind)[part])
}

/// A template's source: the operator's file when `dir` has one by that name, else the embedded
/// default. Names are plain file names; anything else is not found.
fn load(dir: Option<&Path>, name: &str) -> Result<Option<String>, minijinja::Error> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !plain {
        return Ok(None);
    }
    if let Some(dir) = dir {
        let path = dir.join(name);
        if path.is_file() {
            return std::fs::read_to_string(&path).map(Some).map_err(|e| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("cannot read {}: {e}", path.display()),
                )
            });
        }
    }
    Ok(embedded(name).map(str::to_string))
}

/// The template environment. With only the embedded templates it is built once and shared (each
/// template is parsed once per process, not once per message); with `email.templates_dir` set,
/// a fresh one per message, so an edited file applies to the very next send.
fn environment(templates_dir: &str) -> Result<std::sync::Arc<Environment<'static>>, String> {
    static EMBEDDED: std::sync::OnceLock<std::sync::Arc<Environment<'static>>> =
        std::sync::OnceLock::new();
    if templates_dir.is_empty() {
        if let Some(env) = EMBEDDED.get() {
            return Ok(env.clone());
        }
        let env = std::sync::Arc::new(build_environment("")?);
        return Ok(EMBEDDED.get_or_init(|| env).clone());
    }
    build_environment(templates_dir).map(std::sync::Arc::new)
}

fn build_environment(templates_dir: &str) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| e.to_string())?;
    env.set_syntax(syntax);
    let dir: Option<PathBuf> = (!templates_dir.is_empty()).then(|| PathBuf::from(templates_dir));
    env.set_loader(move |name| load(dir.as_deref(), name));
    Ok(env)
}

pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attachments: Vec<Attachment>,
}

/// Renders one kind of message from its snapshot: subject, text and HTML, and the PDF the kind
/// carries (the invoice, or the receipt).
pub fn render(config: &Config, template: &str, snap: &Snapshot) -> Result<Rendered, String> {
    let Some(kind) = Template::parse(template) else {
        return Err(format!("unknown template {template:?}"));
    };
    let env = environment(&config.email.templates_dir)?;
    let people = view(config, snap, money_for_people);
    let ctx = minijinja::Value::from(minijinja::value::Serde(&people));
    let run = |name: String| -> Result<String, String> {
        env.get_template(&name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| describe(&name, &e))
    };
    let subject = run(format!("{template}.subject.txt"))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if subject.is_empty() {
        return Err(format!("{template}.subject.txt rendered an empty subject"));
    }
    let text = run(format!("{template}.txt"))?;
    let html = run(format!("{template}.html"))?;
    let mut attachments = Vec::new();
    let pdf_view = view(config, snap, super::pdf::money_for_pdf);
    match kind {
        Template::Invoice => {
            if let Some(invoice) = &pdf_view.invoice {
                attachments.push(Attachment {
                    filename: format!("{}.pdf", file_stem("invoice", &invoice.number)),
                    content_type: "application/pdf".into(),
                    bytes: super::pdf::invoice(&pdf_view),
                });
            }
        }
        Template::Receipt => {
            if let Some(payment) = &pdf_view.payment {
                let name = snap
                    .invoice
                    .as_ref()
                    .and_then(|i| i.number.clone())
                    .unwrap_or_else(|| payment.id.clone());
                attachments.push(Attachment {
                    filename: format!("{}.pdf", file_stem("receipt", &name)),
                    content_type: "application/pdf".into(),
                    bytes: super::pdf::receipt(&pdf_view),
                });
            }
        }
        Template::Statement => {
            if let Some(statement) = &snap.statement {
                attachments.push(Attachment {
                    filename: format!("statement-{}.csv", month_label(statement.month)),
                    content_type: "text/csv; charset=utf-8".into(),
                    bytes: statement_csv(statement).into_bytes(),
                });
            }
        }
        Template::PaymentFailed
        | Template::FinalNotice
        | Template::Refund
        | Template::CreditNote
        | Template::UpcomingCharge
        | Template::SignIn => {}
    }
    Ok(Rendered {
        subject,
        text,
        html,
        attachments,
    })
}

/// "2027-01" for 202701.
fn month_label(month: i64) -> String {
    format!("{:04}-{:02}", month / 100, month % 100)
}

/// The statement as CSV, in the columns of `GET /v1/customers/{id}/statement` with
/// `Accept: text/csv`: instants in UTC, amounts as plain decimals in the currency's major unit.
pub fn statement_csv(s: &StatementSnap) -> String {
    let amount = |minor: i64| match Currency::parse(&s.currency) {
        Ok(c) => Money::new(minor, c).to_decimal_string(),
        Err(_) => minor.to_string(),
    };
    // Text that a spreadsheet would take for a formula is kept as text.
    let field = |v: &str| {
        let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{v}")
        } else {
            v.to_string()
        };
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v
        }
    };
    let mut out = String::from("date,kind,reference,amount,balance\n");
    out.push_str(&format!(",opening,,,{}\n", amount(s.opening)));
    for l in &s.lines {
        let at = chrono::DateTime::from_timestamp_millis(l.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.push_str(&format!(
            "{at},{},{},{},{}\n",
            field(&l.kind),
            field(&l.reference),
            amount(l.amount),
            amount(l.balance)
        ));
    }
    out.push_str(&format!(",closing,,,{}\n", amount(s.closing)));
    out
}

fn file_stem(kind: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{kind}-{safe}")
}

fn describe(name: &str, e: &minijinja::Error) -> String {
    let mut text = format!("{name}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
