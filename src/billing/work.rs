//! Due work, kind by kind. Each kind lives in its own table and is taken from there in batches
//! ([`drain`]); an item that fails is set aside with its own next try and offered again then, so
//! no work is ever stuck behind a queue's give-up. [`pending`] says what is not done yet, which
//! is what the manual clock's "ready", the metrics and the readiness detail report.

use chrono::{DateTime, Utc};
use settled_jobs::job::WorkKind;
use tokio_util::sync::CancellationToken;

use super::statements;
use super::{
    Billing, Result, charges, dunning, gateway_events, generation, invoices, refunds, reminders,
};
use crate::outbox::send::Sender;
use crate::store::{self, charge_attempts, emails, subscriptions, wall_ms, webhook_events};

/// One batch of `kind` (for charges and emails, a pipeline of batches until none is due or
/// `stop` is cancelled): returns how many items it took (0: nothing was due).
pub async fn drain(b: &Billing, kind: WorkKind, stop: &CancellationToken) -> Result<usize> {
    match kind {
        WorkKind::Periods => generation::drain(b).await,
        WorkKind::Drafts => invoices::drain_drafts(b).await,
        WorkKind::Charges => charges::drain(b, stop).await,
        WorkKind::Events => gateway_events::drain(b).await,
        WorkKind::Emails => Ok(sender(b).drain(stop).await?),
        WorkKind::LateFees => dunning::drain_late_fees(b).await,
        WorkKind::Reminders => reminders::drain(b).await,
        WorkKind::Statements => statements::drain(b).await,
        WorkKind::Refunds => refunds::outgoing::drain(b).await,
    }
}

fn sender(b: &Billing) -> Sender<'_> {
    Sender {
        db: &b.db,
        clock: &*b.clock,
        mailer: &*b.mailer,
        config: &b.config,
    }
}

/// How long a sent charge may still be waiting for its answer: until then nobody sends it again.
pub fn charge_in_flight_ms(b: &Billing) -> i64 {
    (b.config.stripe.request_timeout_seconds as i64 + 30) * 1000
}

/// Whether `kind` has an item that can be taken now (due, not set aside, not leased): what the
/// sweep starts a drain for.
pub async fn claimable(b: &Billing, kind: WorkKind, now: DateTime<Utc>) -> Result<bool> {
    let wall = wall_ms();
    Ok(match kind {
        WorkKind::Periods => subscriptions::claimable(&b.db, now, wall).await?,
        WorkKind::Charges => {
            charge_attempts::claimable(&b.db, now, wall, wall - charge_in_flight_ms(b)).await?
        }
        WorkKind::Events => webhook_events::due_count(&b.db, wall, true).await? > 0,
        WorkKind::Emails => emails::due_count(&b.db, now, wall, true).await? > 0,
        WorkKind::Drafts | WorkKind::LateFees => {
            let (drafts, fees) =
                store::invoices::due_counts(&b.db, now, dunning::late_fee_cutoff(b, now)).await?;
            if kind == WorkKind::Drafts {
                drafts > 0
            } else {
                fees > 0
            }
        }
        WorkKind::Reminders => reminders::claimable(b, now).await?,
        WorkKind::Statements => statements::claimable(b, now).await?,
        WorkKind::Refunds => {
            store::refunds::claimable(&b.db, wall - refunds::outgoing::in_flight_ms(b), wall)
                .await?
        }
    })
}

/// Per kind, how many items are due at `now` and not done: waiting, in flight (a charge sent
/// without a recorded answer, an email leased to a batch) or set aside after a failure until it
/// has failed [`REPORTED_AFTER_TRIES`](store::work_failures::REPORTED_AFTER_TRIES) times (then it
/// is the operator's, in `/v1/jobs`). An email keeps counting through its own tries.
pub async fn pending(b: &Billing, now: DateTime<Utc>) -> Result<Vec<(WorkKind, i64)>> {
    let wall = wall_ms();
    let (drafts, fees) =
        store::invoices::due_counts(&b.db, now, dunning::late_fee_cutoff(b, now)).await?;
    Ok(vec![
        (
            WorkKind::Charges,
            charge_attempts::due_count(&b.db, now).await?,
        ),
        (
            WorkKind::Events,
            webhook_events::due_count(&b.db, wall, false).await?,
        ),
        (
            WorkKind::Periods,
            subscriptions::due_count(&b.db, now).await?,
        ),
        (WorkKind::Drafts, drafts),
        (WorkKind::LateFees, fees),
        (
            WorkKind::Emails,
            emails::due_count(&b.db, now, wall, false).await?,
        ),
        (WorkKind::Reminders, reminders::due_count(b, now).await?),
        (WorkKind::Statements, statements::due_count(b, now).await?),
        (
            WorkKind::Refunds,
            store::refunds::pending_count(&b.db).await?,
        ),
    ])
}
