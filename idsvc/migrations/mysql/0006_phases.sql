-- The migration phase (one row, id = 1), moved by compare-and-set on
-- `generation`. ramp_key (32 random bytes) keys the hash that sorts members
-- into a ramp's share; chosen when the row is created, never changed.
-- Booleans are BIGINT 0/1, as everywhere in this schema.
CREATE TABLE phase_state (
    id          BIGINT       NOT NULL PRIMARY KEY,
    phase       BIGINT       NOT NULL,
    weight      BIGINT       NOT NULL,
    generation  BIGINT       NOT NULL,
    write_fence BIGINT       NOT NULL,
    ramp_key    TINYBLOB     NOT NULL,
    changed_at  BIGINT       NOT NULL,
    changed_by  VARCHAR(128) NOT NULL
) ENGINE = InnoDB;

-- Every change of the phase, one row per generation. fence_ms is filled
-- when the write fence a change raised is lifted.
CREATE TABLE phase_history (
    generation  BIGINT        NOT NULL PRIMARY KEY,
    from_phase  BIGINT        NOT NULL,
    to_phase    BIGINT        NOT NULL,
    from_weight BIGINT        NOT NULL,
    to_weight   BIGINT        NOT NULL,
    who         VARCHAR(128)  NOT NULL,
    at          BIGINT        NOT NULL,
    reason      VARCHAR(2000) NOT NULL,
    forced      BIGINT        NOT NULL,
    automatic   BIGINT        NOT NULL,
    fence_ms    BIGINT
) ENGINE = InnoDB;

-- Legacy refresh tokens exchanged for idbase sessions (SHA-256 of the
-- token, never the token): a retry within the refresh grace window gets a
-- rotation of the same session, a later one nothing.
CREATE TABLE legacy_exchanges (
    legacy_token_sha256 TINYBLOB    NOT NULL,
    user_id             BIGINT      NOT NULL,
    session_id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at          BIGINT      NOT NULL,
    PRIMARY KEY (legacy_token_sha256(32))
) ENGINE = InnoDB;

-- Each gateway's latest heartbeat (ReportPhase), so every idsvc replica sees
-- the whole fleet: the generation it routes by, its writes in flight, how
-- many of its idsvc endpoints are serving, whether legacy answers.
CREATE TABLE gateway_reports (
    gateway_id        VARCHAR(128) NOT NULL PRIMARY KEY,
    generation        BIGINT       NOT NULL,
    writes_in_flight  BIGINT       NOT NULL,
    endpoints_total   BIGINT       NOT NULL,
    endpoints_serving BIGINT       NOT NULL,
    legacy_reachable  BIGINT,
    reported_at       BIGINT       NOT NULL
) ENGINE = InnoDB;

-- SHA-256 of the last password hash a double write brought: a later double
-- write with the same legacy hash is no password change, even after a login
-- at idbase re-hashed the stored password.
ALTER TABLE users ADD COLUMN legacy_hash_sha256 TINYBLOB;
