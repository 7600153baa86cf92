//! The invoice writer: generate_invoice jobs hand their period here and wait; one task takes
//! every period waiting at that moment (up to a batch) and writes them in one transaction
//! (`billing::generation`), then answers each job. While one batch is written the next gathers.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::billing::generation::{self, MAX_BATCH, Outcome, Period};
use crate::billing::{Billing, Error};

struct Request {
    period: Period,
    reply: oneshot::Sender<Outcome>,
}

pub struct InvoiceWriter {
    billing: Arc<Billing>,
    sender: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl InvoiceWriter {
    pub fn new(billing: Arc<Billing>) -> InvoiceWriter {
        InvoiceWriter {
            billing,
            sender: OnceLock::new(),
        }
    }

    /// Generates one period's invoice, in whatever batch is written next; returns what became of
    /// the period once its transaction committed (or failed).
    pub async fn generate(&self, period: Period) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(self.billing.clone(), receiver));
            sender
        });
        let stopped = || Error::later("the invoice writer stopped");
        sender
            .send(Request { period, reply })
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn write_batches(billing: Arc<Billing>, mut receiver: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let periods: Vec<Period> = batch.iter().map(|r| r.period.clone()).collect();
        let started = std::time::Instant::now();
        let outcomes = generation::write_isolating_failures(&billing, &periods).await;
        tracing::debug!(
            periods = periods.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "invoice batch written"
        );
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            // The job may have given up waiting (the worker is stopping); its period is written
            // or not, and a later run finds out which.
            let _ = request.reply.send(outcome);
        }
    }
}
