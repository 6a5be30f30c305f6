-- When idsvc last heard from legacy, by kind ('double-write': a double write
-- received; 'token-exchange': a legacy refresh token exchanged). The move to
-- phase 5 needs both quiet for a while. Each replica writes at most once a
-- second per kind, before it serves the call, so a crash loses nothing.
CREATE TABLE legacy_activity (
    kind    VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    last_at BIGINT      NOT NULL
) ENGINE = InnoDB;
