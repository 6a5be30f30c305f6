//! `migrate validate`: a clean migration passes; every kind of difference
//! is found, counted and allowed only by name.

use super::{assert_balanced, cli, export_losers, mapping_path, migrated, validate};
use crate::harness::{Backend, Harness};

on_both_backends!(
    after_migration_finds_no_differences,
    detects_missing_extra_and_different,
);

async fn after_migration_finds_no_differences(backend: Backend) {
    let h = Harness::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let export = migrated(&h, dir.path(), 1000).await;
    let report_file = dir.path().join("validate.json");
    let keys = h.store_dir().join("keys");
    let mapping_path = mapping_path();
    let source = format!("tsv:{}", export.display());
    let outcome = cli(&[
        "validate",
        "--database-url",
        &h.database_url,
        "--keys-dir",
        keys.to_str().unwrap(),
        "--source",
        &source,
        "--mapping",
        mapping_path.to_str().unwrap(),
        "--batch",
        "100",
        "--report",
        report_file.to_str().unwrap(),
        "--quiet",
    ])
    .await
    .unwrap();
    assert!(outcome.success, "{}", outcome.report);
    let report: idsvc::migration::validation::ValidationReport =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&report).unwrap(), outcome.report);
    assert_eq!(report.source_rows, 1000);
    assert_eq!((report.missing, report.extra, report.different), (0, 0, 0));
    assert_eq!(report.rejected, 4, "211, 422, 633, 844");
    assert_eq!(report.duplicate_losers, export_losers(1000));
    // 97 … 970 are soft-deleted in legacy and absent here.
    assert_eq!(report.matched_deleted, 10);
    assert_eq!(
        report.matched,
        1000 - 4 - export_losers(1000),
        "{report:#?}"
    );
    assert_eq!(report.samples.rejected, ["211", "422", "633", "844"]);
    assert_balanced(&report);
    assert!(report.finished_at_ms >= report.started_at_ms);

    // `status` shows it.
    let status = cli(&[
        "status",
        "--database-url",
        &h.database_url,
        "--keys-dir",
        keys.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let last = &status.report["last_validation"];
    assert_eq!(last["passed"], true, "{}", status.report);
    assert_eq!(last["source_rows"], 1000);
    assert_eq!(last["matched"], report.matched);
    assert_eq!(last["finished_at_ms"], report.finished_at_ms);

    // A source out of id order is refused with the row named, not mis-merged.
    let shuffled = dir.path().join("shuffled.tsv");
    let text = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(10, 11);
    std::fs::write(&shuffled, lines.join("\n")).unwrap();
    let err = cli(&[
        "validate",
        "--database-url",
        &h.database_url,
        "--keys-dir",
        keys.to_str().unwrap(),
        "--source",
        &format!("tsv:{}", shuffled.display()),
        "--mapping",
        mapping_path.to_str().unwrap(),
        "--quiet",
    ])
    .await
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("ascending id order"), "{err:#}");
    // An unknown --allow name is an error, not a silent pass.
    let err = cli(&[
        "validate",
        "--database-url",
        &h.database_url,
        "--keys-dir",
        keys.to_str().unwrap(),
        "--source",
        &source,
        "--mapping",
        mapping_path.to_str().unwrap(),
        "--allow",
        "passwords",
    ])
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("passwords"), "{err}");
}

/// Overwrites a stored column of a member behind the service's back.
async fn tamper<T>(h: &Harness, id: i64, set: &str, bind: T)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    sqlx::query(&format!("UPDATE users SET {set} = ? WHERE id = ?"))
        .bind(bind)
        .bind(id)
        .execute(h.store.pool())
        .await
        .unwrap();
}

async fn detects_missing_extra_and_different(backend: Backend) {
    use idsvc::domain::{LegacyUser, Store};
    let h = Harness::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let export = migrated(&h, dir.path(), 1000).await;
    let clean = validate(&h, &export, &[]).await;
    assert!(clean.passed, "{clean:#?}");
    let stored = |id: i64| {
        let store = h.store.clone();
        async move { store.user(id).await.unwrap().unwrap() }
    };
    let sealed_as = |id: i64, email: &str, phone: Option<&str>, version: i64| {
        h.service
            .legacy_row(
                &LegacyUser {
                    id,
                    email: email.to_owned(),
                    phone: phone.map(str::to_owned),
                    password_hash: "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
                        .to_owned(),
                    version,
                },
                0,
            )
            .unwrap()
    };
    // Missing: removed without a tombstone.
    sqlx::query("DELETE FROM users WHERE id = 2")
        .execute(h.store.pool())
        .await
        .unwrap();
    // Deleted here, live in legacy: a tombstone.
    let three = stored(3).await;
    assert!(h.store.delete_user(3, three.version, 1).await.unwrap());
    // Extra: an id legacy never had, and one legacy soft-deleted (97).
    h.store
        .upsert_legacy(&sealed_as(5000, "new5000@example.com", None, 1))
        .await
        .unwrap();
    h.store
        .upsert_legacy(&sealed_as(97, "member97@example.com", None, 1))
        .await
        .unwrap();
    // Email: another address, index and sealed value both.
    let other = sealed_as(4, "other4@example.com", None, 1);
    tamper(&h, 4, "email_index", other.email_index).await;
    tamper(&h, 4, "email_sealed", other.email_sealed).await;
    // Email: the index still right, the sealed value another member's address.
    let wrong = sealed_as(5, "member6@example.com", None, 1);
    tamper(&h, 5, "email_sealed", wrong.email_sealed).await;
    // Phone: legacy has none.
    let phoned = sealed_as(6, "member6@example.com", Some("090-1234-5678"), 1);
    tamper(&h, 6, "phone_sealed", phoned.phone_sealed.unwrap()).await;
    // Password: another legacy hash.
    tamper(
        &h,
        8,
        "password_hash",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW".to_owned(),
    )
    .await;
    // A login re-hash (argon2id, newer version): allowed, counted.
    h.service
        .login("member11@example.com", "pw-11")
        .await
        .unwrap();
    let upgraded = stored(11).await;
    assert!(upgraded.password_hash.starts_with("$argon2id$"));
    // argon2id without a newer version is not a re-hash: a difference.
    tamper(&h, 12, "password_hash", upgraded.password_hash).await;
    // Version: behind the legacy row.
    sqlx::query("UPDATE users SET version = version - 1 WHERE id = 13")
        .execute(h.store.pool())
        .await
        .unwrap();

    let r = validate(&h, &export, &[]).await;
    assert!(!r.passed);
    assert_eq!(r.missing, 1, "{r:#?}");
    assert_eq!(r.samples.missing, [2]);
    assert_eq!(r.extra, 2);
    assert_eq!(r.extra_reasons.absent_in_legacy, 1);
    assert_eq!(r.extra_reasons.deleted_in_legacy, 1);
    let extra: Vec<(i64, &str)> = r
        .samples
        .extra
        .iter()
        .map(|e| (e.id, e.reason.as_str()))
        .collect();
    assert_eq!(
        extra,
        [(97, "deleted_in_legacy"), (5000, "absent_in_legacy")]
    );
    assert_eq!(r.different, 7, "{r:#?}");
    let fields = &r.different_fields;
    assert_eq!(
        (
            fields.email,
            fields.phone,
            fields.password_hash,
            fields.deleted,
            fields.version
        ),
        (2, 1, 2, 1, 1),
        "{r:#?}"
    );
    let different: Vec<(i64, Vec<&str>)> = r
        .samples
        .different
        .iter()
        .map(|d| (d.id, d.fields.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        different,
        [
            (4, vec!["email"]),
            (5, vec!["email"]),
            (6, vec!["phone"]),
            (8, vec!["password_hash"]),
            (12, vec!["password_hash"]),
            (13, vec!["version"]),
            (3, vec!["deleted"]),
        ]
    );
    assert_eq!(r.password_upgraded, 1);
    assert_eq!(r.failures, 10);
    assert_eq!(r.duplicate_losers, export_losers(1000));
    assert_balanced(&r);
    let last = idsvc::migration::validation::latest(&*h.store)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.missing, last.extra, last.different, last.passed),
        (1, 2, 7, false)
    );

    // Allowing every kind found passes; allowing fewer does not.
    let all = [
        "missing",
        "extra",
        "email",
        "phone",
        "password_hash",
        "deleted",
        "version",
    ];
    assert!(validate(&h, &export, &all).await.passed);
    let partial = validate(
        &h,
        &export,
        &["missing", "extra", "email", "phone", "deleted", "version"],
    )
    .await;
    assert!(!partial.passed);
    assert_eq!(partial.failures, 2, "ids 8 and 12");
    let deleted_only = validate(&h, &export, &["deleted_in_legacy"]).await;
    assert_eq!(deleted_only.failures, 9);
}
