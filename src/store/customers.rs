//! Customers, their billing contacts and their saved payment methods.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, Tx, from_ms, ms, on_db, on_tx};

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

pub async fn insert(tx: &mut Tx, c: &NewCustomer, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
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
) -> Result<(), sqlx::Error> {
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
) -> Result<bool, sqlx::Error> {
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

pub async fn get_row(db: &Db, id: &str) -> Result<Option<CustomerRow>, sqlx::Error> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1");
    on_db!(db, p => sqlx::query_as::<_, CustomerRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Customer>, sqlx::Error> {
    match get_row(db, id).await? {
        Some(row) => Ok(Some(with_details(db, row).await?)),
        None => Ok(None),
    }
}

async fn with_details(db: &Db, row: CustomerRow) -> Result<Customer, sqlx::Error> {
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
) -> Result<Vec<Customer>, sqlx::Error> {
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

#[derive(Debug, Clone, FromRow)]
pub struct PaymentMethodRow {
    pub id: String,
    pub customer_id: String,
    pub gateway: String,
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub is_default: bool,
    pub created_at: i64,
}

const PM_COLUMNS: &str =
    "id, customer_id, gateway, token, brand, last4, exp_month, exp_year, is_default, created_at";

pub async fn insert_payment_method(
    tx: &mut Tx,
    pm: &PaymentMethodRow,
    make_default: bool,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, conn => {
        if make_default {
            sqlx::query("UPDATE payment_methods SET is_default = FALSE WHERE customer_id = $1 AND is_default")
                .bind(&pm.customer_id)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, \
             exp_year, is_default, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&pm.id)
        .bind(&pm.customer_id)
        .bind(&pm.gateway)
        .bind(&pm.token)
        .bind(&pm.brand)
        .bind(&pm.last4)
        .bind(pm.exp_month)
        .bind(pm.exp_year)
        .bind(make_default)
        .bind(pm.created_at)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

pub async fn payment_methods(
    db: &Db,
    customer_id: &str,
) -> Result<Vec<PaymentMethodRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND removed_at IS NULL ORDER BY created_at, id"
    );
    on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).fetch_all(p).await)
}

pub async fn payment_method(
    db: &Db,
    customer_id: &str,
    id: &str,
) -> Result<Option<PaymentMethodRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL"
    );
    on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).bind(id).fetch_optional(p).await)
}

pub async fn default_payment_method(
    db: &Db,
    customer_id: &str,
) -> Result<Option<PaymentMethodRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND is_default AND removed_at IS NULL"
    );
    on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).fetch_optional(p).await)
}

pub async fn set_default_payment_method(
    db: &Db,
    customer_id: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let changed = on_tx!(&mut tx, conn => {
        sqlx::query("UPDATE payment_methods SET is_default = FALSE WHERE customer_id = $1 AND is_default")
            .bind(customer_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE payment_methods SET is_default = TRUE WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL",
        )
        .bind(customer_id)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    if changed == 1 {
        tx.commit().await?;
        Ok(true)
    } else {
        Ok(false)
    }
}

pub async fn remove_payment_method(
    db: &Db,
    customer_id: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    on_db!(db, p => {
        Ok(sqlx::query(
            "UPDATE payment_methods SET removed_at = $3, is_default = FALSE \
             WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL",
        )
        .bind(customer_id)
        .bind(id)
        .bind(ms(now))
        .execute(p)
        .await?
        .rows_affected() == 1)
    })
}

pub fn created(row: &CustomerRow) -> DateTime<Utc> {
    from_ms(row.created_at)
}
