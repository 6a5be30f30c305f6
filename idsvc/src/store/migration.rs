//! The migration jobs' statements: [`MigrationStore`] for [`SqlStore`].
//!
//! Written for 20M-row runs: multi-row statements for staging and for
//! marking losers, server-side `INSERT … SELECT` for the backfill, keyset
//! pages for scans, and `IN` lists bounded whatever the caller's batch.

use super::{Dialect, SqlStore};
use crate::domain::{UserId, UserRow};
use crate::migration::checkpoint::Checkpoint;
use crate::migration::store::{
    Claimant, ConflictLine, MigrationStore, RejectLine, StagedRange, UserPages, WinnerOf,
};
use crate::migration::transform::{LegacyRecord, Reject};
use crate::migration::validation::ValidationReport;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::HashSet;
use tokio::sync::mpsc;

const STAGING_COLUMNS: &str = "id, email_sealed, email_index, phone_sealed, phone_index, \
     password_hash, version, created_at, updated_at, deleted, loser";

/// `migration_rejects` column widths: longer ids and reasons are cut.
const REJECT_ID_CHARS: usize = 64;
const REJECT_REASON_CHARS: usize = 500;

/// Losers marked per pair of statements: single-row statements took minutes
/// at 20M rows with a few percent duplicates.
const MARK_CHUNK: usize = 500;

/// Ids per `IN (…)` list: bounded statements whatever the batch size.
const IN_CHUNK: usize = 500;

/// Rows of `s` (staging) eligible for insertion.
const ELIGIBLE: &str = "s.deleted = 0 AND s.loser = 0 \
     AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.id) \
     AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = s.id AND t.version >= s.version)";

/// Inserts the staged rows matching `range` that are live, kept their email
/// and that no tombstone as new forbids. The unique keys, not subqueries on
/// `users`, skip an id the double write already stored and an email another
/// member owns: `IGNORE` leaves the existing row alone, and a statement that
/// reads its own target table makes MariaDB copy the whole selection to a
/// temporary table first (twice the server time). Staging has the column
/// types of `users`, so `IGNORE` has nothing else to forgive.
fn backfill_sql(dialect: Dialect, range: &str) -> String {
    format!(
        "{} INTO users (id, email_sealed, email_index, phone_sealed, phone_index, password_hash, \
         version, created_at, updated_at) \
         SELECT s.id, s.email_sealed, s.email_index, s.phone_sealed, s.phone_index, \
         s.password_hash, s.version, s.created_at, s.updated_at FROM migration_staging s \
         WHERE {range} AND s.deleted = 0 AND s.loser = 0 \
         AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = s.id AND t.version >= s.version)",
        dialect.insert_ignore()
    )
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn checkpoint_of(r: &AnyRow) -> anyhow::Result<Checkpoint> {
    Ok(Checkpoint {
        job: r.try_get(0)?,
        position: r.try_get(1)?,
        done: r.try_get::<i64, _>(2)? != 0,
        counts: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

fn user_row_of(row: &AnyRow) -> anyhow::Result<UserRow> {
    Ok(UserRow {
        id: row.try_get(0)?,
        email_sealed: row.try_get(1)?,
        email_index: row.try_get(2)?,
        phone_sealed: row.try_get(3)?,
        password_hash: row.try_get(4)?,
        version: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
        phone_index: row.try_get(8)?,
    })
}

impl SqlStore {
    /// Runs `select … IN (ids)` in bounded chunks and returns the ids found.
    async fn ids_among(&self, select: &str, ids: &[i64]) -> anyhow::Result<HashSet<i64>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!("{select} ({})", placeholders(chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(self.pool()).await? {
                found.insert(row.try_get::<i64, _>(0)?);
            }
        }
        Ok(found)
    }

    /// Marks losers in staging and records them as conflicts, one transaction
    /// per chunk.
    async fn mark_losers(
        &self,
        job: &str,
        losers: &[(UserId, UserId)],
        reason: &str,
    ) -> anyhow::Result<u64> {
        for chunk in losers.chunks(MARK_CHUNK) {
            let mut tx = self.pool().begin().await?;
            let sql = format!(
                "UPDATE migration_staging SET loser = 1 WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut update = sqlx::query(&sql);
            for (loser, _) in chunk {
                update = update.bind(*loser);
            }
            update.execute(&mut *tx).await?;
            let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql =
                format!("REPLACE INTO migration_conflicts (job, id, winner, reason) VALUES {rows}");
            let mut insert = sqlx::query(&sql);
            for (loser, winner) in chunk {
                insert = insert.bind(job).bind(*loser).bind(*winner).bind(reason);
            }
            insert.execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(losers.len() as u64)
    }
}

/// Every claimant of `group` but the winner, as `(loser, winner)`.
fn losers_of(group: &[Claimant], winner_of: WinnerOf<'_>, out: &mut Vec<(UserId, UserId)>) {
    let Some(winner) = winner_of(group) else {
        return;
    };
    out.extend(
        group
            .iter()
            .filter(|c| c.id != winner)
            .map(|c| (c.id, winner)),
    );
}

#[async_trait]
impl MigrationStore for SqlStore {
    fn concurrent_writers(&self, wanted: usize) -> usize {
        self.dialect().concurrent_writers(wanted)
    }

    async fn checkpoint(&self, job: &str) -> anyhow::Result<Option<Checkpoint>> {
        let row = sqlx::query(
            "SELECT job, position, done, counts, updated_at FROM migration_checkpoints \
             WHERE job = ?",
        )
        .bind(job)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(checkpoint_of).transpose()
    }

    async fn checkpoints(&self) -> anyhow::Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT job, position, done, counts, updated_at FROM migration_checkpoints \
             ORDER BY job",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(checkpoint_of).collect()
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        sqlx::query(
            "REPLACE INTO migration_checkpoints (job, position, done, counts, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(checkpoint.job.as_str())
        .bind(checkpoint.position)
        .bind(i64::from(checkpoint.done))
        .bind(checkpoint.counts.as_str())
        .bind(checkpoint.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn delete_checkpoint(&self, job: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM migration_checkpoints WHERE job = ?")
            .bind(job)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn stage_batch(
        &self,
        job: &str,
        staged: &[LegacyRecord],
        rejects: &[Reject],
    ) -> anyhow::Result<()> {
        let mut tx = self.pool().begin().await?;
        if !staged.is_empty() {
            // REPLACE: a batch re-read after a crash overwrites its own rows.
            let mut sql = format!("REPLACE INTO migration_staging ({STAGING_COLUMNS}) VALUES ");
            sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"; staged.len()].join(", "));
            let mut query = sqlx::query(&sql);
            for r in staged {
                query = query
                    .bind(r.row.id)
                    .bind(r.row.email_sealed.as_slice())
                    .bind(r.row.email_index.as_slice())
                    .bind(r.row.phone_sealed.as_deref())
                    .bind(r.row.phone_index.as_deref())
                    .bind(r.row.password_hash.as_str())
                    .bind(r.row.version)
                    .bind(r.row.created_at)
                    .bind(r.row.updated_at)
                    .bind(i64::from(r.deleted));
            }
            query.execute(&mut *tx).await?;
        }
        for reject in rejects {
            sqlx::query("REPLACE INTO migration_rejects (job, source_id, reason) VALUES (?, ?, ?)")
                .bind(job)
                .bind(truncate(&reject.id, REJECT_ID_CHARS))
                .bind(truncate(&reject.reason, REJECT_REASON_CHARS))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn resolve_duplicates(
        &self,
        job: &str,
        reason: &str,
        winner_of: WinnerOf<'_>,
    ) -> anyhow::Result<u64> {
        let pool = self.pool();
        // Losers are marked in the transaction that records their conflicts, so
        // without conflict rows there is no mark to reset (and no full scan).
        let marked: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM migration_conflicts WHERE job = ? LIMIT 1")
                .bind(job)
                .fetch_optional(pool)
                .await?;
        if marked.is_some() {
            sqlx::query("UPDATE migration_staging SET loser = 0 WHERE loser <> 0")
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM migration_conflicts WHERE job = ?")
                .bind(job)
                .execute(pool)
                .await?;
        }
        let mut reader = pool.acquire().await?;
        let mysql = self.dialect() == Dialect::MySql;
        if mysql {
            // The sort below covers every live staged row: 2 MiB (the default)
            // means hundreds of merge passes at 20M rows.
            sqlx::query("SET SESSION sort_buffer_size = 268435456")
                .execute(&mut *reader)
                .await?;
        }
        // Every live row, sorted by email and streamed; one group (usually of
        // one) and one chunk of losers are held at a time. One sort of
        // staging, no index on it: maintaining an email index row by row
        // doubled MariaDB's work per staged row, a GROUP BY joined back to
        // staging took longer than building one afterwards, and a window
        // count (to send only shared emails) wrote every row to an on-disk
        // temporary table first (5M rows: 14 s, against 6 s for the sort
        // streamed).
        let mut rows = sqlx::query(
            "SELECT id, HEX(email_index), updated_at FROM migration_staging \
             WHERE deleted = 0 ORDER BY email_index, id",
        )
        .fetch(&mut *reader);
        let mut losers = 0;
        let mut pending: Vec<(UserId, UserId)> = Vec::with_capacity(MARK_CHUNK);
        let mut group: Vec<Claimant> = Vec::new();
        let mut key: Option<String> = None;
        while let Some(row) = rows.try_next().await? {
            // As hex: the Any driver reads MySQL's VARBINARY as text.
            let index: String = row.try_get(1)?;
            if key.as_ref() != Some(&index) {
                losers_of(&group, winner_of, &mut pending);
                group.clear();
                key = Some(index);
                if pending.len() >= MARK_CHUNK {
                    losers += self.mark_losers(job, &pending, reason).await?;
                    pending.clear();
                }
            }
            group.push(Claimant {
                id: row.try_get(0)?,
                updated_at: row.try_get(2)?,
            });
        }
        losers_of(&group, winner_of, &mut pending);
        drop(rows);
        losers += self.mark_losers(job, &pending, reason).await?;
        if mysql {
            sqlx::query("SET SESSION sort_buffer_size = DEFAULT")
                .execute(&mut *reader)
                .await?;
        }
        Ok(losers)
    }

    async fn next_staged_range(
        &self,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Option<StagedRange>> {
        let bounds = sqlx::query(
            "SELECT COUNT(*), MAX(id), COUNT(CASE WHEN deleted = 0 AND loser = 0 THEN 1 END) \
             FROM (SELECT id, deleted, loser FROM migration_staging WHERE id > ? \
             ORDER BY id LIMIT ?) x",
        )
        .bind(after)
        .bind(limit)
        .fetch_one(self.pool())
        .await?;
        let rows: i64 = bounds.try_get(0)?;
        if rows == 0 {
            return Ok(None);
        }
        Ok(Some(StagedRange {
            lo: after,
            hi: bounds.try_get(1)?,
            rows: rows as u64,
            live: bounds.try_get::<i64, _>(2)? as u64,
        }))
    }

    async fn backfill_range(&self, lo: i64, hi: i64) -> anyhow::Result<u64> {
        let done = sqlx::query(&backfill_sql(self.dialect(), "s.id > ? AND s.id <= ?"))
            .bind(lo)
            .bind(hi)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn staged_ids(&self, lo: i64, hi: i64) -> anyhow::Result<Vec<i64>> {
        let rows =
            sqlx::query("SELECT id FROM migration_staging WHERE id > ? AND id <= ? ORDER BY id")
                .bind(lo)
                .bind(hi)
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn backfill_one(&self, id: i64) -> anyhow::Result<u64> {
        let done = sqlx::query(&backfill_sql(self.dialect(), "s.id = ?"))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn record_email_conflicts(
        &self,
        job: &str,
        lo: i64,
        hi: i64,
        reason: &str,
    ) -> anyhow::Result<u64> {
        // The owner as a correlated subquery, not a join: with a join and
        // bound parameters, MariaDB may drive from `users` and scan it once
        // per batch (measured: backfill slowing as `users` grows, 3× the
        // floor at 100k).
        let rows = sqlx::query(&format!(
            "SELECT id, owner FROM (SELECT s.id AS id, \
             (SELECT o.id FROM users o WHERE o.email_index = s.email_index) AS owner \
             FROM migration_staging s WHERE s.id > ? AND s.id <= ? AND {ELIGIBLE}) x \
             WHERE owner IS NOT NULL AND owner <> id"
        ))
        .bind(lo)
        .bind(hi)
        .fetch_all(self.pool())
        .await?;
        for row in &rows {
            sqlx::query(
                "REPLACE INTO migration_conflicts (job, id, winner, reason) VALUES (?, ?, ?, ?)",
            )
            .bind(job)
            .bind(row.try_get::<i64, _>(0)?)
            .bind(row.try_get::<i64, _>(1)?)
            .bind(reason)
            .execute(self.pool())
            .await?;
        }
        Ok(rows.len() as u64)
    }

    async fn record_reject(&self, job: &str, source_id: &str, reason: &str) -> anyhow::Result<()> {
        sqlx::query("REPLACE INTO migration_rejects (job, source_id, reason) VALUES (?, ?, ?)")
            .bind(job)
            .bind(truncate(source_id, REJECT_ID_CHARS))
            .bind(truncate(reason, REJECT_REASON_CHARS))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    fn rejects<'a>(&'a self, job: &'a str) -> BoxStream<'a, anyhow::Result<RejectLine>> {
        sqlx::query(
            "SELECT source_id, reason FROM migration_rejects WHERE job = ? ORDER BY source_id",
        )
        .bind(job)
        .fetch(self.pool())
        .map(|row| {
            let row = row?;
            Ok(RejectLine {
                source_id: row.try_get(0)?,
                reason: row.try_get(1)?,
            })
        })
        .boxed()
    }

    fn conflicts<'a>(&'a self, job: &'a str) -> BoxStream<'a, anyhow::Result<ConflictLine>> {
        sqlx::query("SELECT id, winner, reason FROM migration_conflicts WHERE job = ? ORDER BY id")
            .bind(job)
            .fetch(self.pool())
            .map(|row| {
                let row = row?;
                Ok(ConflictLine {
                    id: row.try_get(0)?,
                    winner: row.try_get(1)?,
                    reason: row.try_get(2)?,
                })
            })
            .boxed()
    }

    fn user_pages(&self, page: usize, ahead: usize) -> UserPages {
        let pool = self.pool().clone();
        let page = i64::try_from(page.max(1)).unwrap_or(1000);
        let (tx, rx) = mpsc::channel(ahead.max(1));
        tokio::spawn(async move {
            let mut last = i64::MIN;
            loop {
                let rows = sqlx::query(
                    "SELECT id, email_sealed, email_index, phone_sealed, password_hash, version, \
                     created_at, updated_at, phone_index FROM users WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(last)
                .bind(page)
                .fetch_all(&pool)
                .await;
                let rows: anyhow::Result<Vec<UserRow>> = rows
                    .map_err(anyhow::Error::from)
                    .and_then(|rows| rows.iter().map(user_row_of).collect());
                let done = match &rows {
                    Ok(rows) => {
                        if let Some(row) = rows.last() {
                            last = row.id;
                        }
                        (rows.len() as i64) < page
                    }
                    Err(_) => true,
                };
                if tx.send(rows).await.is_err() || done {
                    return;
                }
            }
        });
        rx
    }

    async fn tombstoned_among(&self, ids: &[i64]) -> anyhow::Result<HashSet<i64>> {
        self.ids_among("SELECT id FROM tombstones WHERE id IN", ids)
            .await
    }

    async fn conflicted_among(&self, ids: &[i64]) -> anyhow::Result<HashSet<i64>> {
        self.ids_among(
            "SELECT DISTINCT id FROM migration_conflicts WHERE id IN",
            ids,
        )
        .await
    }

    async fn stored_versions(&self, ids: &[i64]) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT id, version FROM users WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(self.pool()).await? {
                out.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(out)
    }

    async fn save_validation(&self, report: &ValidationReport) -> anyhow::Result<()> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO migration_validations (started_at, finished_at, source_rows, matched, \
             missing, extra, different, passed, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(report.started_at_ms)
        .bind(report.finished_at_ms)
        .bind(count(report.source_rows))
        .bind(count(report.matched))
        .bind(count(report.missing))
        .bind(count(report.extra))
        .bind(count(report.different))
        .bind(i64::from(report.passed))
        .bind(serde_json::to_string(report)?)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
