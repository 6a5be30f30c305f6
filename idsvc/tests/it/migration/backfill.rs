//! `migrate backfill`: only the gaps the double writes left, resumable and
//! idempotent.

use super::{backfill_options, bulkload_export, export, is_export_loser, user_ids};
use crate::harness::{Backend, Harness};
use sha2::Digest;

on_both_backends!(fills_gaps_only_and_resumes_idempotently);

async fn fills_gaps_only_and_resumes_idempotently(backend: Backend) {
    use idsvc::migration::{backfill, checkpoint};
    let h = Harness::new(backend).await;
    let service = h.shared_service();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    std::fs::write(&path, export(1000)).unwrap();
    bulkload_export(&h, &path).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    // Double writes that arrived before the backfill.
    let newer = idsvc::domain::LegacyUser {
        id: 10,
        email: "ten-new@example.com".into(),
        phone: None,
        password_hash: idsvc::crypto::legacy_hash::salted(
            "sha256",
            idsvc::crypto::legacy_hash::SaltPosition::Before,
            b"x",
            &hex::encode(sha2::Sha256::digest(b"xnew")),
        )
        .unwrap(),
        version: i64::MAX / 4,
    };
    service.upsert_legacy(newer).await.unwrap();
    service.delete_legacy(20, i64::MAX / 4).await.unwrap();
    let takes_31 = idsvc::domain::LegacyUser {
        id: 30,
        email: "member31@example.com".into(),
        phone: None,
        password_hash: "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW".into(),
        version: i64::MAX / 4,
    };
    service.upsert_legacy(takes_31).await.unwrap();

    let counts = backfill::run(&*h.store, &backfill_options(128), &cancel)
        .await
        .unwrap()
        .unwrap();
    let users = user_ids(&h).await;
    let ids: Vec<i64> = users.iter().map(|u| u.0).collect();
    let expected: Vec<i64> = (1..=1000i64)
        .filter(|id| {
            let staged = id % 211 != 0;
            let live = id % 97 != 0;
            let kept = staged && live && !is_export_loser(*id);
            *id == 10 || *id == 30 || (kept && *id != 20 && *id != 31)
        })
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(
        users.iter().find(|u| u.0 == 10).unwrap().1,
        i64::MAX / 4,
        "double write kept"
    );
    assert!(
        users
            .iter()
            .find(|u| u.0 == 30)
            .unwrap()
            .2
            .starts_with("$2a$")
    );
    assert_eq!(counts.conflicts, 1, "{counts:?}");
    assert_eq!(counts.failed, 0);
    assert_eq!(counts.scanned, 996);

    // Idempotent: a second run changes nothing.
    checkpoint::reset(&*h.store, backfill::JOB).await.unwrap();
    let again = backfill::run(&*h.store, &backfill_options(128), &cancel)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.inserted, 0);
    assert_eq!(user_ids(&h).await, users);

    // Killed after id 500: resuming from the checkpoint ends in the same state.
    sqlx::query("DELETE FROM users WHERE id > 500 AND id <> 30")
        .execute(h.store.pool())
        .await
        .unwrap();
    checkpoint::save(
        &*h.store,
        backfill::JOB,
        500,
        false,
        &backfill::BackfillCounts::default(),
    )
    .await
    .unwrap();
    backfill::run(&*h.store, &backfill_options(64), &cancel)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user_ids(&h).await, users);
    // The imported member logs in with the legacy password and is upgraded.
    h.service
        .login("member3@example.com", "pw-3")
        .await
        .unwrap();
}
