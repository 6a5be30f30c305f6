//! Fault injection on loopback: two idsvc processes on one MariaDB database
//! behind one gateway; the preferred one is SIGKILLed under load and later
//! restarted.

use crate::api::{Api, PASSWORD};
use e2e::{Cluster, Deployment, fresh_mysql_database, upstream_metric};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Short ejection and frequent checks so the test sees a return quickly.
const GATEWAY: &[&str] = &[
    "--upstream-base-ejection-ms",
    "500",
    "--upstream-health-interval-ms",
    "100",
    "--upstream-per-try-timeout-ms",
    "2000",
];

const WORKERS: usize = 8;

async fn metrics(d: &Deployment) -> String {
    reqwest::get(format!("{}/metrics", d.gateway_metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls the gateway's metrics until `done` holds (bounded, so a regression
/// fails instead of hanging).
async fn until(d: &Deployment, what: &str, done: impl Fn(&str) -> bool) {
    for _ in 0..600 {
        if done(&metrics(d).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 60 s\n{}", metrics(d).await);
}

#[tokio::test]
async fn killed_idsvc_is_failed_over_ejected_and_brought_back() {
    let url = fresh_mysql_database().await.unwrap();
    let cluster = Cluster {
        idsvcs: 2,
        gateway_args: GATEWAY,
        leading_endpoints: &[],
    };
    let mut d = Deployment::start_cluster(&url, crate::options(), cluster)
        .await
        .unwrap();
    let first = format!("http://{}", d.idsvc_grpc[0]);
    let api = Api::new(&d.gateway_url);
    let web = d.tokens.web.clone();
    let body = json!({"email": "failover@example.com", "password": PASSWORD});
    let (status, _) = api
        .send(api.req(Method::POST, "/v1/users", &web).json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, tokens) = api
        .send(api.req(Method::POST, "/v1/sessions", &web).json(&body))
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // Load: every worker reads `me` in a loop and counts what is not 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            let request = reqwest::Client::new()
                .get(format!("{}/v1/users/me", d.gateway_url))
                .header("Client-Token", web.clone())
                .bearer_auth(access.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = request.try_clone().unwrap().send().await;
                    match answer.map(|a| a.status()) {
                        Ok(StatusCode::OK) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("me failed: {other:?}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // And one worker registers members, each with its own Idempotency-Key:
    // a registration cut off by the kill is retried on the other endpoint,
    // which answers with the member if the first attempt got to create it.
    let registrar = {
        let (stop, url, web) = (stop.clone(), d.gateway_url.clone(), web.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut registered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let answer = http
                    .post(format!("{url}/v1/users"))
                    .header("Client-Token", &web)
                    .header("Idempotency-Key", format!("signup-{registered}"))
                    .json(&json!({"email": format!("m{registered}@example.com"), "password": PASSWORD}))
                    .send()
                    .await;
                match answer.map(|a| a.status()) {
                    Ok(StatusCode::CREATED) => registered += 1,
                    other => panic!("keyed registration {registered} failed: {other:?}"),
                }
            }
            registered
        })
    };

    until(&d, "the first endpoint serves", |m| {
        upstream_metric(m, "idbase_upstream_requests_total", &first) >= 50.0
    })
    .await;
    d.kill_idsvc(0).unwrap();
    until(&d, "the killed endpoint is ejected", |m| {
        upstream_metric(m, "idbase_upstream_ejections_total", &first) >= 1.0
            && upstream_metric(m, "idbase_upstream_state", &first) == 0.0
    })
    .await;
    let served_while_down = ok.load(Ordering::Relaxed);
    until(&d, "load continues on the second endpoint", |_| {
        ok.load(Ordering::Relaxed) >= served_while_down + 200
    })
    .await;

    d.restart_idsvc(0).await.unwrap();
    until(&d, "the restarted endpoint is back in rotation", |m| {
        upstream_metric(m, "idbase_upstream_state", &first) == 1.0
    })
    .await;
    let before = upstream_metric(&metrics(&d).await, "idbase_upstream_requests_total", &first);
    until(&d, "the preferred endpoint takes traffic again", |m| {
        upstream_metric(m, "idbase_upstream_requests_total", &first) >= before + 50.0
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let registered = registrar.await.unwrap();
    assert!(registered > 0);
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let members: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        members,
        registered as i64 + 1,
        "every keyed registration made exactly one member"
    );
    let m = metrics(&d).await;
    assert!(upstream_metric(&m, "idbase_upstream_failures_total", &first) >= 1.0);
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "idempotent reads must not fail across a lost idsvc ({} ok)",
        ok.load(Ordering::Relaxed)
    );
}
