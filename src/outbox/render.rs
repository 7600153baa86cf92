//! Rendering an outbox row: the snapshot becomes a view (amounts formatted for their currency,
//! dates in the customer's time zone, cards as brand and last 4), and the view goes through the
//! kind's templates: `NAME.subject.txt`, `NAME.txt` and `NAME.html`. The embedded templates can
//! be replaced file by file from `email.templates_dir`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::TimeZone;
use chrono_tz::Tz;
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};
use rust_decimal::Decimal;
use serde::Serialize;
use settled_jobs::mailer::Attachment;
use settled_jobs::money::{Currency, Money};

use super::snapshot::{CardSnap, LineSnap, Snapshot, StatementSnap};
use crate::config::Config;

/// The embedded templates, by file name.
static EMBEDDED: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    ("footer.txt", include_str!("../templates/footer.txt")),
    (
        "invoice.subject.txt",
        include_str!("../templates/invoice.subject.txt"),
    ),
    ("invoice.txt", include_str!("../templates/invoice.txt")),
    ("invoice.html", include_str!("../templates/invoice.html")),
    (
        "receipt.subject.txt",
        include_str!("../templates/receipt.subject.txt"),
    ),
    ("receipt.txt", include_str!("../templates/receipt.txt")),
    ("receipt.html", include_str!("../templates/receipt.html")),
    (
        "payment_failed.subject.txt",
        include_str!("../templates/payment_failed.subject.txt"),
    ),
    (
        "payment_failed.txt",
        include_str!("../templates/payment_failed.txt"),
    ),
    (
        "payment_failed.html",
        include_str!("../templates/payment_failed.html"),
    ),
    (
        "final_notice.subject.txt",
        include_str!("../templates/final_notice.subject.txt"),
    ),
    (
        "final_notice.txt",
        include_str!("../templates/final_notice.txt"),
    ),
    (
        "final_notice.html",
        include_str!("../templates/final_notice.html"),
    ),
    (
        "refund.subject.txt",
        include_str!("../templates/refund.subject.txt"),
    ),
    ("refund.txt", include_str!("../templates/refund.txt")),
    ("refund.html", include_str!("../templates/refund.html")),
    (
        "credit_note.subject.txt",
        include_str!("../templates/credit_note.subject.txt"),
    ),
    (
        "credit_note.txt",
        include_str!("../templates/credit_note.txt"),
    ),
    (
        "credit_note.html",
        include_str!("../templates/credit_note.html"),
    ),
    (
        "upcoming_charge.subject.txt",
        include_str!("../templates/upcoming_charge.subject.txt"),
    ),
    (
        "upcoming_charge.txt",
        include_str!("../templates/upcoming_charge.txt"),
    ),
    (
        "upcoming_charge.html",
        include_str!("../templates/upcoming_charge.html"),
    ),
    (
        "statement.subject.txt",
        include_str!("../templates/statement.subject.txt"),
    ),
    ("statement.txt", include_str!("../templates/statement.txt")),
    (
        "statement.html",
        include_str!("../templates/statement.html"),
    ),
];

pub fn embedded(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
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

fn environment(templates_dir: &str) -> Result<Environment<'static>, String> {
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

/// What the templates see. Every amount is already formatted for its currency.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub business: BusinessView,
    pub customer: CustomerView,
    pub invoice: Option<InvoiceView>,
    pub payment: Option<PaymentView>,
    pub allocations: Vec<AllocationView>,
    /// After a payment: what is left to pay on its invoice (or invoices).
    pub remaining: Option<String>,
    pub settled: bool,
    pub refund: Option<RefundView>,
    pub credit_note: Option<CreditNoteView>,
    pub charge: Option<ChargeView>,
    pub statement: Option<StatementView>,
    pub attempt: Option<i64>,
    pub next_attempt_date: Option<String>,
    pub decline: Option<String>,
    pub card: Option<String>,
    pub outstanding: String,
    pub has_outstanding: bool,
    pub credit_balance: String,
    pub has_credit: bool,
    /// The date of the event, in the customer's time zone.
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusinessView {
    pub name: String,
    pub address: String,
    pub address_lines: Vec<String>,
    pub support_email: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub name: String,
    pub email: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineView {
    pub description: String,
    pub quantity: String,
    pub unit_amount: String,
    pub amount: String,
    pub tax_rate: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvoiceView {
    pub id: String,
    pub number: String,
    pub kind: String,
    pub currency: String,
    pub issue_date: String,
    pub due_date: Option<String>,
    pub period: Option<String>,
    pub lines: Vec<LineView>,
    pub subtotal: String,
    pub tax: String,
    pub has_tax: bool,
    pub total: String,
    pub credits_applied: Option<String>,
    pub retainer_applied: Option<String>,
    pub amount_paid: Option<String>,
    pub amount_due: String,
    pub paid: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentView {
    pub id: String,
    pub amount: String,
    pub method: String,
    pub date: String,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocationView {
    pub number: String,
    pub amount: String,
    pub remaining: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefundView {
    pub id: String,
    pub amount: String,
    pub date: String,
    pub reason: Option<String>,
    pub to_credit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreditNoteView {
    pub id: String,
    pub amount: String,
    pub remaining: String,
    pub reason: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeView {
    pub amount: String,
    pub date: String,
    pub period: Option<String>,
    pub lines: Vec<LineView>,
    pub subtotal: String,
    pub tax: String,
    pub has_tax: bool,
    pub card: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementLineView {
    pub date: String,
    pub kind: String,
    pub reference: String,
    pub amount: String,
    pub balance: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementView {
    /// "January 2027"
    pub month: String,
    /// The month's first and last day.
    pub period: String,
    pub first_day: String,
    pub last_day: String,
    pub currency: String,
    pub opening: String,
    pub closing: String,
    pub lines: Vec<StatementLineView>,
    /// The closing balance read for people: owed, held as credit, or nothing either way.
    pub owes: bool,
    pub in_credit: bool,
    /// The credit held at the end of the month (the closing balance without its minus sign).
    pub credit: String,
}

/// Formats an amount for people; the PDF passes a variant that its fonts can show.
pub type MoneyFormat = fn(Money) -> String;

pub fn money_for_people(m: Money) -> String {
    m.display()
}

fn fmt_money(minor: i64, currency: &str, format: MoneyFormat) -> String {
    match Currency::parse(currency) {
        Ok(c) => format(Money::new(minor, c)),
        Err(_) => format!("{minor} {currency}"),
    }
}

/// "Visa ending in 4242"; nothing but the brand and the last 4 digits.
pub fn card_label(card: &CardSnap) -> String {
    let brand = match card.brand.to_ascii_lowercase().as_str() {
        "visa" => "Visa".to_string(),
        "mastercard" => "Mastercard".to_string(),
        "amex" | "american_express" => "American Express".to_string(),
        "discover" => "Discover".to_string(),
        "diners" => "Diners Club".to_string(),
        "jcb" => "JCB".to_string(),
        "unionpay" => "UnionPay".to_string(),
        "" | "unknown" => "Card".to_string(),
        other => {
            let mut c = other.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => "Card".to_string(),
            }
        }
    };
    format!("{brand} ending in {}", card.last4)
}

fn method_label(method: &str, card: Option<&CardSnap>) -> String {
    if let Some(card) = card {
        return card_label(card);
    }
    match method {
        "card" => "Card".into(),
        "wire" => "Bank transfer".into(),
        "check" => "Check".into(),
        "cash" => "Cash".into(),
        "other" | "" => "Other".into(),
        other => other.replace('_', " "),
    }
}

fn tax_rate_label(rate: &str) -> String {
    match Decimal::from_str(rate) {
        Ok(r) => format!("{}%", (r * Decimal::ONE_HUNDRED).normalize()),
        Err(_) => rate.to_string(),
    }
}

struct Dates {
    tz: Tz,
}

impl Dates {
    fn new(name: &str) -> Dates {
        Dates {
            tz: name.parse().unwrap_or(chrono_tz::UTC),
        }
    }

    /// "1 February 2027"
    fn day(&self, ms: i64) -> String {
        self.tz
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.format("%-d %B %Y").to_string())
            .unwrap_or_default()
    }

    /// "1 February 2027, 10:00 CET"
    fn moment(&self, ms: i64) -> String {
        self.tz
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.format("%-d %B %Y, %H:%M %Z").to_string())
            .unwrap_or_default()
    }

    /// "January 2027"
    fn month(&self, ms: i64) -> String {
        self.tz
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.format("%B %Y").to_string())
            .unwrap_or_default()
    }

    /// A period [start, end) shown by its first and last day.
    fn period(&self, start: i64, end: Option<i64>) -> String {
        match end {
            Some(end) if end > start => {
                format!("{} – {}", self.day(start), self.day(end - 1))
            }
            _ => format!("from {}", self.day(start)),
        }
    }
}

fn kind_label(kind: &str) -> String {
    match kind {
        "invoice" => "Invoice",
        "payment" => "Payment",
        "credit" => "Credit",
        "refund" => "Refund",
        "retainer" => "Retainer",
        _ => "Adjustment",
    }
    .to_string()
}

fn statement_view(s: &StatementSnap, dates: &Dates, format: MoneyFormat) -> StatementView {
    let m = |minor: i64| fmt_money(minor, &s.currency, format);
    let last = s.to.max(s.from + 1) - 1;
    StatementView {
        month: dates.month(s.from),
        period: dates.period(s.from, Some(s.to)),
        first_day: dates.day(s.from),
        last_day: dates.day(last),
        currency: s.currency.clone(),
        opening: m(s.opening),
        closing: m(s.closing),
        lines: s
            .lines
            .iter()
            .map(|l| StatementLineView {
                date: dates.day(l.at),
                kind: kind_label(&l.kind),
                reference: l.reference.clone(),
                amount: m(l.amount),
                balance: m(l.balance),
            })
            .collect(),
        owes: s.closing > 0,
        in_credit: s.closing < 0,
        credit: m(s.closing.saturating_abs()),
    }
}

fn lines(list: &[LineSnap], currency: &str, format: MoneyFormat) -> Vec<LineView> {
    list.iter()
        .map(|l| LineView {
            description: l.description.clone(),
            quantity: l.quantity.clone(),
            unit_amount: fmt_money(l.unit_amount, currency, format),
            amount: fmt_money(l.amount, currency, format),
            tax_rate: l.tax_rate.as_deref().map(tax_rate_label),
        })
        .collect()
}

/// Builds the view of a snapshot, with amounts formatted by `format`.
pub fn view(config: &Config, snap: &Snapshot, format: MoneyFormat) -> View {
    let dates = Dates::new(&snap.customer.timezone);
    let m = |minor: i64, currency: &str| fmt_money(minor, currency, format);
    let nonzero = |minor: i64, currency: &str| (minor != 0).then(|| m(minor, currency));
    let currency = snap.customer.currency.as_str();
    let invoice = snap.invoice.as_ref().map(|i| InvoiceView {
        id: i.id.clone(),
        number: i.number.clone().unwrap_or_else(|| i.id.clone()),
        kind: i.kind.clone(),
        currency: i.currency.clone(),
        issue_date: dates.day(i.finalized_at.unwrap_or(i.created_at)),
        due_date: i.due_at.map(|d| dates.day(d)),
        period: i.period_start.map(|s| dates.period(s, i.period_end)),
        lines: lines(&i.lines, &i.currency, format),
        subtotal: m(i.subtotal, &i.currency),
        tax: m(i.tax, &i.currency),
        has_tax: i.tax != 0 || i.lines.iter().any(|l| l.tax_rate.is_some()),
        total: m(i.total, &i.currency),
        credits_applied: nonzero(i.credits_applied, &i.currency),
        retainer_applied: nonzero(i.retainer_applied, &i.currency),
        amount_paid: nonzero(i.amount_paid, &i.currency),
        amount_due: m(i.amount_due, &i.currency),
        paid: i.amount_due == 0,
    });
    let payment = snap.payment.as_ref().map(|p| PaymentView {
        id: p.id.clone(),
        amount: m(p.amount, &p.currency),
        method: method_label(&p.method, p.card.as_ref()),
        date: dates.moment(p.at),
        reference: p.reference.clone().filter(|r| !r.is_empty()),
    });
    let pay_currency = snap
        .payment
        .as_ref()
        .map(|p| p.currency.as_str())
        .unwrap_or(currency);
    let allocations: Vec<AllocationView> = snap
        .allocations
        .iter()
        .map(|a| AllocationView {
            number: a.number.clone().unwrap_or_else(|| a.invoice_id.clone()),
            amount: m(a.amount, pay_currency),
            remaining: m(a.amount_due_after, pay_currency),
        })
        .collect();
    let remaining_minor: Option<i64> = (!snap.allocations.is_empty())
        .then(|| snap.allocations.iter().map(|a| a.amount_due_after).sum());
    let charge = snap.charge.as_ref().map(|c| ChargeView {
        amount: m(c.total, &c.currency),
        date: dates.day(c.period_start),
        period: Some(dates.period(c.period_start, c.period_end)),
        lines: lines(&c.lines, &c.currency, format),
        subtotal: m(c.subtotal, &c.currency),
        tax: m(c.tax, &c.currency),
        has_tax: c.tax != 0,
        card: c.card.as_ref().map(card_label),
    });
    let address_lines: Vec<String> = config
        .business
        .address
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    View {
        business: BusinessView {
            name: config.business.name.clone(),
            address: address_lines.join(", "),
            address_lines,
            support_email: config.business.support_email.clone(),
        },
        customer: CustomerView {
            name: snap.customer.name.clone(),
            email: snap.customer.email.clone(),
            timezone: dates.tz.name().to_string(),
        },
        invoice,
        payment,
        allocations,
        remaining: remaining_minor.map(|r| m(r, pay_currency)),
        settled: remaining_minor == Some(0),
        refund: snap.refund.as_ref().map(|r| RefundView {
            id: r.id.clone(),
            amount: m(r.amount, &r.currency),
            date: dates.moment(r.at),
            reason: r.reason.clone().filter(|s| !s.is_empty()),
            to_credit: r.to_credit,
        }),
        credit_note: snap.credit_note.as_ref().map(|n| CreditNoteView {
            id: n.id.clone(),
            amount: m(n.amount, &n.currency),
            remaining: m(n.remaining, &n.currency),
            reason: n.reason.clone(),
            date: dates.day(n.created_at),
        }),
        charge,
        statement: snap
            .statement
            .as_ref()
            .map(|s| statement_view(s, &dates, format)),
        attempt: snap.attempt,
        next_attempt_date: snap.next_attempt_at.map(|t| dates.day(t)),
        decline: snap.decline.clone(),
        card: snap.card.as_ref().map(card_label),
        outstanding: m(snap.outstanding, currency),
        has_outstanding: snap.outstanding > 0,
        credit_balance: m(snap.credit_balance, currency),
        has_credit: snap.credit_balance > 0,
        date: dates.day(snap.at),
    }
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
    if !super::TEMPLATES.contains(&template) {
        return Err(format!("unknown template {template:?}"));
    }
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
    match template {
        "invoice" => {
            if let Some(invoice) = &pdf_view.invoice {
                attachments.push(Attachment {
                    filename: format!("{}.pdf", file_stem("invoice", &invoice.number)),
                    content_type: "application/pdf".into(),
                    bytes: super::pdf::invoice(&pdf_view),
                });
            }
        }
        "receipt" => {
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
        "statement" => {
            if let Some(statement) = &snap.statement {
                attachments.push(Attachment {
                    filename: format!("statement-{}.csv", month_label(statement.month)),
                    content_type: "text/csv; charset=utf-8".into(),
                    bytes: statement_csv(statement).into_bytes(),
                });
            }
        }
        _ => {}
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
mod tests {
    use super::super::snapshot::*;
    use super::*;

    fn config(env: &[(&str, &str)]) -> Config {
        let mut all = vec![
            ("SETTLED__BUSINESS__NAME", "Example Ltd"),
            ("SETTLED__BUSINESS__ADDRESS", "1 Main Street\nSpringfield"),
            ("SETTLED__BUSINESS__SUPPORT_EMAIL", "help@example.com"),
        ];
        all.extend_from_slice(env);
        Config::load_from(
            None,
            all.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    fn customer(currency: &str, timezone: &str) -> CustomerSnap {
        CustomerSnap {
            id: "cus_1".into(),
            name: "Acme Corp".into(),
            email: "ap@acme.example".into(),
            timezone: timezone.into(),
            currency: currency.into(),
        }
    }

    fn invoice(currency: &str, total: i64, paid: i64) -> InvoiceSnap {
        InvoiceSnap {
            id: "in_1".into(),
            number: Some("INV-2027-000042".into()),
            kind: "standard".into(),
            status: if paid >= total {
                "paid"
            } else {
                "partially_paid"
            }
            .into(),
            currency: currency.into(),
            period_start: Some(1_801_440_000_000),
            period_end: Some(1_803_859_200_000),
            subtotal: total,
            tax: 0,
            total,
            amount_paid: paid,
            amount_due: total - paid,
            due_at: Some(1_801_440_000_000),
            finalized_at: Some(1_801_440_000_000),
            created_at: 1_801_440_000_000,
            lines: vec![LineSnap {
                description: "Hosting <Pro>".into(),
                quantity: "1".into(),
                unit_amount: total,
                amount: total,
                tax_rate: None,
            }],
            ..InvoiceSnap::default()
        }
    }

    /// A partial card payment of 40.00 on a 100.00 invoice, paid 2027-02-01T09:30Z.
    fn partial_receipt() -> Snapshot {
        Snapshot {
            at: 1_801_474_200_000,
            customer: customer("EUR", "Europe/Berlin"),
            invoice: Some(invoice("EUR", 10_000, 4_000)),
            payment: Some(PaymentSnap {
                id: "pay_1".into(),
                amount: 4_000,
                currency: "EUR".into(),
                gateway: "stripe".into(),
                method: "card".into(),
                reference: None,
                card: Some(CardSnap {
                    brand: "visa".into(),
                    last4: "4242".into(),
                }),
                at: 1_801_474_200_000,
            }),
            allocations: vec![AllocationSnap {
                invoice_id: "in_1".into(),
                number: Some("INV-2027-000042".into()),
                amount: 4_000,
                amount_due_after: 6_000,
            }],
            outstanding: 6_000,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_partial_payment_receipt_shows_what_is_left_to_pay() {
        let r = render(&config(&[]), "receipt", &partial_receipt()).unwrap();
        assert_eq!(r.subject, "Receipt for INV-2027-000042");
        for expected in [
            "Amount paid:     €40.00",
            "Invoice:         INV-2027-000042",
            "Paid with:       Visa ending in 4242",
            "Date:            1 February 2027, 10:30 CET",
            "Still to pay:    €60.00",
        ] {
            assert!(r.text.contains(expected), "{expected:?} in:\n{}", r.text);
        }
        assert!(r.html.contains("€60.00") && r.html.contains("Visa ending in 4242"));
        assert!(r.html.contains("Example Ltd") && r.html.contains("1 Main Street"));
        assert_eq!(r.attachments.len(), 1);
        assert_eq!(r.attachments[0].filename, "receipt-INV-2027-000042.pdf");
        assert!(r.attachments[0].bytes.starts_with(b"%PDF-"));
        // The same snapshot renders the same bytes.
        let again = render(&config(&[]), "receipt", &partial_receipt()).unwrap();
        assert_eq!(again.attachments[0].bytes, r.attachments[0].bytes);
        assert_eq!(again.html, r.html);
    }

    #[test]
    fn yen_has_no_decimals_anywhere() {
        let mut snap = partial_receipt();
        snap.customer = customer("JPY", "Asia/Tokyo");
        snap.invoice = Some(invoice("JPY", 3_000, 1_000));
        if let Some(p) = snap.payment.as_mut() {
            p.currency = "JPY".into();
            p.amount = 1_000;
        }
        snap.allocations[0].amount = 1_000;
        snap.allocations[0].amount_due_after = 2_000;
        let r = render(&config(&[]), "receipt", &snap).unwrap();
        assert!(r.text.contains("Amount paid:     ¥1,000\n"), "{}", r.text);
        assert!(r.text.contains("Still to pay:    ¥2,000\n"), "{}", r.text);
        assert!(r.text.contains("18:30 JST"), "{}", r.text);
        assert!(!r.text.contains("¥1,000.00"));
    }

    #[test]
    fn the_html_alternative_escapes_what_customers_typed() {
        let mut snap = partial_receipt();
        snap.customer.name = "<script>alert(1)</script>".into();
        snap.payment = None;
        snap.allocations.clear();
        let r = render(&config(&[]), "invoice", &snap).unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;"));
        assert!(r.html.contains("Hosting &lt;Pro&gt;"));
        assert_eq!(r.subject, "Invoice INV-2027-000042 from Example Ltd");
    }

    #[test]
    fn every_kind_renders_subject_text_and_html() {
        let full = Snapshot {
            refund: Some(RefundSnap {
                id: "re_1".into(),
                amount: 1_500,
                currency: "USD".into(),
                to_credit: false,
                reason: Some("duplicate".into()),
                at: 1_801_474_200_000,
            }),
            credit_note: Some(CreditNoteSnap {
                id: "cn_1".into(),
                amount: 2_500,
                remaining: 2_500,
                currency: "USD".into(),
                source: "manual".into(),
                reason: "Goodwill".into(),
                created_at: 1_801_474_200_000,
            }),
            charge: Some(ChargeSnap {
                subscription_id: "sub_1".into(),
                currency: "USD".into(),
                period_start: 1_803_859_200_000,
                period_end: Some(1_806_537_600_000),
                subtotal: 1_999,
                tax: 0,
                total: 1_999,
                lines: vec![LineSnap {
                    description: "Hosting".into(),
                    quantity: "1".into(),
                    unit_amount: 1_999,
                    amount: 1_999,
                    tax_rate: None,
                }],
                card: Some(CardSnap {
                    brand: "mastercard".into(),
                    last4: "4444".into(),
                }),
            }),
            attempt: Some(1),
            next_attempt_at: Some(1_801_656_000_000),
            decline: Some("Your card has insufficient funds.".into()),
            card: Some(CardSnap {
                brand: "visa".into(),
                last4: "0341".into(),
            }),
            ..partial_receipt()
        };
        let mut usd = full.clone();
        usd.customer = customer("USD", "America/New_York");
        usd.invoice = Some(invoice("USD", 1_999, 0));
        let expectations: &[(&str, &str, &[&str])] = &[
            (
                "invoice",
                "Invoice INV-2027-000042 from Example Ltd",
                &[
                    "Amount due:      $19.99",
                    "Due:             31 January 2027",
                ],
            ),
            (
                "payment_failed",
                "Payment failed for INV-2027-000042",
                &[
                    "Visa ending in 0341",
                    "Your card has insufficient funds.",
                    "We will try again on 3 February 2027.",
                ],
            ),
            (
                "final_notice",
                "Final notice: INV-2027-000042 is past due",
                &["$19.99"],
            ),
            (
                "refund",
                "Refund of $15.00 from Example Ltd",
                &["Refunded:        $15.00", "Reason:          duplicate"],
            ),
            (
                "credit_note",
                "Credit note of $25.00 from Example Ltd",
                &["Amount:          $25.00", "Reason:          Goodwill"],
            ),
            (
                "upcoming_charge",
                "Upcoming charge of $19.99 on 28 February 2027",
                &["Mastercard ending in 4444", "Hosting"],
            ),
        ];
        for (kind, subject, needles) in expectations {
            let r = render(&config(&[]), kind, &usd).unwrap();
            assert_eq!(&r.subject, subject);
            for n in *needles {
                assert!(r.text.contains(n), "{kind}: {n:?} in:\n{}", r.text);
            }
            assert!(r.html.starts_with("<!DOCTYPE html>"), "{kind}");
            assert!(r.html.contains("Example Ltd"), "{kind}");
            assert!(r.text.contains("help@example.com"), "{kind}");
            assert_eq!(
                r.attachments.len(),
                usize::from(*kind == "invoice"),
                "{kind}"
            );
        }
    }

    fn statement(lines: Vec<StatementLineSnap>, opening: i64) -> Snapshot {
        let closing = lines.last().map_or(opening, |l| l.balance);
        Snapshot {
            at: 1_801_440_000_000,
            customer: customer("EUR", "Europe/Berlin"),
            statement: Some(StatementSnap {
                month: 202701,
                currency: "EUR".into(),
                // January 2027 in Berlin: 2026-12-31T23:00Z to 2027-01-31T23:00Z.
                from: 1_798_758_000_000,
                to: 1_801_436_400_000,
                opening,
                closing,
                lines,
            }),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_statement_shows_the_month_its_movements_and_both_balances_with_a_csv() {
        let snap = statement(
            vec![
                StatementLineSnap {
                    at: 1_800_000_000_000,
                    kind: "payment".into(),
                    reference: "=HYPERLINK(\"x\")".into(),
                    amount: -4_000,
                    balance: 6_000,
                },
                StatementLineSnap {
                    at: 1_800_500_000_000,
                    kind: "invoice".into(),
                    reference: "INV-2027-000002".into(),
                    amount: 2_500,
                    balance: 8_500,
                },
            ],
            10_000,
        );
        let r = render(&config(&[]), "statement", &snap).unwrap();
        assert_eq!(
            r.subject,
            "Your statement for January 2027 from Example Ltd"
        );
        for expected in [
            "for January 2027 (1 January 2027 – 31 January 2027), in EUR",
            "Opening balance: €100.00  (1 January 2027)",
            "15 January 2027  Payment =HYPERLINK(\"x\"): -€40.00 (balance €60.00)",
            "Invoice INV-2027-000002: €25.00 (balance €85.00)",
            "Closing balance: €85.00  (31 January 2027)",
            "You owed €85.00 at the end of the month.",
        ] {
            assert!(r.text.contains(expected), "{expected:?} in:\n{}", r.text);
        }
        assert!(r.html.contains("Closing balance") && r.html.contains("€85.00"));
        assert!(r.html.contains("=HYPERLINK(&quot;x&quot;)"), "{}", r.html);
        assert_eq!(r.attachments.len(), 1);
        let csv = &r.attachments[0];
        assert_eq!(csv.filename, "statement-2027-01.csv");
        assert_eq!(csv.content_type, "text/csv; charset=utf-8");
        assert_eq!(
            String::from_utf8(csv.bytes.clone()).unwrap(),
            "date,kind,reference,amount,balance\n\
             ,opening,,,100.00\n\
             2027-01-15T08:00:00Z,payment,\"'=HYPERLINK(\"\"x\"\")\",-40.00,60.00\n\
             2027-01-21T02:53:20Z,invoice,INV-2027-000002,25.00,85.00\n\
             ,closing,,,85.00\n"
        );
        let again = render(&config(&[]), "statement", &snap).unwrap();
        assert_eq!(
            again.attachments[0].bytes, csv.bytes,
            "the same bytes on a resend"
        );
        assert_eq!(again.html, r.html);
    }

    #[test]
    fn a_quiet_month_still_shows_the_balance_and_credit_reads_as_credit() {
        let r = render(&config(&[]), "statement", &statement(Vec::new(), 8_500)).unwrap();
        assert!(r.text.contains("No activity this month."), "{}", r.text);
        assert!(r.text.contains("Opening balance: €85.00"), "{}", r.text);
        assert!(r.text.contains("Closing balance: €85.00"), "{}", r.text);
        assert!(r.html.contains("No activity this month."));

        let r = render(&config(&[]), "statement", &statement(Vec::new(), -1_250)).unwrap();
        assert!(
            r.text
                .contains("You held €12.50 in credit at the end of the month"),
            "{}",
            r.text
        );
        assert!(r.html.contains("€12.50 in credit"), "{}", r.html);

        let mut yen = statement(Vec::new(), 3_000);
        yen.customer = customer("JPY", "Asia/Tokyo");
        if let Some(s) = yen.statement.as_mut() {
            s.currency = "JPY".into();
        }
        let r = render(&config(&[]), "statement", &yen).unwrap();
        assert!(r.text.contains("Closing balance: ¥3,000  "), "{}", r.text);
        let csv = String::from_utf8(r.attachments[0].bytes.clone()).unwrap();
        assert!(csv.ends_with(",closing,,,3000\n"), "{csv}");
    }

    #[test]
    fn an_operator_template_replaces_one_file_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("receipt.subject.txt"),
            "Thanks for {{ payment.amount }}, {{ customer.name }}",
        )
        .unwrap();
        let d = dir.path().display().to_string();
        let cfg = config(&[("SETTLED__EMAIL__TEMPLATES_DIR", &d)]);
        let r = render(&cfg, "receipt", &partial_receipt()).unwrap();
        assert_eq!(r.subject, "Thanks for €40.00, Acme Corp");
        assert!(r.text.contains("Still to pay:    €60.00"));

        std::fs::write(
            dir.path().join("receipt.subject.txt"),
            "{{ payment.nonexistent.deeper }}",
        )
        .unwrap();
        let err = render(&cfg, "receipt", &partial_receipt())
            .err()
            .expect("a broken template is an error");
        assert!(err.contains("receipt.subject.txt"), "{err}");
    }
}
