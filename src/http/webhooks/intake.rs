//! Durable intake with group commits. A verified delivery is handed to a small pool of writer
//! tasks; each takes every delivery waiting at that moment and stores them in one transaction.
//! Each request is answered only after the transaction holding its event committed (a 2xx means
//! the event is durable), but concurrent deliveries share one commit (one fsync) instead of
//! paying for one each. A delivery not stored within [`ANSWER_WITHIN`] (the database is away or
//! stuck) is answered 503 so the gateway delivers it again, rather than held until it times out.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::signature::standard_key;
use settled_jobs::job::WorkKind;

use crate::billing::Billing;
use crate::runner::Scheduler;
use crate::store::webhook_events::{self as store, NewEvent};

/// Deliveries stored in one transaction at most.
const MAX_BATCH: usize = 256;
/// Writer tasks: while one commits, the next gathers the deliveries that arrived meanwhile.
const WRITERS: usize = 2;
/// Deliveries waiting for a writer before new ones wait for room (back-pressure, bounded memory).
const QUEUE_DEPTH: usize = 4096;
/// The longest a delivery waits for its commit before it is answered 503.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What became of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    New,
    /// This (source, event id) was stored before; nothing new was written.
    Duplicate,
}

struct Pending {
    event: NewEvent,
    reply: oneshot::Sender<Result<Stored, String>>,
}

/// The signing secrets, decoded: replaced whole when the daemon reloads (SIGHUP).
struct Secrets {
    stripe: Result<Vec<String>, String>,
    standard: HashMap<String, Result<Vec<Vec<u8>>, String>>,
}

impl Secrets {
    fn of(config: &crate::config::Config) -> Secrets {
        let stripe = config
            .stripe_webhook_secrets()
            .map(|s| s.iter().map(|s| s.expose().to_string()).collect())
            .map_err(|e| format!("{e:#}"));
        let standard = config
            .standard_webhooks
            .sources
            .keys()
            .map(|name| {
                let keys = config
                    .standard_webhook_secrets(name)
                    .map(|secrets| {
                        secrets
                            .iter()
                            .filter_map(|s| standard_key(s.expose()))
                            .collect()
                    })
                    .map_err(|e| format!("{e:#}"));
                (name.clone(), keys)
            })
            .collect();
        Secrets { stripe, standard }
    }
}

/// The intake's secrets and its writers.
pub struct Intake {
    pub billing: Arc<Billing>,
    /// Told of every new event, so a drain starts at once where workers run.
    scheduler: Arc<Scheduler>,
    secrets: std::sync::RwLock<Secrets>,
    sender: OnceLock<mpsc::Sender<Pending>>,
}

impl Intake {
    pub fn new(billing: Arc<Billing>, scheduler: Arc<Scheduler>) -> Intake {
        let secrets = std::sync::RwLock::new(Secrets::of(&billing.config));
        Intake {
            billing,
            scheduler,
            secrets,
            sender: OnceLock::new(),
        }
    }

    /// Takes the signing secrets from `config` (a reload); deliveries already being checked
    /// finish with the ones they started with.
    pub fn reload(&self, config: &crate::config::Config) {
        let fresh = Secrets::of(config);
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Secrets> {
        self.secrets.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The Stripe signing secrets, or why there are none to check against.
    pub fn stripe_secrets(&self) -> Result<Vec<String>, String> {
        match &self.read().stripe {
            Ok(s) if s.is_empty() => Err(
                "no Stripe webhook signing secret is configured (stripe.webhook_secrets or \
                 stripe.webhook_secrets_file); deliveries are refused until one is"
                    .into(),
            ),
            Ok(s) => Ok(s.clone()),
            Err(e) => Err(format!("the Stripe webhook secrets cannot be read: {e}")),
        }
    }

    /// A configured Standard Webhooks source's keys: None for an unknown source, Err when the
    /// source has no usable secret.
    pub fn standard_keys(&self, source: &str) -> Option<Result<Vec<Vec<u8>>, String>> {
        let secrets = self.read();
        let keys = secrets.standard.get(source)?;
        Some(match keys {
            Ok(k) if k.is_empty() => Err(format!(
                "no signing secret is configured for the webhook source {source} \
                 (standard_webhooks.sources.{source}.secrets); deliveries are refused until one is"
            )),
            Ok(k) => Ok(k.clone()),
            Err(e) => Err(format!(
                "the secrets of the webhook source {source} cannot be read: {e}"
            )),
        })
    }

    /// Stores the event durably (or finds it stored before); returns once committed.
    pub async fn store(&self, event: NewEvent) -> Result<Stored, String> {
        let sender = self
            .sender
            .get_or_init(|| spawn_writers(self.billing.clone(), self.scheduler.clone()));
        let (reply, answer) = oneshot::channel();
        let stored = async {
            sender
                .send(Pending { event, reply })
                .await
                .map_err(|_| "the intake writer has stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the intake writer stopped before answering".to_string())?
        };
        // If the commit comes after all, the gateway's next delivery is a duplicate: 200.
        tokio::time::timeout(ANSWER_WITHIN, stored)
            .await
            .map_err(|_| {
                format!(
                    "the event was not stored within {} s; the database is not answering",
                    ANSWER_WITHIN.as_secs()
                )
            })?
    }
}

fn spawn_writers(billing: Arc<Billing>, scheduler: Arc<Scheduler>) -> mpsc::Sender<Pending> {
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..WRITERS {
        let billing = billing.clone();
        let scheduler = scheduler.clone();
        let receiver = receiver.clone();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&receiver).await {
                if write_batch(&billing, batch).await {
                    scheduler.kick(WorkKind::Events);
                }
            }
        });
    }
    sender
}

/// Waits for one delivery, then takes every other one already waiting (up to `MAX_BATCH`).
/// None once every sender is gone (the HTTP server stopped).
async fn next_batch(receiver: &Mutex<mpsc::Receiver<Pending>>) -> Option<Vec<Pending>> {
    let mut rx = receiver.lock().await;
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Stores a batch and answers each delivery; true when a new event was stored.
async fn write_batch(billing: &Billing, mut batch: Vec<Pending>) -> bool {
    // One order for every batch, so two concurrent batches holding the same events take their
    // unique-index locks in the same order and cannot deadlock.
    batch.sort_by(|a, b| {
        (&a.event.source, &a.event.event_id).cmp(&(&b.event.source, &b.event.event_id))
    });
    let events: Vec<&NewEvent> = batch.iter().map(|p| &p.event).collect();
    match store::insert_events(&billing.db, &events).await {
        Ok(new_ids) => {
            let any = !new_ids.is_empty();
            for p in batch {
                let stored = if new_ids.contains(&p.event.id) {
                    Stored::New
                } else {
                    Stored::Duplicate
                };
                let _ = p.reply.send(Ok(stored));
            }
            any
        }
        Err(e) if batch.len() > 1 => {
            // One delivery must not fail the others: store each alone.
            tracing::warn!(error = %e, deliveries = batch.len(), "storing a batch of webhook events failed; storing them one by one");
            let mut any = false;
            for p in batch {
                let result = store::insert_events(&billing.db, &[&p.event])
                    .await
                    .map(|new| {
                        if new.contains(&p.event.id) {
                            any = true;
                            Stored::New
                        } else {
                            Stored::Duplicate
                        }
                    })
                    .map_err(|e| {
                        tracing::warn!(error = %e, source = %p.event.source, "storing a webhook event failed");
                        e.to_string()
                    });
                let _ = p.reply.send(result);
            }
            any
        }
        Err(e) => {
            tracing::warn!(error = %e, source = %batch[0].event.source, "storing a webhook event failed");
            for p in batch {
                let _ = p.reply.send(Err(e.to_string()));
            }
            false
        }
    }
}
