//! Table output for people: the columns shown for each kind of object, and the cells.

use serde_json::Value;

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
