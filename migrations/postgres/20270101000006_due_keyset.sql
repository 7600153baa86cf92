-- The sweep walks the due subscriptions in (next_period_start, id) order, a page at a time, and
-- starts each page where the last one ended; the id makes the position exact when thousands of
-- subscriptions fall due at the same instant.
CREATE INDEX subscriptions_due_keyset ON subscriptions(status, next_period_start, id);
DROP INDEX subscriptions_due;
