//! What the migration jobs need from idbase's database, as named operations.
//!
//! The jobs own this trait (as the domain owns [`Store`](crate::domain::Store));
//! `store/migration.rs` implements it for [`SqlStore`](crate::store::SqlStore),
//! so every statement the jobs run lives with the rest of the SQL. Each
//! method is one unit of work the jobs commit or read together: a batch
//! staged with its rejects in one transaction, one id range backfilled by one
//! server-side statement, one keyset page of `users`.

use super::checkpoint::Checkpoint;
use super::transform::{LegacyRecord, Reject};
use super::validation::ValidationReport;
use crate::domain::{UserId, UserRow};
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::collections::HashSet;
use tokio::sync::mpsc;

/// A staged member competing for an email with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub id: UserId,
    pub updated_at: i64,
}

/// The duplicates rule: which of the claimants of one email keeps it
/// (`None` for an empty group).
pub type WinnerOf<'a> = &'a (dyn Fn(&[Claimant]) -> Option<UserId> + Sync);

/// The staged ids `(lo, hi]` that come next: how many there are and how many
/// of them are eligible (live, not a duplicate loser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedRange {
    pub lo: i64,
    pub hi: i64,
    pub rows: u64,
    pub live: u64,
}

/// A reject as reported: the source's id and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectLine {
    pub source_id: String,
    pub reason: String,
}

/// A conflict as reported: the member left out, the one that kept the email, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictLine {
    pub id: i64,
    pub winner: i64,
    pub reason: String,
}

/// Pages of `users` in id order, read ahead of the consumer by a task; the
/// channel closes after the last page or after an error.
pub type UserPages = mpsc::Receiver<anyhow::Result<Vec<UserRow>>>;

#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// How many writers a job may run at once when it asks for `wanted`.
    fn concurrent_writers(&self, wanted: usize) -> usize;

    // Checkpoints (`migration_checkpoints`).

    async fn checkpoint(&self, job: &str) -> anyhow::Result<Option<Checkpoint>>;
    /// Every job's checkpoint, by job name.
    async fn checkpoints(&self) -> anyhow::Result<Vec<Checkpoint>>;
    /// Replaces the job's checkpoint.
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> anyhow::Result<()>;
    async fn delete_checkpoint(&self, job: &str) -> anyhow::Result<()>;

    // Bulkload (`migration_staging`).

    /// Stages transformed rows (replacing any staged under the same id) and
    /// records rejects, in one transaction.
    async fn stage_batch(
        &self,
        job: &str,
        staged: &[LegacyRecord],
        rejects: &[Reject],
    ) -> anyhow::Result<()>;

    /// Among live staged rows sharing an email, lets `winner_of` choose who
    /// keeps it, marks the others losers and records them as the job's
    /// conflicts with `reason`. Starts from a clean slate (idempotent).
    /// Returns the losers.
    async fn resolve_duplicates(
        &self,
        job: &str,
        reason: &str,
        winner_of: WinnerOf<'_>,
    ) -> anyhow::Result<u64>;

    // Backfill (staging → `users`).

    /// The next `limit` staged ids after `after`, or `None` past the last.
    async fn next_staged_range(
        &self,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Option<StagedRange>>;
    /// Inserts the range's eligible rows absent from `users` in one
    /// statement; returns the rows inserted.
    async fn backfill_range(&self, lo: i64, hi: i64) -> anyhow::Result<u64>;
    /// Every staged id in `(lo, hi]`, ascending.
    async fn staged_ids(&self, lo: i64, hi: i64) -> anyhow::Result<Vec<i64>>;
    /// Inserts one staged row as `backfill_range` would; returns 0 or 1.
    async fn backfill_one(&self, id: i64) -> anyhow::Result<u64>;
    /// Records, as the job's conflicts with `reason`, the eligible staged
    /// rows in `(lo, hi]` whose email another member owns; returns how many.
    async fn record_email_conflicts(
        &self,
        job: &str,
        lo: i64,
        hi: i64,
        reason: &str,
    ) -> anyhow::Result<u64>;
    /// Records (or replaces) one reject of the job.
    async fn record_reject(&self, job: &str, source_id: &str, reason: &str) -> anyhow::Result<()>;

    // Reports.

    /// The job's rejects by source id.
    fn rejects<'a>(&'a self, job: &'a str) -> BoxStream<'a, anyhow::Result<RejectLine>>;
    /// The job's conflicts by id.
    fn conflicts<'a>(&'a self, job: &'a str) -> BoxStream<'a, anyhow::Result<ConflictLine>>;

    // Validate and purge (reads of the live tables).

    /// Starts reading `users` in id order, `page` rows at a time, at most
    /// `ahead` pages ahead of the consumer.
    fn user_pages(&self, page: usize, ahead: usize) -> UserPages;
    /// Which of `ids` have a tombstone.
    async fn tombstoned_among(&self, ids: &[i64]) -> anyhow::Result<HashSet<i64>>;
    /// Which of `ids` are recorded as conflicts (of any job).
    async fn conflicted_among(&self, ids: &[i64]) -> anyhow::Result<HashSet<i64>>;
    /// `(id, version)` of those of `ids` stored in `users`.
    async fn stored_versions(&self, ids: &[i64]) -> anyhow::Result<Vec<(i64, i64)>>;

    // Validation results (`migration_validations`); the newest is read
    // through the domain's `Store`, for the phase guardrails.

    async fn save_validation(&self, report: &ValidationReport) -> anyhow::Result<()>;
}
