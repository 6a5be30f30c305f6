-- Member support on the admin port (see the MySQL migration).
ALTER TABLE users ADD COLUMN phone_index BLOB;
CREATE INDEX users_phone_index ON users (phone_index);
ALTER TABLE migration_staging ADD COLUMN phone_index BLOB;
CREATE INDEX security_events_user ON security_events (user_id, id);
ALTER TABLE sessions ADD COLUMN client TEXT;
