//! `idbase migrate purge`: deletes stored members whose legacy row is
//! soft-deleted (the legacy system deletes logically, idbase physically).
//!
//! The source is streamed a batch at a time; for each batch one query finds
//! which soft-deleted ids are stored. A dry run (the default) only lists
//! them. With `apply`, each goes through the double write's delete path
//! (`IdentityService::purge_legacy_deleted`: tombstone at the legacy row's
//! version, so no older double write brings the member back; sessions
//! revoked) and is audited as a `migration_purge` security event. Every
//! decision is a line of the report file: `{id, version, action}` with
//! action `would_delete`, `deleted`, or `skipped_newer` (the stored member
//! changed after the legacy deletion: left alone, for a human to look at).

use super::SourceJob;
use super::checkpoint;
use super::progress::Progress;
use super::source::Source;
use super::transform::Transformer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

pub const JOB: &str = "purge";

pub struct PurgeOptions {
    pub batch: usize,
    pub apply: bool,
    pub progress: bool,
    pub expected_rows: Option<u64>,
    /// JSON lines, one per stored member found soft-deleted in legacy.
    pub report: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeCounts {
    pub dry_run: bool,
    pub source_rows: u64,
    /// Soft-deleted in the legacy source.
    pub soft_deleted: u64,
    /// Of those, stored here (what a dry run would delete).
    pub stored: u64,
    pub deleted: u64,
    /// Stored with a newer version than the legacy deletion: left alone.
    pub skipped_newer: u64,
    /// Rows whose id or version cannot be read (nothing can be decided).
    pub unreadable: u64,
}

#[derive(Serialize)]
struct Line {
    id: i64,
    version: i64,
    action: &'static str,
}

/// Runs a purge; `None` when cancelled (what was deleted stays deleted and
/// is in the report file; a new run picks up the rest).
pub async fn run(
    job: SourceJob<'_>,
    options: &PurgeOptions,
) -> anyhow::Result<Option<PurgeCounts>> {
    let SourceJob {
        service,
        store,
        source: source_spec,
        mapping,
        cancel,
    } = job;
    let batch_size = options.batch.clamp(1, 10_000);
    let mut source = Source::open(source_spec, mapping, batch_size).await?;
    let transformer = Transformer::new(mapping, &source)?;
    let mut report = options
        .report
        .as_ref()
        .map(|path| std::fs::File::create(path).map(std::io::BufWriter::new))
        .transpose()?;
    let mut counts = PurgeCounts {
        dry_run: !options.apply,
        ..PurgeCounts::default()
    };
    let mut progress = Progress::new(JOB, options.progress, options.expected_rows, 0);
    while !cancel.is_cancelled() {
        let Some(batch) = source.next_batch().await? else {
            break;
        };
        counts.source_rows += batch.len() as u64;
        // id → the legacy deletion's version.
        let mut deleted: HashMap<i64, i64> = HashMap::new();
        for record in &batch {
            match transformer.key(record) {
                Ok(key) if key.deleted => {
                    deleted.insert(key.id, key.version);
                }
                Ok(_) => {}
                Err(_) => counts.unreadable += 1,
            }
        }
        counts.soft_deleted += deleted.len() as u64;
        let ids: Vec<i64> = deleted.keys().copied().collect();
        let mut stored = store.stored_versions(&ids).await?;
        stored.sort_unstable();
        for (id, stored_version) in stored {
            let version = deleted[&id];
            counts.stored += 1;
            let action = if !options.apply {
                if stored_version > version {
                    "would_skip_newer"
                } else {
                    "would_delete"
                }
            } else if service.purge_legacy_deleted(id, version, JOB).await? {
                counts.deleted += 1;
                "deleted"
            } else {
                counts.skipped_newer += 1;
                "skipped_newer"
            };
            if let Some(out) = report.as_mut() {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&Line {
                        id,
                        version,
                        action
                    })?
                )?;
            }
        }
        progress.advance(batch.len() as u64);
    }
    progress.finish();
    if let Some(mut out) = report {
        out.flush()?;
    }
    if cancel.is_cancelled() {
        return Ok(None);
    }
    if options.apply {
        checkpoint::save(store, JOB, counts.source_rows as i64, true, &counts).await?;
    }
    Ok(Some(counts))
}
