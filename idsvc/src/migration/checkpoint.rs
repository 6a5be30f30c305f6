//! Per-job checkpoints in `migration_checkpoints`: where a job stopped, whether
//! it finished, and its counts as JSON.

use crate::domain::Clock;
use crate::store::SqlStore;
use serde::Serialize;
use sqlx::Row;

#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    pub job: String,
    pub position: i64,
    pub done: bool,
    pub counts: String,
    pub updated_at: i64,
}

pub async fn load(store: &SqlStore, job: &str) -> anyhow::Result<Option<Checkpoint>> {
    let row = sqlx::query(
        "SELECT job, position, done, counts, updated_at FROM migration_checkpoints WHERE job = ?",
    )
    .bind(job)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| from_row(&r)).transpose()
}

pub async fn all(store: &SqlStore) -> anyhow::Result<Vec<Checkpoint>> {
    let rows = sqlx::query(
        "SELECT job, position, done, counts, updated_at FROM migration_checkpoints ORDER BY job",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(r: &sqlx::any::AnyRow) -> anyhow::Result<Checkpoint> {
    Ok(Checkpoint {
        job: r.try_get(0)?,
        position: r.try_get(1)?,
        done: r.try_get::<i64, _>(2)? != 0,
        counts: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

pub async fn save(
    store: &SqlStore,
    job: &str,
    position: i64,
    done: bool,
    counts: &impl Serialize,
) -> anyhow::Result<()> {
    sqlx::query(
        "REPLACE INTO migration_checkpoints (job, position, done, counts, updated_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(job)
    .bind(position)
    .bind(i64::from(done))
    .bind(serde_json::to_string(counts)?)
    .bind(crate::domain::SystemClock.now_ms())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Forgets a job's checkpoint so that it starts over.
pub async fn reset(store: &SqlStore, job: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM migration_checkpoints WHERE job = ?")
        .bind(job)
        .execute(store.pool())
        .await?;
    Ok(())
}
