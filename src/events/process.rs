//! The process_event job: applies one stored event in one transaction, exactly once. The row is
//! locked and re-read, so two jobs for the same event (a sweep's and an operator's replay) run
//! one after the other and the second finds the event already done.

use settled_jobs::error::JobError;

use super::apply::{self, EventOutcome};
use super::store::{self, STRIPE};
use crate::app::State;
use crate::store::ms;

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(anyhow::Error::new(e).context("webhook event storage"))
}

#[tracing::instrument(skip_all, fields(event = %id))]
pub async fn process_event(state: &State, id: &str) -> Result<(), JobError> {
    let mut tx = state.db.begin().await.map_err(transient)?;
    let Some(row) = store::get_locked(&mut tx, id).await.map_err(transient)? else {
        store::rollback(tx).await.map_err(transient)?;
        tracing::warn!("no such webhook event; nothing to process");
        return Ok(());
    };
    // Done already (a second job for the same event, or one that outlived a replay's run).
    // A failed event runs again: that is what retrying its job asks for.
    if row.status == "processed" || row.status == "ignored" {
        store::rollback(tx).await.map_err(transient)?;
        return Ok(());
    }
    let outcome = match serde_json::from_str::<serde_json::Value>(&row.body) {
        Ok(event) if row.source == STRIPE => apply::stripe_event(state, &mut tx, &event).await,
        Ok(mut event) => {
            // A Standard Webhooks body has no id of its own: the delivery's webhook-id is the
            // event's identity (and keys the payment it records).
            if event.get("id").is_none() && event.is_object() {
                event["id"] = serde_json::Value::String(row.event_id.clone());
            }
            apply::standard_event(state, &mut tx, &row.source, &event).await
        }
        Err(e) => Err(JobError::permanent(format!(
            "the stored body is not JSON: {e}"
        ))),
    };
    let now = ms(state.clock.now());
    match outcome {
        Ok(EventOutcome::Processed) => {
            store::set_outcome(&mut tx, id, "processed", None, now)
                .await
                .map_err(transient)?;
            tx.commit().await.map_err(transient)?;
            crate::metrics::event_processed(&row.kind, "processed");
            tracing::info!(source = %row.source, kind = %row.kind, "webhook event processed");
            Ok(())
        }
        Ok(EventOutcome::Ignored(reason)) => {
            store::set_outcome(&mut tx, id, "ignored", Some(&reason), now)
                .await
                .map_err(transient)?;
            tx.commit().await.map_err(transient)?;
            crate::metrics::event_processed(&row.kind, "ignored");
            tracing::info!(source = %row.source, kind = %row.kind, reason = %reason, "webhook event ignored");
            Ok(())
        }
        Err(JobError::Transient(e)) => {
            store::rollback(tx).await.map_err(transient)?;
            Err(JobError::Transient(e))
        }
        Err(JobError::Permanent(e)) => {
            // Nothing of the failed attempt stays; the failure itself is recorded on its own.
            store::rollback(tx).await.map_err(transient)?;
            let message = format!("{e:#}");
            store::mark_failed(&state.db, id, &message, now)
                .await
                .map_err(transient)?;
            crate::metrics::event_processed(&row.kind, "failed");
            tracing::error!(source = %row.source, kind = %row.kind, error = %message, "webhook event failed");
            Err(JobError::Permanent(e))
        }
    }
}
