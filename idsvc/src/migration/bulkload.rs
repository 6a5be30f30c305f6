//! `idbase migrate bulkload`: source → transformed rows in `migration_staging`.
//!
//! A bounded pipeline: the source reader fills at most a few batches ahead,
//! up to `workers` batches are transformed (sealed, blind-indexed) on
//! blocking threads and up to `workers` are written, each with one multi-row
//! statement committed together with its rejects. The checkpoint (source rows
//! consumed) advances in source order over committed batches, so a crash or
//! Ctrl-C resumes after the last of them.

use super::SourceJob;
use super::checkpoint;
use super::mapping::DuplicatesRule;
use super::progress::Progress;
use super::source::{Record, Source};
use super::store::{Claimant, MigrationStore};
use super::transform::{LegacyRecord, Reject, Transformer};
use crate::domain::{IdentityService, UserId, flag_nonconforming_email};
use futures::{TryFutureExt, TryStreamExt, stream};
use serde::Serialize;
use std::sync::Arc;

pub const JOB: &str = "bulkload";

/// What a bulkload did (the counts are cumulative over resumed runs).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BulkloadCounts {
    pub source_rows: u64,
    pub staged: u64,
    pub rejected: u64,
    pub duplicate_losers: u64,
    /// Of `staged`: kept, but registration through idbase would refuse
    /// their email (a warning line per member in the job's log).
    #[serde(default)]
    pub email_nonconforming: u64,
}

pub struct BulkloadOptions {
    pub batch: usize,
    /// Batches transformed and written at once, each write on its own
    /// connection (SQLite, with one writer, runs one).
    pub workers: usize,
    pub expected_rows: Option<u64>,
    pub progress: bool,
}

/// Runs (or resumes) a bulkload. Returns `None` when cancelled mid-way (the
/// checkpoint stays for the next run).
pub async fn run(
    job: SourceJob<'_>,
    options: &BulkloadOptions,
) -> anyhow::Result<Option<BulkloadCounts>> {
    let SourceJob {
        service,
        store,
        source: source_spec,
        mapping,
        cancel,
    } = job;
    let previous = checkpoint::load(store, JOB).await?;
    let mut counts: BulkloadCounts = previous
        .as_ref()
        .map(|c| serde_json::from_str(&c.counts))
        .transpose()?
        .unwrap_or_default();
    if previous.as_ref().is_some_and(|c| c.done) {
        return Ok(Some(counts));
    }
    let skip = previous.map_or(0, |c| c.position) as u64;
    let batch_size = options.batch.clamp(1, 2000);
    let source = Source::open(source_spec, mapping, batch_size).await?;
    let transformer = Arc::new(Transformer::new(mapping, &source)?);
    let workers = store.concurrent_writers(options.workers);
    let mut progress = Progress::new(JOB, options.progress, options.expected_rows, skip);
    let batches = stream::try_unfold((source, skip), |(mut source, mut skip)| async move {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let Some(mut batch) = source.next_batch().await? else {
            return Ok(None);
        };
        // Resuming: drop what earlier runs committed.
        let drop = usize::try_from(skip).unwrap_or(usize::MAX).min(batch.len());
        batch.drain(..drop);
        skip -= drop as u64;
        Ok::<_, anyhow::Error>(Some((batch, (source, skip))))
    });
    let mut written = std::pin::pin!(
        batches
            .map_ok(|batch| {
                spawn_transform(Arc::clone(&service), Arc::clone(&transformer), batch)
                    .map_err(|err| anyhow::Error::new(err).context("transform task"))
            })
            .try_buffered(workers)
            .map_ok(|transformed| async move {
                store
                    .stage_batch(JOB, &transformed.staged, &transformed.rejects)
                    .await?;
                Ok::<_, anyhow::Error>(transformed)
            })
            .try_buffered(workers)
    );
    // Batches finish in source order, so the checkpoint (source rows
    // consumed) only ever covers batches that all committed; a crash redoes
    // at most the batches in flight, which REPLACE their own rows.
    while let Some(batch) = written.try_next().await? {
        counts.source_rows += batch.source_rows;
        counts.staged += batch.staged.len() as u64;
        counts.rejected += batch.rejects.len() as u64;
        for record in &batch.staged {
            if let Some(reason) = record.email_nonconformity {
                counts.email_nonconforming += 1;
                flag_nonconforming_email(record.row.id, JOB, reason);
            }
        }
        checkpoint::save(store, JOB, counts.source_rows as i64, false, &counts).await?;
        progress.advance(batch.source_rows);
    }
    progress.finish();
    if cancel.is_cancelled() {
        return Ok(None);
    }
    counts.duplicate_losers = resolve_duplicates(store, mapping.duplicates).await?;
    checkpoint::save(store, JOB, counts.source_rows as i64, true, &counts).await?;
    Ok(Some(counts))
}

struct Transformed {
    source_rows: u64,
    staged: Vec<LegacyRecord>,
    rejects: Vec<Reject>,
}

fn spawn_transform(
    service: Arc<IdentityService>,
    transformer: Arc<Transformer>,
    batch: Vec<Record>,
) -> tokio::task::JoinHandle<Transformed> {
    tokio::task::spawn_blocking(move || {
        let now = crate::domain::Clock::now_ms(&crate::domain::SystemClock);
        let mut out = Transformed {
            source_rows: batch.len() as u64,
            staged: Vec::with_capacity(batch.len()),
            rejects: Vec::new(),
        };
        for record in &batch {
            match transformer.transform(&service, record, now) {
                Ok(row) => out.staged.push(row),
                Err(reject) => out.rejects.push(reject),
            }
        }
        out
    })
}

/// Applies the duplicates rule among live staged rows sharing an email and
/// records every loser as a conflict. Idempotent.
async fn resolve_duplicates(
    store: &dyn MigrationStore,
    rule: DuplicatesRule,
) -> anyhow::Result<u64> {
    let reason = match rule {
        DuplicatesRule::LatestUpdated => {
            "duplicate email: a more recently updated account keeps it"
        }
        DuplicatesRule::LowestId => "duplicate email: the oldest account keeps it",
    };
    store
        .resolve_duplicates(JOB, reason, &|group| winner(group, rule))
        .await
}

/// The claimant that keeps a shared email under `rule`.
fn winner(group: &[Claimant], rule: DuplicatesRule) -> Option<UserId> {
    let winner = match rule {
        DuplicatesRule::LatestUpdated => group.iter().max_by_key(|c| (c.updated_at, c.id)),
        DuplicatesRule::LowestId => group.iter().min_by_key(|c| c.id),
    };
    winner.map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant(id: UserId, updated_at: i64) -> Claimant {
        Claimant { id, updated_at }
    }

    #[test]
    fn latest_updated_wins_and_ties_go_to_the_higher_id() {
        let group = [claimant(3, 10), claimant(7, 20), claimant(5, 20)];
        assert_eq!(winner(&group, DuplicatesRule::LatestUpdated), Some(7));
        assert_eq!(winner(&group, DuplicatesRule::LowestId), Some(3));
        assert_eq!(winner(&[], DuplicatesRule::LowestId), None);
    }
}
