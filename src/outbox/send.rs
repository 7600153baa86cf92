//! Sending one outbox row: render it from its snapshot, hand it to the mailer, record how the
//! try ended. A temporary failure is tried again after a growing delay; a permanent one leaves
//! the row `failed` with the reason, and nothing else waits for it.

use std::time::Duration;

use settled_jobs::clock::Clock;
use settled_jobs::mailer::{MailError, Mailer, OutgoingEmail};
use settled_jobs::status::EmailStatus;

use super::render;
use super::snapshot::Snapshot;
use crate::config::Config;
use crate::store::emails::{self, EmailRow, Outcome};
use crate::store::{Db, Result, from_ms};

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
    pub config: &'a Config,
}

/// What one call to [`Sender::send`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The try happened and its outcome is recorded (sent, failed, or due again later).
    Tried,
    /// Nothing to do: the row is not pending after exactly the expected tries (another try
    /// already happened).
    Stale,
    /// No such row.
    Missing,
}

impl Sender<'_> {
    /// One try at one row, if it is still pending after exactly `expected` tries.
    pub async fn send(&self, email_id: &str, expected: i64) -> Result<Sent> {
        let Some(row) = emails::get(self.db, email_id).await? else {
            return Ok(Sent::Missing);
        };
        if row.status != EmailStatus::Pending || row.attempts != expected {
            return Ok(Sent::Stale);
        }
        let (email, note) = match message(self.config, &row) {
            Ok(built) => built,
            Err(reason) => {
                return self
                    .finish(&row, "", Outcome::Failed { reason: &reason })
                    .await;
            }
        };
        if email.to.is_empty() {
            let reason = match note {
                Some(n) => format!("no deliverable address: {n}"),
                None => "no deliverable address: the customer has no billing contact".to_string(),
            };
            return self
                .finish(&row, &email.subject, Outcome::Failed { reason: &reason })
                .await;
        }
        let result = self.mailer.send(&email).await;
        let now = self.clock.now();
        match result {
            Ok(()) => {
                tracing::info!(email_id, template = %row.template, "email sent");
                let outcome = Outcome::Sent {
                    at: now,
                    note: note.as_deref(),
                };
                self.finish(&row, &email.subject, outcome).await
            }
            Err(MailError::Permanent(reason)) => {
                tracing::warn!(email_id, template = %row.template, reason = %reason, "email refused");
                self.finish(&row, &email.subject, Outcome::Failed { reason: &reason })
                    .await
            }
            Err(MailError::Transient(reason)) => {
                let tries = row.attempts + 1;
                if tries >= MAX_TRIES {
                    let reason = format!("gave up after {tries} tries: {reason}");
                    return self
                        .finish(&row, &email.subject, Outcome::Failed { reason: &reason })
                        .await;
                }
                let delay = retry_delay(tries);
                tracing::warn!(
                    email_id,
                    template = %row.template,
                    reason = %reason,
                    retry_in_s = delay.as_secs(),
                    "email not sent; it will be tried again"
                );
                let outcome = Outcome::Retry {
                    reason: &reason,
                    delay,
                };
                self.finish(&row, &email.subject, outcome).await
            }
        }
    }

    async fn finish(&self, row: &EmailRow, subject: &str, outcome: Outcome<'_>) -> Result<Sent> {
        crate::metrics::email_finished(&row.template, &outcome);
        emails::finish(self.db, &row.id, row.attempts, subject, outcome).await?;
        Ok(Sent::Tried)
    }
}
