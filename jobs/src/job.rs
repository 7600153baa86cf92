//! The queue's vocabulary. Every kind of due work lives in its own table and is claimed from
//! there in batches ([`WorkKind`]); the queue carries one job per kind ([`Job::Drain`]) that
//! starts a drain of that kind, so the queue never holds a second copy of an item's state. Older
//! daemons queued one job per item; those variants are still read, and run as a drain of their
//! kind.

use serde::{Deserialize, Serialize};

/// A kind of due work, each found in its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    /// Subscription periods that have started: their invoices.
    Periods,
    /// Drafts whose review window has passed: their numbers.
    Drafts,
    /// Charge attempts due, unknown or abandoned: their gateway calls.
    Charges,
    /// Stored gateway events not processed yet.
    Events,
    /// Outbox rows not sent yet.
    Emails,
    /// Overdue invoices owed a late fee.
    LateFees,
    /// Upcoming automatic charges owed a reminder.
    Reminders,
    /// Customers owed last month's statement.
    Statements,
    /// Refunds the daemon asked a gateway for whose answer is not recorded.
    Refunds,
}

impl WorkKind {
    /// Most urgent first: money before mail.
    pub const ALL: &'static [WorkKind] = &[
        WorkKind::Charges,
        WorkKind::Refunds,
        WorkKind::Events,
        WorkKind::Periods,
        WorkKind::Drafts,
        WorkKind::LateFees,
        WorkKind::Emails,
        WorkKind::Reminders,
        WorkKind::Statements,
    ];

    /// The bounded name for logs, metric labels and `/v1/jobs` (the names one-job-per-item
    /// daemons used for the same work).
    pub fn name(self) -> &'static str {
        match self {
            WorkKind::Periods => "generate_invoice",
            WorkKind::Drafts => "finalize_invoice",
            WorkKind::Charges => "charge_invoice",
            WorkKind::Events => "process_event",
            WorkKind::Emails => "send_email",
            WorkKind::LateFees => "apply_late_fee",
            WorkKind::Reminders => "remind_upcoming_charge",
            WorkKind::Statements => "send_statement",
            WorkKind::Refunds => "send_refund",
        }
    }

    pub fn parse(name: &str) -> Option<WorkKind> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for WorkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// Drain one kind of due work: claim its due items in batches from their table and do them,
    /// until none is left.
    Drain { kind: WorkKind },
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
            Job::Drain { .. } => "drain",
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
        match self.work_kind() {
            WorkKind::Emails | WorkKind::Reminders | WorkKind::Statements => 0,
            _ => 1,
        }
    }

    /// The queue's dedup key: the same job enqueued twice (by two sweeps, two daemons) is one row.
    pub fn dedup_key(&self) -> String {
        match self {
            Job::Drain { kind } => format!("drain:{}", kind.name()),
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
        }
    }

    /// The kind of work this job drains (an older daemon's per-item job drains its item's kind).
    pub fn work_kind(&self) -> WorkKind {
        match self {
            Job::Drain { kind } => *kind,
            Job::GenerateInvoice { .. } => WorkKind::Periods,
            Job::FinalizeInvoice { .. } => WorkKind::Drafts,
            Job::ChargeInvoice { .. }
            | Job::ResolveCharge { .. }
            | Job::ResolveBalanceCharge { .. } => WorkKind::Charges,
            Job::ProcessEvent { .. } => WorkKind::Events,
            Job::SendEmail { .. } | Job::SendEmailRetry { .. } => WorkKind::Emails,
            Job::ApplyLateFee { .. } => WorkKind::LateFees,
            Job::RemindUpcomingCharge { .. } => WorkKind::Reminders,
            Job::SendStatement { .. } => WorkKind::Statements,
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
    fn a_drain_is_one_job_per_kind() {
        let job = Job::Drain {
            kind: WorkKind::Events,
        };
        assert_eq!(
            serde_json::to_string(&job.clone().envelope()).unwrap(),
            r#"{"v":1,"type":"drain","kind":"events"}"#
        );
        assert_eq!(job.dedup_key(), "drain:process_event");
        for k in WorkKind::ALL {
            assert_eq!(WorkKind::parse(k.name()), Some(*k));
        }
    }

    #[test]
    fn dedup_keys_name_the_natural_key() {
        let job = Job::GenerateInvoice {
            subscription_id: "sub_1".into(),
            period_start: 5,
        };
        assert_eq!(job.dedup_key(), "generate_invoice:sub_1:5");
    }
}
