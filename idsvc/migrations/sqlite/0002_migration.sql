-- Migration toolkit; see the MySQL twin for the meaning of each table.
CREATE TABLE migration_staging (
    id            INTEGER PRIMARY KEY,
    email_sealed  BLOB    NOT NULL,
    email_index   BLOB    NOT NULL,
    phone_sealed  BLOB,
    password_hash TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted       INTEGER NOT NULL,
    loser         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX migration_staging_email ON migration_staging (email_index);

CREATE TABLE migration_checkpoints (
    job        TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    done       INTEGER NOT NULL,
    counts     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE migration_rejects (
    job       TEXT NOT NULL,
    source_id TEXT NOT NULL,
    reason    TEXT NOT NULL,
    PRIMARY KEY (job, source_id)
);

CREATE TABLE migration_conflicts (
    job    TEXT    NOT NULL,
    id     INTEGER NOT NULL,
    winner INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    PRIMARY KEY (job, id)
);
