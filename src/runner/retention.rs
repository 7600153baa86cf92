//! Retention: stored webhook bodies and email snapshots hold customer data and grow for ever, so
//! past their configured age (`[retention]`) they are pruned. The rows, with their status and
//! outcome, stay: what happened is kept, the payloads go. The sweep runs this hourly where
//! workers run; `settled prune [--dry-run]` runs it on demand.

use chrono::Duration as Days;

use crate::billing::Billing;
use crate::store;

/// What one prune did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub webhook_bodies: i64,
    pub email_snapshots: i64,
}

/// Prunes what is past its age. Webhook ages count in real time (they are stamped on arrival);
/// email ages in billing time (they are stamped by the daemon's clock). An age of 0 keeps all.
pub async fn prune(billing: &Billing, dry_run: bool) -> store::Result<Pruned> {
    let retention = &billing.config.retention;
    let mut pruned = Pruned::default();
    if retention.webhook_body_days > 0 {
        let age_ms = i64::from(retention.webhook_body_days) * 86_400_000;
        let before = store::wall_ms() - age_ms;
        pruned.webhook_bodies =
            store::webhook_events::prune_bodies(&billing.db, before, dry_run).await?;
    }
    if retention.email_body_days > 0 {
        let before = billing.now() - Days::days(i64::from(retention.email_body_days));
        pruned.email_snapshots =
            store::emails::prune_snapshots(&billing.db, before, dry_run).await?;
    }
    Ok(pruned)
}
