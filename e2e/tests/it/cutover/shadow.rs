//! Shadow reads: while legacy serves reads (phase 1), the gateway repeats
//! them against idsvc and compares. A difference that persists is
//! reported by member id and field; one a double write settles is not.

use super::{Api, Class, start};
use e2e::cutover::{Cutover, seeded_email, seeded_password};
use serde_json::json;
use sqlx::{Connection, Row};
use std::time::{Duration, Instant};

/// A re-check comes this long after a first comparison that differs.
const RECHECK_MS: u64 = 1500;

/// Writes member `id` into idbase only, as a double write legacy never
/// made would: a newer version with this phone.
async fn write_idbase_only(api: &Api, id: i64, phone: Option<&str>, version: i64) {
    let body = json!({
        "email": seeded_email(id),
        "phone": phone,
        // Another password's argon2id hash: `me` reads compare email and phone.
        "password_hash": "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0$3Tf4m8cM5eV6cFfY1QSrmXL0yQkH3mvbM2QtYQbo0C0",
        "version": version,
    });
    let answer = api
        .call(
            Class::Internal,
            reqwest::Method::PUT,
            &format!("/internal/v1/users/{id}"),
            None,
            Some(body),
        )
        .await;
    assert!(answer.status.is_success(), "{answer:?}");
}

/// The gateway's count of shadow reads of `kind` with `outcome`
/// (`rechecking`: first comparisons that differed).
async fn shadows(cutover: &Cutover, kind: &str, outcome: &str) -> u64 {
    let url = format!("{}/metrics", cutover.gateways[0].metrics_url);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let (metric, labels) = match outcome {
        "rechecking" => (
            "idbase_gateway_shadow_rechecks_total{",
            vec![format!("kind=\"{kind}\"")],
        ),
        _ => (
            "idbase_gateway_shadow_reads_total{",
            vec![format!("kind=\"{kind}\""), format!("outcome=\"{outcome}\"")],
        ),
    };
    text.lines()
        .filter(|line| line.starts_with(metric))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_for_shadows(cutover: &Cutover, kind: &str, outcome: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while shadows(cutover, kind, outcome).await < at_least {
        assert!(
            Instant::now() < deadline,
            "no {at_least} {kind} shadows with outcome {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn differences_that_persist_are_reported_and_those_a_double_write_settles_are_not() {
    let recheck = RECHECK_MS.to_string();
    let cutover = start(
        1,
        &["--shadow-percent", "100", "--shadow-recheck-ms", &recheck],
    )
    .await;
    let api = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    cutover.move_to(1, 100).await.unwrap();
    cutover.migrate_members().unwrap();
    let version = 4_000_000_000_000;

    // Both sides agree on a seeded member: a login and a read match.
    let session = |id: i64| {
        let api = &api;
        async move {
            let login = api
                .login(Class::Web, &seeded_email(id), &seeded_password(id))
                .await;
            assert_eq!(login.status, 200, "{login:?}");
            login.str("access_token")
        }
    };
    let access = session(5).await;
    wait_for_shadows(&cutover, "login", "match", 1).await;
    let before = api.me(Class::Web, Some(&access)).await;
    assert_eq!(before.status, 200, "{before:?}");
    wait_for_shadows(&cutover, "me", "match", 1).await;

    // idbase alone holds another phone: the client still sees legacy's, and
    // after the re-check the member and the field are reported.
    write_idbase_only(&api, 5, Some("+819011112222"), version).await;
    let read = api.me(Class::Web, Some(&access)).await;
    assert_eq!(read.body, before.body, "the client sees legacy's answer");
    wait_for_shadows(&cutover, "me", "mismatch", 1).await;
    let url = cutover.idbase_database.url().to_owned();
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let events =
        sqlx::query("SELECT user_id, detail FROM security_events WHERE kind = 'shadow_mismatch'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let events: Vec<(Option<i64>, String)> =
        events.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(events, [(Some(5), "me: phone differ".to_owned())]);

    // idbase lags on member 6 (a double write in flight) and catches up
    // before the re-check: not a mismatch.
    let access = session(6).await;
    // Its login's shadow settles first: idbase's copy changes below.
    wait_for_shadows(&cutover, "login", "match", 2).await;
    let legacy_view = api.me(Class::Web, Some(&access)).await;
    wait_for_shadows(&cutover, "me", "match", 2).await;
    let legacy_phone = legacy_view.body["phone"].as_str().map(str::to_owned);
    write_idbase_only(&api, 6, Some("+819033334444"), version).await;
    let read = api.me(Class::Web, Some(&access)).await;
    assert_eq!(read.body, legacy_view.body);
    // Member 5's difference was re-checked once; member 6's is the second.
    wait_for_shadows(&cutover, "me", "rechecking", 2).await;
    write_idbase_only(&api, 6, legacy_phone.as_deref(), version + 1).await;
    wait_for_shadows(&cutover, "me", "transient", 1).await;
    assert_eq!(shadows(&cutover, "me", "mismatch").await, 1);

    // The check of the move to 2 shows the mismatch (and too few shadows).
    let check = cutover.check(2, 100, "shadow-agreement").await.unwrap();
    assert!(!check.pass, "{check:?}");
    assert!(check.figure.starts_with("1 mismatches in "), "{check:?}");
    assert!(check.figure.contains("me 1/"), "{check:?}");
}
