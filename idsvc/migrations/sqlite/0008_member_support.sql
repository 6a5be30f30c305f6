-- Member support on the admin port (see the MySQL migration).
CREATE INDEX security_events_user ON security_events (user_id, id);
ALTER TABLE sessions ADD COLUMN client TEXT;
