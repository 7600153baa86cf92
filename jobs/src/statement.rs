//! The statement of account: the ledger's movements of one customer and currency, grouped into
//! the lines a customer reads (a payment that partly became credit is one line), with the running
//! balance of what it owes net of credit and deposits. Pure: the daemon reads the rows.

use serde::Serialize;

/// One ledger row as the statement reads it, in the order rows were written.
#[derive(Debug, Clone)]
pub struct Movement {
    pub at: i64,
    pub kind: String,
    /// What the customer owes more (positive) or less (negative), net of credit and deposits.
    pub net: i64,
    pub invoice_id: Option<String>,
    pub payment_id: Option<String>,
    pub object_id: Option<String>,
    pub memo: Option<String>,
}

/// One line of a statement of account.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatementEntry {
    pub at: i64,
    pub kind: &'static str,
    pub reference: String,
    /// What the customer owes more (positive) or less (negative), net of credit and deposits.
    pub amount: i64,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub opening: i64,
    pub entries: Vec<StatementEntry>,
    pub closing: i64,
}

/// The category a ledger row's kind shows as.
pub fn category(kind: &str) -> &'static str {
    match kind {
        "invoice" => "invoice",
        "payment" | "overpayment" => "payment",
        "manual" | "credit_note" => "credit",
        "refund" => "refund",
        "retainer_deposit" | "retainer_applied" | "retainer_refunded" | "retainer_released" => {
            "retainer"
        }
        _ => "adjustment",
    }
}

/// Builds the statement from the opening balance and the period's movements. Rows written
/// together for one movement (same instant, category and payment or object) are one line;
/// movements that only move money between the customer's own balances sum to nothing and are
/// left out.
pub fn build(opening: i64, movements: Vec<Movement>) -> Statement {
    type Group = (Option<String>, Option<String>);
    let mut entries: Vec<(StatementEntry, Group)> = Vec::new();
    for m in movements {
        let cat = category(&m.kind);
        let group = (m.payment_id.clone(), m.object_id.clone());
        if let Some((last, last_group)) = entries.last_mut()
            && last.at == m.at
            && last.kind == cat
            && *last_group == group
            && (m.payment_id.is_some() || m.object_id.is_some())
        {
            last.amount += m.net;
            continue;
        }
        let reference = m
            .memo
            .or(m.payment_id.clone())
            .or(m.object_id.clone())
            .or(m.invoice_id)
            .unwrap_or_default();
        entries.push((
            StatementEntry {
                at: m.at,
                kind: cat,
                reference,
                amount: m.net,
                balance: 0,
            },
            group,
        ));
    }
    let mut balance = opening;
    let mut out = Vec::new();
    for (mut e, _) in entries {
        if e.amount == 0 {
            continue;
        }
        balance += e.amount;
        e.balance = balance;
        out.push(e);
    }
    Statement {
        opening,
        entries: out,
        closing: balance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(at: i64, kind: &str, net: i64, payment: Option<&str>) -> Movement {
        Movement {
            at,
            kind: kind.into(),
            net,
            invoice_id: Some("in_1".into()),
            payment_id: payment.map(String::from),
            object_id: None,
            memo: None,
        }
    }

    #[test]
    fn one_payment_is_one_line_and_balances_run() {
        let s = build(
            100,
            vec![
                m(1, "invoice", 50, None),
                m(2, "payment", -120, Some("pay_1")),
                m(2, "overpayment", -30, Some("pay_1")),
            ],
        );
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[1].amount, -150);
        assert_eq!(s.closing, 0);
    }
}
