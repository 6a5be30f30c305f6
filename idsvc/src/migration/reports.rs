//! Reports for humans: rejects and conflicts as JSON lines, streamed from
//! the store.

use super::store::MigrationStore;
use futures::TryStreamExt;
use std::io::Write;
use std::path::Path;

/// Writes `{"id", "reason"}` lines for a job's rejects; returns the count.
pub async fn write_rejects(
    store: &dyn MigrationStore,
    job: &str,
    path: &Path,
) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rows = store.rejects(job);
    let mut n = 0;
    while let Some(reject) = rows.try_next().await? {
        let line = serde_json::json!({"id": reject.source_id, "reason": reject.reason});
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Writes `{"id", "winner", "reason"}` lines for a job's conflicts.
pub async fn write_conflicts(
    store: &dyn MigrationStore,
    job: &str,
    path: &Path,
) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rows = store.conflicts(job);
    let mut n = 0;
    while let Some(conflict) = rows.try_next().await? {
        let line = serde_json::json!({
            "id": conflict.id,
            "winner": conflict.winner,
            "reason": conflict.reason,
        });
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
