//! Statements over many rows at once: multi-row inserts and updates, and reads by a list of ids.
//!
//! On PostgreSQL every column travels as one typed array (`UNNEST($1::text[], ...)`, `= ANY($1)`),
//! so a statement's text does not depend on how many rows it carries: it is prepared once per
//! connection, and a batch of any size costs one round trip. SQLite, in-process and without
//! arrays, gets multi-row `VALUES` lists and `IN (...)` lists, split to stay within its limit on
//! bound parameters (32,766 per statement).

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{Error, Result, Tx};

/// Bound parameters per SQLite statement, under its limit.
const MAX_BINDS: usize = 30_000;
/// Rows per SQLite statement, whatever their width.
const MAX_ROWS: usize = 1_000;

/// One value bound into a bulk statement. A column holds one kind of value in every row
/// (integers, texts or booleans; the `Opt` forms may be NULL).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::OptInt(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_string())
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Arg {
        Arg::OptText(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(v)
    }
}

/// One column of a batch as a PostgreSQL array.
#[derive(Debug, PartialEq)]
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<bool>),
}

impl Column {
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "int8[]",
            Column::Text(_) => "text[]",
            Column::Bool(_) => "bool[]",
        }
    }
}

/// Turns rows into one array per column; a column whose rows mix kinds is a caller's bug,
/// reported as a protocol error rather than written wrongly.
fn columns(rows: &[Vec<Arg>], width: usize) -> Result<Vec<Column>> {
    let mixed = |i: usize| Error::corrupt(format!("bulk column {i} mixes value kinds"));
    let mut cols = Vec::with_capacity(width);
    for i in 0..width {
        let col = match rows.first().map(|r| &r[i]) {
            Some(Arg::Int(_) | Arg::OptInt(_)) => Column::Int(
                rows.iter()
                    .map(|r| match &r[i] {
                        Arg::Int(v) => Ok(Some(*v)),
                        Arg::OptInt(v) => Ok(*v),
                        _ => Err(mixed(i)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(Arg::Bool(_)) => Column::Bool(
                rows.iter()
                    .map(|r| match &r[i] {
                        Arg::Bool(v) => Ok(*v),
                        _ => Err(mixed(i)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => Column::Text(
                rows.iter()
                    .map(|r| match &r[i] {
                        Arg::Text(v) => Ok(Some(v.clone())),
                        Arg::OptText(v) => Ok(v.clone()),
                        _ => Err(mixed(i)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        cols.push(col);
    }
    Ok(cols)
}

/// `UNNEST($first::type[], ...)` for these columns.
fn unnest(cols: &[Column], first: usize) -> String {
    let args: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", first + i, c.sql_type()))
        .collect();
    format!("UNNEST({})", args.join(", "))
}

/// `?, ?, ...` for `n` parameters, bound in order. SQLite's anonymous parameters, not `$1`:
/// binding a numbered one makes SQLite look its name up in a list of every name in the
/// statement, so a statement of thousands of `$N` costs time quadratic in their number (it was
/// most of the CPU of a batch of invoices), while `?` is found by position alone.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// How many rows of `width` parameters fit in one SQLite statement.
fn rows_per_statement(width: usize) -> usize {
    (MAX_BINDS / width.max(1)).clamp(1, MAX_ROWS)
}

/// `(?, ?), (?, ?), ...` for `rows` rows of `width` parameters.
fn values(rows: usize, width: usize) -> String {
    let row = format!("({})", placeholders(width));
    vec![row.as_str(); rows].join(", ")
}

macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::OptInt(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
                Arg::OptText(v) => q.bind(v.as_deref()),
                Arg::Bool(v) => q.bind(*v),
            };
        }
        q
    }};
}

macro_rules! bind_columns {
    ($q:expr, $cols:expr) => {{
        let mut q = $q;
        for c in $cols {
            q = match c {
                Column::Int(v) => q.bind(v),
                Column::Text(v) => q.bind(v),
                Column::Bool(v) => q.bind(v),
            };
        }
        q
    }};
}

/// The statements that write `rows`: `(sql, rows of this statement)`. `make` gets the row
/// source: `SELECT * FROM UNNEST(...)` on PostgreSQL (all rows at once), `VALUES (...), ...`
/// on SQLite (a chunk at a time).
enum Plan<'a> {
    Postgres(String, Vec<Column>),
    Sqlite(Vec<(String, &'a [Vec<Arg>])>),
}

fn plan<'a>(
    tx: &Tx,
    rows: &'a [Vec<Arg>],
    width: usize,
    make: impl Fn(&str) -> String,
) -> Result<Plan<'a>> {
    Ok(match tx {
        Tx::Postgres(_) => {
            let cols = columns(rows, width)?;
            let sql = make(&format!("SELECT * FROM {}", unnest(&cols, 1)));
            Plan::Postgres(sql, cols)
        }
        Tx::Sqlite(_) => Plan::Sqlite(
            rows.chunks(rows_per_statement(width))
                .map(|chunk| {
                    let source = format!("VALUES {}", values(chunk.len(), width));
                    (make(&source), chunk)
                })
                .collect(),
        ),
    })
}

/// Runs a planned statement that returns nothing; returns the rows it affected.
async fn execute(tx: &mut Tx, plan: Plan<'_>) -> Result<u64> {
    let mut affected = 0;
    match (tx, plan) {
        (Tx::Postgres(t), Plan::Postgres(sql, cols)) => {
            affected += bind_columns!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &cols)
                .execute(&mut **t)
                .await?
                .rows_affected();
        }
        (Tx::Sqlite(t), Plan::Sqlite(statements)) => {
            for (sql, chunk) in statements {
                affected += bind_args!(
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str())),
                    chunk.iter().flatten()
                )
                .execute(&mut **t)
                .await?
                .rows_affected();
            }
        }
        _ => unreachable!("a plan is made for the transaction's own backend"),
    }
    Ok(affected)
}

/// Inserts `rows` into `table` (each row one value per column, in order). `suffix` follows the
/// rows (`ON CONFLICT ... DO NOTHING`); returns how many rows were inserted.
pub async fn insert(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Arg>],
    suffix: &str,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let list = columns.join(", ");
    let plan = plan(tx, rows, columns.len(), |source| {
        format!("INSERT INTO {table} ({list}) {source} {suffix}")
    })?;
    execute(tx, plan).await
}

/// Inserts like [`insert`] and returns the first column of each row inserted (`RETURNING`), so
/// the caller learns which rows an `ON CONFLICT DO NOTHING` kept.
pub async fn insert_returning(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Arg>],
    suffix: &str,
) -> Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let list = columns.join(", ");
    let first = columns[0];
    let plan = plan(tx, rows, columns.len(), |source| {
        format!("INSERT INTO {table} ({list}) {source} {suffix} RETURNING {first}")
    })?;
    let mut kept = Vec::with_capacity(rows.len());
    match (tx, plan) {
        (Tx::Postgres(t), Plan::Postgres(sql, cols)) => {
            let ids: Vec<String> =
                bind_columns!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())), &cols)
                    .fetch_all(&mut **t)
                    .await?;
            kept.extend(ids);
        }
        (Tx::Sqlite(t), Plan::Sqlite(statements)) => {
            for (sql, chunk) in statements {
                let ids: Vec<String> = bind_args!(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())),
                    chunk.iter().flatten()
                )
                .fetch_all(&mut **t)
                .await?;
                kept.extend(ids);
            }
        }
        _ => unreachable!("a plan is made for the transaction's own backend"),
    }
    Ok(kept)
}

/// Applies `set` to the rows of `table` whose `key` column matches each row's first value. The
/// rows are a CTE `v(key, columns...)`, so `set` reads them as `v.name`.
pub async fn update(
    tx: &mut Tx,
    table: &str,
    key: &str,
    columns: &[&str],
    rows: &[Vec<Arg>],
    set: &str,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let list = columns.join(", ");
    let plan = plan(tx, rows, columns.len() + 1, |source| {
        format!(
            "WITH v ({key}, {list}) AS ({source}) UPDATE {table} SET {set} FROM v \
             WHERE {table}.{key} = v.{key}"
        )
    })?;
    execute(tx, plan).await
}

/// Reads the rows `sql_for(condition)` selects for `ids`: the condition, to follow a column
/// name, is `= ANY($1)` on PostgreSQL and `IN (?, ...)` on SQLite (split into several
/// statements for a long list). Rows come back in statement order.
pub async fn select_by_ids<T>(
    tx: &mut Tx,
    ids: &[&str],
    sql_for: impl Fn(&str) -> String,
) -> Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match tx {
        Tx::Postgres(t) => {
            let sql = sql_for("= ANY($1)");
            Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(ids)
                .fetch_all(&mut **t)
                .await?)
        }
        Tx::Sqlite(t) => {
            let mut rows = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(MAX_ROWS) {
                let sql = sql_for(&format!("IN ({})", placeholders(chunk.len())));
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
                for id in chunk {
                    q = q.bind(*id);
                }
                rows.extend(q.fetch_all(&mut **t).await?);
            }
            Ok(rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_stay_within_the_bind_limit() {
        assert_eq!(rows_per_statement(20), 1_000);
        assert_eq!(rows_per_statement(40), 750);
        assert_eq!(rows_per_statement(0), 1_000);
        assert_eq!(placeholders(2), "?, ?");
        assert_eq!(values(2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn postgres_columns_are_typed_arrays_and_refuse_mixed_kinds() {
        let rows = vec![
            vec![Arg::from("a"), Arg::from(Some(1)), Arg::from(true)],
            vec![
                Arg::from(None::<String>),
                Arg::from(None::<i64>),
                Arg::from(false),
            ],
        ];
        let cols = columns(&rows, 3).unwrap();
        assert_eq!(
            cols,
            vec![
                Column::Text(vec![Some("a".into()), None]),
                Column::Int(vec![Some(1), None]),
                Column::Bool(vec![true, false]),
            ]
        );
        assert_eq!(
            unnest(&cols, 1),
            "UNNEST($1::text[], $2::int8[], $3::bool[])"
        );
        let mixed = vec![vec![Arg::from(1)], vec![Arg::from("x")]];
        assert!(columns(&mixed, 1).is_err());
    }
}
