-- What idsvc hears of legacy, counted per second (see the MySQL migration).
CREATE TABLE legacy_traffic (
    kind   TEXT    NOT NULL,
    second INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (kind, second)
);
CREATE INDEX legacy_traffic_second ON legacy_traffic (second);
