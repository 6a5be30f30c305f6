-- `migrate validate` results; see the MySQL twin.
CREATE TABLE migration_validations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    source_rows INTEGER NOT NULL,
    matched     INTEGER NOT NULL,
    missing     INTEGER NOT NULL,
    extra       INTEGER NOT NULL,
    different   INTEGER NOT NULL,
    passed      INTEGER NOT NULL,
    report      TEXT    NOT NULL
);
CREATE INDEX migration_validations_finished ON migration_validations (finished_at);
