//! `idbase migrate backfill`: staging → users in id-range batches.
//!
//! Each batch is one server-side `INSERT IGNORE … SELECT` that only inserts
//! rows whose id is absent from `users`, that are live in the legacy table,
//! kept their email under the duplicates rule, have no tombstone as new as
//! the staged version, and whose email no other member owns (those are
//! recorded as conflicts). A row the double write already stored is never
//! touched. If the batch statement fails (a deadlock with a double write),
//! its rows are retried one by one and each failure is recorded with its
//! reason. Batches run a few at a time; the checkpoint is the last id below
//! which every batch is done, so a second run resumes or changes nothing.

use super::checkpoint;
use super::progress::Progress;
use crate::store::{Dialect, SqlStore};
use futures::{TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub const JOB: &str = "backfill";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackfillCounts {
    pub scanned: u64,
    pub inserted: u64,
    pub conflicts: u64,
    pub failed: u64,
}

/// Rows of `s` (staging) eligible for insertion; `?` binds are the range.
const ELIGIBLE: &str = "s.deleted = 0 AND s.loser = 0 \
     AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.id) \
     AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = s.id AND t.version >= s.version)";

/// Inserts the range's live rows that no tombstone as new forbids. The
/// unique keys, not subqueries on `users`, skip an id the double write
/// already stored and an email another member owns: `IGNORE` leaves the
/// existing row alone, and a statement that reads its own target table
/// makes MariaDB copy the whole selection to a temporary table first (twice
/// the server time). Staging has the column types of `users`, so `IGNORE`
/// has nothing else to forgive.
fn insert_sql(dialect: Dialect, range: &str) -> String {
    format!(
        "{} INTO users (id, email_sealed, email_index, phone_sealed, password_hash, version, \
         created_at, updated_at) \
         SELECT s.id, s.email_sealed, s.email_index, s.phone_sealed, s.password_hash, s.version, \
         s.created_at, s.updated_at FROM migration_staging s \
         WHERE {range} AND s.deleted = 0 AND s.loser = 0 \
         AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = s.id AND t.version >= s.version)",
        dialect.insert_ignore()
    )
}

pub struct BackfillOptions {
    /// Staged ids per batch (one `INSERT … SELECT`).
    pub batch: usize,
    /// Batches in flight at once, each on its own connection. MariaDB runs a
    /// statement on one core; two batches keep a small node's both busy.
    /// SQLite has one writer, so it always runs one.
    pub workers: usize,
    pub progress: bool,
}

/// One id range `(lo, hi]` of staging: its row count and live rows.
#[derive(Clone, Copy)]
struct Range {
    lo: i64,
    hi: i64,
    rows: u64,
    live: u64,
}

#[derive(Default)]
struct RangeDone {
    inserted: u64,
    conflicts: u64,
    failed: u64,
}

/// Runs (or resumes) the backfill; `None` when cancelled (checkpoint kept).
///
/// Ranges are cut in id order and run `workers` at a time; results are taken
/// in order, so the checkpoint (last id done) only ever covers ranges that
/// all committed. A crash redoes at most the ranges in flight, which insert
/// nothing the second time.
pub async fn run(
    store: &SqlStore,
    options: &BackfillOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<BackfillCounts>> {
    let previous = checkpoint::load(store, JOB).await?;
    let mut counts: BackfillCounts = previous
        .as_ref()
        .map(|c| serde_json::from_str(&c.counts))
        .transpose()?
        .unwrap_or_default();
    let start = previous.map_or(0, |c| c.position);
    let batch = i64::try_from(options.batch.clamp(1, 100_000)).unwrap_or(1000);
    let workers = store.dialect().concurrent_writers(options.workers);
    let mut bar = Progress::new(JOB, options.progress, None, counts.scanned);
    let ranges = stream::try_unfold(start, |lo| async move {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let range = next_range(store, lo, batch).await?;
        Ok::<_, anyhow::Error>(range.map(|r| (r, r.hi)))
    });
    let mut done = std::pin::pin!(
        ranges
            .map_ok(|range| async move { Ok((range, backfill_range(store, range).await?)) })
            .try_buffered(workers)
    );
    let mut last = start;
    while let Some((range, result)) = done.try_next().await? {
        counts.scanned += range.rows;
        counts.inserted += result.inserted;
        counts.conflicts += result.conflicts;
        counts.failed += result.failed;
        last = range.hi;
        checkpoint::save(store, JOB, last, false, &counts).await?;
        bar.advance(range.rows);
    }
    bar.finish();
    if cancel.is_cancelled() {
        return Ok(None);
    }
    checkpoint::save(store, JOB, last, true, &counts).await?;
    Ok(Some(counts))
}

/// The next `batch` staged ids after `lo`, or `None` past the last.
async fn next_range(store: &SqlStore, lo: i64, batch: i64) -> anyhow::Result<Option<Range>> {
    let bounds = sqlx::query(
        "SELECT COUNT(*), MAX(id), COUNT(CASE WHEN deleted = 0 AND loser = 0 THEN 1 END) \
         FROM (SELECT id, deleted, loser FROM migration_staging WHERE id > ? \
         ORDER BY id LIMIT ?) x",
    )
    .bind(lo)
    .bind(batch)
    .fetch_one(store.pool())
    .await?;
    let rows: i64 = bounds.try_get(0)?;
    if rows == 0 {
        return Ok(None);
    }
    Ok(Some(Range {
        lo,
        hi: bounds.try_get(1)?,
        rows: rows as u64,
        live: bounds.try_get::<i64, _>(2)? as u64,
    }))
}

async fn backfill_range(store: &SqlStore, range: Range) -> anyhow::Result<RangeDone> {
    let mut done = RangeDone::default();
    match sqlx::query(&insert_sql(store.dialect(), "s.id > ? AND s.id <= ?"))
        .bind(range.lo)
        .bind(range.hi)
        .execute(store.pool())
        .await
    {
        Ok(result) => done.inserted = result.rows_affected(),
        Err(_) => (done.inserted, done.failed) = row_by_row(store, range.lo, range.hi).await?,
    }
    // Every live row went in, so none was skipped for its email: the common
    // case needs no second look at the range.
    if done.inserted + done.failed < range.live {
        done.conflicts = record_conflicts(store, range.lo, range.hi).await?;
    }
    Ok(done)
}

/// Staged rows whose email another member already owns: reported, not
/// inserted. Run after the range's insert, so the rows still eligible are
/// exactly the ones it skipped for their email.
async fn record_conflicts(store: &SqlStore, lo: i64, hi: i64) -> anyhow::Result<u64> {
    // The owner as a correlated subquery, not a join: with a join and bound
    // parameters, MariaDB may drive from `users` and scan it once per batch
    // (measured: backfill slowing as `users` grows, 3× the floor at 100k).
    let rows = sqlx::query(&format!(
        "SELECT id, owner FROM (SELECT s.id AS id, \
         (SELECT o.id FROM users o WHERE o.email_index = s.email_index) AS owner \
         FROM migration_staging s WHERE s.id > ? AND s.id <= ? AND {ELIGIBLE}) x \
         WHERE owner IS NOT NULL AND owner <> id"
    ))
    .bind(lo)
    .bind(hi)
    .fetch_all(store.pool())
    .await?;
    for row in &rows {
        sqlx::query(
            "REPLACE INTO migration_conflicts (job, id, winner, reason) VALUES (?, ?, ?, ?)",
        )
        .bind(JOB)
        .bind(row.try_get::<i64, _>(0)?)
        .bind(row.try_get::<i64, _>(1)?)
        .bind("email already owned by another member")
        .execute(store.pool())
        .await?;
    }
    Ok(rows.len() as u64)
}

async fn row_by_row(store: &SqlStore, lo: i64, hi: i64) -> anyhow::Result<(u64, u64)> {
    let ids: Vec<i64> =
        sqlx::query("SELECT id FROM migration_staging WHERE id > ? AND id <= ? ORDER BY id")
            .bind(lo)
            .bind(hi)
            .fetch_all(store.pool())
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
    let (mut inserted, mut failed) = (0, 0);
    let single = insert_sql(store.dialect(), "s.id = ?");
    for id in ids {
        match sqlx::query(&single).bind(id).execute(store.pool()).await {
            Ok(done) => inserted += done.rows_affected(),
            Err(err) => {
                failed += 1;
                let reason: String = err.to_string().chars().take(500).collect();
                sqlx::query(
                    "REPLACE INTO migration_rejects (job, source_id, reason) VALUES (?, ?, ?)",
                )
                .bind(JOB)
                .bind(id.to_string())
                .bind(reason)
                .execute(store.pool())
                .await?;
            }
        }
    }
    Ok((inserted, failed))
}
