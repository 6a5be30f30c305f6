//! Sources (TSV plain, gzip, with a header; a MySQL query) and the
//! transformation of their rows into what the live service stores.

use super::mapping;
use crate::harness::{Backend, Harness, fresh_mysql_database};
use idsvc::domain::Store;
use idsvc::migration::{Source, Transformer};
use sha2::Digest;
use std::io::Write;

const DDL: &str = include_str!("../../../../e2e/fixtures/legacy/member.sql");

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
