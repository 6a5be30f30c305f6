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
use super::store::{MigrationStore, StagedRange};
use futures::{TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub const JOB: &str = "backfill";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackfillCounts {
    pub scanned: u64,
    pub inserted: u64,
    pub conflicts: u64,
    pub failed: u64,
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
    store: &dyn MigrationStore,
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
    let workers = store.concurrent_writers(options.workers);
    let mut bar = Progress::new(JOB, options.progress, None, counts.scanned);
    let ranges = stream::try_unfold(start, |lo| async move {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let range = store.next_staged_range(lo, batch).await?;
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

async fn backfill_range(
    store: &dyn MigrationStore,
    range: StagedRange,
) -> anyhow::Result<RangeDone> {
    let mut done = RangeDone::default();
    match store.backfill_range(range.lo, range.hi).await {
        Ok(inserted) => done.inserted = inserted,
        Err(_) => (done.inserted, done.failed) = row_by_row(store, range.lo, range.hi).await?,
    }
    // Every live row went in, so none was skipped for its email: the common
    // case needs no second look at the range. Run after the range's insert,
    // so the rows still eligible are exactly the ones it skipped for their
    // email: reported, not inserted.
    if done.inserted + done.failed < range.live {
        done.conflicts = store
            .record_email_conflicts(
                JOB,
                range.lo,
                range.hi,
                "email already owned by another member",
            )
            .await?;
    }
    Ok(done)
}

/// The range's rows one by one, after its statement failed (a deadlock with
/// a double write): each failure is recorded with its reason.
async fn row_by_row(store: &dyn MigrationStore, lo: i64, hi: i64) -> anyhow::Result<(u64, u64)> {
    let (mut inserted, mut failed) = (0, 0);
    for id in store.staged_ids(lo, hi).await? {
        match store.backfill_one(id).await {
            Ok(done) => inserted += done,
            Err(err) => {
                failed += 1;
                store
                    .record_reject(JOB, &id.to_string(), &err.to_string())
                    .await?;
            }
        }
    }
    Ok((inserted, failed))
}
