//! Subscriptions: the recurring invoice profiles the sweep bills. The only writer of
//! `subscriptions`.

use chrono::{DateTime, Utc};
use settled_jobs::invoice::{CatchUp, ItemSpec, ScheduleSpec};
use settled_jobs::records::{StoreError, Subscription, SubscriptionStatus};
use sqlx::FromRow;

use settled_jobs::job::WorkKind;

use super::bulk::{self, Arg};
use super::work_failures::SetAside;
use super::{Db, Result, Tx, from_ms, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct SubscriptionRow {
    pub id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: String,
    pub schedule: String,
    pub timezone: String,
    pub start_at: i64,
    pub next_period_start: Option<i64>,
    pub auto_charge: bool,
    pub net_days: i64,
    pub catch_up: String,
    pub status: String,
    pub paused_at: Option<i64>,
    pub canceled_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const SUBSCRIPTION_COLUMNS: &str = "id, customer_id, currency, items, schedule, timezone, start_at, \
     next_period_start, auto_charge, net_days, catch_up, status, paused_at, canceled_at, created_at, updated_at";

/// The billing core's view of a stored subscription (its JSON documents parsed).
pub fn subscription_from_row(row: SubscriptionRow) -> Result<Subscription, StoreError> {
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("subscription {}: {what}: {e}", row.id))
    };
    let schedule: ScheduleSpec =
        serde_json::from_str(&row.schedule).map_err(|e| corrupt("schedule", e))?;
    let items: Vec<ItemSpec> = serde_json::from_str(&row.items).map_err(|e| corrupt("items", e))?;
    let status = match row.status.as_str() {
        "active" => SubscriptionStatus::Active,
        "paused" => SubscriptionStatus::Paused,
        _ => SubscriptionStatus::Canceled,
    };
    Ok(Subscription {
        catch_up: CatchUp::parse(&row.catch_up).unwrap_or(CatchUp::All),
        next_period_start: row.next_period_start.map(from_ms),
        net_days: row.net_days.max(0) as u32,
        id: row.id,
        customer_id: row.customer_id,
        currency: row.currency,
        items,
        schedule,
        auto_charge: row.auto_charge,
        status,
    })
}

pub async fn insert(db: &Db, s: &SubscriptionRow) -> Result<()> {
    on_db!(db, p => {
        sqlx::query(
            "INSERT INTO subscriptions (id, customer_id, currency, items, schedule, timezone, start_at, \
             next_period_start, auto_charge, net_days, catch_up, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&s.id)
        .bind(&s.customer_id)
        .bind(&s.currency)
        .bind(&s.items)
        .bind(&s.schedule)
        .bind(&s.timezone)
        .bind(s.start_at)
        .bind(s.next_period_start)
        .bind(s.auto_charge)
        .bind(s.net_days)
        .bind(&s.catch_up)
        .bind(&s.status)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(p)
        .await?;
    });
    Ok(())
}

pub async fn get(db: &Db, id: &str) -> Result<Option<SubscriptionRow>> {
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

/// The subscription, read inside `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<SubscriptionRow>> {
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

pub async fn list(
    db: &Db,
    customer_id: Option<&str>,
    status: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<SubscriptionRow>> {
    let mut sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    for (col, v) in [("customer_id", customer_id), ("status", status)] {
        if let Some(v) = v {
            binds.push(v.to_string());
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    if let Some(after) = starting_after {
        binds.push(after.to_string());
        sql.push_str(&format!(" AND id > ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", binds.len() + 1));
    on_db!(db, p => {
        let mut q = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(sql.as_str()));
        for b in &binds {
            q = q.bind(b.clone());
        }
        Ok(q.bind(limit).fetch_all(p).await?)
    })
}

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
        }
    }
}

/// Applies a lifecycle change if the subscription is still in `from` (compare-and-set, so two
/// operators racing cannot both win). Pausing keeps `next_period_start`: on resume the catch-up
/// policy decides what the paused periods become. Canceling clears it: no further invoices.
pub async fn transition(
    db: &Db,
    id: &str,
    from: &str,
    action: Action,
    now: DateTime<Utc>,
) -> Result<bool> {
    let sql = match action {
        Action::Pause => {
            "UPDATE subscriptions SET status = 'paused', paused_at = $3, updated_at = $3 WHERE id = $1 AND status = $2"
        }
        Action::Resume => {
            "UPDATE subscriptions SET status = 'active', paused_at = NULL, updated_at = $3 WHERE id = $1 AND status = $2"
        }
        Action::Cancel => {
            "UPDATE subscriptions SET status = 'canceled', canceled_at = $3, next_period_start = NULL, \
             updated_at = $3 WHERE id = $1 AND status = $2"
        }
    };
    let mut tx = db.begin().await?;
    let changed = on_tx!(&mut tx, c => {
        sqlx::query(sql).bind(id).bind(from).bind(ms(now)).execute(&mut *c).await?.rows_affected() == 1
    });
    tx.commit().await?;
    Ok(changed)
}

/// Switches automatic charging of one customer's subscription on or off; false when the
/// customer has no such subscription.
pub async fn set_auto_charge(
    db: &Db,
    customer_id: &str,
    id: &str,
    on: bool,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = db.begin().await?;
    let changed = on_tx!(&mut tx, c => {
        sqlx::query(
            "UPDATE subscriptions SET auto_charge = $3, updated_at = $4 WHERE id = $1 AND customer_id = $2",
        )
        .bind(id)
        .bind(customer_id)
        .bind(on)
        .bind(ms(now))
        .execute(&mut *c)
        .await?
        .rows_affected()
            == 1
    });
    tx.commit().await?;
    Ok(changed)
}

/// Where a walk through the due subscriptions has got to: the (next_period_start, id) of the
/// last one taken.
pub type DueCursor = (i64, String);

/// Active subscriptions whose next period has started by `now`, in (next_period_start, id)
/// order after `after`, at most `limit`: (id, next_period_start).
pub async fn due_page(
    db: &Db,
    now: DateTime<Utc>,
    after: Option<&DueCursor>,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let (after_start, after_id) = after.cloned().unwrap_or((i64::MIN, String::new()));
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT id, next_period_start FROM subscriptions WHERE status = 'active' \
             AND next_period_start IS NOT NULL AND next_period_start <= $1 \
             AND (next_period_start, id) > ($2, $3) \
             ORDER BY next_period_start, id LIMIT $4",
        )
        .bind(ms(now))
        .bind(after_start)
        .bind(after_id)
        .bind(limit)
        .fetch_all(p)
        .await?
    }))
}

/// Reads and locks the subscriptions (in id order, so two writers never deadlock).
pub async fn lock_many(tx: &mut Tx, ids: &[&str]) -> Result<Vec<SubscriptionRow>> {
    let lock = tx.lock_rows();
    bulk::select_by_ids(tx, ids, |ids| {
        format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id {ids} ORDER BY id{lock}")
    })
    .await
}

/// Moves each subscription to its next period start, in one statement.
pub async fn move_many(
    tx: &mut Tx,
    moves: &[(String, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
) -> Result<()> {
    let rows: Vec<Vec<Arg>> = moves
        .iter()
        .map(|(id, next)| {
            vec![
                Arg::from(id.as_str()),
                Arg::from(next.map(ms)),
                Arg::from(ms(now)),
            ]
        })
        .collect();
    bulk::update(
        tx,
        "subscriptions",
        "id",
        &["next_period_start", "updated_at"],
        &rows,
        "next_period_start = v.next_period_start, updated_at = v.updated_at",
    )
    .await?;
    Ok(())
}

/// Subscriptions that will be charged automatically in `(now, until]` and have no reminder of
/// that period yet: (id, next_period_start).
pub async fn owed_reminder(
    db: &Db,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    set_aside: SetAside,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT s.id, s.next_period_start FROM subscriptions s \
         JOIN customers c ON c.id = s.customer_id \
         WHERE s.status = 'active' AND s.auto_charge AND c.auto_charge \
         AND s.next_period_start > $1 AND s.next_period_start <= $2 \
         AND EXISTS (SELECT 1 FROM payment_methods pm WHERE pm.customer_id = c.id \
                     AND pm.is_default AND pm.removed_at IS NULL) \
         AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'upcoming_charge' \
                         AND e.subject_id = s.id AND e.attempt = s.next_period_start) \
         AND {} ORDER BY s.next_period_start LIMIT $3",
        set_aside.condition(WorkKind::Reminders, "s.id", "$4")
    );
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(ms(until))
            .bind(limit)
            .bind(set_aside.value())
            .fetch_all(p)
            .await?
    }))
}

/// Claims up to `limit` subscriptions whose next period has started by `now`, oldest period
/// first, leaving out those set aside and (PostgreSQL) those another batch holds: (id, next
/// period start). The rows stay locked for the rest of `tx`.
pub async fn claim_due(
    tx: &mut Tx,
    now: DateTime<Utc>,
    wall_now: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT id, next_period_start FROM subscriptions s WHERE status = 'active' \
         AND next_period_start IS NOT NULL AND next_period_start <= $1 AND {} \
         ORDER BY next_period_start, id LIMIT $3{}",
        super::work_failures::not_set_aside(WorkKind::Periods, "s.id", "$2"),
        tx.skip_locked()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// How many active subscriptions have a period started by `now` that is not billed yet (leaving
/// out those reported failed).
pub async fn due_count(db: &Db, now: DateTime<Utc>) -> Result<i64> {
    let set_aside = SetAside::Reported;
    let sql = format!(
        "SELECT COUNT(*) FROM subscriptions s WHERE status = 'active' \
         AND next_period_start IS NOT NULL AND next_period_start <= $1 AND {}",
        set_aside.condition(WorkKind::Periods, "s.id", "$2")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(set_aside.value())
            .fetch_one(p)
            .await?
    }))
}

/// Whether any subscription can be claimed now (due and not set aside).
pub async fn claimable(db: &Db, now: DateTime<Utc>, wall_now: i64) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM subscriptions s WHERE status = 'active' \
         AND next_period_start IS NOT NULL AND next_period_start <= $1 AND {})",
        super::work_failures::not_set_aside(WorkKind::Periods, "s.id", "$2")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .fetch_one(p)
            .await?
    }))
}
