//! Per-job checkpoints: where a job stopped, whether it finished, and its
//! counts as JSON.

use super::store::MigrationStore;
use crate::domain::{Clock, SystemClock};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    pub job: String,
    pub position: i64,
    pub done: bool,
    pub counts: String,
    pub updated_at: i64,
}

pub async fn load(store: &dyn MigrationStore, job: &str) -> anyhow::Result<Option<Checkpoint>> {
    store.checkpoint(job).await
}

pub async fn all(store: &dyn MigrationStore) -> anyhow::Result<Vec<Checkpoint>> {
    store.checkpoints().await
}

/// Records where `job` is, stamped with the time now.
pub async fn save(
    store: &dyn MigrationStore,
    job: &str,
    position: i64,
    done: bool,
    counts: &impl Serialize,
) -> anyhow::Result<()> {
    store
        .save_checkpoint(&Checkpoint {
            job: job.to_owned(),
            position,
            done,
            counts: serde_json::to_string(counts)?,
            updated_at: SystemClock.now_ms(),
        })
        .await
}

/// Forgets a job's checkpoint so that it starts over.
pub async fn reset(store: &dyn MigrationStore, job: &str) -> anyhow::Result<()> {
    store.delete_checkpoint(job).await
}
