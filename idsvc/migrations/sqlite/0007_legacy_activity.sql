-- When idsvc last heard from legacy, by kind (see the MySQL migration).
CREATE TABLE legacy_activity (
    kind    TEXT    PRIMARY KEY,
    last_at INTEGER NOT NULL
);
