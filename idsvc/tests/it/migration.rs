//! Migration sources and the legacy-row transformation, on the fixture layout.

use crate::harness::{Backend, Harness, fresh_mysql_database};
use idsvc::domain::Store;
use idsvc::migration::{Mapping, Source, Transformer};
use sha2::Digest;
use std::io::Write;
use std::path::Path;

const DDL: &str = include_str!("../../../e2e/fixtures/legacy/member.sql");

/// Backfill in `batch`-id ranges, two at a time (one on SQLite).
fn backfill_options(batch: usize) -> idsvc::migration::backfill::BackfillOptions {
    idsvc::migration::backfill::BackfillOptions {
        batch,
        workers: 2,
        progress: false,
    }
}

fn mapping() -> Mapping {
    Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/legacy/mapping.toml"),
    )
    .unwrap()
}

/// Fixture rows: (id, email, hash hex, salt, tel, delflag, regist, update).
fn rows() -> Vec<[String; 8]> {
    let mut out = Vec::new();
    for id in 1..=25i64 {
        let salt = format!("salt{id}");
        let hash = hex::encode_upper(sha2::Sha256::digest(format!("{salt}password{id}")));
        let email = match id {
            7 => "not an email".to_owned(),
            // Same mailbox as member 3, other case and spacing.
            8 => "  Member3@Example.com ".to_owned(),
            _ => format!("member{id}@example.com"),
        };
        let tel = if id % 2 == 0 {
            "090-1234-5678".to_owned()
        } else {
            String::new()
        };
        let hash = if id == 9 { "XYZ".to_owned() } else { hash };
        out.push([
            id.to_string(),
            email,
            hash,
            salt,
            tel,
            if id == 5 { "1" } else { "0" }.to_owned(),
            "2020-04-01 10:00:00.000".to_owned(),
            format!("2024-01-{:02} 12:00:00.250", id % 28 + 1),
        ]);
    }
    out
}

async fn check_source(backend: Backend, spec: &str) {
    let h = &Harness::new(backend).await;
    let mapping = mapping();
    let mut source = Source::open(spec, &mapping, 4).await.unwrap();
    let transformer = Transformer::new(&mapping, &source).unwrap();
    let (mut staged, mut rejects) = (Vec::new(), Vec::new());
    while let Some(batch) = source.next_batch().await.unwrap() {
        assert!(batch.len() <= 4);
        for record in &batch {
            match transformer.transform(&h.service, record, 1) {
                Ok(r) => staged.push(r),
                Err(r) => rejects.push(r),
            }
        }
    }
    assert_eq!(staged.len(), 23, "{spec}");
    let ids: Vec<&str> = rejects.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["7", "9"], "{spec}: {rejects:?}");
    assert!(rejects[0].reason.contains("email"), "{:?}", rejects[0]);
    assert!(
        rejects[1].reason.contains("password hash"),
        "{:?}",
        rejects[1]
    );
    assert!(staged.iter().any(|r| r.row.id == 5 && r.deleted));
    let three = staged.iter().find(|r| r.row.id == 3).unwrap();
    let eight = staged.iter().find(|r| r.row.id == 8).unwrap();
    assert_eq!(
        three.row.email_index, eight.row.email_index,
        "normalised like the live service"
    );
    // 2024-01-05 12:00:00.250 JST.
    let four = staged.iter().find(|r| r.row.id == 4).unwrap();
    assert_eq!(four.row.version, 1_704_423_600_250);
    // The staged row is what the service stores: the member logs in with the legacy password.
    h.store.upsert_legacy(&four.row).await.unwrap();
    h.service
        .login("member4@example.com", "password4")
        .await
        .unwrap();
    let stored = h.store.user(4).await.unwrap().unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"));
}

#[tokio::test]
async fn tsv_plain_gzip_and_header_sources() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = rows().iter().map(|r| r.join("\t") + "\r\n").collect();
    let plain = dir.path().join("member.tsv");
    std::fs::write(&plain, &text).unwrap();
    check_source(Backend::Sqlite, &format!("tsv:{}", plain.display())).await;

    let gz = dir.path().join("member.tsv.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
    check_source(Backend::Sqlite, &format!("tsv:{}", gz.display())).await;

    // A header line instead of the mapping's column list, `|` and NULL markers.
    let mut m = mapping();
    m.tsv.header = true;
    m.tsv.delimiter = "|".into();
    m.tsv.null = "NULL".into();
    m.tsv.columns.clear();
    let headed = dir.path().join("headed.tsv");
    let body: String = rows()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r[4].is_empty() {
                r[4] = "NULL".into();
            }
            r.join("|") + "\n"
        })
        .collect();
    std::fs::write(
        &headed,
        format!("MemberId|MailAddress|PasswordHash|PasswordSalt|Tel|DelFlag|RegistDate|UpdateDate\n{body}"),
    )
    .unwrap();
    let mut source = Source::open(&format!("tsv:{}", headed.display()), &m, 100)
        .await
        .unwrap();
    let batch = source.next_batch().await.unwrap().unwrap();
    assert_eq!(batch.len(), 25);
    assert_eq!(batch[0][4], None, "NULL marker");
    assert_eq!(batch[1][4].as_deref(), Some("090-1234-5678"));
    assert!(source.next_batch().await.unwrap().is_none());

    // A ragged line is an error naming the line, not a silent drop.
    let ragged = dir.path().join("ragged.tsv");
    std::fs::write(&ragged, format!("{text}1\t2\n")).unwrap();
    let mut source = Source::open(&format!("tsv:{}", ragged.display()), &mapping(), 100)
        .await
        .unwrap();
    let mut err = None;
    loop {
        match source.next_batch().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(err.unwrap().to_string().contains("line 26"));
}

#[tokio::test]
async fn mysql_source_with_query() {
    let legacy_url = fresh_mysql_database().await.unwrap();
    let pool = sqlx::AnyPool::connect(&legacy_url).await.unwrap();
    sqlx::raw_sql(DDL).execute(&pool).await.unwrap();
    for r in rows() {
        sqlx::query(
            "INSERT INTO Member (MemberId, MailAddress, PasswordHash, PasswordSalt, Tel, DelFlag, \
             RegistDate, UpdateDate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r[0].parse::<i64>().unwrap())
        .bind(r[1].clone())
        .bind(r[2].clone())
        .bind(r[3].clone())
        .bind((!r[4].is_empty()).then(|| r[4].clone()))
        .bind(r[5].parse::<i64>().unwrap())
        .bind(r[6].clone())
        .bind(r[7].clone())
        .execute(&pool)
        .await
        .unwrap();
    }
    check_source(Backend::MySql, &legacy_url).await;
}

/// `n` fixture rows as a bcp export: every 50th row repeats an earlier
/// member's email in other case/spacing, every 97th is soft-deleted, every
/// 211th has a bad email (a reject).
fn export(n: i64) -> String {
    let mut text = String::new();
    for id in 1..=n {
        let salt = format!("s{id}");
        let hash = hex::encode_upper(sha2::Sha256::digest(format!("{salt}pw-{id}")));
        let email = if id % 211 == 0 {
            format!("broken{id}")
        } else if id % 50 == 0 {
            format!(" MEMBER{}@example.com", id - 1)
        } else {
            format!("member{id}@example.com")
        };
        let del = i64::from(id % 97 == 0);
        text.push_str(&format!(
            "{id}\t{email}\t{hash}\t{salt}\t\t{del}\t2020-01-01 00:00:00\t2024-01-01 00:00:{:02}.000\n",
            id % 60
        ));
    }
    text
}

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

#[tokio::test]
async fn bulkload_stages_rejects_resolves_duplicates_and_resumes() {
    use idsvc::migration::{bulkload, checkpoint};
    let h = Harness::new(Backend::MySql).await;
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
        service.clone(),
        &h.store,
        &spec,
        &mapping(),
        &options,
        &cancel,
    )
    .await
    .unwrap()
    .unwrap();
    // 211, 422, 633, 844 are rejects.
    assert_eq!(counts.source_rows, 1000);
    assert_eq!(counts.rejected, 4);
    assert_eq!(counts.staged, 996);
    // Row 50k copies 50k-1's email; both live unless one is a reject/deleted.
    let expected_losers = (1..=1000i64)
        .filter(|id| id % 50 == 0 && (id - 1) % 211 != 0 && (id - 1) % 97 != 0 && id % 97 != 0)
        .count() as u64;
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
        idsvc::migration::reports::write_rejects(&h.store, bulkload::JOB, &rejects)
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
        idsvc::migration::reports::write_conflicts(&h.store, bulkload::JOB, &conflicts)
            .await
            .unwrap(),
        expected_losers
    );

    // A second run of a finished job changes nothing.
    let again = bulkload::run(
        service.clone(),
        &h.store,
        &spec,
        &mapping(),
        &options,
        &cancel,
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
    };
    checkpoint::save(&h.store, bulkload::JOB, 384, false, &partial)
        .await
        .unwrap();
    let resumed = bulkload::run(service, &h.store, &spec, &mapping(), &options, &cancel)
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

async fn user_ids(h: &Harness) -> Vec<(i64, i64, String)> {
    use sqlx::Row;
    sqlx::query("SELECT id, version, password_hash FROM users ORDER BY id")
        .fetch_all(h.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn backfill_fills_gaps_only_and_resumes_idempotently() {
    use idsvc::migration::{backfill, checkpoint};
    let h = Harness::new(Backend::MySql).await;
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

    let counts = backfill::run(&h.store, &backfill_options(128), &cancel)
        .await
        .unwrap()
        .unwrap();
    let users = user_ids(&h).await;
    let ids: Vec<i64> = users.iter().map(|u| u.0).collect();
    let expected: Vec<i64> = (1..=1000i64)
        .filter(|id| {
            let staged = id % 211 != 0;
            let live = id % 97 != 0;
            // Rows 50k-1 and 50k share an email when both are live and staged;
            // the later UpdateDate (second = id % 60) keeps it.
            let pair_live =
                |a: i64, b: i64| a % 97 != 0 && b % 97 != 0 && a % 211 != 0 && b % 211 != 0;
            let loser = ((id + 1) % 50 == 0 && pair_live(*id, id + 1) && (id + 1) % 60 != 0)
                || (id % 50 == 0 && pair_live(id - 1, *id) && id % 60 == 0);
            *id == 10 || *id == 30 || (staged && live && !loser && *id != 20 && *id != 31)
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
    checkpoint::reset(&h.store, backfill::JOB).await.unwrap();
    let again = backfill::run(&h.store, &backfill_options(128), &cancel)
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
        &h.store,
        backfill::JOB,
        500,
        false,
        &backfill::BackfillCounts::default(),
    )
    .await
    .unwrap();
    backfill::run(&h.store, &backfill_options(64), &cancel)
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

/// Double writes (upserts, deletes, some arriving out of order) run while
/// bulkload and backfill do; the end state is the legacy state for every id.
#[tokio::test]
async fn double_writes_during_bulkload_and_backfill_end_in_the_legacy_state() {
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
    backfill::run(&h.store, &backfill_options(50), &cancel)
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    // A backfill after the writes settle changes nothing either.
    idsvc::migration::checkpoint::reset(&h.store, backfill::JOB)
        .await
        .unwrap();
    backfill::run(&h.store, &backfill_options(50), &cancel)
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
                let pair_live =
                    |a: i64, b: i64| a % 97 != 0 && b % 97 != 0 && a % 211 != 0 && b % 211 != 0;
                let loser = ((id + 1) % 50 == 0 && pair_live(id, id + 1) && (id + 1) % 60 != 0)
                    || (id % 50 == 0 && pair_live(id - 1, id) && id % 60 == 0);
                if id % 211 != 0 && id % 97 != 0 && !loser {
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

/// The double writes' password: salted SHA-256 as the legacy table stores it.
const DW_SALT: &str = "dwsalt";
/// SHA-256("dwsalt" ‖ "password"), upper-case hex as the legacy table holds it.
const DW_DIGEST: &str = "B1ADA3943EF59FEB9C6ACFBC42E20F7FF17F26106B7581CE46E0179D684A9046";

fn dw_email(id: i64, version: i64) -> String {
    format!("dw{id}-{version}@example.com")
}

/// Runs `validate` over a TSV export in the fixture layout.
async fn validate(
    h: &Harness,
    export: &Path,
    allow: &[&str],
) -> idsvc::migration::validation::ValidationReport {
    use idsvc::migration::{validate, validation};
    let allow: Vec<String> = allow.iter().map(|a| (*a).to_owned()).collect();
    let options = validate::ValidateOptions {
        batch: 64,
        expected_rows: None,
        progress: false,
        allow: validation::Allow::parse(&allow).unwrap(),
    };
    validate::run(
        h.shared_service(),
        &h.store,
        &format!("tsv:{}", export.display()),
        &mapping(),
        &options,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Every legacy row is counted exactly once.
fn assert_balanced(r: &idsvc::migration::validation::ValidationReport) {
    assert_eq!(
        r.source_rows,
        r.matched
            + r.missing
            + r.different
            + r.duplicate_losers
            + r.rejected
            + r.extra_reasons.deleted_in_legacy
            + r.extra_reasons.rejected_in_legacy,
        "{r:#?}"
    );
    assert_eq!(
        r.extra,
        r.extra_reasons.absent_in_legacy
            + r.extra_reasons.deleted_in_legacy
            + r.extra_reasons.rejected_in_legacy
    );
}

/// Bulkloads the export at `path` in 100-row batches, two written at once.
async fn bulkload_export(h: &Harness, path: &Path) {
    let options = idsvc::migration::bulkload::BulkloadOptions {
        batch: 100,
        workers: 2,
        expected_rows: None,
        progress: false,
    };
    idsvc::migration::bulkload::run(
        h.shared_service(),
        &h.store,
        &format!("tsv:{}", path.display()),
        &mapping(),
        &options,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
}

/// `export(n)` bulkloaded and backfilled; returns the export's path.
async fn migrated(h: &Harness, dir: &Path, n: i64) -> std::path::PathBuf {
    use idsvc::migration::backfill;
    let path = dir.join("member.tsv");
    std::fs::write(&path, export(n)).unwrap();
    bulkload_export(h, &path).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    backfill::run(&h.store, &backfill_options(128), &cancel)
        .await
        .unwrap()
        .unwrap();
    path
}

/// Live duplicate losers of `export(n)` (the latest-updated rule).
fn export_losers(n: i64) -> u64 {
    let pair_live = |a: i64, b: i64| a % 97 != 0 && b % 97 != 0 && a % 211 != 0 && b % 211 != 0;
    (1..=n)
        .filter(|id| id % 50 == 0 && pair_live(id - 1, *id))
        .count() as u64
}

/// `idbase migrate …` through the CLI code, as the binary runs it.
async fn cli(args: &[&str]) -> anyhow::Result<idsvc::migration::Outcome> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: idsvc::migration::MigrateCommand,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("migrate").chain(args.iter().copied()),
    )?;
    idsvc::migration::run(cli.command, tokio_util::sync::CancellationToken::new()).await
}

async fn validate_after_migration_finds_no_differences(backend: Backend) {
    let h = Harness::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let export = migrated(&h, dir.path(), 1000).await;
    let report_file = dir.path().join("validate.json");
    let keys = h.store_dir().join("keys");
    let mapping_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/legacy/mapping.toml");
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

#[tokio::test]
async fn validate_after_migration_finds_no_differences_mysql() {
    validate_after_migration_finds_no_differences(Backend::MySql).await;
}

#[tokio::test]
async fn validate_after_migration_finds_no_differences_sqlite() {
    validate_after_migration_finds_no_differences(Backend::Sqlite).await;
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

async fn validate_detects_tampering(backend: Backend) {
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
    let last = idsvc::migration::validation::latest(&h.store)
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

#[tokio::test]
async fn validate_detects_missing_extra_and_different_mysql() {
    validate_detects_tampering(Backend::MySql).await;
}

#[tokio::test]
async fn validate_detects_missing_extra_and_different_sqlite() {
    validate_detects_tampering(Backend::Sqlite).await;
}

async fn staged_version(h: &Harness, id: i64) -> i64 {
    sqlx::query_scalar("SELECT version FROM migration_staging WHERE id = ?")
        .bind(id)
        .fetch_one(h.store.pool())
        .await
        .unwrap()
}

async fn purge_removes_members_soft_deleted_in_legacy(backend: Backend) {
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
    let mapping_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/legacy/mapping.toml");
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

#[tokio::test]
async fn purge_dry_run_then_apply_mysql() {
    purge_removes_members_soft_deleted_in_legacy(Backend::MySql).await;
}

#[tokio::test]
async fn purge_dry_run_then_apply_sqlite() {
    purge_removes_members_soft_deleted_in_legacy(Backend::Sqlite).await;
}
