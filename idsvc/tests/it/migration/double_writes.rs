//! Double writes racing bulkload and backfill end in the legacy state.

use super::{
    assert_balanced, backfill_options, bulkload_export, export, is_export_loser, user_ids, validate,
};
use crate::harness::{Backend, Harness};

/// The double writes' password: salted SHA-256 as the legacy table stores it.
const DW_SALT: &str = "dwsalt";
/// SHA-256("dwsalt" ‖ "password"), upper-case hex as the legacy table holds it.
const DW_DIGEST: &str = "B1ADA3943EF59FEB9C6ACFBC42E20F7FF17F26106B7581CE46E0179D684A9046";

fn dw_email(id: i64, version: i64) -> String {
    format!("dw{id}-{version}@example.com")
}

/// Double writes (upserts, deletes, some arriving out of order) run while
/// bulkload and backfill do; the end state is the legacy state for every id.
/// On MariaDB only: concurrent writers are the point, and SQLite runs one
/// writer at a time.
#[tokio::test]
async fn during_bulkload_and_backfill_end_in_the_legacy_state() {
    use idsvc::migration::backfill;
    let h = Harness::new(Backend::MySql).await;
    let service = h.shared_service();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    let n = 1500i64;
    std::fs::write(&path, export(n)).unwrap();
    let base = 3_000_000_000_000i64;
    // Ids outside the duplicate pairs, so the legacy duplicates rule is unaffected.
    let touched = |id: i64| id % 50 != 0 && (id + 1) % 50 != 0;
    // The legacy system's own hash form, so the final export can carry it.
    let hash = idsvc::crypto::legacy_hash::salted(
        "sha256",
        idsvc::crypto::legacy_hash::SaltPosition::Before,
        DW_SALT.as_bytes(),
        DW_DIGEST,
    )
    .unwrap();
    let upsert = move |id: i64, version: i64| idsvc::domain::LegacyUser {
        id,
        email: dw_email(id, version),
        phone: None,
        password_hash: hash.clone(),
        version,
    };
    // The legacy writer's changes after the snapshot: (id, version, Some(upsert) / None = delete),
    // in the order they arrive.
    let mut ops: Vec<(i64, i64, bool)> = Vec::new();
    for id in (1..=n).filter(|id| touched(*id)) {
        if id % 7 == 0 {
            ops.push((id, base + id, true));
        }
        if id % 11 == 0 {
            ops.push((id, base + id + 5, false));
        }
        if id % 13 == 0 {
            // Out of order: the newer change arrives before an older one.
            ops.push((id, base + id + 10, true));
            ops.push((id, base + id + 1, true));
        }
        if id % 17 == 0 {
            ops.push((id, base + id + 20, false));
            ops.push((id, base + id + 3, true));
        }
    }
    let writer = {
        let service = service.clone();
        let ops = ops.clone();
        let upsert = upsert.clone();
        tokio::spawn(async move {
            for (i, (id, version, is_upsert)) in ops.into_iter().enumerate() {
                if is_upsert {
                    service.upsert_legacy(upsert(id, version)).await.unwrap();
                } else {
                    service.delete_legacy(id, version).await.unwrap();
                }
                if i % 8 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        })
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    bulkload_export(&h, &path).await;
    backfill::run(&*h.store, &backfill_options(50), &cancel)
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    // A backfill after the writes settle changes nothing either.
    idsvc::migration::checkpoint::reset(&*h.store, backfill::JOB)
        .await
        .unwrap();
    backfill::run(&*h.store, &backfill_options(50), &cancel)
        .await
        .unwrap()
        .unwrap();

    // The legacy state: the newest change per id, else the snapshot row.
    let mut expected = Vec::new();
    for id in 1..=n {
        let newest = ops.iter().filter(|op| op.0 == id).max_by_key(|op| op.1);
        match newest {
            Some(&(_, version, true)) => expected.push((id, version)),
            Some(&(_, _, false)) => {}
            None => {
                if id % 211 != 0 && id % 97 != 0 && !is_export_loser(id) {
                    expected.push((id, -1));
                }
            }
        }
    }
    let actual = user_ids(&h).await;
    let actual: Vec<(i64, i64)> = actual
        .into_iter()
        .map(|(id, version, _)| (id, if version >= base { version } else { -1 }))
        .collect();
    assert_eq!(actual.len(), expected.len());
    assert_eq!(actual, expected);

    // The legacy table after those writes, exported again: validate finds
    // nothing to report but the duplicate losers and the rejects.
    let snapshot = export(n);
    let mut after = String::new();
    for (line, id) in snapshot.lines().zip(1..=n) {
        match ops.iter().filter(|op| op.0 == id).max_by_key(|op| op.1) {
            Some(&(_, version, upsert)) => {
                let email = if upsert {
                    dw_email(id, version)
                } else {
                    format!("gone{id}@example.com")
                };
                after.push_str(&format!(
                    "{id}\t{email}\t{DW_DIGEST}\t{DW_SALT}\t\t{}\t2020-01-01 00:00:00\t{version}\n",
                    i64::from(!upsert)
                ));
            }
            None => {
                after.push_str(line);
                after.push('\n');
            }
        }
    }
    let final_export = dir.path().join("member-after.tsv");
    std::fs::write(&final_export, after).unwrap();
    let report = validate(&h, &final_export, &[]).await;
    assert!(report.passed, "{report:#?}");
    assert_eq!(
        (report.missing, report.extra, report.different),
        (0, 0, 0),
        "{report:#?}"
    );
    assert_eq!(report.source_rows, n as u64);
    assert_eq!(
        report.rejected,
        (1..=n)
            .filter(|id| id % 211 == 0 && !ops.iter().any(|op| op.0 == *id))
            .count() as u64
    );
    assert_balanced(&report);
}
