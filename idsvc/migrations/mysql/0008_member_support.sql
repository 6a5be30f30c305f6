-- Member support on the admin port: a member's recent security events are
-- read by member id, and each session names the client class that opened it
-- (internal, web, mobile; NULL when the gateway did not say).
CREATE INDEX security_events_user ON security_events (user_id, id);
ALTER TABLE sessions ADD COLUMN client VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL;
