-- The migration phase and its history, exchanged legacy sessions, the
-- gateways' heartbeats; see the MySQL twin.
CREATE TABLE phase_state (
    id          INTEGER PRIMARY KEY,
    phase       INTEGER NOT NULL,
    weight      INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    write_fence INTEGER NOT NULL,
    ramp_key    BLOB    NOT NULL,
    changed_at  INTEGER NOT NULL,
    changed_by  TEXT    NOT NULL
);

CREATE TABLE phase_history (
    generation  INTEGER PRIMARY KEY,
    from_phase  INTEGER NOT NULL,
    to_phase    INTEGER NOT NULL,
    from_weight INTEGER NOT NULL,
    to_weight   INTEGER NOT NULL,
    who         TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    forced      INTEGER NOT NULL,
    automatic   INTEGER NOT NULL,
    fence_ms    INTEGER
);

CREATE TABLE legacy_exchanges (
    legacy_token_sha256 BLOB    PRIMARY KEY,
    user_id             INTEGER NOT NULL,
    session_id          TEXT    NOT NULL,
    created_at          INTEGER NOT NULL
);

CREATE TABLE gateway_reports (
    gateway_id        TEXT    PRIMARY KEY,
    generation        INTEGER NOT NULL,
    writes_in_flight  INTEGER NOT NULL,
    endpoints_total   INTEGER NOT NULL,
    endpoints_serving INTEGER NOT NULL,
    legacy_reachable  INTEGER,
    reported_at       INTEGER NOT NULL
);

ALTER TABLE users ADD COLUMN legacy_hash_sha256 BLOB;
