//! The operator's commands about the daemon itself rather than its records: opening an existing
//! database for an admin command (never creating or migrating one), `migrate --status`,
//! `check-config --connect`, `prune` and `backup`.

use std::path::Path;

use anyhow::bail;
use serde_json::json;

use super::exit;
use super::request::Target;
use crate::config::{Config, DatabaseKind, redact_url};
use crate::store::Db;

/// Where the configured database is, for people (the password of a URL hidden).
fn where_db(config: &Config) -> String {
    match config.database_kind() {
        Ok(DatabaseKind::Sqlite(path)) => path.display().to_string(),
        Ok(DatabaseKind::Postgres(url)) => redact_url(&url),
        Err(_) => redact_url(&config.database.url),
    }
}

/// A SQLite file that does not exist yet (a PostgreSQL database is asked instead).
fn missing_sqlite(config: &Config) -> Option<std::path::PathBuf> {
    match config.database_kind() {
        Ok(DatabaseKind::Sqlite(path)) if !path.exists() => Some(path),
        _ => None,
    }
}

/// The configured database for an admin command: it must exist and be migrated. Only `serve`
/// and `migrate` create or migrate one, so a command run with the wrong configuration says so
/// instead of making an empty database (and a token) where it stands.
pub async fn open_local(config: Config) -> anyhow::Result<Target> {
    if let Some(path) = missing_sqlite(&config) {
        bail!(
            "no database at {}: check --config (or {}), or start the daemon (`settled serve`) \
             or run `settled migrate` first; to use a running daemon instead, give --url",
            path.display(),
            crate::config::system_config_path().display()
        );
    }
    let db = Db::open_sized(&config, 2)?;
    if !db.ping().await {
        db.close().await;
        bail!("the database at {} does not answer", where_db(&config));
    }
    let pending = db.pending_migrations().await.len();
    db.close().await;
    if pending > 0 {
        bail!(
            "the database at {} is not migrated ({pending} migrations pending): run \
             `settled migrate` (or start the daemon) first",
            where_db(&config)
        );
    }
    let context = crate::app::Context::build_for_cli(config).await?;
    context.http.set_ready();
    Ok(Target::Local(context.http))
}

/// `settled migrate --status`: every migration and whether it is applied; nothing changes.
pub async fn migrate_status(config: &Config, json: bool) -> anyhow::Result<u8> {
    let rows = if missing_sqlite(config).is_some() {
        None
    } else {
        let db = Db::open_sized(config, 2)?;
        if !db.ping().await {
            bail!("the database at {} does not answer", where_db(config));
        }
        let rows = db.migration_status().await;
        db.close().await;
        Some(rows)
    };
    let pending = rows
        .as_ref()
        .map(|r| r.iter().filter(|(_, _, _, applied)| !applied).count());
    if json {
        let list: Vec<_> = rows
            .iter()
            .flatten()
            .map(|(history, version, description, applied)| {
                json!({"history": history, "version": version, "description": description,
                       "applied": applied})
            })
            .collect();
        let answer = json!({"object": "migration_status", "database": where_db(config),
            "exists": rows.is_some(), "pending": pending, "migrations": list});
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(exit::OK);
    }
    let Some(rows) = rows else {
        println!(
            "no database at {} yet: `settled migrate` or `settled serve` creates it",
            where_db(config)
        );
        return Ok(exit::OK);
    };
    println!(
        "{:<10} {:<16} {:<9} DESCRIPTION",
        "HISTORY", "VERSION", "STATE"
    );
    for (history, version, description, applied) in &rows {
        let history = if *history == "job queue" {
            "queue"
        } else {
            history
        };
        let state = if *applied { "applied" } else { "pending" };
        println!("{history:<10} {version:<16} {state:<9} {description}");
    }
    match pending.unwrap_or(0) {
        0 => println!("up to date ({}, {})", where_db(config), rows.len()),
        n => println!("{n} pending: `settled migrate` applies them"),
    }
    Ok(exit::OK)
}

/// `settled check-config --connect`: the database, the Stripe key and the mail transport, each
/// tried for real; one line each, exit 1 when any fails.
pub async fn check_connect(config: &Config) -> anyhow::Result<u8> {
    let mut failed = false;
    let mut line = |what: &str, result: anyhow::Result<String>| match result {
        Ok(text) => println!("{what:<9} ok      {text}"),
        Err(e) => {
            failed = true;
            println!("{what:<9} FAILED  {:#}", e);
        }
    };
    line("database", check_database(config).await);
    match crate::gateway::stripe::check(config).await {
        Some(result) => line(crate::gateway::stripe::NAME, result),
        None => println!(
            "{:<9} skipped no stripe.api_key configured",
            crate::gateway::stripe::NAME
        ),
    }
    let mail = async {
        crate::mail::LettreMailer::from_config(config)?
            .check()
            .await
            .map(|t| match config.email.smtp_url.is_empty() {
                true => t,
                false => format!("{}: {t}", redact_url(&config.email.smtp_url)),
            })
    };
    line("mail", mail.await);
    Ok(if failed { exit::FAILURE } else { exit::OK })
}

async fn check_database(config: &Config) -> anyhow::Result<String> {
    if let Some(path) = missing_sqlite(config) {
        return Ok(format!(
            "no database at {} yet (serve or migrate creates it)",
            path.display()
        ));
    }
    let db = Db::open_sized(config, 1)?;
    let answered = db.ping().await;
    let pending = if answered {
        db.pending_migrations().await.len()
    } else {
        0
    };
    db.close().await;
    anyhow::ensure!(answered, "{} does not answer", where_db(config));
    Ok(match pending {
        0 => format!("{} ({}): migrated", where_db(config), db.backend()),
        n => format!(
            "{} ({}): {n} migrations pending (serve applies them)",
            where_db(config),
            db.backend()
        ),
    })
}

/// `settled prune [--dry-run]`: what retention prunes, now.
pub async fn prune(config: Config, dry_run: bool, json: bool) -> anyhow::Result<u8> {
    let target = open_local(config).await?;
    let Some(state) = target.local() else {
        bail!("prune runs against the database");
    };
    let retention = state.billing.config.retention.clone();
    let pruned = crate::runner::retention::prune(&state.billing, dry_run).await?;
    state.billing.db.close().await;
    if json {
        let answer = json!({"object": "prune", "dry_run": dry_run,
            "webhook_body_days": retention.webhook_body_days,
            "email_body_days": retention.email_body_days,
            "webhook_bodies": pruned.webhook_bodies, "email_snapshots": pruned.email_snapshots});
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(exit::OK);
    }
    let verb = if dry_run { "would prune" } else { "pruned" };
    let age = |days: u32| match days {
        0 => "kept for ever".to_string(),
        d => format!("older than {d} days"),
    };
    println!(
        "{verb} {} webhook bodies ({}) and {} email snapshots ({})",
        pruned.webhook_bodies,
        age(retention.webhook_body_days),
        pruned.email_snapshots,
        age(retention.email_body_days)
    );
    if pruned.webhook_bodies > 0 {
        println!(
            "pruned webhook events keep their rows and outcomes but can no longer be replayed"
        );
    }
    Ok(exit::OK)
}

/// `settled backup PATH`: SQLite's online copy; PostgreSQL is pointed at pg_dump.
pub async fn backup(config: &Config, path: &Path) -> anyhow::Result<u8> {
    match config.database_kind()? {
        DatabaseKind::Postgres(url) => {
            eprintln!(
                "settled: backup copies SQLite databases only; back PostgreSQL up with pg_dump:\n  \
                 pg_dump --format=custom --file={} '{}'\n(see the README's Backups section)",
                path.display(),
                redact_url(&url)
            );
            Ok(exit::REFUSED)
        }
        DatabaseKind::Sqlite(db_path) => {
            if !db_path.exists() {
                bail!("no database at {} to back up", db_path.display());
            }
            let db = Db::open_sized(config, 1)?;
            let result = db.backup_to(path).await;
            db.close().await;
            result?;
            println!("backed up {} to {}", db_path.display(), path.display());
            Ok(exit::OK)
        }
    }
}
