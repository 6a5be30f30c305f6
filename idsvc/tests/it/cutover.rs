//! What the phase cutover asks of the identity service, on every backend:
//! legacy sessions exchanged for idbase ones (once, with a retry inside the
//! grace window), native ids from phase 4, double writes gone in phase 5,
//! legacy's activity noted for the move to 5.

use crate::conformance::principal_of;
use crate::harness::{Backend, Harness};
use idsvc::domain::phase::{LegacyTraffic, Phase, PhaseChange, PhaseState, PhaseSwap};
use idsvc::domain::{
    Clock, Error, LegacyUser, Policy, ShadowCheck, ShadowRead, Store, UpsertOutcome,
};
use sqlx::Row;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

on_both_backends!(
    a_legacy_session_is_exchanged_once_and_a_quick_retry_rotates_it,
    concurrent_exchanges_of_one_token_open_one_session,
    members_registered_from_phase_4_get_native_ids,
    double_writes_are_gone_in_phase_5,
    double_writes_and_exchanges_are_counted,
    concurrent_counts_all_land,
    shadow_reads_compare_normalised_answers_and_change_nothing,
);

/// Puts the stored phase at `phase`, as a move would.
async fn put_phase(h: &Harness, phase: Phase) {
    let Some(from) = h.store.phase_state().await.unwrap() else {
        let initial = PhaseState {
            phase,
            weight: 100,
            generation: 1,
            write_fence: false,
            ramp_key: vec![0; 32],
            changed_at: 0,
            changed_by: "test".into(),
        };
        h.store.create_phase_state(&initial).await.unwrap();
        return;
    };
    let next = PhaseState {
        phase,
        generation: from.generation + 1,
        ..from.clone()
    };
    let change = PhaseChange {
        generation: next.generation,
        from_phase: from.phase,
        to_phase: phase,
        from_weight: 100,
        to_weight: 100,
        who: "test".into(),
        at: 0,
        reason: "test".into(),
        forced: true,
        automatic: false,
        fence_ms: None,
    };
    let swap = PhaseSwap {
        expected_generation: from.generation,
        next: &next,
        change: &change,
        lifted: None,
    };
    assert!(h.store.swap_phase(swap).await.unwrap());
}

fn legacy(id: i64, email: &str, version: i64) -> LegacyUser {
    LegacyUser {
        id,
        email: email.into(),
        phone: None,
        password_hash: idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap(),
        version,
    }
}

async fn a_legacy_session_is_exchanged_once_and_a_quick_retry_rotates_it(backend: Backend) {
    let h = Harness::new(backend).await;
    let s = &h.service;
    s.upsert_legacy(legacy(42, "taro@example.com", 1))
        .await
        .unwrap();
    let legacy_token = [7u8; 32];

    let first = s
        .exchange_legacy_session(42, &legacy_token, "web")
        .await
        .unwrap();
    let session = principal_of(&h, &first.access_token);
    assert_eq!(session.user_id, 42);
    s.me(&session).await.unwrap();
    // The client missed our answer and asks again at once: the same session.
    h.clock.advance(Duration::from_secs(2));
    let retry = s
        .exchange_legacy_session(42, &legacy_token, "web")
        .await
        .unwrap();
    assert_eq!(
        principal_of(&h, &retry.access_token).session_id,
        session.session_id
    );
    assert_ne!(retry.refresh_token, first.refresh_token);
    let rotated = s.refresh(&retry.refresh_token).await.unwrap();
    assert_eq!(
        principal_of(&h, &rotated.access_token).session_id,
        session.session_id
    );
    // For another member, or after the grace window: refused.
    h.service
        .upsert_legacy(legacy(43, "jiro@example.com", 1))
        .await
        .unwrap();
    assert!(matches!(
        s.exchange_legacy_session(43, &legacy_token, "web").await,
        Err(Error::InvalidToken)
    ));
    h.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        s.exchange_legacy_session(42, &legacy_token, "web").await,
        Err(Error::InvalidToken)
    ));
    // Unknown and withdrawn members, and a hash that is none.
    assert!(matches!(
        s.exchange_legacy_session(9999, &[8u8; 32], "web").await,
        Err(Error::InvalidToken)
    ));
    s.delete_legacy(43, 2).await.unwrap();
    assert!(matches!(
        s.exchange_legacy_session(43, &[9u8; 32], "web").await,
        Err(Error::InvalidToken)
    ));
    assert!(matches!(
        s.exchange_legacy_session(42, b"short", "web").await,
        Err(Error::Invalid { .. })
    ));
    // Only the hash of the legacy token is kept.
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT legacy_token_sha256 FROM legacy_exchanges")
            .fetch_all(h.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, [legacy_token.to_vec()]);
}

async fn concurrent_exchanges_of_one_token_open_one_session(backend: Backend) {
    let h = Harness::new(backend).await;
    h.service
        .upsert_legacy(legacy(42, "taro@example.com", 1))
        .await
        .unwrap();
    let service = h.shared_service();
    let racers = (0..6).map(|_| {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .exchange_legacy_session(42, &[3u8; 32], "mobile")
                .await
        })
    });
    let pairs: Vec<_> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("every duplicate is answered"))
        .collect();
    let sessions: std::collections::BTreeSet<String> = pairs
        .iter()
        .map(|pair| principal_of(&h, &pair.access_token).session_id)
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE user_id = 42")
        .fetch_one(h.store.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(count, 1);
}

async fn members_registered_from_phase_4_get_native_ids(backend: Backend) {
    let policy = Policy {
        native_id_start: 1_000_000,
        ..Policy::default()
    };
    let h = Harness::with_policy(backend, policy).await;
    let s = &h.service;
    s.upsert_legacy(legacy(500, "legacy@example.com", 1))
        .await
        .unwrap();
    put_phase(&h, Phase::AllReads).await;
    let early = s
        .register("early@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert!(early.id < 1_000_000, "{}", early.id);

    put_phase(&h, Phase::Writes).await;
    let first = s
        .register("first@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(first.id, 1_000_000);
    // Double writes keep legacy's ids, below the native range.
    let (outcome, _) = s
        .upsert_legacy(legacy(600, "later@example.com", 1))
        .await
        .unwrap();
    assert_eq!(outcome, UpsertOutcome::Created);
    assert!(h.store.user(600).await.unwrap().is_some());
    let second = s
        .register("second@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(second.id, 1_000_001);
    // A withdrawn member's id is not given out again.
    s.delete_legacy(second.id, i64::MAX).await.unwrap();
    let third = s
        .register("third@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(third.id, 1_000_002);

    // Concurrent registrations take distinct ids, one after another.
    let service = h.shared_service();
    let racers = (0..4).map(|i| {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .register(&format!("racer{i}@example.com"), PASSWORD, None)
                .await
                .unwrap()
                .id
        })
    });
    let mut ids: Vec<i64> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1_000_003, 1_000_004, 1_000_005, 1_000_006]);
}

async fn double_writes_are_gone_in_phase_5(backend: Backend) {
    let h = Harness::new(backend).await;
    let s = &h.service;
    put_phase(&h, Phase::Writes).await;
    s.upsert_legacy(legacy(42, "taro@example.com", 1))
        .await
        .unwrap();
    put_phase(&h, Phase::Complete).await;
    assert!(matches!(
        s.upsert_legacy(legacy(42, "taro@example.com", 2)).await,
        Err(Error::Gone(_))
    ));
    assert!(matches!(s.delete_legacy(42, 3).await, Err(Error::Gone(_))));
    // Nothing changed; the member still logs in at idbase.
    s.login("taro@example.com", PASSWORD).await.unwrap();
    let status = tonic::Status::from(Error::Gone("retired"));
    assert_eq!(
        status
            .metadata()
            .get("idbase-problem")
            .unwrap()
            .to_str()
            .unwrap(),
        "gone"
    );
}

async fn double_writes_and_exchanges_are_counted(backend: Backend) {
    use LegacyTraffic::{DoubleWrite, ProxiedWrite, TokenExchange};
    let h = Harness::new(backend).await;
    let s = &h.service;
    let last = async |kind| h.store.last_legacy_traffic(kind).await.unwrap();
    let since = async |kind, second| h.store.legacy_traffic_since(kind, second).await.unwrap();
    assert_eq!(last(DoubleWrite).await, None);
    assert_eq!(since(DoubleWrite, 0).await, 0);

    let start = h.clock.now_ms() / 1000;
    s.upsert_legacy(legacy(42, "taro@example.com", 1))
        .await
        .unwrap();
    s.upsert_legacy(legacy(42, "taro@example.com", 2))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(1));
    s.delete_legacy(42, 3).await.unwrap();
    assert_eq!(last(DoubleWrite).await, Some(start + 1));
    assert_eq!(since(DoubleWrite, start).await, 3);
    assert_eq!(since(DoubleWrite, start + 1).await, 1);
    assert_eq!(last(TokenExchange).await, None);

    // An exchange attempt counts even when refused: someone holds a legacy token.
    s.upsert_legacy(legacy(43, "jiro@example.com", 1))
        .await
        .unwrap();
    s.exchange_legacy_session(43, &[7u8; 32], "web")
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(60));
    assert!(
        s.exchange_legacy_session(43, &[7u8; 32], "web")
            .await
            .is_err()
    );
    assert_eq!(last(TokenExchange).await, Some(start + 61));
    assert_eq!(since(TokenExchange, start).await, 2);
    assert_eq!(since(ProxiedWrite, start).await, 0);

    // Counts older than the retention are purged.
    assert_eq!(h.store.purge_legacy_traffic(start + 1).await.unwrap(), 1);
    assert_eq!(since(DoubleWrite, 0).await, 2);
}

/// The double writes of a busy second all land on one row: concurrent
/// upserts of it (which InnoDB may answer with a deadlock) all count.
async fn concurrent_counts_all_land(backend: Backend) {
    const COUNTS: i64 = 400;
    let h = Harness::new(backend).await;
    let start = h.clock.now_ms() / 1000;
    let counts = (0..COUNTS).map(|i| {
        let store = h.store.clone();
        tokio::spawn(async move {
            store
                .count_legacy_traffic(LegacyTraffic::DoubleWrite, start + i / 50, 1)
                .await
        })
    });
    for count in futures::future::join_all(counts).await {
        count.unwrap().unwrap();
    }
    let counted = h
        .store
        .legacy_traffic_since(LegacyTraffic::DoubleWrite, start)
        .await
        .unwrap();
    assert_eq!(counted, COUNTS);
}

/// A shadow read compares normalised answers (email case, phone layout),
/// counts the shadow, counts a mismatch only on the re-check, audits it by
/// field name, and leaves no session, throttle row or new hash behind.
async fn shadow_reads_compare_normalised_answers_and_change_nothing(backend: Backend) {
    use LegacyTraffic::{ShadowLogin, ShadowLoginMismatch, ShadowMe, ShadowMeMismatch};
    let h = Harness::new(backend).await;
    let s = &h.service;
    s.upsert_legacy(LegacyUser {
        phone: Some("+819012345678".into()),
        ..legacy(42, "taro@example.com", 1)
    })
    .await
    .unwrap();
    let hash_before = h.store.user(42).await.unwrap().unwrap().password_hash;
    let me = |email: &str, phone: Option<&str>| ShadowRead::Me {
        member_id: 42,
        email: email.into(),
        phone: phone.map(str::to_owned),
    };
    let login = |email: &str, password: &str, legacy_accepted: bool| ShadowRead::Login {
        email: email.into(),
        password: password.to_owned().into(),
        legacy_accepted,
    };
    let unknown = ShadowRead::Me {
        member_id: 4242,
        email: "x@example.com".into(),
        phone: None,
    };
    // One batch, answered in order.
    let checks = [
        (me(" Taro@Example.com", Some("090-1234-5678")), false),
        (me("taro@example.com", None), false),
        (me("jiro@example.com", Some("+819012345678")), true),
        (unknown, false),
        (login("TARO@example.com", PASSWORD, true), false),
        (login("taro@example.com", "wrong password!", false), false),
        (login("nobody@example.com", PASSWORD, false), false),
        (login("taro@example.com", "wrong password!", true), false),
        (login("taro@example.com", "wrong password!", true), true),
    ]
    .into_iter()
    .map(|(read, recheck)| ShadowCheck { read, recheck })
    .collect();
    let differences: Vec<Vec<&str>> = s
        .shadow_reads(checks)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected: [&[&str]; 9] = [
        &[],
        &["phone"],
        &["email"],
        &["member_id"],
        &[],
        &[],
        &[],
        &["outcome"],
        &["outcome"],
    ];
    assert_eq!(differences, expected);

    // Shadows are stored once a second (by idsvc's housekeeping task).
    assert_eq!(h.store.legacy_traffic_since(ShadowMe, 0).await.unwrap(), 0);
    s.store_shadow_counts().await.unwrap();
    let since = async |kind| h.store.legacy_traffic_since(kind, 0).await.unwrap();
    assert_eq!(since(ShadowMe).await, 3, "re-checks are not new shadows");
    assert_eq!(since(ShadowMeMismatch).await, 1, "only the re-check counts");
    assert_eq!(since(ShadowLogin).await, 4);
    assert_eq!(since(ShadowLoginMismatch).await, 1);
    let mut audited: Vec<_> = h
        .store
        .security_events(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "shadow_mismatch")
        .map(|e| (e.user_id, e.detail))
        .collect();
    audited.sort();
    assert_eq!(
        audited,
        [
            (Some(42), "login: outcome differ".to_owned()),
            (Some(42), "me: email differ".to_owned()),
        ]
    );

    // Nothing changed: no session, no throttle row, the same stored hash.
    for table in ["sessions", "login_throttle"] {
        let rows: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(h.store.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(rows, 0, "{table}");
    }
    let hash_after = h.store.user(42).await.unwrap().unwrap().password_hash;
    assert_eq!(hash_after, hash_before);
}
