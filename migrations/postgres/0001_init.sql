-- Signet's PostgreSQL schema, version 1: the SQLite schema at its version 2
-- (0001_init.sql plus 0002_key_reason_spec.sql), in PostgreSQL types.
-- Applied once by sqlx's migrator, in one transaction, under its advisory
-- lock, and recorded in _sqlx_migrations of the schema first on the
-- connection's search_path. Later changes go in new numbered files, never in
-- edits to this one (sqlx refuses a modified applied migration).

-- One row per key ring. `generation` is the compare-and-swap token: every
-- successful write to the ring (or its keys) increments it, and the UPDATE
-- that does so holds the row lock that serialises writers of the ring.
CREATE TABLE rings (
    name        TEXT   NOT NULL PRIMARY KEY,
    alg         TEXT   NOT NULL,
    rsa_bits    BIGINT NOT NULL CHECK (rsa_bits >= 0),
    policy_json TEXT   NOT NULL,
    generation  BIGINT NOT NULL CHECK (generation >= 1)
);

-- One row per key a ring ever had. Rows are never deleted: a destroyed key
-- keeps its row with `sealed` NULL (a tombstone), so the primary key keeps
-- its kid reserved forever. `seq` is the insertion order within the ring.
-- `reason` is the reason of the last admin action on the key (rotation,
-- revocation), kept with the key for operators and auditors.
CREATE TABLE keys (
    ring          TEXT   NOT NULL REFERENCES rings (name),
    kid           TEXT   NOT NULL,
    seq           BIGINT NOT NULL,
    jwk_json      TEXT   NOT NULL,
    timeline_json TEXT   NOT NULL,
    sealed        BYTEA,
    reason        TEXT,
    PRIMARY KEY (ring, kid),
    UNIQUE (ring, seq)
);

-- Store-wide values; today only the KEK check value (`kek_check`).
CREATE TABLE meta (
    name  TEXT  NOT NULL PRIMARY KEY,
    value BYTEA NOT NULL
);
