//! Login-anomaly detection end to end: normal traffic stays quiet, a burst of
//! failed logins from one address raises the alert, lands in idsvc's audit
//! trail and gets the address auto-blocked.

use e2e::{Deployment, fresh_mysql_database};
use reqwest::{Client, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

use crate::api::PASSWORD;
const NORMAL: &str = "192.0.2.10";
const ATTACKER: &str = "203.0.113.66";

/// Source addresses come from X-Forwarded-For because the test client is
/// loopback, which the gateway is told is its ALB.
const GATEWAY: &[&str] = &[
    "--trusted-proxies",
    "127.0.0.0/8",
    "--login-alert-min-attempts",
    "10",
    "--login-alert-min-ip-attempts",
    "10",
    "--login-alert-ratio",
    "0.5",
    "--login-autoblock-failures",
    "15",
    "--login-autoblock-secs",
    "600",
];

async fn login(
    d: &Deployment,
    http: &Client,
    from: &str,
    email: &str,
    password: &str,
) -> StatusCode {
    http.post(format!("{}/v1/sessions", d.gateway_url))
        .header("Client-Token", &d.tokens.mobile)
        .header("X-Forwarded-For", from)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The value of one Prometheus sample, if present.
async fn metric(d: &Deployment, http: &Client, sample: &str) -> Option<f64> {
    let text = http
        .get(format!("{}/metrics", d.gateway_metrics_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn failed_login_burst_alerts_and_blocks_while_normal_traffic_does_not() {
    let database = fresh_mysql_database().await.unwrap();
    let d = Deployment::start_with_gateway_args(&database, crate::options(), GATEWAY)
        .await
        .unwrap();
    let http = Client::new();
    let email = "taro@example.com";
    let registered = http
        .post(format!("{}/v1/users", d.gateway_url))
        .header("Client-Token", &d.tokens.mobile)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);

    // Normal traffic: members log in, one mistypes twice.
    for _ in 0..12 {
        assert_eq!(
            login(&d, &http, NORMAL, email, PASSWORD).await,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(
            login(&d, &http, NORMAL, email, "wrong password").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login(&d, &http, NORMAL, email, PASSWORD).await,
        StatusCode::OK
    );
    let alert = r#"idbase_login_anomaly_alert{scope="overall"}"#;
    assert_eq!(metric(&d, &http, alert).await, Some(0.0));
    assert_eq!(
        metric(&d, &http, "idbase_login_autoblocks_total").await,
        None
    );

    // Credential stuffing from one address: unknown accounts, wrong passwords.
    for i in 0..15 {
        let status = login(
            &d,
            &http,
            ATTACKER,
            &format!("victim{i}@example.com"),
            "guess",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let blocked = http
        .post(format!("{}/v1/sessions", d.gateway_url))
        .header("Client-Token", &d.tokens.mobile)
        .header("X-Forwarded-For", ATTACKER)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), StatusCode::FORBIDDEN);
    assert!(blocked.headers().contains_key("retry-after"));
    // Everyone else still logs in.
    assert_eq!(
        login(&d, &http, NORMAL, email, PASSWORD).await,
        StatusCode::OK
    );

    assert_eq!(metric(&d, &http, alert).await, Some(1.0));
    assert_eq!(
        metric(&d, &http, "idbase_login_autoblocks_total").await,
        Some(1.0)
    );
    let ratio = metric(&d, &http, "idbase_login_failure_ratio")
        .await
        .unwrap();
    assert!(ratio >= 0.5, "{ratio}");

    // The alerts reach idsvc's audit trail (sent in the background).
    use sqlx::{Connection, Row};
    let mut db = sqlx::AnyConnection::connect(&database).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kinds: Vec<String> = sqlx::query("SELECT kind FROM security_events")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
        let ip_alert = kinds.iter().filter(|k| *k == "login_anomaly").count();
        if ip_alert >= 2 && kinds.iter().any(|k| k == "login_autoblock") {
            break;
        }
        assert!(Instant::now() < deadline, "security events: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
