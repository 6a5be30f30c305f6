-- Members. Email and phone are sealed (AES-256-GCM); email_index is a keyed
-- blind index (HMAC-SHA256) of the normalised email, unique per member.
-- Binary values are BLOBs with prefix keys: sqlx's Any driver reads MySQL's
-- (VAR)BINARY columns as text, BLOBs as bytes.
-- InnoDB keeps AUTO_INCREMENT across restarts (MariaDB ≥ 10.2.4, MySQL 8), so ids are never reused.
CREATE TABLE users (
    id            BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email_sealed  BLOB           NOT NULL,
    email_index   TINYBLOB       NOT NULL,
    phone_sealed  BLOB,
    password_hash VARCHAR(512)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version       BIGINT         NOT NULL,
    created_at    BIGINT         NOT NULL,
    updated_at    BIGINT         NOT NULL,
    UNIQUE KEY users_email_index (email_index(32))
) ENGINE = InnoDB;

-- What is left of a deleted member: a late, older double write must not bring them back.
CREATE TABLE tombstones (
    id         BIGINT NOT NULL PRIMARY KEY,
    version    BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL
) ENGINE = InnoDB;

-- A session is a refresh-token family.
CREATE TABLE sessions (
    id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    created_at BIGINT      NOT NULL,
    revoked_at BIGINT,
    KEY sessions_user (user_id)
) ENGINE = InnoDB;

-- Refresh tokens, stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    hash        TINYBLOB    NOT NULL,
    session_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id     BIGINT      NOT NULL,
    replaced_by TINYBLOB,
    rotated_at  BIGINT,
    expires_at  BIGINT      NOT NULL,
    created_at  BIGINT      NOT NULL,
    PRIMARY KEY (hash(32)),
    KEY refresh_tokens_session (session_id),
    KEY refresh_tokens_expiry (expires_at)
) ENGINE = InnoDB;

-- Failed logins per keyed hash of the submitted email, whether or not a member has it.
CREATE TABLE login_throttle (
    throttle_key TINYBLOB   NOT NULL,
    failures     BIGINT     NOT NULL,
    locked_until BIGINT     NOT NULL,
    updated_at   BIGINT     NOT NULL,
    PRIMARY KEY (throttle_key(32)),
    KEY login_throttle_updated (updated_at)
) ENGINE = InnoDB;

CREATE TABLE security_events (
    id      BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at      BIGINT       NOT NULL,
    kind    VARCHAR(64)  NOT NULL,
    user_id BIGINT,
    detail  VARCHAR(1024) NOT NULL,
    KEY security_events_at (at)
) ENGINE = InnoDB;
