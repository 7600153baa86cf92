-- How much of a retainer deposit was taken back (its invoice refunded, voided or disputed): the
-- deposit stands at amount - reversed, so a deposit taken back whole keeps its row (and its
-- amount > 0) for the applications and refunds that name it.
ALTER TABLE retainers ADD COLUMN reversed BIGINT NOT NULL DEFAULT 0 CHECK (reversed >= 0);
