-- Members. Email and phone are sealed (AES-256-GCM); email_index is a keyed
-- blind index (HMAC-SHA256) of the normalised email, unique per member.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: ids are never reused
    email_sealed  BLOB    NOT NULL,
    email_index   BLOB    NOT NULL UNIQUE,
    phone_sealed  BLOB,
    password_hash TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- What is left of a deleted member: a late, older double write must not bring them back.
CREATE TABLE tombstones (
    id         INTEGER PRIMARY KEY,
    version    INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL
);

-- A session is a refresh-token family.
CREATE TABLE sessions (
    id         TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Refresh tokens, stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    hash        BLOB    PRIMARY KEY,
    session_id  TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    replaced_by BLOB,
    rotated_at  INTEGER,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

-- Failed logins per keyed hash of the submitted email, whether or not a member has it.
CREATE TABLE login_throttle (
    throttle_key BLOB    PRIMARY KEY,
    failures     INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX login_throttle_updated ON login_throttle (updated_at);

CREATE TABLE security_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    user_id INTEGER,
    detail  TEXT    NOT NULL
);
