//! `bench gateway-failover`: what losing the preferred idsvc costs a member's
//! `GET /v1/users/me`. Three deployments on loopback and MariaDB, each with
//! the same gateway settings: both endpoints up; the first endpoint refusing
//! connections (a dead host); the first endpoint blackholed (accepts TCP,
//! never answers, so each try waits for its timeout until the endpoint is
//! ejected).

use crate::load::{Stats, drive};
use anyhow::Context;
use e2e::{Cluster, Deployment, Options, free_addr, fresh_mysql_database};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent `me` readers.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// The gateway's per-try timeout.
    #[arg(long, default_value_t = 250)]
    pub per_try_timeout_ms: u64,
}

use crate::PASSWORD;

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let per_try = args.per_try_timeout_ms.to_string();
    let gateway_args = ["--upstream-per-try-timeout-ms", per_try.as_str()];
    // Refused: a port nobody listens on. Blackholed: a listener that is never
    // accepted from (the kernel completes the handshake, nothing answers).
    let refused = format!("http://{}", free_addr()?);
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let blackholed = format!("http://{}", blackhole.local_addr()?);

    let phase = Duration::from_secs(args.seconds);
    let mut results = Vec::new();
    for (name, leading, idsvcs) in [
        ("both_up", None, 2),
        ("first_refused", Some(refused), 1),
        ("first_blackholed", Some(blackholed), 1),
    ] {
        let leading: Vec<String> = leading.into_iter().collect();
        let cluster = Cluster {
            idsvcs,
            gateway_args: &gateway_args,
            leading_endpoints: &leading,
        };
        let database = fresh_mysql_database().await?;
        let deployment = Deployment::start_cluster(
            &database,
            Options {
                binary: &e2e::idbase_binary()?,
                idsvc_args: e2e::CHEAP_ARGON2,
            },
            cluster,
        )
        .await?;
        let stats = measure_me(&deployment, args.concurrency, phase).await?;
        eprintln!("{name:<17} {stats}");
        results.push((name, stats));
    }
    drop(blackhole);
    let of = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .context("missing phase")
    };
    let (up, refused, blackholed) = (
        of("both_up")?,
        of("first_refused")?,
        of("first_blackholed")?,
    );
    // The cost of a failover: the worse extra p99 of the two ways to be down.
    let extra = |down: &Stats| (down.p99_ms - up.p99_ms).max(0.0);
    let failover_extra_ms = extra(&refused).max(extra(&blackholed));
    Ok(json!({
        "per_try_timeout_ms": args.per_try_timeout_ms,
        "failover_extra_ms": failover_extra_ms,
        "me_both_up": up,
        "me_first_refused": refused,
        "me_first_blackholed": blackholed,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
    }))
}

/// Registers and logs in one member, then reads `me` under load.
async fn measure_me(
    deployment: &Deployment,
    concurrency: usize,
    phase: Duration,
) -> anyhow::Result<Stats> {
    let http = reqwest::Client::new();
    let base = deployment.gateway_url.clone();
    let token = deployment.tokens.mobile.clone();
    let body = json!({"email": "failover-bench@example.com", "password": PASSWORD});
    // With the first endpoint blackholed, login (never replayed once it may
    // have reached idsvc) answers 503 until the endpoint is ejected; a client
    // retries a 503, and so do we. Registration carries an Idempotency-Key,
    // so the gateway fails it over like a read.
    let post = |path: &'static str| {
        let (http, base, token, body) = (&http, &base, &token, &body);
        async move {
            for _ in 0..50 {
                let mut request = http
                    .post(format!("{base}{path}"))
                    .header("Client-Token", token)
                    .json(body);
                if path == "/v1/users" {
                    request = request.header("Idempotency-Key", "failover-bench-signup");
                }
                let answer = request.send().await?;
                match answer.status() {
                    reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => {
                        return Ok::<Value, anyhow::Error>(
                            answer.error_for_status()?.json().await?,
                        );
                    }
                }
            }
            anyhow::bail!("POST {path}: still 503 after 50 tries")
        }
    };
    post("/v1/users").await?;
    let tokens = post("/v1/sessions").await?;
    let access = tokens["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let request = Arc::new(
        http.get(format!("{base}/v1/users/me"))
            .header("Client-Token", token)
            .bearer_auth(access),
    );
    Ok(drive(concurrency, phase, move |_, _| {
        let request = request.try_clone();
        async move {
            let answer = request.context("cloning request")?.send().await?;
            answer.error_for_status()?;
            Ok(())
        }
    })
    .await)
}
