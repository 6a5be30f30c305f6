//! Migration sources and the legacy-row transformation, on the fixture layout.

use crate::harness::{Backend, Harness, fresh_mysql_database};
use idsvc::domain::Store;
use idsvc::migration::{Mapping, Source, Transformer};
use sha2::Digest;
use std::io::Write;
use std::path::Path;

const DDL: &str = include_str!("../../../e2e/fixtures/legacy/member.sql");

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
    let legacy_url = fresh_mysql_database().await;
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
    use idsvc::migration::{backfill, bulkload, checkpoint};
    let h = Harness::new(Backend::MySql).await;
    let service = h.shared_service();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    std::fs::write(&path, export(1000)).unwrap();
    let options = bulkload::BulkloadOptions {
        batch: 100,
        expected_rows: None,
        progress: false,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    bulkload::run(
        service.clone(),
        &h.store,
        &format!("tsv:{}", path.display()),
        &mapping(),
        &options,
        &cancel,
    )
    .await
    .unwrap()
    .unwrap();
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

    let counts = backfill::run(&h.store, 128, false, &cancel)
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
    let again = backfill::run(&h.store, 128, false, &cancel)
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
    backfill::run(&h.store, 64, false, &cancel)
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
    use idsvc::migration::{backfill, bulkload};
    let h = Harness::new(Backend::MySql).await;
    let service = h.shared_service();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    let n = 1500i64;
    std::fs::write(&path, export(n)).unwrap();
    let base = 3_000_000_000_000i64;
    // Ids outside the duplicate pairs, so the legacy duplicates rule is unaffected.
    let touched = |id: i64| id % 50 != 0 && (id + 1) % 50 != 0;
    let hash = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW".to_owned();
    let upsert = move |id: i64, version: i64| idsvc::domain::LegacyUser {
        id,
        email: format!("dw{id}-{version}@example.com"),
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
    let options = bulkload::BulkloadOptions {
        batch: 100,
        expected_rows: None,
        progress: false,
    };
    bulkload::run(
        service.clone(),
        &h.store,
        &format!("tsv:{}", path.display()),
        &mapping(),
        &options,
        &cancel,
    )
    .await
    .unwrap()
    .unwrap();
    backfill::run(&h.store, 50, false, &cancel)
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    // A backfill after the writes settle changes nothing either.
    idsvc::migration::checkpoint::reset(&h.store, backfill::JOB)
        .await
        .unwrap();
    backfill::run(&h.store, 50, false, &cancel)
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
}
