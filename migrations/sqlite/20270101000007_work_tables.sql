-- The domain tables are the work queues: each due item (a period, a draft, a charge attempt, a
-- stored event, an email, a late fee, a reminder, a statement) is found in its own table and
-- claimed in batches. An item whose processing failed is set aside here with its own next try
-- (real wall-clock milliseconds) and a capped backoff, and offered again then, until it is done
-- or an operator ends it; nothing depends on a queue job surviving its retries.
CREATE TABLE work_failures (
    kind            TEXT NOT NULL,
    item_id         TEXT NOT NULL,
    tries           BIGINT NOT NULL,
    first_failed_at BIGINT NOT NULL,
    failed_at       BIGINT NOT NULL,
    retry_at        BIGINT NOT NULL,
    last_error      TEXT NOT NULL,
    PRIMARY KEY (kind, item_id)
);
CREATE INDEX work_failures_retry ON work_failures(kind, retry_at);

-- Network work is claimed before its call: until lease_until (wall-clock milliseconds) no other
-- batch, in this daemon or another, takes the same attempt or email.
ALTER TABLE charge_attempts ADD COLUMN lease_until BIGINT;
ALTER TABLE emails ADD COLUMN lease_until BIGINT;

-- A stored refund or dispute that arrived before its payment waits for that payment (the
-- gateway's payment id); recording the payment wakes exactly these.
ALTER TABLE webhook_events ADD COLUMN waits_for TEXT;
CREATE INDEX webhook_events_waits_for ON webhook_events(waits_for) WHERE waits_for IS NOT NULL;
