//! What each metric means, for Prometheus' `# HELP` lines.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub(super) fn describe() {
    describe_counter!(
        "settled_webhooks_received_total",
        "Webhook deliveries stored (new events), by source."
    );
    describe_counter!(
        "settled_webhooks_refused_total",
        "Webhook deliveries refused before anything was stored, by source and reason."
    );
    describe_counter!(
        "settled_webhooks_duplicate_total",
        "Webhook deliveries of an event already stored (answered 200, nothing stored)."
    );
    describe_counter!(
        "settled_events_processed_total",
        "Stored events processed, by event type and outcome (processed, ignored, failed)."
    );
    describe_counter!(
        "settled_invoices_generated_total",
        "Recurring invoices created by the generate_invoice job."
    );
    describe_counter!(
        "settled_periods_skipped_total",
        "Subscription periods the catch-up policy billed no invoice for."
    );
    describe_counter!(
        "settled_charges_total",
        "Charge attempt outcomes recorded from the gateway's answer, by outcome (succeeded, declined, error, unknown) and decline code (none unless declined or refused). An unknown outcome resolved later counts again with its final outcome."
    );
    describe_counter!(
        "settled_charged_amount_minor_total",
        "Amount received by succeeded charges, in the currency's minor units (cents), by currency."
    );
    describe_counter!(
        "settled_disputes_lost_total",
        "Disputes lost (the payment reversed, what it paid due again), by currency."
    );
    describe_counter!(
        "settled_disputed_amount_minor_total",
        "Amount lost to disputes, in the currency's minor units, by currency."
    );
    describe_counter!(
        "settled_emails_sent_total",
        "Emails handed to the transport, by template."
    );
    describe_counter!(
        "settled_emails_failed_total",
        "Emails given up on (refused, undeliverable, unrenderable, or out of tries), by template."
    );
    describe_counter!(
        "settled_emails_retried_total",
        "Temporary email failures that will be tried again, by template."
    );
    describe_gauge!(
        "settled_job_queue_depth",
        "Unfinished jobs (waiting, claimed, running or waiting for another try), by kind; read at scrape time."
    );
    describe_gauge!(
        "settled_job_queue_oldest_due_age_seconds",
        "How long the oldest due job that has not started has been due, by kind (0 when none); read at scrape time."
    );
    describe_gauge!(
        "settled_jobs_failed",
        "Jobs failed for good and kept for the operator (settled jobs list --status failed), by kind; read at scrape time."
    );
    describe_histogram!(
        "settled_job_latency_seconds",
        "Time from a job being due to it starting in this process, by kind."
    );
    describe_histogram!(
        "settled_job_duration_seconds",
        "Time one job run took, by kind and outcome (done, retry, failed)."
    );
    describe_counter!(
        "settled_http_connections_refused_total",
        "Connections answered 503 and closed because server.max_connections were being served."
    );
    describe_counter!(
        "settled_work_items_total",
        "Items of due work taken by drain batches, by kind."
    );
    describe_histogram!(
        "settled_work_batch_duration_seconds",
        "One drain batch, from its claim to its last record, by kind."
    );
    describe_gauge!(
        "settled_work_pending",
        "Items due and not done (waiting, in flight or set aside), by kind."
    );
    describe_gauge!(
        "settled_work_set_aside",
        "Items set aside after a failure, waiting for their next try, by kind."
    );
    describe_gauge!(
        "settled_work_set_aside_oldest_seconds",
        "How long the longest-failing set-aside item has been failing, by kind."
    );
    describe_histogram!(
        "settled_http_request_duration_seconds",
        "HTTP requests answered, by method, route template and status."
    );
    describe_gauge!(
        "settled_db_pool_connections",
        "Open database connections, by pool (main, queue) and state (idle, in_use); read at scrape time."
    );
    describe_gauge!(
        "settled_db_pool_max_connections",
        "Configured maximum connections, by pool."
    );
    describe_gauge!(
        "settled_database_up",
        "1 when the database answered the scrape's queue query, else 0."
    );
    describe_gauge!(
        "settled_build_info",
        "Always 1; the labels say which build runs (version, backend of the database, role)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        "Resident memory of the daemon, from /proc/self/statm."
    );
    describe_gauge!(
        "process_cpu_seconds_total",
        "User and system CPU time the daemon used, from /proc/self/stat."
    );
    describe_gauge!(
        "process_open_fds",
        "Open file descriptors (sockets included), from /proc/self/fd."
    );
    describe_gauge!(
        "process_max_fds",
        "The soft limit on open file descriptors."
    );
    describe_gauge!(
        "process_start_time_seconds",
        "When the daemon started, in Unix seconds."
    );
    describe_gauge!(
        "settled_outbox_pending",
        "Emails in the outbox not yet sent or given up on (due now or waiting for their next try)."
    );
    describe_gauge!(
        "settled_seconds_since_last_sweep",
        "Seconds since this process last completed a sweep for due work (-1 before the first; only where workers run)."
    );
    describe_gauge!(
        "settled_metrics_refreshed_timestamp_seconds",
        "When the gauges read from the database were last read, in Unix seconds (they are read at most every 5 s)."
    );
    describe_histogram!(
        "settled_gateway_request_duration_seconds",
        "Requests to a payment gateway, by gateway, operation (charge, refund, lookup, customer, payment_method, detach, check) and outcome (ok, declined, error, unknown)."
    );
    describe_counter!(
        "settled_gateway_request_errors_total",
        "Gateway requests that did not get a usable answer (outcome unknown or error), by gateway and operation."
    );
    describe_histogram!(
        "settled_smtp_request_duration_seconds",
        "One message handed to the mail transport, by transport (smtp, file) and outcome (sent, temporary, permanent)."
    );
    describe_counter!(
        "settled_smtp_errors_total",
        "Messages the transport did not accept, by transport and outcome (temporary, permanent)."
    );
}
