-- Registrations by Idempotency-Key (POST /v1/users): a retried request answers
-- with the member the first attempt created instead of creating another.
-- key_hash is a keyed hash (HMAC) of the client and its key, request_hash one
-- of the request (which holds a password), so neither is stored. Rows expire
-- after 24 h and are purged with the login throttle.
CREATE TABLE registration_keys (
    key_hash     TINYBLOB NOT NULL,
    request_hash TINYBLOB NOT NULL,
    user_id      BIGINT   NOT NULL,
    expires_at   BIGINT   NOT NULL,
    PRIMARY KEY (key_hash(32)),
    KEY registration_keys_expiry (expires_at)
) ENGINE = InnoDB;
