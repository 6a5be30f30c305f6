-- Only the bulkload's duplicates rule groups staging by email, once, after
-- the load, with one sort. An index kept up row by row doubled the server's
-- work per staged row and, past the buffer pool, turned into random I/O.
DROP INDEX migration_staging_email;

-- validate asks whether an absent member is a duplicate loser by id alone;
-- the primary key leads with the job, so each batch scanned the whole table
-- (at 20M rows, validate crawled at 16k rows/s).
CREATE INDEX migration_conflicts_id ON migration_conflicts (id);
