//! Customers and their billing contacts: the only writer of `customers` and
//! `customer_billing_emails`, and the reads that gather a customer's facts.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use settled_jobs::job::WorkKind;

use super::bulk;
use super::work_failures::SetAside;
use super::{Db, Result, Tx, from_ms, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: String,
    pub email: String,
    pub name: String,
    pub currency: String,
    pub timezone: String,
    pub auto_charge: bool,
    pub apply_retainer: bool,
    pub statement_emails: bool,
    pub gateway_customer_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A customer with its contacts and the balances derived from its money records.
#[derive(Debug, Clone)]
pub struct Customer {
    pub row: CustomerRow,
    pub billing_emails: Vec<String>,
    pub credit_balance: i64,
    pub retainer_balance: i64,
    pub outstanding: i64,
}

#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub id: String,
    pub email: String,
    pub name: String,
    pub currency: String,
    pub timezone: String,
    pub billing_emails: Vec<String>,
    pub auto_charge: bool,
    pub apply_retainer: bool,
    pub statement_emails: bool,
    pub gateway_customer_id: Option<String>,
}

const CUSTOMER_COLUMNS: &str = "id, email, name, currency, timezone, auto_charge, apply_retainer, \
     statement_emails, gateway_customer_id, created_at, updated_at";

pub async fn insert(tx: &mut Tx, c: &NewCustomer, now: DateTime<Utc>) -> Result<()> {
    on_tx!(tx, conn => {
        sqlx::query(
            "INSERT INTO customers (id, email, name, currency, timezone, auto_charge, apply_retainer, \
             statement_emails, statement_emails_since, gateway_customer_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $8 THEN $10 END, $9, $10, $10)",
        )
        .bind(&c.id)
        .bind(&c.email)
        .bind(&c.name)
        .bind(&c.currency)
        .bind(&c.timezone)
        .bind(c.auto_charge)
        .bind(c.apply_retainer)
        .bind(c.statement_emails)
        .bind(&c.gateway_customer_id)
        .bind(ms(now))
        .execute(&mut *conn)
        .await?;
    });
    replace_billing_emails(tx, &c.id, &c.billing_emails).await
}

pub async fn replace_billing_emails(
    tx: &mut Tx,
    customer_id: &str,
    emails: &[String],
) -> Result<()> {
    on_tx!(tx, conn => {
        sqlx::query("DELETE FROM customer_billing_emails WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut *conn)
            .await?;
        for (i, email) in emails.iter().enumerate() {
            sqlx::query(
                "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES ($1, $2, $3)",
            )
            .bind(customer_id)
            .bind(i as i64)
            .bind(email.to_lowercase())
            .execute(&mut *conn)
            .await?;
        }
    });
    Ok(())
}

/// The changes a PATCH may make; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct CustomerPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub timezone: Option<String>,
    pub auto_charge: Option<bool>,
    pub apply_retainer: Option<bool>,
    pub statement_emails: Option<bool>,
    pub billing_emails: Option<Vec<String>>,
    pub gateway_customer_id: Option<String>,
}

pub async fn update(
    tx: &mut Tx,
    id: &str,
    patch: &CustomerPatch,
    now: DateTime<Utc>,
) -> Result<bool> {
    let changed = on_tx!(tx, conn => {
        sqlx::query(
            "UPDATE customers SET name = COALESCE($2, name), email = COALESCE($3, email), \
             timezone = COALESCE($4, timezone), auto_charge = COALESCE($5, auto_charge), \
             apply_retainer = COALESCE($6, apply_retainer), statement_emails = COALESCE($7, statement_emails), \
             statement_emails_since = CASE WHEN $7 AND NOT statement_emails THEN $9 \
             WHEN NOT $7 THEN NULL ELSE statement_emails_since END, \
             gateway_customer_id = COALESCE($8, gateway_customer_id), updated_at = $9 WHERE id = $1",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.email)
        .bind(&patch.timezone)
        .bind(patch.auto_charge)
        .bind(patch.apply_retainer)
        .bind(patch.statement_emails)
        .bind(&patch.gateway_customer_id)
        .bind(ms(now))
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    if changed == 0 {
        return Ok(false);
    }
    if let Some(emails) = &patch.billing_emails {
        replace_billing_emails(tx, id, emails).await?;
    }
    Ok(true)
}

pub async fn get_row(db: &Db, id: &str) -> Result<Option<CustomerRow>> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as::<_, CustomerRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Customer>> {
    match get_row(db, id).await? {
        Some(row) => Ok(Some(with_details(db, row).await?)),
        None => Ok(None),
    }
}

async fn with_details(db: &Db, row: CustomerRow) -> Result<Customer> {
    let (billing_emails, credit, retainer, outstanding) = on_db!(db, p => {
        let emails: Vec<String> = sqlx::query_scalar(
            "SELECT email FROM customer_billing_emails WHERE customer_id = $1 ORDER BY position",
        )
        .bind(&row.id)
        .fetch_all(p)
        .await?;
        let credit: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM credit_notes WHERE customer_id = $1 AND currency = $2",
        )
        .bind(&row.id)
        .bind(&row.currency)
        .fetch_one(p)
        .await?;
        let retainer: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM retainers WHERE customer_id = $1 AND currency = $2",
        )
        .bind(&row.id)
        .bind(&row.currency)
        .fetch_one(p)
        .await?;
        let outstanding: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_due), 0) AS BIGINT) FROM invoices WHERE customer_id = $1 \
             AND currency = $2 AND status IN ('open', 'partially_paid', 'past_due')",
        )
        .bind(&row.id)
        .bind(&row.currency)
        .fetch_one(p)
        .await?;
        (emails, credit, retainer, outstanding)
    });
    Ok(Customer {
        row,
        billing_emails,
        credit_balance: credit,
        retainer_balance: retainer,
        outstanding,
    })
}

/// Customers ordered by id; optionally only those a billing contact receives bills for.
pub async fn list(
    db: &Db,
    billing_email: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<Customer>> {
    let mut sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE 1 = 1");
    let mut n = 1;
    if billing_email.is_some() {
        sql.push_str(&format!(
            " AND id IN (SELECT customer_id FROM customer_billing_emails WHERE email = ${n})"
        ));
        n += 1;
    }
    if starting_after.is_some() {
        sql.push_str(&format!(" AND id > ${n}"));
        n += 1;
    }
    sql.push_str(&format!(" ORDER BY id LIMIT ${n}"));
    let rows = on_db!(db, p => {
        let mut q = sqlx::query_as::<_, CustomerRow>(sqlx::AssertSqlSafe(sql.as_str()));
        if let Some(email) = billing_email {
            q = q.bind(email.to_lowercase());
        }
        if let Some(after) = starting_after {
            q = q.bind(after.to_string());
        }
        q.bind(limit).fetch_all(p).await?
    });
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(with_details(db, row).await?);
    }
    Ok(out)
}

pub fn created(row: &CustomerRow) -> DateTime<Utc> {
    from_ms(row.created_at)
}

/// The customer, read inside `tx` (what an email snapshot or a rule needs of it).
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<CustomerRow>> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as::<_, CustomerRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The customer, locked for the rest of `tx`: the first lock of the documented order
/// (customer, then its invoices by id).
pub async fn lock(tx: &mut Tx, id: &str) -> Result<Option<CustomerRow>> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as::<_, CustomerRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Every billing contact, in the order the customer gave them.
pub async fn recipients(tx: &mut Tx, customer_id: &str) -> Result<Vec<String>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT email FROM customer_billing_emails WHERE customer_id = $1 ORDER BY position",
        )
        .bind(customer_id)
        .fetch_all(&mut *c)
        .await?
    }))
}

/// Our customer whose customer at a gateway is `gateway_customer` (the oldest, if several).
pub async fn by_gateway_customer(tx: &mut Tx, gateway_customer: &str) -> Result<Option<String>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT id FROM customers WHERE gateway_customer_id = $1 ORDER BY created_at LIMIT 1",
        )
        .bind(gateway_customer)
        .fetch_optional(&mut *c)
        .await?
    }))
}

/// A customer as finalising a batch of invoices needs it: the row, its contacts and whether it
/// has a default payment method.
pub struct Facts {
    pub row: CustomerRow,
    pub recipients: Vec<String>,
    pub default_method: bool,
}

/// [`Facts`] of many customers in three statements.
pub async fn facts_many(
    tx: &mut Tx,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, Facts>> {
    let rows: Vec<CustomerRow> = bulk::select_by_ids(tx, ids, |ids| {
        format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id {ids}")
    })
    .await?;
    let contacts: Vec<(String, String)> = bulk::select_by_ids(tx, ids, |ids| {
        format!(
            "SELECT customer_id, email FROM customer_billing_emails WHERE customer_id {ids} \
             ORDER BY customer_id, position"
        )
    })
    .await?;
    let with_method: Vec<(String,)> = bulk::select_by_ids(tx, ids, |ids| {
        format!(
            "SELECT customer_id FROM payment_methods WHERE customer_id {ids} AND is_default \
             AND removed_at IS NULL"
        )
    })
    .await?;
    let with_method: std::collections::HashSet<String> =
        with_method.into_iter().map(|(c,)| c).collect();
    let mut facts: std::collections::HashMap<String, Facts> = rows
        .into_iter()
        .map(|row| {
            let default_method = with_method.contains(&row.id);
            (
                row.id.clone(),
                Facts {
                    row,
                    recipients: Vec::new(),
                    default_method,
                },
            )
        })
        .collect();
    for (customer_id, email) in contacts {
        if let Some(f) = facts.get_mut(&customer_id) {
            f.recipients.push(email);
        }
    }
    Ok(facts)
}

/// What the monthly statement needs of a customer: its time zone, currency, whether it wants
/// statements and since when.
pub async fn statement_settings(
    db: &Db,
    id: &str,
) -> Result<Option<(String, String, bool, Option<i64>)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT timezone, currency, statement_emails, statement_emails_since FROM customers \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(p)
        .await?
    }))
}

/// Time zones with a customer who opted in to statements before `began` and has none of month
/// `latest` or later yet.
pub async fn statement_zones(db: &Db, began: i64, latest: i64) -> Result<Vec<String>> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT DISTINCT c.timezone FROM customers c \
             WHERE c.statement_emails AND c.statement_emails_since < $1 \
             AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'statement' \
                             AND e.subject_id = c.id AND e.attempt >= $2)",
        )
        .bind(began)
        .bind(latest)
        .fetch_all(p)
        .await?
    }))
}

/// Customers in `timezone` who opted in before `ended` and have no statement of `month` or
/// later yet.
pub async fn owed_statement(
    db: &Db,
    timezone: &str,
    ended: i64,
    month: i64,
    set_aside: SetAside,
    limit: i64,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT c.id FROM customers c \
         WHERE c.statement_emails AND c.timezone = $1 AND c.statement_emails_since < $2 \
         AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'statement' \
                         AND e.subject_id = c.id AND e.attempt >= $3) \
         AND {} ORDER BY c.id LIMIT $4",
        set_aside.condition(WorkKind::Statements, "c.id", "$5")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(timezone)
            .bind(ended)
            .bind(month)
            .bind(limit)
            .bind(set_aside.value())
            .fetch_all(p)
            .await?
    }))
}
