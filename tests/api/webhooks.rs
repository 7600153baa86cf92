//! Webhook intake: signatures, storage, duplicates, limits, and the operator view of events.
