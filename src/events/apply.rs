//! What a stored event does to the books. Called by the process_event job inside one transaction
//! per event; returns whether the event was applied or deliberately ignored (and why).

use settled_jobs::error::JobError;

use crate::app::State;
use crate::store::Tx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Processed,
    /// Stored but nothing to do (unknown type, unknown invoice ...): the reason is shown to operators.
    Ignored(String),
}

/// Applies one Stripe event (the parsed JSON body) in the caller's transaction.
pub async fn stripe_event(
    _state: &State,
    _tx: &mut Tx,
    event: &serde_json::Value,
) -> Result<EventOutcome, JobError> {
    let kind = event.get("type").and_then(|t| t.as_str()).unwrap_or("");
    Ok(EventOutcome::Ignored(format!(
        "event type {kind} is not handled"
    )))
}

/// Applies one Standard Webhooks event from `source` in the caller's transaction.
pub async fn standard_event(
    _state: &State,
    _tx: &mut Tx,
    _source: &str,
    event: &serde_json::Value,
) -> Result<EventOutcome, JobError> {
    let kind = event.get("type").and_then(|t| t.as_str()).unwrap_or("");
    Ok(EventOutcome::Ignored(format!(
        "event type {kind} is not handled"
    )))
}
