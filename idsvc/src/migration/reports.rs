//! Reports for humans: rejects and conflicts as JSON lines, streamed from
//! their tables.

use crate::store::SqlStore;
use futures::TryStreamExt;
use sqlx::Row;
use std::io::Write;
use std::path::Path;

/// Writes `{"id", "reason"}` lines for a job's rejects; returns the count.
pub async fn write_rejects(store: &SqlStore, job: &str, path: &Path) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rows = sqlx::query(
        "SELECT source_id, reason FROM migration_rejects WHERE job = ? ORDER BY source_id",
    )
    .bind(job)
    .fetch(store.pool());
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        let line = serde_json::json!({"id": row.try_get::<String, _>(0)?, "reason": row.try_get::<String, _>(1)?});
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Writes `{"id", "winner", "reason"}` lines for a job's conflicts.
pub async fn write_conflicts(store: &SqlStore, job: &str, path: &Path) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rows =
        sqlx::query("SELECT id, winner, reason FROM migration_conflicts WHERE job = ? ORDER BY id")
            .bind(job)
            .fetch(store.pool());
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        let line = serde_json::json!({
            "id": row.try_get::<i64, _>(0)?,
            "winner": row.try_get::<i64, _>(1)?,
            "reason": row.try_get::<String, _>(2)?,
        });
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
