-- Signet's SQLite schema, version 1. Applied once by sqlx's migrator and
-- recorded in _sqlx_migrations; later changes go in new numbered files,
-- never in edits to this one (sqlx refuses a modified applied migration).

-- One row per key ring. `generation` is the compare-and-swap token: every
-- successful write to the ring (or its keys) increments it.
CREATE TABLE rings (
    name        TEXT    NOT NULL PRIMARY KEY,
    alg         TEXT    NOT NULL,
    rsa_bits    INTEGER NOT NULL CHECK (rsa_bits >= 0),
    policy_json TEXT    NOT NULL,
    generation  INTEGER NOT NULL CHECK (generation >= 1)
) STRICT;

-- One row per key a ring ever had. Rows are never deleted: a destroyed key
-- keeps its row with `sealed` NULL (a tombstone), so the primary key keeps
-- its kid reserved forever. `seq` is the insertion order within the ring.
CREATE TABLE keys (
    ring          TEXT    NOT NULL REFERENCES rings (name),
    kid           TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    jwk_json      TEXT    NOT NULL,
    timeline_json TEXT    NOT NULL,
    sealed        BLOB,
    PRIMARY KEY (ring, kid),
    UNIQUE (ring, seq)
) STRICT;

-- Store-wide values; today only the KEK check value (`kek_check`).
CREATE TABLE meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
