-- Charges in flight. An attempt sent and not answered yet (pending with started_at, or unknown)
-- holds a reservation on every invoice it may pay: an invoice's own attempt on that invoice, a
-- balance charge on each invoice it covers. Whoever charges (the automatic drain, an operator,
-- a portal's Pay Now, a balance charge) must take the reservations first, so no second charge of
-- the same money can be sent while one is unresolved, whatever the path. Released when the
-- outcome is recorded.
CREATE TABLE charge_reservations (
    invoice_id TEXT PRIMARY KEY REFERENCES invoices(id),
    attempt_id TEXT NOT NULL REFERENCES charge_attempts(id)
);
CREATE INDEX charge_reservations_attempt ON charge_reservations(attempt_id);
INSERT INTO charge_reservations (invoice_id, attempt_id)
    SELECT invoice_id, MIN(id) FROM charge_attempts
    WHERE invoice_id IS NOT NULL AND (status = 'unknown' OR (status = 'pending' AND started_at IS NOT NULL))
    GROUP BY invoice_id;
-- The same invariant on the attempts themselves: one in flight per invoice, one unresolved
-- balance charge per customer.
CREATE UNIQUE INDEX charge_attempts_one_in_flight ON charge_attempts(invoice_id)
    WHERE invoice_id IS NOT NULL AND (status = 'unknown' OR (status = 'pending' AND started_at IS NOT NULL));
CREATE UNIQUE INDEX charge_attempts_one_balance ON charge_attempts(customer_id)
    WHERE invoice_id IS NULL AND status IN ('pending', 'unknown');
-- Set when the gateway refused a resend of an unknown attempt (a 4xx): the next try looks the
-- charge up by its metadata before anything is sent again.
ALTER TABLE charge_attempts ADD COLUMN look_up BOOLEAN NOT NULL DEFAULT FALSE;

-- One deposit per retainer invoice (made when it is paid, whatever paid it), one credit note per
-- source (an overpayment, a refund kept as credit, a voided invoice's applied payments).
CREATE UNIQUE INDEX retainers_one_per_invoice ON retainers(invoice_id) WHERE invoice_id IS NOT NULL;
CREATE UNIQUE INDEX credit_notes_one_per_source ON credit_notes(source, source_id) WHERE source_id IS NOT NULL;

-- Refunds the daemon sends are committed as pending, with their Idempotency-Key, before the call,
-- and recorded succeeded or failed after it; a refund heard of from the gateway is succeeded
-- from the start. What a pending refund takes (a retainer's balance) is taken when it is
-- committed and given back if it fails.
ALTER TABLE refunds ADD COLUMN status TEXT NOT NULL DEFAULT 'succeeded' CHECK (status IN ('pending', 'succeeded', 'failed'));
ALTER TABLE refunds ADD COLUMN idempotency_key TEXT;
ALTER TABLE refunds ADD COLUMN retainer_id TEXT REFERENCES retainers(id);
ALTER TABLE refunds ADD COLUMN failure_message TEXT;
ALTER TABLE refunds ADD COLUMN lease_until BIGINT;
ALTER TABLE refunds ADD COLUMN sent_wall_ms BIGINT;
CREATE UNIQUE INDEX refunds_idempotency_key ON refunds(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX refunds_pending ON refunds(status) WHERE status = 'pending';

-- Idempotency-Key on admin POSTs: the first answer of a key, written in the transaction of the
-- request's effect (its row is inserted by the request's first write), replayed for 24 h.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    status      INTEGER,
    response    TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
