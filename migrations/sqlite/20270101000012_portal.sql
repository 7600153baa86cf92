-- The customer portal's own rows. Instants are BIGINT milliseconds of the daemon's clock.

-- Every sign-in request, whether its address is known or not (so the rate limits and the answer
-- are the same either way). The emailed link carries the id and an HMAC of it; it works once,
-- until expires_at.
CREATE TABLE portal_sign_in_tokens (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    client     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX portal_sign_in_tokens_email ON portal_sign_in_tokens (email, created_at);
CREATE INDEX portal_sign_in_tokens_client ON portal_sign_in_tokens (client, created_at);

-- A browser's session: signed in as a billing contact (email), or opened by an invoice link
-- (invoice_id, that invoice only). The cookie holds a random value; only its SHA-256 is kept.
CREATE TABLE portal_sessions (
    id_hash     TEXT PRIMARY KEY,
    email       TEXT,
    invoice_id  TEXT,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    CHECK (email IS NOT NULL OR invoice_id IS NOT NULL)
);
