-- Member support on the admin port (see the MySQL migration).
ALTER TABLE users ADD COLUMN phone_index BLOB;
CREATE INDEX users_phone_index ON users (phone_index);
ALTER TABLE migration_staging ADD COLUMN phone_index BLOB;
CREATE INDEX security_events_user ON security_events (user_id, id);
ALTER TABLE sessions ADD COLUMN client TEXT;
CREATE TABLE fleet_traffic (
    slot INTEGER NOT NULL, side TEXT NOT NULL, kind TEXT NOT NULL,
    ok INTEGER NOT NULL, unauthorized INTEGER NOT NULL, not_found INTEGER NOT NULL,
    throttled INTEGER NOT NULL, client_error INTEGER NOT NULL, server_error INTEGER NOT NULL,
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    b12 INTEGER NOT NULL,
    PRIMARY KEY (slot, side, kind)
);
