-- Charging and the ledger's accounts.
-- sent_wall_ms: when the attempt's request first left, by the real wall clock (the gateway forgets
-- idempotency keys after about a day, so an older unknown outcome is looked up, not replayed).
ALTER TABLE charge_attempts ADD COLUMN sent_wall_ms BIGINT;
-- Which balance a ledger row moves: what the customer owes (receivable), the credit it holds
-- (credit) or its unused retainer (retainer). outstanding / credit_balance / retainer_balance are
-- the sums per account.
ALTER TABLE ledger_entries ADD COLUMN account TEXT NOT NULL DEFAULT 'receivable';
CREATE INDEX charge_attempts_invoice ON charge_attempts(invoice_id, attempt);
-- Retainer balance spent on invoices (released again if the invoice is voided).
CREATE TABLE retainer_applications (
    id          TEXT PRIMARY KEY,
    retainer_id TEXT NOT NULL REFERENCES retainers(id),
    invoice_id  TEXT NOT NULL REFERENCES invoices(id),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    created_at  BIGINT NOT NULL,
    released_at BIGINT
);
CREATE INDEX retainer_applications_invoice ON retainer_applications(invoice_id);
CREATE INDEX credit_applications_invoice ON credit_applications(invoice_id);
