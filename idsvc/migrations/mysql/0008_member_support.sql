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

-- The fleet's member traffic as the gateways report it, added up per 5-second
-- slot, side ('legacy', 'idbase') and route kind ('read', 'write', 'token',
-- 'double-write'): outcome counts and latency buckets b0..b12 (≤1, 2, 5, 10,
-- 20, 50, 100, 200, 500, 1000, 2000, 5000 ms, over). Kept for a day.
CREATE TABLE fleet_traffic (
    slot         BIGINT      NOT NULL,
    side         VARCHAR(8)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind         VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    ok           BIGINT NOT NULL, unauthorized BIGINT NOT NULL, not_found BIGINT NOT NULL,
    throttled    BIGINT NOT NULL, client_error BIGINT NOT NULL, server_error BIGINT NOT NULL,
    b0 BIGINT NOT NULL, b1 BIGINT NOT NULL, b2 BIGINT NOT NULL, b3 BIGINT NOT NULL,
    b4 BIGINT NOT NULL, b5 BIGINT NOT NULL, b6 BIGINT NOT NULL, b7 BIGINT NOT NULL,
    b8 BIGINT NOT NULL, b9 BIGINT NOT NULL, b10 BIGINT NOT NULL, b11 BIGINT NOT NULL,
    b12 BIGINT NOT NULL,
    PRIMARY KEY (slot, side, kind)
) ENGINE = InnoDB;
