//! The legacy emulator (`e2e::legacy`) in-process on a fresh MariaDB
//! database: the member API, single-use redemption, idbase access tokens
//! through a JWKS, and double writes into a real idbase. Every answer is
//! checked against docs/legacy-contract.yaml (status documented, body valid
//! against the operation's schema, `Legacy-Served: true`).

use crate::contract::check_contract;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e::legacy::{Config, GATEWAY_TOKEN_HEADER, TlsFiles};
use e2e::{Deployment, TestDatabase, fresh_mysql_database};
use ed25519_dalek::{Signer, SigningKey};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// An emulator serving on a loopback port until the test ends.
struct Emulator {
    url: String,
    gateway_token: String,
    http: reqwest::Client,
    _database: TestDatabase,
}

async fn start(tune: impl FnOnce(&mut Config)) -> Emulator {
    let database = fresh_mysql_database().await.unwrap();
    let mut config = Config {
        database_url: database.url().to_owned(),
        gateway_token: "gateway-credential-for-tests".to_owned(),
        double_write: None,
        jwks_url: None,
        seed_members: 0,
        tls: None,
    };
    tune(&mut config);
    let gateway_token = config.gateway_token.clone();
    let tls = config.tls.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let app = e2e::legacy::app(config).await.unwrap();
    tokio::spawn(async move {
        e2e::legacy::serve_router(listener, app, tls.as_ref(), std::future::pending()).await
    });
    Emulator {
        url,
        gateway_token,
        http: reqwest::Client::new(),
        _database: database,
    }
}

impl Emulator {
    /// One call as the gateway makes it, checked against the contract.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header(GATEWAY_TOKEN_HEADER, &self.gateway_token)
            .header("X-Idbase-Client", "web")
            .header("X-Idbase-Client-Class", "web");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let headers = answer.headers().clone();
        let bytes = answer.bytes().await.unwrap();
        check_contract(&method, path, status, &headers, &bytes);
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn register(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }
}

/// `--tls-cert`/`--tls-key`: the emulator serves HTTPS with a certificate
/// from a private CA (on kind, cert-manager's internal CA), and the member API
/// answers over it as over plain HTTP. A client trusting only that CA gets
/// through; one with the web PKI's roots, or speaking plain HTTP, does not.
#[tokio::test]
async fn the_emulator_serves_https_with_a_certificate_from_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();

    let mut legacy = start(|config| config.tls = Some(files)).await;
    // The certificate names `localhost`, as kind's names the Service `legacy`.
    legacy.url = legacy.url.replace("127.0.0.1", "localhost");
    assert!(
        legacy.url.starts_with("https://localhost:"),
        "{}",
        legacy.url
    );
    legacy.http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let (status, user) = legacy.register("tls@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, session) = legacy.login("tls@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{session}");

    let timeout = std::time::Duration::from_secs(10);
    let untrusting = reqwest::Client::builder().timeout(timeout).build().unwrap();
    let refused = untrusting
        .get(format!("{}/legacy/v1/health", legacy.url))
        .header(GATEWAY_TOKEN_HEADER, &legacy.gateway_token)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "web PKI roots accepted a private CA: {refused:?}"
    );
    let plain = untrusting
        .get(legacy.url.replacen("https://", "http://", 1) + "/legacy/v1/health")
        .header(GATEWAY_TOKEN_HEADER, &legacy.gateway_token)
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS port: {plain:?}"
    );

    // idsvc's phase checks reach it with `--legacy-ca`, and only with it.
    use idsvc::domain::phase::LegacyProbe;
    use idsvc::legacy::HttpLegacy;
    let token_file = dir.path().join("legacy-token");
    std::fs::write(&token_file, &legacy.gateway_token).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let checks = HttpLegacy::new(&legacy.url, Some(&token_file), Some(&ca_file)).unwrap();
    assert_eq!(checks.healthy().await, Ok(()));
    assert!(checks.max_id().await.unwrap() >= 1);
    let without_ca = HttpLegacy::new(&legacy.url, Some(&token_file), None).unwrap();
    assert!(without_ca.healthy().await.is_err());
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap()
}

#[tokio::test]
async fn member_lifecycle_at_legacy() {
    let legacy = start(|_| {}).await;
    let (status, user) = legacy.register(" Legacy@Example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "legacy@example.com");
    let (status, problem) = legacy.register("legacy@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "urn:idbase:problem:conflict");
    let (status, problem) = legacy.register("weak@example.com", "password").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["detail"], "invalid password: is too common");

    let (status, tokens) = legacy.login("LEGACY@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = text(&tokens, "access_token").to_owned();
    let (status, me) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!((status, &me["id"]), (StatusCode::OK, &user["id"]));
    let (wrong, unknown) = (
        legacy.login("legacy@example.com", "not the password").await,
        legacy.login("nobody@example.com", PASSWORD).await,
    );
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);

    // Refresh rotates; the used token is dead, and reusing it ends the session.
    let old = json!({"refresh_token": tokens["refresh_token"]});
    let (status, rotated) = legacy
        .call(Method::POST, "/v1/tokens/refresh", None, Some(old.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, _) = legacy
        .call(Method::POST, "/v1/tokens/refresh", None, Some(old))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = legacy
        .call(
            Method::GET,
            "/v1/users/me",
            Some(text(&rotated, "access_token")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the reused session ended");
    let (status, _) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "all of it");
    let (_, tokens) = legacy.login("legacy@example.com", PASSWORD).await;
    let access = text(&tokens, "access_token").to_owned();

    // Changes need the current password; a new password works at once.
    let (status, _) = legacy
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&access),
            Some(json!({"phone": "090-1234-5678"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = legacy
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&access),
            Some(json!({"phone": "090-1234-5678", "current_password": "wrong wrong"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let new_password = "another horse battery";
    let (status, changed) = legacy
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&access),
            Some(json!({"phone": "090-1234-5678", "password": new_password, "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["phone"], "+819012345678");
    assert!(text(&changed, "updated_at") > text(&user, "updated_at"));
    assert_eq!(
        legacy.login("legacy@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        legacy.login("legacy@example.com", new_password).await.0,
        StatusCode::OK
    );

    let (status, _) = legacy
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(&access),
            Some(json!({"current_password": new_password})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        legacy.login("legacy@example.com", new_password).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Withdrawn members free their email (the row stays, soft-deleted).
    assert_eq!(
        legacy.register("legacy@example.com", PASSWORD).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_email_make_one_member() {
    let legacy = start(|_| {}).await;
    let attempts = (0..8).map(|_| legacy.register("race@example.com", PASSWORD));
    let mut statuses: Vec<u16> = futures_statuses(attempts).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    // Different emails never wait for each other's claims.
    let legacy = &legacy;
    let attempts = (0..8).map(|i| {
        let email = format!("parallel-{i}@example.com");
        async move { legacy.register(&email, PASSWORD).await }
    });
    assert!(futures_statuses(attempts).await.iter().all(|s| *s == 201));
}

async fn futures_statuses(
    calls: impl Iterator<Item = impl std::future::Future<Output = (StatusCode, Value)>>,
) -> Vec<u16> {
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(status, _)| status.as_u16())
        .collect()
}

#[tokio::test]
async fn every_request_needs_the_gateway_token() {
    let legacy = start(|_| {}).await;
    for token in [None, Some("not-the-credential")] {
        let mut request = legacy.http.get(format!("{}/legacy/v1/health", legacy.url));
        if let Some(token) = token {
            request = request.header(GATEWAY_TOKEN_HEADER, token);
        }
        let answer = request.send().await.unwrap();
        let (status, headers) = (answer.status(), answer.headers().clone());
        let body = answer.bytes().await.unwrap();
        check_contract(&Method::GET, "/legacy/v1/health", status, &headers, &body);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "urn:idbase:problem:invalid-client");
    }
    let (status, health) = legacy
        .call(Method::GET, "/legacy/v1/health", None, None)
        .await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));
    // A client class the gateway cannot have sent is refused.
    let answer = legacy
        .http
        .get(format!("{}/v1/users/me", legacy.url))
        .header(GATEWAY_TOKEN_HEADER, &legacy.gateway_token)
        .header("X-Idbase-Client-Class", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn seeded_members_log_in_and_redemption_ends_the_session() {
    let legacy = start(|c| c.seed_members = 2500).await;
    let (status, max) = legacy
        .call(Method::GET, "/legacy/v1/members/max-id", None, None)
        .await;
    assert_eq!((status, &max["max_id"]), (StatusCode::OK, &json!(2500)));
    let (status, tokens) = legacy
        .login("member-2042@legacy.example", "password-2042")
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(text(&tokens, "access_token").starts_with("la_"));
    assert!(text(&tokens, "refresh_token").starts_with("lr_"));
    let access = text(&tokens, "access_token").to_owned();
    let refresh = json!({"refresh_token": tokens["refresh_token"]});

    let redeem = "/legacy/v1/refresh-tokens/redeem";
    let (status, redeemed) = legacy
        .call(Method::POST, redeem, None, Some(refresh.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{redeemed}");
    assert_eq!(redeemed["member_id"], 2042);
    // The gateway's retry of an exchange idsvc failed: the same member again.
    let (status, again) = legacy
        .call(Method::POST, redeem, None, Some(refresh.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["member_id"], 2042);
    // The redeemed session is over for legacy's own routes too.
    let (status, _) = legacy
        .call(Method::POST, "/v1/tokens/refresh", None, Some(refresh))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = legacy
        .call(
            Method::POST,
            redeem,
            None,
            Some(json!({"refresh_token": "lr_never-issued"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // New members get ids past the seeded ones.
    let (status, user) = legacy.register("after@example.com", PASSWORD).await;
    assert_eq!((status, &user["id"]), (StatusCode::CREATED, &json!("2501")));
}

/// An idbase access token as idsvc signs them (EdDSA JWS, `kid` in the header).
fn idbase_token(key: &SigningKey, kid: &str, sub: &str, exp_offset_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string());
    let claims = json!({"iss": "idbase", "aud": "idbase", "sub": sub, "sid": "s1", "iat": now, "exp": now + exp_offset_secs});
    let mut token = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    token
}

/// Serves `{"keys": [the key as "test-kid"]}` the way the gateway serves its JWKS.
async fn serve_jwks(key: &SigningKey) -> String {
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "test-kid",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
    }]});
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || async move { axum::Json(jwks) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn idbase_access_tokens_are_accepted_through_the_jwks() {
    let key = SigningKey::from_bytes(&rand::random());
    let jwks_url = serve_jwks(&key).await;
    let legacy = start(|c| {
        c.seed_members = 5;
        c.jwks_url = Some(jwks_url);
    })
    .await;
    let me = |token: String| {
        let legacy = &legacy;
        async move {
            legacy
                .call(Method::GET, "/v1/users/me", Some(&token), None)
                .await
        }
    };
    let (status, member) = me(idbase_token(&key, "test-kid", "3", 300)).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["email"], "member-3@legacy.example");

    let stranger = SigningKey::from_bytes(&rand::random());
    for token in [
        idbase_token(&stranger, "test-kid", "3", 300),
        idbase_token(&key, "unknown-kid", "3", 300),
        idbase_token(&key, "test-kid", "3", -300),
        idbase_token(&key, "test-kid", "99", 300),
        idbase_token(&key, "test-kid", "not-a-number", 300),
        "a.b.c".to_owned(),
    ] {
        let (status, problem) = me(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    }

    // Without --jwks-url (phases 0–1) idbase tokens are not accepted.
    let early = start(|c| c.seed_members = 5).await;
    let (status, _) = early
        .call(
            Method::GET,
            "/v1/users/me",
            Some(&idbase_token(&key, "test-kid", "3", 300)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Logs in at idbase's gateway.
async fn idbase_login(deployment: &Deployment, email: &str, password: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/v1/sessions", deployment.gateway_url))
        .header("Client-Token", &deployment.tokens.web)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn double_writes_land_in_idbase() {
    let idbase_database = fresh_mysql_database().await.unwrap();
    let idbase = Deployment::start(&idbase_database, crate::options())
        .await
        .unwrap();
    let gateway = idbase.gateway_url.clone();
    let internal = idbase.tokens.internal.clone();
    let legacy = start(move |c| c.double_write = Some((gateway, internal))).await;

    let (status, user) = legacy.register("twice@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(
        idbase_login(&idbase, "twice@example.com", PASSWORD).await,
        StatusCode::OK,
        "the member logs in at idbase with the legacy password"
    );

    let (_, tokens) = legacy.login("twice@example.com", PASSWORD).await;
    let access = text(&tokens, "access_token").to_owned();
    let new_password = "a different horse";
    let (status, changed) = legacy
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&access),
            Some(json!({"email": "moved@example.com", "password": new_password, "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        idbase_login(&idbase, "moved@example.com", new_password).await,
        StatusCode::OK
    );
    assert_eq!(
        idbase_login(&idbase, "twice@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED
    );

    let (status, _) = legacy
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(&access),
            Some(json!({"current_password": new_password})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        idbase_login(&idbase, "moved@example.com", new_password).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_write_idbase_did_not_take_is_rolled_back() {
    // Nothing listens on the gateway address: every double write fails.
    let dead = format!("http://{}", e2e::free_addr().unwrap());
    let legacy = start(move |c| {
        c.seed_members = 3;
        c.double_write = Some((dead, "internal-token".to_owned()));
    })
    .await;
    let (status, problem) = legacy.register("lost@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "urn:idbase:problem:unavailable");
    assert_eq!(
        legacy.login("lost@example.com", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED,
        "the registration was rolled back"
    );

    let (_, tokens) = legacy.login("member-2@legacy.example", "password-2").await;
    let access = text(&tokens, "access_token").to_owned();
    let (status, _) = legacy
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&access),
            Some(json!({"password": "never stored pw", "current_password": "password-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = legacy
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(&access),
            Some(json!({"current_password": "password-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        legacy
            .login("member-2@legacy.example", "password-2")
            .await
            .0,
        StatusCode::OK,
        "neither the change nor the withdrawal was kept"
    );
}

#[tokio::test]
async fn idbase_syncs_members_back_by_version() {
    let legacy = start(|c| c.seed_members = 3).await;
    let (_, before) = legacy
        .call(Method::GET, "/legacy/v1/members/max-id", None, None)
        .await;
    assert_eq!(before["max_id"], 3);
    let (_, tokens) = legacy.login("member-2@legacy.example", "password-2").await;
    let access = text(&tokens, "access_token").to_owned();
    let (_, me) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(me["id"], "2");
    // Seeded just now: a version a minute ahead is newer.
    let version = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 60_000;
    // An argon2id hash, as idbase stores a password after a login there.
    let argon2 = "$argon2id$v=19$m=256,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$\
                  5VvJg0c3X7rUIu1MeAv7eVSK0mYnW1cC1qjC8JY1D1E";
    let sync = |body: Value| {
        let legacy = &legacy;
        async move {
            legacy
                .call(Method::PUT, "/legacy/v1/sync/members/2", None, Some(body))
                .await
        }
    };
    let newer =
        json!({"email": "renamed@example.com", "password_hash": argon2, "version": version});
    let (status, outcome) = sync(newer.clone()).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["outcome"], "updated");
    assert_eq!(sync(newer).await.1["outcome"], "unchanged");
    let older =
        json!({"email": "older@example.com", "password_hash": argon2, "version": version - 1});
    assert_eq!(sync(older).await.1["outcome"], "stale");
    let (_, me) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(me["email"], "renamed@example.com");
    assert_eq!(
        legacy
            .login("member-2@legacy.example", "password-2")
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "the old email and hash are gone"
    );

    // A deletion at idbase soft-deletes and ends the sessions.
    let deleted = json!({"email": "renamed@example.com", "password_hash": argon2, "version": version + 1, "deleted": true});
    assert_eq!(sync(deleted).await.1["outcome"], "updated");
    let (status, _) = legacy
        .call(Method::GET, "/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A member registered at idbase is created; a hash idbase cannot verify is refused.
    let native = |hash: &str| json!({"email": "native@example.com", "password_hash": hash, "version": version});
    let (status, problem) = legacy
        .call(
            Method::PUT,
            "/legacy/v1/sync/members/42",
            None,
            Some(native("md5:whatever")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, outcome) = legacy
        .call(
            Method::PUT,
            "/legacy/v1/sync/members/42",
            None,
            Some(native(argon2)),
        )
        .await;
    assert_eq!(
        (status, &outcome["outcome"]),
        (StatusCode::OK, &json!("created"))
    );
    let (_, after) = legacy
        .call(Method::GET, "/legacy/v1/members/max-id", None, None)
        .await;
    assert_eq!(after["max_id"], 42);
}
