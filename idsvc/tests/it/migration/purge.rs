//! `migrate purge`: members soft-deleted in legacy, listed by a dry run,
//! deleted (tombstoned, audited) by `--apply`.

use super::{cli, mapping_path, migrated, user_ids, validate};
use crate::harness::{Backend, Harness};

on_both_backends!(dry_run_lists_then_apply_deletes);

async fn staged_version(h: &Harness, id: i64) -> i64 {
    sqlx::query_scalar("SELECT version FROM migration_staging WHERE id = ?")
        .bind(id)
        .fetch_one(h.store.pool())
        .await
        .unwrap()
}

async fn dry_run_lists_then_apply_deletes(backend: Backend) {
    use idsvc::domain::{LegacyUser, Store, UpsertOutcome};
    let h = Harness::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let export = migrated(&h, dir.path(), 1000).await;
    let service = h.shared_service();
    let hash = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
    let legacy = |id: i64, version: i64| LegacyUser {
        id,
        email: format!("back{id}@example.com"),
        phone: None,
        password_hash: hash.to_owned(),
        version,
    };
    // Soft-deleted in legacy, back here through late double writes older
    // than the deletion; 388 through one newer than it (left alone).
    let mut deletion = std::collections::BTreeMap::new();
    for id in [97, 194, 291, 388] {
        let v = staged_version(&h, id).await;
        deletion.insert(id, v);
        let version = if id == 388 { v + 1 } else { v - 1000 };
        let (outcome, _) = service.upsert_legacy(legacy(id, version)).await.unwrap();
        assert_eq!(outcome, UpsertOutcome::Created);
    }
    let before = user_ids(&h).await;
    let keys = h.store_dir().join("keys");
    let mapping_path = mapping_path();
    let source = format!("tsv:{}", export.display());
    let report = dir.path().join("purge.jsonl");
    let purge = |apply: bool| {
        let mut args = vec![
            "purge".to_owned(),
            "--database-url".into(),
            h.database_url.clone(),
            "--keys-dir".into(),
            keys.display().to_string(),
            "--source".into(),
            source.clone(),
            "--mapping".into(),
            mapping_path.display().to_string(),
            "--batch".into(),
            "100".into(),
            "--report".into(),
            report.display().to_string(),
            "--quiet".into(),
        ];
        if apply {
            args.push("--apply".into());
        }
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args).await.unwrap()
        }
    };
    let lines = || -> Vec<(i64, i64, String)> {
        std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].as_i64().unwrap(),
                    v["version"].as_i64().unwrap(),
                    v["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    // Dry run: lists, changes nothing.
    let dry = purge(false).await;
    assert!(dry.success);
    assert_eq!(dry.report["counts"]["dry_run"], true);
    assert_eq!(dry.report["counts"]["soft_deleted"], 10, "{}", dry.report);
    assert_eq!(dry.report["counts"]["stored"], 4);
    assert_eq!(dry.report["counts"]["deleted"], 0);
    assert_eq!(
        lines(),
        [
            (97, deletion[&97], "would_delete".to_owned()),
            (194, deletion[&194], "would_delete".to_owned()),
            (291, deletion[&291], "would_delete".to_owned()),
            (388, deletion[&388], "would_skip_newer".to_owned()),
        ]
    );
    assert_eq!(user_ids(&h).await, before);
    assert!(h.store.tombstone(97).await.unwrap().is_none());
    assert!(h.store.security_events(100).await.unwrap().is_empty());

    // Apply: exactly those three go, each with a tombstone at the legacy
    // deletion's version and an audit event.
    let applied = purge(true).await;
    assert_eq!(applied.report["counts"]["deleted"], 3, "{}", applied.report);
    assert_eq!(applied.report["counts"]["skipped_newer"], 1);
    let after = user_ids(&h).await;
    let expected: Vec<_> = before
        .iter()
        .filter(|u| ![97, 194, 291].contains(&u.0))
        .cloned()
        .collect();
    assert_eq!(after, expected);
    for id in [97, 194, 291] {
        let tomb = h.store.tombstone(id).await.unwrap().unwrap();
        assert_eq!(tomb.version, deletion[&id]);
    }
    let mut audited: Vec<(String, Option<i64>)> = h
        .store
        .security_events(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.user_id))
        .collect();
    audited.sort();
    assert_eq!(
        audited,
        [
            ("migration_purge".to_owned(), Some(97)),
            ("migration_purge".to_owned(), Some(194)),
            ("migration_purge".to_owned(), Some(291)),
        ]
    );
    let actions: Vec<(i64, String)> = lines().into_iter().map(|l| (l.0, l.2)).collect();
    assert_eq!(
        actions,
        [
            (97, "deleted".to_owned()),
            (194, "deleted".to_owned()),
            (291, "deleted".to_owned()),
            (388, "skipped_newer".to_owned()),
        ]
    );

    // A late double write older than the tombstone does not bring one back.
    let (outcome, _) = service
        .upsert_legacy(legacy(97, deletion[&97] - 1))
        .await
        .unwrap();
    assert_eq!(outcome, UpsertOutcome::Stale);
    assert!(h.store.user(97).await.unwrap().is_none());
    // Validate now sees only the member left alone.
    let r = validate(&h, &export, &[]).await;
    assert_eq!(r.extra, 1, "{r:#?}");
    assert_eq!(r.samples.extra[0].id, 388);
    assert_eq!(r.extra_reasons.deleted_in_legacy, 1);
    assert_eq!((r.missing, r.different), (0, 0));
    // A second apply finds nothing more to delete.
    let again = purge(true).await;
    assert_eq!(again.report["counts"]["deleted"], 0);
    assert_eq!(h.store.security_events(100).await.unwrap().len(), 3);
}
