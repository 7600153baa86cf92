//! The drain of charge work: scheduled attempts decided and claimed in batches, their gateway
//! calls made with no transaction open, their outcomes recorded a chunk per transaction, all as
//! one pipeline so the gateway's latency, not the database work around each call, sets the pace.

use settled_jobs::job::WorkKind;
use settled_jobs::status::InvoiceStatus;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Widths;

use super::{BATCH, Billing, Call, Error, RECORD_CHUNK, Result, call, record_in};
use crate::billing::dunning::{self, ChargeFailure};
use crate::store::charge_attempts::{self as attempts, AttemptRow, SendContext};
use crate::store::{Tx, customers, invoices, wall_ms, work_failures};

/// What a claimed scheduled attempt turns out to need.
enum Decision {
    /// Nothing to charge any more (the invoice was settled, auto-charge was switched off): the
    /// attempt was never sent, so it simply goes.
    Drop(String),
    /// It cannot be sent (no gateway, no card, no gateway customer): it fails at once.
    Fail(ChargeFailure),
    /// Send it for this amount with this payment method.
    Send { amount: i64, payment_method: String },
}

/// Decides a scheduled attempt against its invoice, locked (the customer first, then the
/// invoice: the lock order of every money path).
async fn decide(b: &Billing, tx: &mut Tx, a: &AttemptRow) -> Result<Decision> {
    let Some(invoice_id) = a.invoice_id.as_deref() else {
        // A balance charge is sent by the request that made it, never scheduled.
        return Ok(Decision::Drop("a balance charge is never scheduled".into()));
    };
    customers::lock(tx, &a.customer_id).await?;
    let f = invoices::charge_facts(tx, invoice_id, true)
        .await?
        .ok_or_else(|| Error::permanent(format!("no invoice {invoice_id}")))?;
    let collectible = InvoiceStatus::parse(&f.status).is_some_and(InvoiceStatus::is_collectible);
    let switched_off = a.automatic && (!f.invoice_auto_charge || !f.customer_auto_charge);
    if !collectible || f.amount_due <= 0 || switched_off {
        return Ok(Decision::Drop(format!(
            "invoice is {} with {} due{}",
            f.status,
            f.amount_due,
            if switched_off {
                "; auto-charge is off"
            } else {
                ""
            }
        )));
    }
    let pm = a.payment_method_id.clone().or(f.default_method.clone());
    let problem = if b.gateways.is_empty() {
        Some(("gateway_not_configured", "no payment gateway is configured"))
    } else if pm.is_none() {
        Some((
            "no_payment_method",
            "the customer has no default payment method",
        ))
    } else if f.gateway_customer_id.is_none() {
        Some((
            "no_gateway_customer",
            "the customer has no customer at the gateway",
        ))
    } else {
        None
    };
    if let Some((code, message)) = problem {
        return Ok(Decision::Fail(ChargeFailure {
            code: code.to_string(),
            message: message.to_string(),
            payment_intent_id: None,
        }));
    }
    let amount = if a.automatic {
        f.amount_due
    } else {
        a.amount.min(f.amount_due)
    };
    Ok(Decision::Send {
        amount,
        payment_method: pm.unwrap_or_default(),
    })
}

/// One claimed attempt, ready to send: its row as it will be sent, and what the request needs
/// besides.
struct Claimed {
    attempt: AttemptRow,
    context: SendContext,
    /// An unknown or abandoned attempt asked again (an answer still unknown is set aside).
    resolving: bool,
}

/// Claims a batch in one transaction: decides scheduled attempts (dropping, failing or fixing and
/// marking them sent) and leases unknown and abandoned ones.
async fn claim(b: &Billing, most: i64) -> Result<(Vec<Claimed>, usize)> {
    let now = b.now();
    let wall = wall_ms();
    let in_flight_for = (b.config.stripe.request_timeout_seconds as i64 + 30) * 1000;
    let mut tx = b.db.begin().await?;
    let most = most.min(b.batch_size(BATCH as usize) as i64);
    let mut scheduled = attempts::claim_scheduled(&mut tx, now, wall, most).await?;
    // Locks are taken customer by customer, each customer's invoices in id order.
    scheduled.sort_by(|x, y| (&x.customer_id, &x.invoice_id).cmp(&(&y.customer_id, &y.invoice_id)));
    // Attempts settled here without a call (dropped, failed at once, set aside).
    let mut settled = 0;
    let mut claimed = Vec::new();
    let mut done: Vec<String> = Vec::new();
    for a in scheduled {
        tx.savepoint().await?;
        let outcome = async {
            match decide(b, &mut tx, &a).await? {
                Decision::Drop(why) => {
                    attempts::delete_unsent(&mut tx, &a.id).await?;
                    tracing::info!(
                        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
                        attempt = a.attempt,
                        why = %why,
                        "scheduled charge dropped: nothing to charge automatically"
                    );
                    Ok::<_, Error>(None)
                }
                Decision::Fail(f) => {
                    dunning::mark_failed(b, &mut tx, &a, &f, now).await?;
                    Ok(None)
                }
                Decision::Send {
                    amount,
                    payment_method,
                } => {
                    if !attempts::claim(&mut tx, &a, amount, Some(&payment_method), now).await? {
                        // Another charge of the invoice is in flight (taken since the claim's
                        // read): this one waits until that one's outcome is recorded.
                        return Ok(Some(None));
                    }
                    let row = attempts::get_in(&mut tx, &a.id)
                        .await?
                        .ok_or_else(|| Error::permanent("the claimed attempt vanished"))?;
                    let context = attempts::send_context_in(&mut tx, &a.id).await?;
                    Ok(Some(Some(Claimed {
                        attempt: row,
                        context,
                        resolving: false,
                    })))
                }
            }
        }
        .await;
        match outcome {
            // Left as it is, for a later batch.
            Ok(Some(None)) => tx.release_savepoint().await?,
            Ok(c) => {
                tx.release_savepoint().await?;
                match c.flatten() {
                    Some(c) => claimed.push(c),
                    None => {
                        done.push(a.id.clone());
                        settled += 1;
                    }
                }
            }
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                work_failures::set_aside(
                    &mut tx,
                    WorkKind::Charges,
                    &a.id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::error!(charge_attempt_id = %a.id, error = %e, "charge attempt set aside");
                settled += 1;
            }
        }
    }
    let room = most - claimed.len() as i64;
    if room > 0 {
        let lease = wall + in_flight_for;
        for a in
            attempts::claim_unresolved(&mut tx, wall - in_flight_for, wall, lease, room).await?
        {
            let context = attempts::send_context_in(&mut tx, &a.id).await?;
            claimed.push(Claimed {
                attempt: a,
                context,
                resolving: true,
            });
        }
    }
    let done: Vec<&str> = done.iter().map(String::as_str).collect();
    work_failures::clear(&mut tx, WorkKind::Charges, &done).await?;
    tx.commit().await?;
    Ok((claimed, settled))
}

/// Due charge work, as one pipeline ([`crate::pipeline`]): batches of attempts are claimed
/// while the calls of earlier ones are still out, up to `stripe.max_requests_in_flight` calls at
/// once, and outcomes are recorded a chunk per transaction as they come back (on PostgreSQL
/// several chunks at once). It ends when nothing more can be claimed and every call is
/// recorded, or, once `stop` is cancelled, after the calls already made are recorded. Returns
/// how many attempts it handled (0: none was due).
pub async fn drain(b: &Billing, stop: &CancellationToken) -> Result<usize> {
    let widths = Widths {
        batch: b.batch_size(BATCH as usize),
        in_flight: calls_in_flight(b),
        record_chunk: RECORD_CHUNK,
        records_at_once: records_at_once(b),
    };
    crate::pipeline::run(
        stop,
        widths,
        |most| claim(b, most as i64),
        |c: Claimed| async move {
            let result: Call = call(b, &c.attempt, &c.context).await;
            (c, result)
        },
        |chunk: Vec<(Claimed, Call)>| record_chunk(b, chunk),
    )
    .await
}

/// Gateway calls one drain has out at once: `stripe.max_requests_in_flight`.
fn calls_in_flight(b: &Billing) -> usize {
    b.config.stripe.max_requests_in_flight.max(1)
}

/// Outcome chunks recorded at once: several on PostgreSQL, where transactions on different
/// customers run side by side; one on SQLite, which has one writer anyway.
fn records_at_once(b: &Billing) -> usize {
    if b.db.backend() == "postgres" { 4 } else { 1 }
}

/// Records a chunk of finished calls in one transaction, each in a savepoint of its own. The
/// answers are in hand and cannot be asked for again cheaply, so a transaction the database
/// breaks off (a deadlock, a serialization failure) is simply run again.
async fn record_chunk(b: &Billing, mut chunk: Vec<(Claimed, Call)>) -> Result<()> {
    // The lock order of every money path: customer by customer, each one's invoices by id.
    chunk.sort_by(|(x, _), (y, _)| {
        (&x.attempt.customer_id, &x.attempt.invoice_id)
            .cmp(&(&y.attempt.customer_id, &y.attempt.invoice_id))
    });
    let mut tries = 0u64;
    loop {
        match record_chunk_once(b, &chunk).await {
            Err(Error::Store(e)) if e.is_contention() && tries < 5 => {
                tries += 1;
                tracing::debug!(error = %e, tries, "recording charge outcomes again");
                let jitter = rand::random::<u64>() % 50;
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries + jitter)).await;
            }
            other => return other,
        }
    }
}

async fn record_chunk_once(b: &Billing, chunk: &[(Claimed, Call)]) -> Result<()> {
    let now = b.now();
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let mut counted = Vec::with_capacity(chunk.len());
    for (c, call) in chunk {
        let id = c.attempt.id.clone();
        tx.savepoint().await?;
        let outcome = match call {
            Ok((gateway, result)) => {
                record_in(
                    b,
                    &mut tx,
                    &id,
                    gateway,
                    result.clone(),
                    c.resolving,
                    now,
                    wall,
                )
                .await
            }
            Err(e) => Err(Error::Later(e.to_string())),
        };
        match outcome {
            Ok(Some(count)) => {
                tx.release_savepoint().await?;
                counted.push(count);
            }
            Ok(None) => tx.release_savepoint().await?,
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                attempts::set_lease(&mut tx, &id, None).await?;
                work_failures::set_aside(
                    &mut tx,
                    WorkKind::Charges,
                    &id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::warn!(charge_attempt_id = %id, error = %e, "charge attempt set aside");
            }
        }
    }
    tx.commit().await?;
    for c in counted {
        c.record();
    }
    Ok(())
}
