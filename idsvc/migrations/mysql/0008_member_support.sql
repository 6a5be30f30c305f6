-- Member support on the admin port:
-- - members are found by phone through a keyed blind index (HMAC-SHA256) of
--   the E.164 number, not unique (members may share a number);
-- - a member's recent security events are read by member id;
-- - each session names the client app that opened it (NULL when the gateway
--   did not say).
ALTER TABLE users ADD COLUMN phone_index TINYBLOB NULL, ADD KEY users_phone_index (phone_index(32));
ALTER TABLE migration_staging ADD COLUMN phone_index TINYBLOB NULL;
CREATE INDEX security_events_user ON security_events (user_id, id);
ALTER TABLE sessions ADD COLUMN client VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL;
