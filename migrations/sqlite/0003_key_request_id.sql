-- Version 3: the idempotency key of the Rotate request that created a key,
-- so that a retried or concurrent Rotate with the same request id answers
-- with that key instead of rotating again. Written once, at insert.
ALTER TABLE keys ADD COLUMN request_id TEXT;
