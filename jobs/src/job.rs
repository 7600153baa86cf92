//! The queue's vocabulary: every unit of work the daemon does, as one versioned enum. A job carries
//! ids only and re-reads the database when it runs (the database is the truth, a job a nudge), so a
//! stale or repeated job is harmless.

use serde::{Deserialize, Serialize};

/// The payload stored in the queue. `v` lets a newer daemon read jobs an older one enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub job: Job,
}

pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    /// Create (and finalise) the invoice of one subscription period; unique per period.
    GenerateInvoice {
        subscription_id: String,
        /// Period start, milliseconds since the epoch (UTC).
        period_start: i64,
    },
    /// Finalise a draft invoice whose review window has passed.
    FinalizeInvoice { invoice_id: String },
    /// One gateway call with the attempt's idempotency key.
    ChargeInvoice { invoice_id: String, attempt: i64 },
    /// Ask the gateway what happened to an attempt whose outcome is unknown.
    ResolveCharge { invoice_id: String, attempt: i64 },
    /// Apply one stored gateway event.
    ProcessEvent { event_id: String },
    /// Render and send one outbox row.
    SendEmail { email_id: String },
    /// Ask the gateway what happened to a whole-balance charge whose outcome is unknown.
    ResolveBalanceCharge { charge_id: String },
    /// Add the configured late fee to an overdue invoice, once.
    ApplyLateFee { invoice_id: String },
    /// Another try at an outbox row after a temporary failure or an operator's retry; it runs
    /// only while the row has had exactly `attempt` tries, so a stale copy does nothing.
    SendEmailRetry { email_id: String, attempt: i64 },
    /// Write the upcoming-charge reminder of one subscription period; unique per period.
    RemindUpcomingCharge {
        subscription_id: String,
        /// Start of the period that will be charged, milliseconds since the epoch (UTC).
        period_start: i64,
    },
    /// Write the monthly statement of one customer; unique per customer and month.
    SendStatement {
        customer_id: String,
        /// The calendar month in the customer's time zone, as yyyymm (202701 = January 2027).
        month: i64,
    },
}

impl Job {
    /// A short, bounded name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::GenerateInvoice { .. } => "generate_invoice",
            Job::FinalizeInvoice { .. } => "finalize_invoice",
            Job::ChargeInvoice { .. } => "charge_invoice",
            Job::ResolveCharge { .. } => "resolve_charge",
            Job::ProcessEvent { .. } => "process_event",
            Job::SendEmail { .. } => "send_email",
            Job::ResolveBalanceCharge { .. } => "resolve_balance_charge",
            Job::ApplyLateFee { .. } => "apply_late_fee",
            Job::SendEmailRetry { .. } => "send_email_retry",
            Job::RemindUpcomingCharge { .. } => "remind_upcoming_charge",
            Job::SendStatement { .. } => "send_statement",
        }
    }

    /// The queue's priority: of the jobs due, higher runs first. Mail waits for money: a
    /// thousand invoices falling due are written before their thousand emails are rendered, and a
    /// charge or a gateway event is never stuck behind a mail backlog. Within a priority, jobs run
    /// in the order they fell due.
    pub fn priority(&self) -> i32 {
        match self {
            Job::SendEmail { .. }
            | Job::SendEmailRetry { .. }
            | Job::RemindUpcomingCharge { .. }
            | Job::SendStatement { .. } => 0,
            _ => 1,
        }
    }

    /// The queue's dedup key: the same due work enqueued twice (by two sweeps, two daemons, a sweep
    /// and a finaliser) is one job. `round` distinguishes deliberate re-runs (an operator's replay).
    pub fn dedup_key(&self, round: u32) -> String {
        let base = match self {
            Job::GenerateInvoice {
                subscription_id,
                period_start,
            } => format!("generate_invoice:{subscription_id}:{period_start}"),
            Job::FinalizeInvoice { invoice_id } => format!("finalize_invoice:{invoice_id}"),
            Job::ChargeInvoice {
                invoice_id,
                attempt,
            } => format!("charge_invoice:{invoice_id}:{attempt}"),
            Job::ResolveCharge {
                invoice_id,
                attempt,
            } => format!("resolve_charge:{invoice_id}:{attempt}"),
            Job::ProcessEvent { event_id } => format!("process_event:{event_id}"),
            Job::SendEmail { email_id } => format!("send_email:{email_id}"),
            Job::ResolveBalanceCharge { charge_id } => {
                format!("resolve_balance_charge:{charge_id}")
            }
            Job::ApplyLateFee { invoice_id } => format!("apply_late_fee:{invoice_id}"),
            Job::SendEmailRetry { email_id, attempt } => {
                format!("send_email:{email_id}:a{attempt}")
            }
            Job::RemindUpcomingCharge {
                subscription_id,
                period_start,
            } => format!("remind_upcoming_charge:{subscription_id}:{period_start}"),
            Job::SendStatement { customer_id, month } => {
                format!("send_statement:{customer_id}:{month}")
            }
        };
        if round == 0 {
            base
        } else {
            format!("{base}:r{round}")
        }
    }

    pub fn envelope(self) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            job: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_json_with_a_version() {
        let job = Job::ChargeInvoice {
            invoice_id: "in_1".into(),
            attempt: 2,
        };
        let text = serde_json::to_string(&job.clone().envelope()).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"type":"charge_invoice","invoice_id":"in_1","attempt":2}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.job, job);
    }

    #[test]
    fn dedup_keys_name_the_natural_key() {
        let job = Job::GenerateInvoice {
            subscription_id: "sub_1".into(),
            period_start: 5,
        };
        assert_eq!(job.dedup_key(0), "generate_invoice:sub_1:5");
        assert_eq!(job.dedup_key(2), "generate_invoice:sub_1:5:r2");
    }
}
