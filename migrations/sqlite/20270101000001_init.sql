-- The whole data model of settled (SQLite flavour; migrations/postgres holds the same stems).
-- Conventions: ids are prefixed random strings; money is integer minor units (BIGINT) next to an
-- ISO 4217 currency; instants are BIGINT milliseconds since the Unix epoch in UTC, always supplied by
-- the daemon's clock (no SQL clock functions anywhere); flags are 0/1.

CREATE TABLE customers (
    id                  TEXT PRIMARY KEY,
    email               TEXT NOT NULL,
    name                TEXT NOT NULL,
    currency            TEXT NOT NULL,
    timezone            TEXT NOT NULL,
    auto_charge         BOOLEAN NOT NULL DEFAULT 1,
    apply_retainer      BOOLEAN NOT NULL DEFAULT 0,
    statement_emails    BOOLEAN NOT NULL DEFAULT 0,
    gateway_customer_id TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- One row per billing contact; lower-cased so a contact finds every account it is billed for.
CREATE TABLE customer_billing_emails (
    customer_id TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    email       TEXT NOT NULL,
    PRIMARY KEY (customer_id, position),
    UNIQUE (customer_id, email)
);
CREATE INDEX customer_billing_emails_email ON customer_billing_emails(email);

-- Saved payment methods: the gateway's token and what the gateway tells about the card. Never a number.
CREATE TABLE payment_methods (
    id          TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    gateway     TEXT NOT NULL,
    token       TEXT NOT NULL,
    brand       TEXT NOT NULL,
    last4       TEXT NOT NULL,
    exp_month   INTEGER NOT NULL,
    exp_year    INTEGER NOT NULL,
    is_default  BOOLEAN NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    removed_at  BIGINT,
    UNIQUE (gateway, token)
);
CREATE INDEX payment_methods_customer ON payment_methods(customer_id);
CREATE UNIQUE INDEX payment_methods_one_default ON payment_methods(customer_id) WHERE is_default AND removed_at IS NULL;

-- Recurring invoice profiles. items and schedule are JSON documents (validated by the daemon);
-- next_period_start is the start of the next period to bill, derived from the schedule's anchor.
CREATE TABLE subscriptions (
    id                TEXT PRIMARY KEY,
    customer_id       TEXT NOT NULL REFERENCES customers(id),
    currency          TEXT NOT NULL,
    items             TEXT NOT NULL,
    schedule          TEXT NOT NULL,
    timezone          TEXT NOT NULL,
    start_at          BIGINT NOT NULL,
    next_period_start BIGINT,
    auto_charge       BOOLEAN NOT NULL DEFAULT 1,
    net_days          INTEGER NOT NULL DEFAULT 0,
    catch_up          TEXT NOT NULL DEFAULT 'all' CHECK (catch_up IN ('all', 'latest', 'skip')),
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'canceled')),
    paused_at         BIGINT,
    canceled_at       BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX subscriptions_due ON subscriptions(status, next_period_start);
CREATE INDEX subscriptions_customer ON subscriptions(customer_id);

-- The gapless per-operator numbering: one row per sequence, bumped inside the finalising transaction.
CREATE TABLE invoice_sequences (
    name       TEXT PRIMARY KEY,
    next_value BIGINT NOT NULL
);

CREATE TABLE invoices (
    id               TEXT PRIMARY KEY,
    number           TEXT UNIQUE,
    customer_id      TEXT NOT NULL REFERENCES customers(id),
    subscription_id  TEXT REFERENCES subscriptions(id),
    kind             TEXT NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'retainer', 'late_fee')),
    status           TEXT NOT NULL CHECK (status IN ('draft', 'open', 'partially_paid', 'paid', 'past_due', 'void', 'uncollectible')),
    currency         TEXT NOT NULL,
    period_start     BIGINT,
    period_end       BIGINT,
    subtotal         BIGINT NOT NULL,
    tax              BIGINT NOT NULL,
    total            BIGINT NOT NULL,
    credits_applied  BIGINT NOT NULL DEFAULT 0,
    retainer_applied BIGINT NOT NULL DEFAULT 0,
    amount_paid      BIGINT NOT NULL DEFAULT 0,
    amount_due       BIGINT NOT NULL,
    auto_charge      BOOLEAN NOT NULL DEFAULT 0,
    due_at           BIGINT,
    finalize_at      BIGINT,
    finalized_at     BIGINT,
    paid_at          BIGINT,
    voided_at        BIGINT,
    late_fee_at      BIGINT,
    next_charge_at   BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (subscription_id, period_start),
    CHECK (amount_due >= 0)
);
CREATE INDEX invoices_customer ON invoices(customer_id, status);
CREATE INDEX invoices_status_due ON invoices(status, due_at);
CREATE INDEX invoices_next_charge ON invoices(next_charge_at);
CREATE INDEX invoices_finalize ON invoices(status, finalize_at);

CREATE TABLE invoice_lines (
    id          TEXT PRIMARY KEY,
    invoice_id  TEXT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'item' CHECK (kind IN ('item', 'late_fee')),
    description TEXT NOT NULL,
    quantity    TEXT NOT NULL,
    unit_amount BIGINT NOT NULL,
    amount      BIGINT NOT NULL,
    tax_rate    TEXT,
    UNIQUE (invoice_id, position)
);

-- One row per gateway charge attempt, committed before the gateway call with its idempotency key.
CREATE TABLE charge_attempts (
    id                TEXT PRIMARY KEY,
    invoice_id        TEXT REFERENCES invoices(id),
    customer_id       TEXT NOT NULL REFERENCES customers(id),
    attempt           INTEGER NOT NULL,
    idempotency_key   TEXT NOT NULL UNIQUE,
    amount            BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    payment_method_id TEXT REFERENCES payment_methods(id),
    automatic         BOOLEAN NOT NULL DEFAULT 1,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'unknown')),
    decline_code      TEXT,
    failure_message   TEXT,
    gateway_payment_id TEXT,
    next_attempt_at   BIGINT,
    scheduled_at      BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    UNIQUE (invoice_id, attempt)
);
CREATE INDEX charge_attempts_status ON charge_attempts(status, scheduled_at);

CREATE TABLE payments (
    id                 TEXT PRIMARY KEY,
    customer_id        TEXT NOT NULL REFERENCES customers(id),
    invoice_id         TEXT REFERENCES invoices(id),
    amount             BIGINT NOT NULL CHECK (amount > 0),
    currency           TEXT NOT NULL,
    gateway            TEXT NOT NULL,
    gateway_payment_id TEXT,
    method             TEXT NOT NULL,
    reference          TEXT,
    brand              TEXT,
    last4              TEXT,
    status             TEXT NOT NULL CHECK (status IN ('succeeded', 'refunded', 'partially_refunded', 'disputed')),
    amount_refunded    BIGINT NOT NULL DEFAULT 0,
    disputed           BOOLEAN NOT NULL DEFAULT 0,
    at                 BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    UNIQUE (gateway, gateway_payment_id)
);
CREATE INDEX payments_customer ON payments(customer_id);
CREATE INDEX payments_invoice ON payments(invoice_id);

-- How a payment was spread over invoices (a balance payment covers several; an excess becomes credit).
CREATE TABLE payment_allocations (
    payment_id TEXT NOT NULL REFERENCES payments(id),
    invoice_id TEXT NOT NULL REFERENCES invoices(id),
    amount     BIGINT NOT NULL CHECK (amount > 0),
    PRIMARY KEY (payment_id, invoice_id)
);

CREATE TABLE refunds (
    id                TEXT PRIMARY KEY,
    payment_id        TEXT NOT NULL REFERENCES payments(id),
    amount            BIGINT NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    gateway           TEXT NOT NULL,
    gateway_refund_id TEXT,
    to_credit         BOOLEAN NOT NULL DEFAULT 0,
    reason            TEXT,
    at                BIGINT NOT NULL,
    UNIQUE (gateway, gateway_refund_id)
);

-- Credit the customer holds: credit notes, overpayments, refunds to credit. remaining is spent oldest first.
CREATE TABLE credit_notes (
    id          TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    remaining   BIGINT NOT NULL CHECK (remaining >= 0),
    currency    TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('manual', 'overpayment', 'refund', 'void')),
    source_id   TEXT,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX credit_notes_customer ON credit_notes(customer_id, currency, created_at);

CREATE TABLE credit_applications (
    id             TEXT PRIMARY KEY,
    credit_note_id TEXT NOT NULL REFERENCES credit_notes(id),
    invoice_id     TEXT NOT NULL REFERENCES invoices(id),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    created_at     BIGINT NOT NULL,
    released_at    BIGINT
);

-- Retainer deposits paid in advance (a paid retainer invoice), spent by applications or refunds.
CREATE TABLE retainers (
    id          TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    invoice_id  TEXT REFERENCES invoices(id),
    payment_id  TEXT REFERENCES payments(id),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    remaining   BIGINT NOT NULL CHECK (remaining >= 0),
    currency    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX retainers_customer ON retainers(customer_id, currency, created_at);

-- Append-only record of every money movement, in the same transaction as the change it records.
-- Balances are derived from it (see the invariant in jobs/src/ledger.rs).
CREATE TABLE ledger_entries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    currency    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    invoice_id  TEXT,
    payment_id  TEXT,
    object_id   TEXT,
    memo        TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX ledger_entries_customer ON ledger_entries(customer_id, at, seq);

-- Raw gateway events, stored before the 2xx and processed afterwards by a job.
CREATE TABLE webhook_events (
    id           TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    body         TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'processed', 'ignored', 'failed')),
    error        TEXT,
    replays      INTEGER NOT NULL DEFAULT 0,
    received_at  BIGINT NOT NULL,
    processed_at BIGINT,
    UNIQUE (source, event_id)
);
CREATE INDEX webhook_events_status ON webhook_events(status, received_at);

-- The email outbox: one row per message, unique on what it is about, so nothing is ever sent twice.
CREATE TABLE emails (
    id            TEXT PRIMARY KEY,
    template      TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    customer_id   TEXT REFERENCES customers(id),
    invoice_id    TEXT,
    payment_id    TEXT,
    recipients    TEXT NOT NULL,
    subject       TEXT NOT NULL DEFAULT '',
    context       TEXT NOT NULL DEFAULT '{}',
    message_id    TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    send_after    BIGINT NOT NULL,
    sent_at       BIGINT,
    created_at    BIGINT NOT NULL,
    UNIQUE (template, subject_id, attempt)
);
CREATE INDEX emails_status ON emails(status, send_after);

-- Small durable settings: the manual clock's position, the generated admin token's fingerprint.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
