-- Version 3: each ring's sealed manifest (generation, spec, policy, and every
-- key's kid, timeline and tombstone, authenticated under a key sealed by the
-- KEK). Written in the same transaction as every change to the ring; the
-- key manager trusts the rows only as far as the manifest vouches for them.
-- NULL for rings written before this version, until their next change.
ALTER TABLE rings ADD COLUMN manifest BYTEA;
