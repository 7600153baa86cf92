//! What the templates see: a snapshot turned into a view, every amount formatted for its
//! currency (by the format the caller passes: for people, or for the PDF's fonts), dates in the
//! customer's time zone, cards as brand and last 4. Both the text templates and the PDFs draw
//! from it.

use std::str::FromStr;

use chrono::TimeZone;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;
use settled_jobs::money::{Currency, Money};

use super::snapshot::{CardSnap, LineSnap, Snapshot, StatementSnap};
use crate::config::Config;

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
    /// Signed links into the customer portal (see `crate::portal::links`).
    pub links: LinksView,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinksView {
    /// The invoice's hosted page: view, PDF, pay (invoice emails; None without a portal).
    pub invoice: Option<String>,
    /// The one-time sign-in link (sign_in) and the moment it stops working.
    pub sign_in: Option<String>,
    pub sign_in_expires: Option<String>,
    /// The portal's sign-in page.
    pub portal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusinessView {
    pub name: String,
    pub address: String,
    pub address_lines: Vec<String>,
    pub support_email: String,
    /// `business.payment_instructions`, line by line (empty: none).
    pub payment_instructions: Vec<String>,
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
/// A multi-line setting as its non-empty lines, trimmed.
fn lines_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

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
    let address_lines = lines_of(&config.business.address);
    View {
        business: BusinessView {
            name: config.business.name.clone(),
            address: address_lines.join(", "),
            address_lines,
            support_email: config.business.support_email.clone(),
            payment_instructions: lines_of(&config.business.payment_instructions),
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
        links: LinksView {
            invoice: snap
                .invoice
                .as_ref()
                .and_then(|i| crate::portal::links::invoice_url(config, &i.id, snap.at)),
            sign_in: snap
                .sign_in
                .as_ref()
                .and_then(|s| crate::portal::links::sign_in_url(config, &s.token_id)),
            sign_in_expires: snap.sign_in.as_ref().map(|s| dates.moment(s.expires_at)),
            portal: (config.portal.enabled && !config.business.portal_url.is_empty()).then(|| {
                format!(
                    "{}{}/",
                    crate::portal::links::base(config),
                    crate::portal::links::PREFIX
                )
            }),
        },
    }
}
