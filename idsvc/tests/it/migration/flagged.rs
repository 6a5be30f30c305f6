//! What a migration refuses and what it keeps but flags: a hash above the
//! cost caps is a reject with the reason naming the cap; an email that
//! registration through idbase would refuse is imported as stored, counted
//! by bulkload and validate.

use super::mapping;
use crate::harness::{Backend, Harness};
use futures::TryStreamExt;
use idsvc::migration::MigrationStore;

on_both_backends!(caps_reject_and_nonconforming_emails_are_flagged);

async fn caps_reject_and_nonconforming_emails_are_flagged(backend: Backend) {
    use idsvc::migration::bulkload;
    let h = Harness::new(backend).await;
    let ok = bcrypt::hash_with_result("pw-ok", 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    let rows = [
        (1, "member1@example.com".to_owned(), ok.clone()),
        (
            2,
            "member2@example.com".to_owned(),
            "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW".to_owned(),
        ),
        (
            3,
            "member3@example.com".to_owned(),
            "$pbkdf2-sha256$i=2000000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM".to_owned(),
        ),
        (
            4,
            "member4@example.com".to_owned(),
            "$argon2id$v=19$m=131072,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
                .to_owned(),
        ),
        (5, "Member Five <member5@example.com>".to_owned(), ok.clone()),
        (6, "member6@[127.0.0.1]".to_owned(), ok.clone()),
        (7, "member7@localhost".to_owned(), ok.clone()),
    ];
    let mut tsv = String::new();
    for (id, email, hash) in &rows {
        tsv.push_str(&format!(
            "{id}\t{email}\t{hash}\t\t\t0\t2020-01-01 00:00:00\t2024-01-01 00:00:0{id}.000\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.tsv");
    std::fs::write(&path, tsv).unwrap();
    // The export holds the hashes in their stored form.
    let mut mapping = mapping();
    mapping.password.scheme = "stored".into();
    let options = bulkload::BulkloadOptions {
        batch: 3,
        workers: 2,
        expected_rows: None,
        progress: false,
    };
    let counts = bulkload::run(
        idsvc::migration::SourceJob::new(
            h.shared_service(),
            &*h.store,
            &format!("tsv:{}", path.display()),
            &mapping,
            &tokio_util::sync::CancellationToken::new(),
        ),
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(counts.staged, 4, "{counts:?}");
    assert_eq!(counts.rejected, 3, "{counts:?}");
    assert_eq!(counts.email_nonconforming, 3, "{counts:?}");
    let rejects: Vec<(String, String)> = h
        .store
        .rejects(bulkload::JOB)
        .map_ok(|r| (r.source_id, r.reason))
        .try_collect()
        .await
        .unwrap();
    let reason = |id: &str| {
        rejects
            .iter()
            .find(|r| r.0 == id)
            .map(|r| r.1.clone())
            .unwrap_or_else(|| panic!("no reject for {id}: {rejects:?}"))
    };
    assert!(
        reason("2")
            .contains("bcrypt cost 13 is above the accepted maximum 12 (--legacy-bcrypt-max-cost)")
    );
    assert!(
        reason("3").contains("pbkdf2 iterations 2000000 is above the accepted maximum 1000000")
    );
    assert!(reason("4").contains("argon2 memory (KiB) 131072 is above the accepted maximum 65536"));
    assert_eq!(rejects.len(), 3);

    let report = {
        use idsvc::migration::{validate, validation};
        let options = validate::ValidateOptions {
            batch: 3,
            expected_rows: None,
            progress: false,
            allow: validation::Allow::parse(&[]).unwrap(),
        };
        validate::run(
            idsvc::migration::SourceJob::new(
                h.shared_service(),
                &*h.store,
                &format!("tsv:{}", path.display()),
                &mapping,
                &tokio_util::sync::CancellationToken::new(),
            ),
            &options,
        )
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(report.email_nonconforming, 3, "{report:#?}");
    assert_eq!(report.rejected, 3, "{report:#?}");
}
