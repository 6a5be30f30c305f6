-- Migration toolkit. The staging table holds transformed legacy rows exactly
-- as `users` would (sealed, blind-indexed), plus the legacy soft-delete flag
-- and whether the row lost its email to a duplicate.
CREATE TABLE migration_staging (
    id            BIGINT       NOT NULL PRIMARY KEY,
    email_sealed  BLOB         NOT NULL,
    email_index   TINYBLOB     NOT NULL,
    phone_sealed  BLOB,
    password_hash VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version       BIGINT       NOT NULL,
    created_at    BIGINT       NOT NULL,
    updated_at    BIGINT       NOT NULL,
    deleted       BIGINT       NOT NULL,
    loser         BIGINT       NOT NULL DEFAULT 0,
    KEY migration_staging_email (email_index(32))
) ENGINE = InnoDB;

-- Where each job stopped (source rows consumed, or the last id done).
CREATE TABLE migration_checkpoints (
    job        VARCHAR(32) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    position   BIGINT      NOT NULL,
    done       BIGINT      NOT NULL,
    counts     VARCHAR(2000) NOT NULL,
    updated_at BIGINT      NOT NULL
) ENGINE = InnoDB;

-- Rows that could not be transformed or stored, with the reason.
CREATE TABLE migration_rejects (
    job       VARCHAR(32)  CHARACTER SET ascii NOT NULL,
    source_id VARCHAR(64)  NOT NULL,
    reason    VARCHAR(512) NOT NULL,
    PRIMARY KEY (job, source_id)
) ENGINE = InnoDB;

-- Accounts that did not get their email (duplicates rule, or owned by another id).
CREATE TABLE migration_conflicts (
    job    VARCHAR(32) CHARACTER SET ascii NOT NULL,
    id     BIGINT      NOT NULL,
    winner BIGINT      NOT NULL,
    reason VARCHAR(128) NOT NULL,
    PRIMARY KEY (job, id)
) ENGINE = InnoDB;
