//! Sending one outbox row: render it from its snapshot, hand it to the mailer, record how the
//! try ended. A temporary failure is tried again after a growing delay; a permanent one leaves
//! the row `failed` with the reason, and nothing else waits for it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use settled_jobs::clock::Clock;
use settled_jobs::mailer::{MailError, Mailer, OutgoingEmail};

use super::render;
use super::snapshot::Snapshot;
use crate::config::Config;
use crate::pipeline::Widths;
use crate::store::emails::{self, EmailRow, Outcome};
use crate::store::{Db, Result, from_ms, wall_ms};

/// Tries at one message before a temporary failure counts as permanent (about three days with
/// the delays of [`retry_delay`]).
pub const MAX_TRIES: i64 = 80;

/// Delay before try `tries + 1` after `tries` temporary failures: 2 s doubling up to an hour.
pub fn retry_delay(tries: i64) -> Duration {
    let exp = tries.clamp(1, 12) as u32;
    Duration::from_secs((1u64 << exp).min(3600))
}

/// The addresses a message can go to, and a note naming the ones it cannot.
pub fn deliverable(recipients: &str) -> (Vec<String>, Option<String>) {
    let list: Vec<String> = serde_json::from_str(recipients).unwrap_or_default();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for address in list {
        if address.parse::<lettre::Address>().is_ok() {
            ok.push(address);
        } else {
            refused.push(address);
        }
    }
    let note = (!refused.is_empty()).then(|| {
        format!(
            "undeliverable address{} left out: {}",
            if refused.len() > 1 { "es" } else { "" },
            refused.join(", ")
        )
    });
    (ok, note)
}

/// Builds the message a row stands for: its recipients, rendered subject, text, HTML and PDFs.
pub fn message(config: &Config, row: &EmailRow) -> Result<(OutgoingEmail, Option<String>), String> {
    let snap: Snapshot = serde_json::from_str(&row.context)
        .map_err(|e| format!("the stored context is unreadable: {e}"))?;
    let rendered = render::render(config, &row.template, &snap)
        .map_err(|e| format!("cannot render the {} template: {e}", row.template))?;
    let (to, note) = deliverable(&row.recipients);
    let business = &config.business;
    let email = OutgoingEmail {
        message_id: row.message_id.clone(),
        date: Some(from_ms(if snap.at > 0 { snap.at } else { row.created_at })),
        from: config.email.from.clone(),
        reply_to: (!business.support_email.is_empty()).then(|| business.support_email.clone()),
        to,
        subject: rendered.subject,
        text: rendered.text,
        html: Some(rendered.html),
        attachments: rendered.attachments,
    };
    Ok((email, note))
}

/// What is needed to send: the database, the clock, the transport and the settings.
pub struct Sender<'a> {
    pub db: &'a Db,
    pub clock: &'a dyn Clock,
    pub mailer: &'a dyn Mailer,
    pub config: &'a std::sync::Arc<Config>,
}

/// How one try at a row ended, before it is recorded.
enum Tried {
    Sent { note: Option<String> },
    Failed { reason: String },
    Retry { reason: String, delay: Duration },
}

/// Emails one claim takes at most.
const BATCH: usize = 200;

/// Finished tries recorded per transaction at most. Small, so a crash between the transport's
/// "sent" and its record leaves few messages to go out a second time (with the same
/// Message-ID); a record commits whatever finished meanwhile, so under light load that is one.
const RECORD_CHUNK: usize = 16;

impl Sender<'_> {
    /// Pending rows due, as one pipeline ([`crate::pipeline`]): rows are claimed (leased) a batch
    /// at a time while earlier ones are still being sent, rendered and handed to the transport
    /// `email.max_sends_in_flight` at a time with no transaction open, and each finished try is
    /// recorded at once (whatever finished meanwhile shares the transaction, at most
    /// [`RECORD_CHUNK`]). It ends when nothing more is due, or, once `stop` is cancelled, when
    /// the messages already taken are recorded. Returns how many rows it took (0: none was due).
    pub async fn drain(&self, stop: &CancellationToken) -> Result<usize> {
        let widths = Widths {
            batch: self.config.jobs.batch_size.clamp(1, BATCH),
            in_flight: self.config.email.max_sends_in_flight.max(1),
            record_chunk: RECORD_CHUNK,
            records_at_once: if self.db.backend() == "postgres" {
                2
            } else {
                1
            },
        };
        crate::pipeline::run(
            stop,
            widths,
            |most| async move { Ok((self.claim(most as i64).await?, 0)) },
            |row: EmailRow| async move {
                let tried = self.try_one(&row).await;
                (row, tried)
            },
            |chunk: Vec<(EmailRow, (String, Tried))>| self.record(chunk),
        )
        .await
    }

    /// Leases up to `most` pending rows that are due.
    async fn claim(&self, most: i64) -> Result<Vec<EmailRow>> {
        let now = self.clock.now();
        let wall = wall_ms();
        let lease = wall + (self.config.email.smtp_timeout_seconds as i64 + 30) * 1000;
        let mut tx = self.db.begin().await?;
        let rows = emails::claim(&mut tx, now, wall, lease, most).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Renders a row and hands it to the transport; nothing is written.
    async fn try_one(&self, row: &EmailRow) -> (String, Tried) {
        // Rendering (templates and the PDF) is CPU work: on the blocking pool, so the messages
        // in flight render on every core instead of taking turns on this task's.
        let (config, owned) = (self.config.clone(), row.clone());
        let built = tokio::task::spawn_blocking(move || message(&config, &owned))
            .await
            .unwrap_or_else(|e| Err(format!("rendering stopped: {e}")));
        let (email, note) = match built {
            Ok(built) => built,
            Err(reason) => return (String::new(), Tried::Failed { reason }),
        };
        if email.to.is_empty() {
            let reason = match note {
                Some(n) => format!("no deliverable address: {n}"),
                None => "no deliverable address: the customer has no billing contact".to_string(),
            };
            return (email.subject, Tried::Failed { reason });
        }
        let tried = match self.mailer.send(&email).await {
            Ok(()) => {
                tracing::info!(email_id = %row.id, template = %row.template, "email sent");
                Tried::Sent { note }
            }
            Err(MailError::Permanent(reason)) => {
                tracing::warn!(email_id = %row.id, template = %row.template, reason = %reason, "email refused");
                Tried::Failed { reason }
            }
            Err(MailError::Transient(reason)) => {
                let tries = row.attempts + 1;
                if tries >= MAX_TRIES {
                    Tried::Failed {
                        reason: format!("gave up after {tries} tries: {reason}"),
                    }
                } else {
                    let delay = retry_delay(tries);
                    tracing::warn!(
                        email_id = %row.id,
                        template = %row.template,
                        reason = %reason,
                        retry_in_s = delay.as_secs(),
                        "email not sent; it will be tried again"
                    );
                    Tried::Retry { reason, delay }
                }
            }
        };
        (email.subject, tried)
    }

    /// Records a chunk of finished tries in one transaction.
    async fn record(&self, chunk: Vec<(EmailRow, (String, Tried))>) -> Result<()> {
        let at = self.clock.now();
        let wall = wall_ms();
        let mut tx = self.db.begin().await?;
        for (row, (subject, tried)) in &chunk {
            let outcome = match tried {
                Tried::Sent { note } => Outcome::Sent {
                    at,
                    note: note.as_deref(),
                },
                Tried::Failed { reason } => Outcome::Failed { reason },
                Tried::Retry { reason, delay } => Outcome::Retry {
                    reason,
                    delay: *delay,
                },
            };
            crate::metrics::email_finished(&row.template, &outcome);
            emails::finish(&mut tx, &row.id, row.attempts, subject, outcome, wall).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
