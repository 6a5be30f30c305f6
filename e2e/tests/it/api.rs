use e2e::{Deployment, Target};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

pub(crate) const PASSWORD: &str = "correct horse battery";

async fn deploy() -> Target {
    Target::deployed_or_start(crate::options()).await.unwrap()
}

pub(crate) struct Api<'a> {
    gateway_url: &'a str,
    http: Client,
}

impl<'a> Api<'a> {
    pub(crate) fn new(gateway_url: &'a str) -> Self {
        Self {
            gateway_url,
            http: Client::new(),
        }
    }

    pub(crate) fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.gateway_url))
            .header("Client-Token", token)
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

#[tokio::test]
async fn member_lifecycle_through_the_gateway() {
    let d = deploy().await;
    let api = Api::new(&d.gateway_url);
    let web = &d.tokens.web;
    let post = reqwest::Method::POST;
    let body =
        json!({"email": " Hanako@Example.com", "password": PASSWORD, "phone": "090-1234-5678"});
    let (status, user) = api
        .send(api.req(post.clone(), "/v1/users", web).json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "hanako@example.com");
    assert_eq!(user["phone"], "+819012345678");
    let (status, problem) = api
        .send(
            api.req(post.clone(), "/v1/users", &d.tokens.mobile)
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "urn:idbase:problem:conflict");

    let login = json!({"email": "hanako@example.com", "password": PASSWORD});
    let (status, tokens) = api
        .send(api.req(post.clone(), "/v1/sessions", web).json(&login))
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, me) = api
        .send(
            api.req(reqwest::Method::GET, "/v1/users/me", web)
                .bearer_auth(&access),
        )
        .await;
    assert_eq!((status, &me["id"]), (StatusCode::OK, &user["id"]));

    // Same answer for a wrong password and an unknown email.
    let wrong = api
        .send(
            api.req(post.clone(), "/v1/sessions", web)
                .json(&json!({"email": "hanako@example.com", "password": "nope nope nope"})),
        )
        .await;
    let unknown = api
        .send(
            api.req(post.clone(), "/v1/sessions", web)
                .json(&json!({"email": "nobody@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);

    let refresh = json!({"refresh_token": tokens["refresh_token"]});
    let (status, rotated) = api
        .send(
            api.req(post.clone(), "/v1/tokens/refresh", web)
                .json(&refresh),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let rotated_refresh = json!({"refresh_token": rotated["refresh_token"]});
    let (status, _) = api
        .send(
            api.req(post.clone(), "/v1/tokens/revoke", web)
                .json(&rotated_refresh),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .send(
            api.req(post.clone(), "/v1/tokens/refresh", web)
                .json(&rotated_refresh),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The revoked session's access token no longer reads "me".
    let (status, _) = api
        .send(
            api.req(reqwest::Method::GET, "/v1/users/me", web)
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, tokens) = api
        .send(api.req(post.clone(), "/v1/sessions", web).json(&login))
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    // Changing (or removing) the phone needs the current password, like the email.
    for (patch, refused) in [
        (json!({"phone": ""}), StatusCode::BAD_REQUEST),
        (
            json!({"phone": "", "current_password": "not it at all"}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (status, body) = api
            .send(
                api.req(reqwest::Method::PATCH, "/v1/users/me", web)
                    .bearer_auth(&access)
                    .json(&patch),
            )
            .await;
        assert_eq!(status, refused, "{patch}: {body}");
    }
    let patch = json!({"phone": "", "current_password": PASSWORD});
    let (status, me) = api
        .send(
            api.req(reqwest::Method::PATCH, "/v1/users/me", web)
                .bearer_auth(&access)
                .json(&patch),
        )
        .await;
    assert_eq!(
        (status, &me["phone"]),
        (StatusCode::OK, &Value::Null),
        "{me}"
    );
    let withdraw = json!({"current_password": "not it at all"});
    let (status, _) = api
        .send(
            api.req(reqwest::Method::DELETE, "/v1/users/me", web)
                .bearer_auth(&access)
                .json(&withdraw),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let withdraw = json!({"current_password": PASSWORD});
    let (status, _) = api
        .send(
            api.req(reqwest::Method::DELETE, "/v1/users/me", web)
                .bearer_auth(&access)
                .json(&withdraw),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .send(api.req(post, "/v1/sessions", web).json(&login))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // SIGTERM drains and exits cleanly.
    if let Some(Deployment { gateway, idsvc, .. }) = d.local {
        assert!(gateway.terminate().unwrap().success());
        assert!(idsvc.terminate().unwrap().success());
    }
}

#[tokio::test]
async fn clients_and_double_writes() {
    let d = deploy().await;
    let api = Api::new(&d.gateway_url);
    let hash =
        "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0$3Tf4m8cM5eV6cFfY1QSrmXL0yQkH3mvbM2QtYQbo0C0";
    let put = |token: &str, id: i64, version: i64| {
        api.req(reqwest::Method::PUT, &format!("/internal/v1/users/{id}"), token)
            .json(&json!({"email": format!("m{id}@example.com"), "phone": null, "password_hash": hash, "version": version}))
    };
    // No token, unknown token: 401. A web client may not double-write: 403.
    let (status, _) = api
        .send(api.http.get(format!("{}/v1/users/me", d.gateway_url)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.send(put("forged", 1, 1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.send(put(&d.tokens.web, 1, 1)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let internal = &d.tokens.internal;
    let (status, body) = api.send(put(internal, 501, 10)).await;
    assert_eq!(
        (status, &body["outcome"]),
        (StatusCode::CREATED, &json!("created")),
        "{body}"
    );
    let (status, body) = api.send(put(internal, 501, 10)).await;
    assert_eq!(
        (status, &body["outcome"]),
        (StatusCode::OK, &json!("unchanged"))
    );
    let delete = |version: i64| {
        api.req(
            reqwest::Method::DELETE,
            &format!("/internal/v1/users/501?version={version}"),
            internal,
        )
    };
    let (status, _) = api.send(delete(11)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.send(put(internal, 501, 10)).await;
    assert_eq!(
        (status, &body["outcome"], &body["version"]),
        (StatusCode::OK, &json!("stale"), &json!(11))
    );
    let (status, _) = api
        .send(api.req(reqwest::Method::DELETE, "/internal/v1/users/501", internal))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .send(
            api.req(reqwest::Method::PUT, "/internal/v1/users/abc", internal)
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A legacy hash above a cost cap is refused with the cap named.
    for (n, (costly, cap)) in [
        (
            "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            "--legacy-bcrypt-max-cost",
        ),
        (
            "$pbkdf2-sha256$i=2000000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM",
            "--legacy-pbkdf2-max-iterations",
        ),
        (
            "$argon2id$v=19$m=131072,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
            "--legacy-argon2-max-memory-kib",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = api
            .send(
                api.req(reqwest::Method::PUT, &format!("/internal/v1/users/{}", 600 + n), internal)
                    .json(&json!({"email": format!("c{n}@example.com"), "phone": null, "password_hash": costly, "version": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains(cap), "{body}");
    }
}

#[tokio::test]
async fn keyed_registration_is_safe_to_retry() {
    let d = deploy().await;
    let api = Api::new(&d.gateway_url);
    let signup = |token: &str, key: &str, email: &str| {
        api.req(reqwest::Method::POST, "/v1/users", token)
            .header("Idempotency-Key", key)
            .json(&json!({"email": email, "password": PASSWORD}))
    };
    let (status, first) = api
        .send(signup(&d.tokens.mobile, "8d5e-signup", "keyed@example.com"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, replay) = api
        .send(signup(&d.tokens.mobile, "8d5e-signup", "keyed@example.com"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{replay}");
    assert_eq!(replay, first);
    let (status, problem) = api
        .send(signup(&d.tokens.mobile, "8d5e-signup", "other@example.com"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["type"], "urn:idbase:problem:idempotency-key-reused");
    // Another client's key of the same name is its own.
    let (status, problem) = api
        .send(signup(&d.tokens.web, "8d5e-signup", "keyed@example.com"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, problem) = api
        .send(signup(&d.tokens.mobile, "not a key", "third@example.com"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let d = deploy().await;
    let api = Api::new(&d.gateway_url);
    let web = &d.tokens.web;
    let post = || api.req(reqwest::Method::POST, "/v1/users", web);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            post()
                .header("Content-Type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": 1, "password": PASSWORD})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": "a@example.com", "password": PASSWORD, "admin": true})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": "a@example.com", "password": "password1"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": "a@example.com", "password": "x".repeat(129)})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": "a@example.com", "password": PASSWORD, "phone": "12"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post().json(&json!({"email": "a@example.com", "password": "x".repeat(32 * 1024) /* over the 16 KiB limit, small enough that the client finishes writing before the early 413 */})),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (post().body("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            api.req(reqwest::Method::GET, "/v1/nothing", web),
            StatusCode::NOT_FOUND,
        ),
        (
            api.req(reqwest::Method::GET, "/v1/users/me", web)
                .bearer_auth("not.a.jwt"),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (request, expected) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), expected);
        let content_type = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/problem+json");
        let problem: Value = answer.json().await.unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:idbase:problem:"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn meta_routes_describe_the_service() {
    let d = deploy().await;
    let http = Client::new();
    let get = |path: &str| http.get(format!("{}{path}", d.gateway_url)).send();
    let openapi: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/users",
        "/v1/sessions",
        "/v1/tokens/refresh",
        "/v1/tokens/revoke",
        "/v1/users/me",
        "/internal/v1/users/{id}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} missing");
    }
    let jwks: Value = get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
    // Metrics are for the cluster's scraper, on their own listener only.
    assert_eq!(
        get("/metrics").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    if let Some(metrics_url) = &d.metrics_url {
        let metrics = http
            .get(format!("{metrics_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("idbase_http_requests_total"), "{metrics}");
        assert!(metrics.contains("idbase_http_request_duration_seconds_bucket"));
    }
    // Requests carry an id back, generated or propagated.
    let answer = http
        .get(format!("{}/healthz", d.gateway_url))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"], "abc-123");
}
