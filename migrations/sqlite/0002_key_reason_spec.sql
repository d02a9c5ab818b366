-- Version 2: the reason of the last admin action on a key (rotation,
-- revocation), kept with the key for operators and auditors.
ALTER TABLE keys ADD COLUMN reason TEXT;
