//! `migrate bulkload`: staging, rejects, the duplicates rule, resuming.

use super::{export, export_losers, mapping};
use crate::harness::{Backend, Harness};

async fn staging(h: &Harness) -> Vec<(i64, String, i64, i64)> {
    use sqlx::Row;
    sqlx::query("SELECT id, password_hash, deleted, loser FROM migration_staging ORDER BY id")
        .fetch_all(h.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

on_both_backends!(stages_rejects_resolves_duplicates_and_resumes);

async fn stages_rejects_resolves_duplicates_and_resumes(backend: Backend) {
    use idsvc::migration::{bulkload, checkpoint};
    let h = Harness::new(backend).await;
    let service = h.shared_service();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    std::fs::write(&path, export(1000)).unwrap();
    let spec = format!("tsv:{}", path.display());
    let options = bulkload::BulkloadOptions {
        batch: 128,
        workers: 3,
        expected_rows: Some(1000),
        progress: false,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let counts = bulkload::run(
        idsvc::migration::SourceJob::new(service.clone(), &*h.store, &spec, &mapping(), &cancel),
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    // 211, 422, 633, 844 are rejects.
    assert_eq!(counts.source_rows, 1000);
    assert_eq!(counts.rejected, 4);
    assert_eq!(counts.staged, 996);
    // Row 50k copies 50k-1's email; both live unless one is a reject/deleted.
    let expected_losers = export_losers(1000);
    assert_eq!(counts.duplicate_losers, expected_losers);
    let first = staging(&h).await;
    assert_eq!(first.len(), 996);
    // Latest-updated wins: row 50 (updated :50) beats row 49 (:49).
    assert!(first.iter().any(|r| r.0 == 49 && r.3 == 1));
    assert!(first.iter().any(|r| r.0 == 50 && r.3 == 0));
    assert!(
        first
            .iter()
            .all(|r| r.1.starts_with("$salted-sha256$before$"))
    );

    let rejects = dir.path().join("rejects.jsonl");
    assert_eq!(
        idsvc::migration::reports::write_rejects(&*h.store, bulkload::JOB, &rejects)
            .await
            .unwrap(),
        4
    );
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert!(
        text.lines().next().unwrap().contains("\"id\":\"211\""),
        "{text}"
    );
    let conflicts = dir.path().join("conflicts.jsonl");
    assert_eq!(
        idsvc::migration::reports::write_conflicts(&*h.store, bulkload::JOB, &conflicts)
            .await
            .unwrap(),
        expected_losers
    );

    // A second run of a finished job changes nothing.
    let again = bulkload::run(
        idsvc::migration::SourceJob::new(service.clone(), &*h.store, &spec, &mapping(), &cancel),
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again, counts);

    // The state a crash after 384 source rows leaves: resume finishes the job identically.
    sqlx::query("DELETE FROM migration_staging WHERE id > 384")
        .execute(h.store.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM migration_rejects WHERE source_id <> '211'")
        .execute(h.store.pool())
        .await
        .unwrap();
    let partial = bulkload::BulkloadCounts {
        source_rows: 384,
        staged: 383,
        rejected: 1,
        duplicate_losers: 0,
        email_nonconforming: 0,
    };
    checkpoint::save(&*h.store, bulkload::JOB, 384, false, &partial)
        .await
        .unwrap();
    let resumed = bulkload::run(
        idsvc::migration::SourceJob::new(service, &*h.store, &spec, &mapping(), &cancel),
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resumed, counts);
    let after: Vec<_> = staging(&h)
        .await
        .into_iter()
        .map(|r| (r.0, r.2, r.3))
        .collect();
    let before: Vec<_> = first.into_iter().map(|r| (r.0, r.2, r.3)).collect();
    assert_eq!(after, before);
}
