-- `migrate validate` results, newest last. `status` shows the latest and the
-- phase guardrails read it: a forward move needs a recent passing validation.
-- The counts are columns so that guardrails need not parse JSON; `report`
-- holds the whole report (counts, per-field differences, sample ids; no PII).
CREATE TABLE migration_validations (
    id          BIGINT     NOT NULL AUTO_INCREMENT PRIMARY KEY,
    started_at  BIGINT     NOT NULL,
    finished_at BIGINT     NOT NULL,
    source_rows BIGINT     NOT NULL,
    matched     BIGINT     NOT NULL,
    missing     BIGINT     NOT NULL,
    extra       BIGINT     NOT NULL,
    different   BIGINT     NOT NULL,
    passed      BIGINT     NOT NULL,
    report      MEDIUMTEXT NOT NULL,
    KEY migration_validations_finished (finished_at)
) ENGINE = InnoDB;
