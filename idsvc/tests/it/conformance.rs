//! The same behaviour on every backend.

use crate::harness::{Backend, Harness};
use idsvc::crypto::{HashingPool, KeyRing, PasswordParams};
use idsvc::domain::{
    Error, IdempotencyKey, LegacyUser, Policy, Principal, REGISTRATION_KEY_TTL, SourceNetwork,
    Store, ThrottlePolicy, UpsertOutcome, UserChanges,
};
use jsonwebtoken::{DecodingKey, Validation};
use sqlx::Row;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

on_both_backends!(
    register_normalises_and_refuses_duplicates,
    idempotency_key_registers_once_per_client,
    concurrent_retries_of_a_keyed_registration_make_one_member,
    login_is_uniform_for_unknown_email_and_wrong_password,
    throttle_locks_and_backs_off_even_for_unknown_emails,
    parallel_attempts_cannot_pass_the_limit,
    refresh_rotates_with_grace_and_detects_reuse,
    concurrent_refreshes_of_one_token_leave_one_current,
    tokens_that_name_no_session_still_rotate,
    revoke_and_password_change_end_sessions,
    withdraw_deletes_and_leaves_tombstone,
    double_write_orders_by_version,
    late_upsert_cannot_resurrect_deleted_user,
    no_plaintext_personal_data_at_rest,
    outdated_hash_is_upgraded_on_login,
    legacy_schemes_log_in_and_upgrade_to_argon2id,
    double_write_of_new_credentials_ends_sessions,
    a_login_rehash_is_no_password_change_for_later_double_writes,
    session_lifetime_is_capped_and_idle_sessions_end,
    one_network_cannot_lock_out_a_member_but_many_lock_the_email,
);

pub(crate) fn principal_of(h: &Harness, access: &str) -> Principal {
    let jwk = &h.service.public_keys()[0];
    let key = DecodingKey::from_ed_components(&jwk.x).unwrap();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["idbase"]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(access, &key, &validation)
        .unwrap()
        .claims;
    Principal {
        user_id: claims["sub"].as_str().unwrap().parse().unwrap(),
        session_id: claims["sid"].as_str().unwrap().to_owned(),
    }
}

async fn register_normalises_and_refuses_duplicates(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = h
        .service
        .register("  Hanako@Example.COM ", PASSWORD, Some("090-1234-5678"))
        .await
        .unwrap();
    assert_eq!(user.email.as_str(), "hanako@example.com");
    assert_eq!(user.phone.unwrap().as_str(), "+819012345678");
    let again = h
        .service
        .register("HANAKO@example.com", "another good passphrase", None)
        .await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    for (email, password) in [
        ("not-an-email", PASSWORD),
        ("a@example.com", "password"),
        ("a@example.com", "short"),
    ] {
        let refused = h.service.register(email, password, None).await;
        assert!(
            matches!(refused, Err(Error::Invalid { .. })),
            "{email} {password}: {refused:?}"
        );
    }
}

fn key<'a>(client: &'a str, key: &'a str) -> Option<IdempotencyKey<'a>> {
    Some(IdempotencyKey { client, key })
}

async fn idempotency_key_registers_once_per_client(backend: Backend) {
    let h = Harness::new(backend).await;
    let s = &h.service;
    let first = s
        .register_once(key("ios", "k-1"), "hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    // The retry (normalised the same) answers with the same member.
    let replay = s
        .register_once(key("ios", "k-1"), " HANAKO@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(replay, first);
    // The same key with another request is refused, whatever differs.
    for (email, password, phone) in [
        ("taro@example.com", PASSWORD, None),
        ("hanako@example.com", "another good passphrase", None),
        ("hanako@example.com", PASSWORD, Some("090-1234-5678")),
    ] {
        let reused = s
            .register_once(key("ios", "k-1"), email, password, phone)
            .await;
        assert!(
            matches!(reused, Err(Error::KeyReused)),
            "{email}: {reused:?}"
        );
    }
    // Keys are per client; without a key a repeat is a plain duplicate.
    let other_client = s
        .register_once(key("web", "k-1"), "taro@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_ne!(other_client.id, first.id);
    let unkeyed = s.register("hanako@example.com", PASSWORD, None).await;
    assert!(matches!(unkeyed, Err(Error::Conflict(_))), "{unkeyed:?}");
    // Malformed keys are bad input.
    for bad in ["", "has space", "nön-ascii", &"k".repeat(256)] {
        let refused = s
            .register_once(key("ios", bad), "jiro@example.com", PASSWORD, None)
            .await;
        assert!(
            matches!(refused, Err(Error::Invalid { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    // A withdrawn member's key does not bring them back.
    let version = h.store.user(first.id).await.unwrap().unwrap().version;
    assert!(h.store.delete_user(first.id, version, 0).await.unwrap());
    let gone = s
        .register_once(key("ios", "k-1"), "hanako@example.com", PASSWORD, None)
        .await;
    assert!(matches!(gone, Err(Error::Conflict(_))), "{gone:?}");
    // After 24 h the key is forgotten (and purged): it may register anew.
    h.clock
        .advance(REGISTRATION_KEY_TTL + Duration::from_millis(1));
    assert!(h.service.purge_expired().await.unwrap() >= 2);
    let later = s
        .register_once(key("ios", "k-1"), "saburo@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_ne!(later.id, first.id);
    let key_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM registration_keys")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(key_rows, 1);
}

async fn concurrent_retries_of_a_keyed_registration_make_one_member(backend: Backend) {
    let h = Harness::new(backend).await;
    // Retries land on different replicas: services sharing one database.
    let replicas = [h.shared_service(), h.shared_service()];
    let attempts: Vec<_> = (0..8)
        .map(|n| {
            let service = replicas[n % 2].clone();
            tokio::spawn(async move {
                service
                    .register_once(key("ios", "retry-me"), "hanako@example.com", PASSWORD, None)
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for attempt in attempts {
        ids.push(attempt.await.unwrap().unwrap().id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(users, 1);
}

async fn login_is_uniform_for_unknown_email_and_wrong_password(backend: Backend) {
    let h = Harness::new(backend).await;
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let wrong = h
        .service
        .login("hanako@example.com", "wrong horse battery")
        .await
        .err()
        .unwrap();
    let unknown = h
        .service
        .login("nobody@example.com", PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert!(matches!(wrong, Error::InvalidCredentials));
    let pair = h
        .service
        .login("HANAKO@example.com ", PASSWORD)
        .await
        .unwrap();
    assert_eq!(pair.expires_in, Duration::from_secs(900));
    let me = h
        .service
        .me(&principal_of(&h, &pair.access_token))
        .await
        .unwrap();
    assert_eq!(me.email.as_str(), "hanako@example.com");
}

async fn throttle_locks_and_backs_off_even_for_unknown_emails(backend: Backend) {
    let policy = Policy {
        throttle: ThrottlePolicy {
            limit: 3,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    };
    let h = Harness::with_policy(backend, policy).await;
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    for email in ["hanako@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            assert!(matches!(
                h.service.login(email, "wrong horse!").await,
                Err(Error::InvalidCredentials)
            ));
        }
        // Locked: even the right password waits.
        let locked = h.service.login(email, PASSWORD).await;
        assert!(
            matches!(
                locked,
                Err(Error::Throttled {
                    retry_after_secs: 1
                })
            ),
            "{email}: {locked:?}"
        );
    }
    h.clock.advance(Duration::from_secs(2));
    // Another failure doubles the lock.
    assert!(
        h.service
            .login("hanako@example.com", "wrong horse!")
            .await
            .is_err()
    );
    let locked = h.service.login("hanako@example.com", PASSWORD).await;
    assert!(
        matches!(
            locked,
            Err(Error::Throttled {
                retry_after_secs: 2
            })
        ),
        "{locked:?}"
    );
    h.clock.advance(Duration::from_secs(3));
    h.service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    // Success cleared the count.
    assert!(matches!(
        h.service.login("hanako@example.com", "wrong horse!").await,
        Err(Error::InvalidCredentials)
    ));
    // Expired rows are purged.
    h.clock.advance(Duration::from_secs(25 * 3600));
    assert!(h.service.purge_expired().await.unwrap() >= 1);
}

async fn parallel_attempts_cannot_pass_the_limit(backend: Backend) {
    let policy = Policy {
        throttle: ThrottlePolicy {
            limit: 5,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    };
    let h = std::sync::Arc::new(Harness::with_policy(backend, policy).await);
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let attempts: Vec<_> = (0..40)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.service.login("hanako@example.com", "wrong horse!").await })
        })
        .collect();
    let mut checked = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap(), Err(Error::InvalidCredentials)) {
            checked += 1;
        }
    }
    assert!(
        checked <= 5,
        "{checked} passwords were checked past a limit of 5"
    );
}

/// Hanako, registered and logged in once.
async fn signed_in(h: &Harness) -> idsvc::domain::TokenPair {
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    h.service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap()
}

async fn refresh_rotates_with_grace_and_detects_reuse(backend: Backend) {
    let h = Harness::new(backend).await;
    let first = signed_in(&h).await;
    let second = h.service.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    // The client missed our answer and retries with the parent: allowed once in the grace window.
    h.clock.advance(Duration::from_secs(5));
    let retried = h.service.refresh(&first.refresh_token).await.unwrap();
    // The superseded child is no longer current: presenting it later is reuse.
    let third = h.service.refresh(&retried.refresh_token).await.unwrap();
    h.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        h.service.refresh(&first.refresh_token).await,
        Err(Error::InvalidToken)
    ));
    // Reuse revoked the whole family.
    assert!(matches!(
        h.service.refresh(&third.refresh_token).await,
        Err(Error::InvalidToken)
    ));
    assert!(matches!(
        h.service.me(&principal_of(&h, &third.access_token)).await,
        Err(Error::InvalidToken)
    ));
    let events = idsvc::domain::Store::security_events(&*h.store, 10)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "refresh_token_reuse"));
    assert!(matches!(
        h.service.refresh("garbage").await,
        Err(Error::InvalidToken)
    ));
    // Expired tokens are refused.
    let fresh = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    assert!(matches!(
        h.service.refresh(&fresh.refresh_token).await,
        Err(Error::InvalidToken)
    ));
}

/// However the presentations of one token interleave (the rotation without a
/// lock and the locked one racing), each gets new tokens or a clean refusal,
/// and the family ends with exactly one current token.
async fn concurrent_refreshes_of_one_token_leave_one_current(backend: Backend) {
    let h = Harness::new(backend).await;
    let login = signed_in(&h).await;
    let service = h.shared_service();
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (service, token) = (service.clone(), login.refresh_token.clone());
            tokio::spawn(async move { service.refresh(&token).await })
        })
        .collect();
    let mut rotated = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => rotated += 1,
            Err(Error::InvalidToken) => {}
            Err(other) => panic!("a refresh failed with {other:?}"),
        }
    }
    assert!(rotated >= 1);
    let session = principal_of(&h, &login.access_token).session_id;
    let current: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_tokens WHERE session_id = ? AND replaced_by IS NULL",
    )
    .bind(&session)
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(
        current, 1,
        "{rotated} rotations left {current} current tokens"
    );
}

/// Refresh tokens issued before tokens named their member and session (a
/// bare secret) rotate through the locked path into tokens that do; a token
/// whose named member is changed is a different token, and unknown.
async fn tokens_that_name_no_session_still_rotate(backend: Backend) {
    use idsvc::crypto::tokens;
    let h = Harness::new(backend).await;
    let login = signed_in(&h).await;
    let me = principal_of(&h, &login.access_token);
    let bare = tokens::new_refresh_secret();
    let token = idsvc::domain::NewRefreshToken {
        hash: &tokens::refresh_token_hash(&bare),
        session_id: "an-older-session",
        user_id: me.user_id,
        expires_at: i64::MAX / 2,
    };
    // Started now: a session is bounded by its lifetime from its start.
    h.store
        .create_session(token, None, idsvc::domain::Clock::now_ms(&*h.clock))
        .await
        .unwrap();
    let rotated = h.service.refresh(&bare).await.unwrap();
    assert_eq!(
        tokens::refresh_token_session(&rotated.refresh_token),
        Some((me.user_id, "an-older-session"))
    );
    h.service.refresh(&rotated.refresh_token).await.unwrap();

    let (secret, _) = login.refresh_token.split_once('.').unwrap();
    let forged = tokens::refresh_token(secret, me.user_id + 1, &me.session_id);
    assert!(matches!(
        h.service.refresh(&forged).await,
        Err(Error::InvalidToken)
    ));
}

async fn revoke_and_password_change_end_sessions(backend: Backend) {
    let h = Harness::new(backend).await;
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let phone = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    let laptop = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    let tablet = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    h.service.revoke(&tablet.refresh_token).await.unwrap();
    assert!(h.service.refresh(&tablet.refresh_token).await.is_err());
    h.service.revoke("never-issued").await.unwrap();

    let me = principal_of(&h, &phone.access_token);
    let no_confirmation = UserChanges {
        password: Some("a new passphrase here".into()),
        ..UserChanges::default()
    };
    assert!(matches!(
        h.service.update_me(&me, no_confirmation).await,
        Err(Error::Invalid { .. })
    ));
    let wrong = UserChanges {
        password: Some("a new passphrase here".into()),
        current_password: Some("not it at all".into()),
        ..UserChanges::default()
    };
    assert!(matches!(
        h.service.update_me(&me, wrong).await,
        Err(Error::WrongCurrentPassword)
    ));
    // The phone alone needs the current password too, like the email.
    for (current_password, refused) in [(None, "invalid"), (Some("not it at all"), "wrong")] {
        let phone_only = UserChanges {
            phone: Some("+1 650-253-0000".into()),
            current_password: current_password.map(str::to_owned),
            ..UserChanges::default()
        };
        let result = h.service.update_me(&me, phone_only).await;
        match refused {
            "invalid" => assert!(
                matches!(&result, Err(Error::Invalid { field, .. }) if *field == "current_password"),
                "{result:?}"
            ),
            _ => assert!(
                matches!(result, Err(Error::WrongCurrentPassword)),
                "{result:?}"
            ),
        }
    }
    assert!(h.service.me(&me).await.unwrap().phone.is_none());
    let change = UserChanges {
        password: Some("a new passphrase here".into()),
        current_password: Some(PASSWORD.into()),
        phone: Some("+1 650-253-0000".into()),
        ..UserChanges::default()
    };
    let updated = h.service.update_me(&me, change).await.unwrap();
    assert_eq!(updated.phone.unwrap().as_str(), "+16502530000");
    // Other sessions are gone; this one lives on.
    assert!(h.service.refresh(&laptop.refresh_token).await.is_err());
    h.service.refresh(&phone.refresh_token).await.unwrap();
    assert!(
        h.service
            .login("hanako@example.com", PASSWORD)
            .await
            .is_err()
    );
    h.service
        .login("hanako@example.com", "a new passphrase here")
        .await
        .unwrap();
}

async fn withdraw_deletes_and_leaves_tombstone(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = h
        .service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let pair = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    let me = principal_of(&h, &pair.access_token);
    assert!(matches!(
        h.service.withdraw(&me, "wrong horse!").await,
        Err(Error::WrongCurrentPassword)
    ));
    h.service.withdraw(&me, PASSWORD).await.unwrap();
    assert!(matches!(h.service.me(&me).await, Err(Error::InvalidToken)));
    assert!(h.service.refresh(&pair.refresh_token).await.is_err());
    let store = &*h.store;
    assert!(
        idsvc::domain::Store::user(store, user.id)
            .await
            .unwrap()
            .is_none()
    );
    let tombstone = idsvc::domain::Store::tombstone(store, user.id)
        .await
        .unwrap()
        .unwrap();
    assert!(tombstone.version > 0);
    // The email is free again.
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
}

fn legacy(id: i64, email: &str, version: i64, hash: &str) -> LegacyUser {
    LegacyUser {
        id,
        email: email.into(),
        phone: Some("0312345678".into()),
        password_hash: hash.into(),
        version,
    }
}

async fn double_write_orders_by_version(backend: Backend) {
    let h = Harness::new(backend).await;
    let hash = idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap();
    let s = &h.service;
    assert_eq!(
        s.upsert_legacy(legacy(1001, "taro@example.com", 5, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Created, 5)
    );
    assert_eq!(
        s.upsert_legacy(legacy(1001, "taro@example.com", 5, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Unchanged, 5)
    );
    assert_eq!(
        s.upsert_legacy(legacy(1001, "taro2@example.com", 7, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Updated, 7)
    );
    assert_eq!(
        s.upsert_legacy(legacy(1001, "old@example.com", 6, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Stale, 7)
    );
    // The double-written member logs in with the legacy hash.
    s.login("taro2@example.com", PASSWORD).await.unwrap();
    assert!(s.login("old@example.com", PASSWORD).await.is_err());
    // Another id cannot take the email.
    assert!(matches!(
        s.upsert_legacy(legacy(1002, "TARO2@example.com", 1, &hash))
            .await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.upsert_legacy(legacy(1003, "x@example.com", 1, "plaintext"))
            .await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.upsert_legacy(legacy(0, "x@example.com", 1, &hash)).await,
        Err(Error::Invalid { .. })
    ));
    // A stale delete changes nothing.
    s.delete_legacy(1001, 6).await.unwrap();
    assert!(
        idsvc::domain::Store::user(&*h.store, 1001)
            .await
            .unwrap()
            .is_some()
    );
    // Natively registered members get fresh ids after legacy ones.
    let native = s.register("new@example.com", PASSWORD, None).await.unwrap();
    assert!(native.id > 1001, "{}", native.id);
}

async fn late_upsert_cannot_resurrect_deleted_user(backend: Backend) {
    let h = Harness::new(backend).await;
    let hash = idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap();
    let s = &h.service;
    s.upsert_legacy(legacy(2001, "jiro@example.com", 10, &hash))
        .await
        .unwrap();
    s.delete_legacy(2001, 11).await.unwrap();
    s.delete_legacy(2001, 11).await.unwrap();
    assert_eq!(
        s.upsert_legacy(legacy(2001, "jiro@example.com", 10, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Stale, 11)
    );
    assert!(
        idsvc::domain::Store::user(&*h.store, 2001)
            .await
            .unwrap()
            .is_none()
    );
    // A delete that arrives before the insert it follows still wins.
    s.delete_legacy(2002, 3).await.unwrap();
    assert_eq!(
        s.upsert_legacy(legacy(2002, "saburo@example.com", 2, &hash))
            .await
            .unwrap(),
        (UpsertOutcome::Stale, 3)
    );
    // A newer write after a deletion (re-registration in the legacy system) is applied.
    assert_eq!(
        s.upsert_legacy(legacy(2001, "jiro@example.com", 12, &hash))
            .await
            .unwrap()
            .0,
        UpsertOutcome::Created
    );
}

async fn no_plaintext_personal_data_at_rest(backend: Backend) {
    let h = Harness::new(backend).await;
    h.service
        .register(
            "plain.text.canary@example.com",
            PASSWORD,
            Some("090-9876-5432"),
        )
        .await
        .unwrap();
    let pair = h
        .service
        .login("plain.text.canary@example.com", PASSWORD)
        .await
        .unwrap();
    h.service.refresh(&pair.refresh_token).await.unwrap();
    let needles: [&[u8]; 5] = [
        b"plain.text.canary",
        b"909876543",
        b"9876-5432",
        PASSWORD.as_bytes(),
        pair.refresh_token.as_bytes(),
    ];
    let pool = h.store.pool();
    for table in [
        "users",
        "tombstones",
        "sessions",
        "refresh_tokens",
        "login_throttle",
        "security_events",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(pool)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                let bytes: Vec<u8> = row
                    .try_get::<Vec<u8>, _>(i)
                    .or_else(|_| row.try_get::<String, _>(i).map(String::into_bytes))
                    .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string().into_bytes()))
                    .unwrap_or_default();
                for needle in needles {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "plaintext in {table} column {i}"
                    );
                }
            }
        }
    }
    if h.store.dialect() == idsvc::store::Dialect::Sqlite {
        // The database files themselves, WAL included.
        h.store.pool().close().await;
        for entry in std::fs::read_dir(h.store_dir()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            for needle in needles {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "plaintext in the SQLite files"
                );
            }
        }
    }
}

async fn outdated_hash_is_upgraded_on_login(backend: Backend) {
    let h = Harness::new(backend).await;
    // Weaker than the service's own parameters, so login re-hashes.
    let cheap = idsvc::crypto::PasswordParams::CHEAP;
    let weaker = idsvc::crypto::PasswordParams {
        memory_kib: cheap.memory_kib / 2,
        ..cheap
    }
    .hash(PASSWORD)
    .unwrap();
    h.service
        .upsert_legacy(legacy(3001, "shiro@example.com", 1, &weaker))
        .await
        .unwrap();
    h.service
        .login("shiro@example.com", PASSWORD)
        .await
        .unwrap();
    let row = idsvc::domain::Store::user(&*h.store, 3001)
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.password_hash
            .starts_with("$argon2id$v=19$m=256,t=1,p=1$"),
        "{}",
        row.password_hash
    );
    h.service
        .login("shiro@example.com", PASSWORD)
        .await
        .unwrap();
}

/// Every legacy scheme logs in once with its own hash, is stored as argon2id
/// afterwards, and an unknown scheme is refused at import with its reason.
async fn legacy_schemes_log_in_and_upgrade_to_argon2id(backend: Backend) {
    use idsvc::crypto::legacy_hash::{SaltPosition, salted};
    let h = Harness::new(backend).await;
    // "my password" (ASP.NET Core's published vectors), "U*U" (crypt_blowfish).
    let bcrypt = bcrypt::hash_with_result(PASSWORD, 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(format!("s4lt{PASSWORD}")))
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "AAABAgMEBQYHCAkKCwwNDg+ukCEMDf0yyQ29NYubggHIVY0sdEUfdyeM+E1LtH1uJg==".into(),
            "my password",
        ),
        (
            "AQAAAAIAAAAyAAAAEOMwvh3+FZxqkdMBz2ekgGhwQ4B6pZWND6zgESBuWiHw".into(),
            "my password",
        ),
        (bcrypt, PASSWORD),
        (
            salted("sha256", SaltPosition::Before, b"s4lt", &sha256).unwrap(),
            PASSWORD,
        ),
        (
            "$pbkdf2-sha256$i=1000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM".into(),
            "correct horse",
        ),
    ];
    for (n, (hash, password)) in cases.iter().enumerate() {
        let id = 4001 + n as i64;
        let email = format!("legacy{n}@example.com");
        h.service
            .upsert_legacy(legacy(id, &email, 1, hash))
            .await
            .unwrap();
        assert!(matches!(
            h.service.login(&email, "not the password").await,
            Err(Error::InvalidCredentials)
        ));
        h.service.login(&email, password).await.unwrap();
        let row = idsvc::domain::Store::user(&*h.store, id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            row.password_hash.starts_with("$argon2id$"),
            "{hash} not upgraded: {}",
            row.password_hash
        );
        h.service.login(&email, password).await.unwrap();
    }
    let err = h
        .service
        .upsert_legacy(legacy(
            4999,
            "md5crypt@example.com",
            1,
            "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { field: "password_hash", reason } if reason.contains("unsupported")),
        "{err:?}"
    );
}

/// A double write that changes the password hash or the sign-in email ends
/// the member's sessions; one that changes neither keeps them.
async fn double_write_of_new_credentials_ends_sessions(backend: Backend) {
    let h = Harness::new(backend).await;
    let hash = idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap();
    let s = &h.service;
    s.upsert_legacy(legacy(2001, "jiro@example.com", 1, &hash))
        .await
        .unwrap();
    let tokens = s.login("jiro@example.com", PASSWORD).await.unwrap();
    // Phone only, then the very same values at a newer version: sessions stay.
    let mut phone_only = legacy(2001, "jiro@example.com", 2, &hash);
    phone_only.phone = Some("0398765432".into());
    s.upsert_legacy(phone_only).await.unwrap();
    let tokens = s.refresh(&tokens.refresh_token).await.unwrap();
    s.upsert_legacy(legacy(2001, "jiro@example.com", 3, &hash))
        .await
        .unwrap();
    let tokens = s.refresh(&tokens.refresh_token).await.unwrap();
    // A new password hash (the same password, a new salt is still a new hash).
    let new_hash = idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap();
    assert_eq!(
        s.upsert_legacy(legacy(2001, "jiro@example.com", 4, &new_hash))
            .await
            .unwrap(),
        (UpsertOutcome::Updated, 4)
    );
    assert!(matches!(
        s.refresh(&tokens.refresh_token).await,
        Err(Error::InvalidToken)
    ));
    // A new email.
    let tokens = s.login("jiro@example.com", PASSWORD).await.unwrap();
    s.upsert_legacy(legacy(2001, "jiro.new@example.com", 5, &new_hash))
        .await
        .unwrap();
    assert!(matches!(
        s.refresh(&tokens.refresh_token).await,
        Err(Error::InvalidToken)
    ));
    s.login("jiro.new@example.com", PASSWORD).await.unwrap();
}

/// A login at idbase re-hashes a legacy password to argon2id; a later
/// double write bringing the same legacy hash changed no password and must
/// not end the member's sessions, while a new legacy hash still does. Also
/// for a member no double write reached (a backfilled one): the re-hash
/// keeps the hash it replaced.
async fn a_login_rehash_is_no_password_change_for_later_double_writes(backend: Backend) {
    let h = Harness::new(backend).await;
    let s = &h.service;
    let bcrypt = |password: &str| {
        bcrypt::hash_with_result(password, 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY)
    };
    let old_hash = bcrypt(PASSWORD);
    // Legacy versions outrank the re-hash's (which is at least "now").
    let version = |n: i64| idsvc::domain::Clock::now_ms(&*h.clock) + 1_000_000 * n;
    for (id, backfilled) in [(5001, false), (5002, true)] {
        let email = format!("rehash{id}@example.com");
        s.upsert_legacy(legacy(id, &email, version(1), &old_hash))
            .await
            .unwrap();
        if backfilled {
            sqlx::query("UPDATE users SET legacy_hash_sha256 = NULL WHERE id = ?")
                .bind(id)
                .execute(h.store.pool())
                .await
                .unwrap();
        }
        let tokens = s.login(&email, PASSWORD).await.unwrap();
        let row = h.store.user(id).await.unwrap().unwrap();
        assert!(row.password_hash.starts_with("$argon2id$"), "re-hashed");
        // The same legacy hash with a new phone: the session lives on.
        let mut same = legacy(id, &email, version(2), &old_hash);
        same.phone = Some("0398765432".into());
        assert_eq!(
            s.upsert_legacy(same).await.unwrap(),
            (UpsertOutcome::Updated, version(2))
        );
        let tokens = s
            .refresh(&tokens.refresh_token)
            .await
            .unwrap_or_else(|err| panic!("{id}: session ended: {err:?}"));
        // A new password at legacy still ends it.
        s.upsert_legacy(legacy(
            id,
            &email,
            version(3),
            &bcrypt("another passphrase"),
        ))
        .await
        .unwrap();
        assert!(matches!(
            s.refresh(&tokens.refresh_token).await,
            Err(Error::InvalidToken)
        ));
    }
}

/// Rotation never carries a session past its absolute lifetime from login,
/// and a session unused for the idle timeout cannot rotate.
async fn session_lifetime_is_capped_and_idle_sessions_end(backend: Backend) {
    const DAY: Duration = Duration::from_secs(86_400);
    let policy = Policy {
        refresh_ttl: DAY * 30,
        session_max_age: DAY * 90,
        session_idle: DAY * 10,
        ..Policy::default()
    };
    let h = Harness::with_policy(backend, policy).await;
    let mut tokens = signed_in(&h).await;
    // Used every 9 days: never idle, but the 90th day from login ends it.
    for _ in 0..9 {
        h.clock.advance(DAY * 9);
        tokens = h.service.refresh(&tokens.refresh_token).await.unwrap();
    }
    // Day 81: the successor expires at day 90, not day 111.
    h.clock.advance(DAY * 9 - Duration::from_secs(1));
    tokens = h.service.refresh(&tokens.refresh_token).await.unwrap();
    h.clock.advance(Duration::from_secs(2));
    assert!(matches!(
        h.service.refresh(&tokens.refresh_token).await,
        Err(Error::InvalidToken)
    ));

    // Idle: a fresh session left alone past the idle timeout cannot rotate,
    // although its refresh token has not expired.
    let idle = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    h.clock.advance(DAY * 10 + Duration::from_secs(1));
    assert!(matches!(
        h.service.refresh(&idle.refresh_token).await,
        Err(Error::InvalidToken)
    ));
    // Just inside the idle timeout it rotates.
    let active = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    h.clock.advance(DAY * 10 - Duration::from_secs(1));
    h.service.refresh(&active.refresh_token).await.unwrap();
}

/// A taken email answers 409 only after the same password hashing as a new
/// registration, so timing does not tell which emails are members. With
/// production-cost argon2 the hash dominates both paths: skipping it would
/// make the taken path a small fraction of a registration.
#[tokio::test]
async fn registration_of_a_taken_email_costs_a_password_hash() {
    let h = Harness::new(Backend::Sqlite).await;
    let keys = KeyRing::load(&h.store_dir().join("keys")).unwrap();
    let hashing = HashingPool::new(PasswordParams::default(), 1, 64).unwrap();
    let service = idsvc::domain::IdentityService::new(
        h.store.clone(),
        h.clock.clone(),
        &keys,
        hashing,
        Policy::default(),
    )
    .unwrap();
    service
        .register("taken@example.com", PASSWORD, None)
        .await
        .unwrap();
    let (mut fresh, mut taken) = (Vec::new(), Vec::new());
    for round in 0..7 {
        let started = std::time::Instant::now();
        service
            .register(&format!("fresh{round}@example.com"), PASSWORD, None)
            .await
            .unwrap();
        fresh.push(started.elapsed());
        let started = std::time::Instant::now();
        let refused = service.register("taken@example.com", PASSWORD, None).await;
        taken.push(started.elapsed());
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    }
    fresh.sort();
    taken.sort();
    let (fresh, taken) = (fresh[3], taken[3]);
    assert!(
        taken * 2 >= fresh,
        "taken email: median {taken:?}, new email: median {fresh:?}"
    );
}

/// Failed logins lock the (email, source network) pair at the limit and the
/// email alone only at `limit × email_factor`: an attacker on one network
/// cannot lock out the member signing in from another, while guesses spread
/// over many networks still lock the email.
async fn one_network_cannot_lock_out_a_member_but_many_lock_the_email(backend: Backend) {
    let policy = Policy {
        throttle: ThrottlePolicy {
            limit: 3,
            email_factor: 5,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    };
    let h = Harness::with_policy(backend, policy).await;
    let s = &h.service;
    s.register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let network = |text: &str| Some(SourceNetwork::parse(text).unwrap());
    let attacker = network("198.51.100.7");
    for _ in 0..3 {
        assert!(matches!(
            s.login_from("hanako@example.com", "wrong guess here", attacker, "")
                .await,
            Err(Error::InvalidCredentials)
        ));
    }
    // The attacker's network is locked, another address in its /24 too ...
    assert!(matches!(
        s.login_from(
            "hanako@example.com",
            PASSWORD,
            network("198.51.100.200"),
            ""
        )
        .await,
        Err(Error::Throttled { .. })
    ));
    // ... but the member at home is not.
    s.login_from("hanako@example.com", PASSWORD, network("203.0.113.9"), "")
        .await
        .unwrap();
    // A distributed attack: one guess from each of 15 networks (5 × 3).
    for n in 0..15 {
        let from = network(&format!("192.0.{n}.1"));
        assert!(matches!(
            s.login_from("hanako@example.com", "wrong guess here", from, "")
                .await,
            Err(Error::InvalidCredentials)
        ));
    }
    assert!(matches!(
        s.login_from("hanako@example.com", PASSWORD, network("203.0.113.9"), "")
            .await,
        Err(Error::Throttled { .. })
    ));
    // IPv6 is counted per /64.
    assert_eq!(
        SourceNetwork::parse("2001:db8:1:2:aaaa::1").unwrap(),
        SourceNetwork::parse("2001:db8:1:2::/64").unwrap()
    );
    assert!(SourceNetwork::parse("not an address").is_err());
}
