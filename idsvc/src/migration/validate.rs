//! `idbase migrate validate`: the legacy source against the live store, by id,
//! in one streaming merge.
//!
//! The source is read in the mapping's id order (it must ascend; the job
//! stops with an error naming the row otherwise), a batch at a time, and two
//! batches at once are normalised on blocking threads by the live service's own code
//! (`IdentityService::legacy_fields`, what bulkload and double writes seal).
//! The store is read in id order by keyset pages (`store_scan`). Memory holds
//! a few batches and pages whatever the table sizes.
//!
//! Comparisons: the email by blind index and by opening the sealed value;
//! the phone by opening it (E.164 both sides); the password hash in its
//! canonical stored form; a stored version older than the legacy row's. A
//! stored argon2id hash where legacy has another hash is a login re-hash, an
//! allowed difference, when the stored version is newer than the legacy row
//! (a re-hash bumps the version; a double write of an old hash cannot be
//! newer than its legacy row). Passwords cannot be checked further without
//! the plaintext.

use super::SourceJob;
use super::progress::Progress;
use super::source::{Record, Source};
use super::store::MigrationStore;
use super::store_scan::StoreScan;
use super::transform::Transformer;
use super::validation::{Allow, Tally, ValidationReport};
use crate::domain::{IdentityService, LegacyFields, UserRow};
use anyhow::bail;
use futures::{TryFutureExt, TryStreamExt, stream};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const JOB: &str = "validate";

pub struct ValidateOptions {
    pub batch: usize,
    pub expected_rows: Option<u64>,
    pub progress: bool,
    pub allow: Allow,
}

/// One legacy row, ready to compare.
enum Legacy {
    Live {
        id: i64,
        version: i64,
        fields: LegacyFields,
    },
    /// Soft-deleted: nothing to compare but its absence.
    Deleted { id: i64 },
    /// Cannot be transformed; `id` when at least the id parses.
    Rejected { id: Option<i64>, raw_id: String },
}

impl Legacy {
    fn id(&self) -> Option<i64> {
        match self {
            Self::Live { id, .. } | Self::Deleted { id } => Some(*id),
            Self::Rejected { id, .. } => *id,
        }
    }
}

/// Runs a validation, stores its result and returns it; `None` when
/// cancelled (nothing is stored then).
pub async fn run(
    job: SourceJob<'_>,
    options: &ValidateOptions,
) -> anyhow::Result<Option<ValidationReport>> {
    let SourceJob {
        service,
        store,
        source: source_spec,
        mapping,
        cancel,
    } = job;
    let started = std::time::Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let batch_size = options.batch.clamp(1, 10_000);
    let source = Source::open(source_spec, mapping, batch_size).await?;
    let transformer = Arc::new(Transformer::new(mapping, &source)?);
    let mut scan = StoreScan::start(store, batch_size);
    let mut tally = Tally::new(options.allow.clone());
    let mut progress = Progress::new(JOB, options.progress, options.expected_rows, 0);
    let mut last_id: Option<i64> = None;
    let batches = stream::try_unfold(source, |mut source| async move {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        Ok::<_, anyhow::Error>(source.next_batch().await?.map(|batch| (batch, source)))
    });
    // Two batches are normalised on blocking threads while the one before
    // them is merged: both cores busy, the merge order kept.
    let mut prepared = std::pin::pin!(
        batches
            .map_ok(|batch| {
                spawn_prepare(Arc::clone(&service), Arc::clone(&transformer), batch)
                    .map_err(|err| anyhow::Error::new(err).context("normalising task"))
            })
            .try_buffered(2)
    );
    while let Some(batch) = prepared.try_next().await? {
        let rows = batch.len() as u64;
        merge_batch(&service, store, &mut scan, &batch, &mut last_id, &mut tally).await?;
        tally.report.source_rows += rows;
        progress.advance(rows);
    }
    if cancel.is_cancelled() {
        progress.finish();
        return Ok(None);
    }
    // Stored members beyond the last legacy id.
    while let Some(row) = scan.next().await? {
        tally.extra(row.id, "absent_in_legacy");
    }
    progress.finish();
    let finished_at = OffsetDateTime::now_utc();
    let mut report = tally.report;
    report.started_at_ms = millis(started_at);
    report.finished_at_ms = millis(finished_at);
    report.started_at = started_at.format(&Rfc3339)?;
    report.finished_at = finished_at.format(&Rfc3339)?;
    report.seconds = started.elapsed().as_secs_f64();
    super::validation::save(store, &report).await?;
    Ok(Some(report))
}

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn spawn_prepare(
    service: Arc<IdentityService>,
    transformer: Arc<Transformer>,
    batch: Vec<Record>,
) -> tokio::task::JoinHandle<Vec<Legacy>> {
    tokio::task::spawn_blocking(move || {
        batch
            .iter()
            .map(|record| prepare(&service, &transformer, record))
            .collect()
    })
}

fn prepare(service: &IdentityService, transformer: &Transformer, record: &Record) -> Legacy {
    let key = match transformer.key(record) {
        Ok(key) => key,
        Err(reject) => {
            return Legacy::Rejected {
                id: reject.id.parse().ok(),
                raw_id: reject.id,
            };
        }
    };
    if key.deleted {
        return Legacy::Deleted { id: key.id };
    }
    let rejected = || Legacy::Rejected {
        id: Some(key.id),
        raw_id: key.id.to_string(),
    };
    let Ok(parsed) = transformer.parse(record) else {
        return rejected();
    };
    match service.legacy_fields(&parsed.user) {
        Ok(fields) => Legacy::Live {
            id: key.id,
            version: key.version,
            fields,
        },
        Err(_) => rejected(),
    }
}

/// Merges one batch of legacy rows with the store rows up to its last id.
async fn merge_batch(
    service: &IdentityService,
    store: &dyn MigrationStore,
    scan: &mut StoreScan,
    batch: &[Legacy],
    last_id: &mut Option<i64>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    // Live legacy rows without a stored member: tombstoned, losers or missing.
    let mut absent: Vec<i64> = Vec::new();
    for (n, legacy) in batch.iter().enumerate() {
        let Some(id) = legacy.id() else {
            if let Legacy::Rejected { raw_id, .. } = legacy {
                tally.rejected(raw_id);
            }
            continue;
        };
        if let Some(last) = *last_id
            && id <= last
        {
            bail!(
                "the source is not in ascending id order (id {id} after {last}, row {} of the \
                 batch): validate needs the export sorted by id (`ORDER BY` id in the query or bcp)",
                n + 1
            );
        }
        *last_id = Some(id);
        while let Some(next) = scan.peek_id().await?
            && next < id
        {
            scan.next().await?;
            tally.extra(next, "absent_in_legacy");
        }
        let stored = if scan.peek_id().await? == Some(id) {
            scan.next().await?
        } else {
            None
        };
        if let Legacy::Live { fields, .. } = legacy
            && fields.email_nonconformity.is_some()
        {
            tally.email_nonconforming();
        }
        match (legacy, stored) {
            (Legacy::Deleted { .. }, None) => tally.matched(true, false),
            (Legacy::Deleted { .. }, Some(_)) => tally.extra(id, "deleted_in_legacy"),
            (Legacy::Rejected { raw_id, .. }, None) => tally.rejected(raw_id),
            (Legacy::Rejected { .. }, Some(_)) => tally.extra(id, "rejected_in_legacy"),
            (Legacy::Live { .. }, None) => absent.push(id),
            (
                Legacy::Live {
                    version, fields, ..
                },
                Some(row),
            ) => {
                let (differences, upgraded) = compare(service, *version, fields, &row);
                if differences.is_empty() {
                    tally.matched(false, upgraded);
                } else {
                    tally.different(id, &differences);
                }
            }
        }
    }
    classify_absent(store, &absent, tally).await
}

/// The fields that differ, and whether the password differs only by a
/// login re-hash.
fn compare(
    service: &IdentityService,
    legacy_version: i64,
    legacy: &LegacyFields,
    row: &UserRow,
) -> (Vec<&'static str>, bool) {
    let mut fields = Vec::new();
    // A sealed value that does not open (another key, tampering) differs.
    let (email, phone) = service.open_pii(row);
    let email_equal = email.is_ok_and(|e| e == legacy.email.as_str());
    if row.email_index != legacy.email_index || !email_equal {
        fields.push("email");
    }
    let legacy_phone = legacy.phone.as_ref().map(|p| p.as_str());
    if !phone.is_ok_and(|p| p.as_deref() == legacy_phone) {
        fields.push("phone");
    }
    let mut upgraded = false;
    if row.password_hash != legacy.password_hash {
        if row.password_hash.starts_with("$argon2id$") && row.version > legacy_version {
            upgraded = true;
        } else {
            fields.push("password_hash");
        }
    }
    if row.version < legacy_version {
        fields.push("version");
    }
    (fields, upgraded)
}

/// Sorts live legacy rows the store lacks: a tombstone means the store
/// deleted a member legacy keeps (a `deleted` difference); a conflicts entry
/// means a duplicate loser (expected); anything else is missing.
async fn classify_absent(
    store: &dyn MigrationStore,
    ids: &[i64],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let tombstoned = store.tombstoned_among(ids).await?;
    let losers = store.conflicted_among(ids).await?;
    for &id in ids {
        if tombstoned.contains(&id) {
            tally.different(id, &["deleted"]);
        } else if losers.contains(&id) {
            tally.duplicate_loser(id);
        } else {
            tally.missing(id);
        }
    }
    Ok(())
}
