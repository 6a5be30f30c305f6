-- What idsvc hears of legacy, counted per Unix second across the fleet, by
-- kind: 'double-write' (accepted), 'token-exchange' (a legacy refresh token
-- presented), 'proxied-write' (member writes the gateways proxied to legacy
-- and legacy acknowledged, from their reports), 'shadow-login' and 'shadow-me'
-- (shadow reads compared) and their '-mismatch' kinds (differences that
-- persisted on the re-check). The double-write parity, shadow-agreement and
-- legacy-quiet checks read it; rows older than 30 days are purged.
CREATE TABLE legacy_traffic (
    kind   VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    second BIGINT      NOT NULL,
    count  BIGINT      NOT NULL,
    PRIMARY KEY (kind, second),
    KEY legacy_traffic_second (second)
) ENGINE = InnoDB;
