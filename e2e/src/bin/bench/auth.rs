//! `bench auth`: what one machine's idsvc + gateway + MariaDB sustain for the
//! three calls members make most: login (argon2id-bound), refresh (database-
//! bound) and `GET /v1/users/me` (JWT verify + one read).

use crate::load::{CpuMeter, drive, rss_mib};
use anyhow::{Context, bail};
use e2e::{Deployment, Options, fresh_mysql_database};
use idsvc::crypto::PasswordParams;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent logins (keep at or under idsvc's argon2 queue, 64). Enough
    /// that the hashing pool never waits while logins sit in their database
    /// round trips and durable writes: at 8 it did, and logins reached only
    /// 76–84% of the raw rate on two cores.
    #[arg(long, default_value_t = 16)]
    login_concurrency: usize,
    /// Concurrent refreshes and `me` reads (one session per worker).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Members registered before the run; logins cycle through them.
    #[arg(long, default_value_t = 64)]
    members: usize,
    /// The same argon2id cost is given to idsvc and to the raw-rate probe.
    #[command(flatten)]
    argon2: PasswordParams,
}

use crate::PASSWORD;

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let cores = std::thread::available_parallelism()?.get();
    let phase = Duration::from_secs(args.seconds);
    eprintln!("raw argon2id on {cores} cores for {} s …", args.seconds);
    let argon2_before = raw_argon2_rate(args.argon2, cores, phase)?;
    eprintln!("argon2 limit  {argon2_before:>9.1}/s (before the logins)");

    let database = fresh_mysql_database().await?;
    let argon2_args = [
        "--argon2-memory-kib".to_owned(),
        args.argon2.memory_kib.to_string(),
        "--argon2-iterations".to_owned(),
        args.argon2.iterations.to_string(),
        "--argon2-parallelism".to_owned(),
        args.argon2.parallelism.to_string(),
    ];
    let argon2_args: Vec<&str> = argon2_args.iter().map(String::as_str).collect();
    let deployment = Deployment::start(
        &database,
        Options {
            binary: &e2e::idbase_binary()?,
            idsvc_args: &argon2_args,
        },
    )
    .await?;
    // Idle: started, migrated, ready, nothing served yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idsvc_rss_idle_mib = rss_mib(deployment.idsvc.0.id())?;
    let gateway_rss_idle_mib = rss_mib(deployment.gateway.0.id())?;
    eprintln!(
        "idle RSS      idsvc {idsvc_rss_idle_mib:.1} MiB, gateway {gateway_rss_idle_mib:.1} MiB"
    );

    let api = Arc::new(Api::new(&deployment));
    let emails: Arc<Vec<String>> = Arc::new(
        (0..args.members)
            .map(|n| format!("bench-{n}@example.com"))
            .collect(),
    );
    for email in emails.iter() {
        api.register(email).await?;
    }

    let cpu = CpuMeter::new(deployment.gateway.0.id(), deployment.idsvc.0.id());
    let before = cpu.read()?;
    let login = {
        let (api, emails) = (Arc::clone(&api), Arc::clone(&emails));
        drive(args.login_concurrency, phase, move |worker, n| {
            let (api, emails) = (Arc::clone(&api), Arc::clone(&emails));
            async move {
                let email = &emails[(worker + n as usize * 7) % emails.len()];
                api.login(email).await.map(drop)
            }
        })
        .await
    };
    // idsvc's share includes the argon2 work itself (what the raw rate measures).
    let login_cpu = cpu.per_request(&before, login.requests)?;
    eprintln!("login         {login}\n              {login_cpu}");
    // The raw rate again right after, the deployment idle: this machine's
    // speed drifts by a fifth within minutes, and the share compares logins
    // with the mean of the two probes that bracket them.
    let argon2_after = tokio::task::block_in_place(|| raw_argon2_rate(args.argon2, cores, phase))?;
    let argon2_limit_rps = (argon2_before + argon2_after) / 2.0;
    let argon2_drift_percent = 100.0 * (argon2_after - argon2_before).abs() / argon2_limit_rps;
    eprintln!(
        "argon2 limit  {argon2_after:>9.1}/s (after); logins at {:.1}% of the mean {argon2_limit_rps:.1}/s",
        100.0 * login.rps / argon2_limit_rps
    );
    if argon2_drift_percent > 5.0 {
        eprintln!(
            "warning: the machine's speed moved {argon2_drift_percent:.0}% during the logins; their share is not clean"
        );
    }
    let rss_after_login = Rss::of(&deployment)?;

    // One session per worker: refresh rotates it, so each worker keeps its own chain.
    let mut sessions = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        sessions.push(Mutex::new(api.login(&emails[worker % emails.len()]).await?));
    }
    let sessions = Arc::new(sessions);
    let before = cpu.read()?;
    let refresh = {
        let (api, sessions) = (Arc::clone(&api), Arc::clone(&sessions));
        drive(args.concurrency, phase, move |worker, _| {
            let (api, sessions) = (Arc::clone(&api), Arc::clone(&sessions));
            async move {
                let current = lock(&sessions[worker]).refresh_token.clone();
                let next = api.refresh(&current).await?;
                *lock(&sessions[worker]) = next;
                Ok(())
            }
        })
        .await
    };
    let refresh_cpu = cpu.per_request(&before, refresh.requests)?;
    eprintln!("refresh       {refresh}\n              {refresh_cpu}");
    let rss_after_refresh = Rss::of(&deployment)?;

    let before = cpu.read()?;
    let me = {
        let (api, sessions) = (Arc::clone(&api), Arc::clone(&sessions));
        drive(args.concurrency, phase, move |worker, _| {
            let (api, sessions) = (Arc::clone(&api), Arc::clone(&sessions));
            async move {
                let access = lock(&sessions[worker]).access_token.clone();
                api.me(&access).await
            }
        })
        .await
    };
    let me_cpu = cpu.per_request(&before, me.requests)?;
    eprintln!("me            {me}\n              {me_cpu}");

    let rss_after_me = Rss::of(&deployment)?;
    eprintln!(
        "RSS after     login {rss_after_login}; refresh {rss_after_refresh}; me {rss_after_me}"
    );
    let phases = [&login, &refresh, &me];
    if phases.iter().any(|stats| stats.errors > 0) {
        eprintln!("warning: some requests failed; their figures are not clean");
    }
    Ok(json!({
        "cores": cores,
        "seconds_per_phase": args.seconds,
        "argon2": {
            "memory_kib": args.argon2.memory_kib,
            "iterations": args.argon2.iterations,
            "parallelism": args.argon2.parallelism,
        },
        "argon2_limit_rps": argon2_limit_rps,
        "argon2_limit_rps_before": argon2_before,
        "argon2_limit_rps_after": argon2_after,
        "argon2_drift_percent": argon2_drift_percent,
        "login_rps": login.rps,
        "login_vs_argon2_limit": login.rps / argon2_limit_rps,
        "refresh_rps": refresh.rps,
        "me_rps": me.rps,
        "login": login,
        "refresh": refresh,
        "me": me,
        "login_cpu_us_per_request": login_cpu,
        "refresh_cpu_us_per_request": refresh_cpu,
        "me_cpu_us_per_request": me_cpu,
        "idsvc_rss_idle_mib": idsvc_rss_idle_mib,
        "gateway_rss_idle_mib": gateway_rss_idle_mib,
        "rss_after_login": rss_after_login,
        "rss_after_refresh": rss_after_refresh,
        "rss_after_me": rss_after_me,
    }))
}

/// Hashes per second with `params` on `cores` OS threads: the ceiling no
/// login path can beat on this machine.
fn raw_argon2_rate(params: PasswordParams, cores: usize, phase: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + phase;
    let counts = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(move || -> anyhow::Result<u64> {
                    // Like idsvc's hashing pool, so the limit is comparable.
                    idsvc::crypto::password::reuse_argon2_memory_on_this_thread();
                    let mut hashes = 0;
                    while Instant::now() < deadline {
                        params.hash(PASSWORD)?;
                        hashes += 1;
                    }
                    Ok(hashes)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("argon2 probe thread panicked"))
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

/// RSS of both processes after a phase, in MiB.
#[derive(Debug, serde::Serialize)]
struct Rss {
    idsvc_mib: f64,
    gateway_mib: f64,
}

impl Rss {
    fn of(deployment: &Deployment) -> anyhow::Result<Self> {
        Ok(Self {
            idsvc_mib: rss_mib(deployment.idsvc.0.id())?,
            gateway_mib: rss_mib(deployment.gateway.0.id())?,
        })
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idsvc {:.1} MiB, gateway {:.1} MiB",
            self.idsvc_mib, self.gateway_mib
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Session {
    access_token: String,
    refresh_token: String,
}

/// The gateway as a web client sees it.
struct Api {
    http: reqwest::Client,
    base: String,
    client_token: String,
}

impl Api {
    fn new(deployment: &Deployment) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("reqwest client"),
            base: deployment.gateway_url.clone(),
            client_token: deployment.tokens.web.clone(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Client-Token", &self.client_token)
            .json(&body)
            .send()
            .await?;
        let status = answer.status();
        let body: Value = answer.json().await.context("answer is not JSON")?;
        if !status.is_success() {
            bail!("POST {path}: {status} {body}");
        }
        Ok(body)
    }

    async fn register(&self, email: &str) -> anyhow::Result<()> {
        self.post("/v1/users", json!({"email": email, "password": PASSWORD}))
            .await
            .map(drop)
    }

    async fn login(&self, email: &str) -> anyhow::Result<Session> {
        let tokens = self
            .post(
                "/v1/sessions",
                json!({"email": email, "password": PASSWORD}),
            )
            .await?;
        session(&tokens)
    }

    async fn refresh(&self, refresh_token: &str) -> anyhow::Result<Session> {
        let tokens = self
            .post(
                "/v1/tokens/refresh",
                json!({"refresh_token": refresh_token}),
            )
            .await?;
        session(&tokens)
    }

    async fn me(&self, access_token: &str) -> anyhow::Result<()> {
        let answer = self
            .http
            .get(format!("{}/v1/users/me", self.base))
            .header("Client-Token", &self.client_token)
            .bearer_auth(access_token)
            .send()
            .await?;
        let status = answer.status();
        let body = answer.bytes().await?;
        if !status.is_success() {
            bail!(
                "GET /v1/users/me: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

fn session(tokens: &Value) -> anyhow::Result<Session> {
    let field = |name: &str| {
        tokens[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("token answer without {name}"))
    };
    Ok(Session {
        access_token: field("access_token")?,
        refresh_token: field("refresh_token")?,
    })
}
