-- Registrations by Idempotency-Key; see the MySQL twin.
CREATE TABLE registration_keys (
    key_hash     BLOB    PRIMARY KEY,
    request_hash BLOB    NOT NULL,
    user_id      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX registration_keys_expiry ON registration_keys (expires_at);
