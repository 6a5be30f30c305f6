//! Credential hardening through the service's own API: caps on legacy hash
//! costs, failed credential checks that take the same time whatever the
//! account, and strict email addresses for what members type into idbase.

use crate::conformance::principal_of;
use crate::harness::{Backend, Harness};
use idsvc::crypto::PasswordParams;
use idsvc::crypto::legacy_hash::{SaltPosition, salted};
use idsvc::domain::{Error, LegacyUser, Policy, ThrottlePolicy, UserChanges};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

fn legacy(id: i64, email: &str, password_hash: &str) -> LegacyUser {
    LegacyUser {
        id,
        email: email.to_owned(),
        phone: None,
        password_hash: password_hash.to_owned(),
        version: 1,
    }
}

/// A legacy hash above a cap is refused with a reason naming the value, the
/// cap and its setting; the same scheme at the cap is accepted.
#[tokio::test]
async fn double_writes_above_the_hash_cost_caps_are_refused() {
    let h = Harness::new(Backend::Sqlite).await;
    let refused = [
        (
            "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            "bcrypt cost 13 is above the accepted maximum 12 (--legacy-bcrypt-max-cost)",
        ),
        (
            "$pbkdf2-sha256$i=2000000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM",
            "pbkdf2 iterations 2000000 is above the accepted maximum 1000000 (--legacy-pbkdf2-max-iterations)",
        ),
        (
            "$argon2id$v=19$m=131072,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "argon2 memory (KiB) 131072 is above the accepted maximum 65536 (--legacy-argon2-max-memory-kib)",
        ),
        (
            "$argon2id$v=19$m=65536,t=11,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "argon2 iterations 11 is above the accepted maximum 10 (--legacy-argon2-max-iterations)",
        ),
    ];
    for (n, (hash, reason)) in refused.into_iter().enumerate() {
        let err = h
            .service
            .upsert_legacy(legacy(n as i64 + 1, "capped@example.com", hash))
            .await
            .err()
            .unwrap_or_else(|| panic!("{hash} was accepted"));
        match err {
            Error::Invalid { field, reason: got } => {
                assert_eq!(field, "password_hash");
                assert_eq!(got, reason);
            }
            other => panic!("{hash}: {other:?}"),
        }
    }
    // At the caps: accepted.
    for (n, hash) in [
        "$2b$12$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        "$pbkdf2-sha256$i=1000000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM",
        "$argon2id$v=19$m=65536,t=10,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
    ]
    .into_iter()
    .enumerate()
    {
        h.service
            .upsert_legacy(legacy(
                n as i64 + 10,
                &format!("at-cap{n}@example.com"),
                hash,
            ))
            .await
            .unwrap_or_else(|e| panic!("{hash}: {e}"));
    }
}

/// The caps are settings: a raised cap accepts what the default refuses.
#[tokio::test]
async fn a_raised_cap_accepts_the_costlier_hash() {
    let mut policy = Policy::default();
    policy.legacy_hash_limits.bcrypt_max_cost = 13;
    let h = Harness::with_policy(Backend::Sqlite, policy).await;
    h.service
        .upsert_legacy(legacy(
            1,
            "raised@example.com",
            "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        ))
        .await
        .unwrap();
}

/// Registration and email change take only a plain addr-spec with a dotted
/// domain; a double write keeps what legacy stored.
#[tokio::test]
async fn only_plain_dotted_addresses_are_typed_into_idbase() {
    let h = Harness::new(Backend::Sqlite).await;
    let look_alikes = ["\"X\" <victim@example.com>", "a@[127.0.0.1]", "a@localhost"];
    for raw in look_alikes {
        match h.service.register(raw, PASSWORD, None).await {
            Err(Error::Invalid { field: "email", .. }) => {}
            other => panic!("{raw}: {other:?}"),
        }
    }
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let pair = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    let principal = principal_of(&h, &pair.access_token);
    for raw in look_alikes {
        let changes = UserChanges {
            email: Some(raw.to_owned()),
            current_password: Some(PASSWORD.to_owned()),
            ..UserChanges::default()
        };
        match h.service.update_me(&principal, changes).await {
            Err(Error::Invalid { field: "email", .. }) => {}
            other => panic!("{raw}: {other:?}"),
        }
    }
    // The legacy system's members keep their address, and can log in with it.
    let hash = salted("sha256", SaltPosition::Before, b"s", &sha256_hex("spw")).unwrap();
    for (n, raw) in look_alikes.into_iter().enumerate() {
        h.service
            .upsert_legacy(legacy(n as i64 + 100, raw, &hash))
            .await
            .unwrap_or_else(|e| panic!("{raw}: {e}"));
        h.service.login(raw, "pw").await.unwrap();
    }
}

fn sha256_hex(input: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(input.as_bytes()))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The floor the timing tests pad to: large enough to hold a cheap check on
/// a loaded debug build, small enough for dozens of tries per path.
const TEST_FLOOR: Duration = Duration::from_millis(100);

fn timing_policy(floor: Duration) -> Policy {
    Policy {
        throttle: ThrottlePolicy {
            limit: 1_000_000,
            ..ThrottlePolicy::default()
        },
        credential_failure_floor: floor,
        ..Policy::default()
    }
}

/// One stored member per hash scheme the service verifies; each one's
/// password is `PASSWORD`.
fn legacy_hashes() -> Vec<(&'static str, String)> {
    use base64::Engine;
    let digest = |alg: &str, salt: &[u8], pw: &str| -> String {
        use sha2::Digest;
        let mut input = salt.to_vec();
        input.extend_from_slice(pw.as_bytes());
        match alg {
            "sha256" => hex::encode(sha2::Sha256::digest(&input)),
            "sha1" => hex::encode(sha1::Sha1::digest(&input)),
            _ => hex::encode(md5::Md5::digest(&input)),
        }
    };
    let salted_hash = |alg: &str| {
        salted(
            alg,
            SaltPosition::Before,
            b"NaCl",
            &digest(alg, b"NaCl", PASSWORD),
        )
        .unwrap()
    };
    let pbkdf2 = |iterations: u32| {
        let salt = [7u8; 16];
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(PASSWORD.as_bytes(), &salt, iterations, &mut out);
        (salt, out)
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64_nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
    let (salt, out) = pbkdf2(1000);
    let pbkdf2_phc = format!(
        "$pbkdf2-sha256$i=1000,l=32${}${}",
        b64_nopad.encode(salt),
        b64_nopad.encode(out)
    );
    // ASP.NET Identity v2: 0x00 ‖ salt ‖ PBKDF2-HMAC-SHA1(1000).
    let mut v2 = vec![0u8];
    let v2_salt = [3u8; 16];
    let mut v2_key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(PASSWORD.as_bytes(), &v2_salt, 1000, &mut v2_key);
    v2.extend_from_slice(&v2_salt);
    v2.extend_from_slice(&v2_key);
    // ASP.NET Identity v3: 0x01 ‖ prf ‖ iterations ‖ salt length ‖ salt ‖ subkey.
    let mut v3 = vec![1u8];
    v3.extend_from_slice(&1u32.to_be_bytes());
    v3.extend_from_slice(&1000u32.to_be_bytes());
    v3.extend_from_slice(&16u32.to_be_bytes());
    v3.extend_from_slice(&salt);
    v3.extend_from_slice(&out);
    let other_argon2 = PasswordParams {
        memory_kib: 512,
        iterations: 1,
        parallelism: 1,
    }
    .hash(PASSWORD)
    .unwrap();
    vec![
        ("salted-sha256", salted_hash("sha256")),
        ("salted-sha1", salted_hash("sha1")),
        ("salted-md5", salted_hash("md5")),
        (
            "bcrypt",
            bcrypt::hash_with_result(PASSWORD, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoB),
        ),
        ("pbkdf2", pbkdf2_phc),
        ("aspnet-identity-v2", b64.encode(v2)),
        ("aspnet-identity-v3", b64.encode(v3)),
        ("argon2id-other-params", other_argon2),
    ]
}

/// Unknown email, a native member and a member of every legacy scheme, with
/// a wrong password typed plainly and in full-width characters (which NFKC
/// changes, so legacy members are verified twice): the medians of the
/// failed logins are within 10% of each other.
#[tokio::test]
async fn failed_logins_take_the_same_time_whatever_the_account() {
    const TRIES: usize = 30;
    let h = Harness::with_policy(Backend::Sqlite, timing_policy(TEST_FLOOR)).await;
    let service = h.shared_service();
    service
        .register("native@example.com", PASSWORD, None)
        .await
        .unwrap();
    let mut accounts = vec![
        ("unknown".to_owned(), "nobody@example.com".to_owned()),
        ("native".to_owned(), "native@example.com".to_owned()),
    ];
    for (n, (scheme, hash)) in legacy_hashes().into_iter().enumerate() {
        let email = format!("{scheme}@example.com");
        service
            .upsert_legacy(legacy(n as i64 + 1000, &email, &hash))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        // The fixture is right: the member logs in with the right password.
        service
            .login(&email, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        // That login re-hashed the member to argon2id: store the legacy hash again.
        service
            .upsert_legacy(LegacyUser {
                version: 2_000_000_000_000,
                ..legacy(n as i64 + 1000, &email, &hash)
            })
            .await
            .unwrap();
        accounts.push((scheme.to_owned(), email));
    }
    let mut paths = Vec::new();
    for (label, email) in accounts {
        for wrong in [
            "wrong horse battery",
            "ｗｒｏｎｇ　ｈｏｒｓｅ　ｂａｔｔｅｒｙ",
        ] {
            paths.push((format!("{label} / {wrong}"), email.clone(), wrong));
        }
    }
    // A few paths at once: enough to keep the test short, few enough that
    // their hashes do not queue past the floor on the two-thread pool.
    let mut medians = Vec::new();
    for group in paths.chunks(4) {
        let runs = group.iter().cloned().map(|(label, email, wrong)| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(TRIES);
                for _ in 0..TRIES {
                    let started = Instant::now();
                    let result = service.login(&email, wrong).await;
                    samples.push(started.elapsed());
                    assert!(
                        matches!(result, Err(Error::InvalidCredentials)),
                        "{label}: {result:?}"
                    );
                }
                (label, median(samples))
            })
        });
        for run in runs.collect::<Vec<_>>() {
            medians.push(run.await.unwrap());
        }
    }
    let fastest = medians.iter().map(|m| m.1).min().unwrap();
    let slowest = medians.iter().map(|m| m.1).max().unwrap();
    assert!(
        slowest.as_secs_f64() <= fastest.as_secs_f64() * 1.10,
        "medians differ by more than 10%: {medians:#?}"
    );
    assert!(fastest >= TEST_FLOOR, "{medians:#?}");
}

/// The floor pads failures only: a correct password is answered at once,
/// and a wrong current password takes the floor like a failed login.
#[tokio::test]
async fn only_failed_checks_are_padded() {
    let floor = Duration::from_millis(1500);
    let h = Harness::with_policy(Backend::Sqlite, timing_policy(floor)).await;
    h.service
        .register("hanako@example.com", PASSWORD, None)
        .await
        .unwrap();
    let started = Instant::now();
    let pair = h
        .service
        .login("hanako@example.com", PASSWORD)
        .await
        .unwrap();
    assert!(started.elapsed() < floor, "a success was padded");
    let started = Instant::now();
    assert!(matches!(
        h.service.login("hanako@example.com", "wrong horse").await,
        Err(Error::InvalidCredentials)
    ));
    assert!(started.elapsed() >= floor);
    let principal = principal_of(&h, &pair.access_token);
    let started = Instant::now();
    assert!(matches!(
        h.service.withdraw(&principal, "wrong horse").await,
        Err(Error::WrongCurrentPassword)
    ));
    assert!(started.elapsed() >= floor);
}
