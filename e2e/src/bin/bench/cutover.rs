//! `bench cutover`: what the phase cutover costs at the edge.
//!
//! (a) The legacy proxy against nginx. One static upstream (a fixed JSON
//! answer, served by this process) stands in for legacy; in front of it,
//! alternately, nginx (upstream keep-alive, an access log) and a gateway
//! process that runs only the proxy path: the gateway's own per-request
//! layers (request id and access log, source address, `Client-Token`
//! authentication) and `gateway::legacy::Legacy::forward` — the code
//! `idbase gateway` runs for a request routed to legacy. The same closed-loop
//! HTTP/1.1 keep-alive load drives both; besides rps and p99, each proxy's
//! CPU time per request (all its processes, from /proc), which the shared
//! machine's noise moves less.
//!
//! (b) How fast a phase change reaches the fleet: one idsvc, two gateways
//! following it, 100 `SetPhase` ramp steps and moves between phases 2 and 3;
//! after each, both gateways' `/readyz` is polled every millisecond until
//! both route by the new generation. The figure is the p99, over the moves,
//! of the slower gateway, timed from the moment `SetPhase` was sent. Then,
//! in phase 1, the cost of shadow reads: the same load of legacy-served
//! `me` reads (each with its own session) through the gateway without
//! shadows and through the one shadowing 10% of them, alternately; CPU per
//! request of that gateway and idsvc together, and the clients' p99.

use crate::load::{Stats, cpu_seconds};
use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of one nginx and one gateway phase; means are reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// `SetPhase` moves timed in the propagation half.
    #[arg(long, default_value_t = 100)]
    moves: usize,
    /// Skip the propagation half (it needs MariaDB and the built `idbase`).
    #[arg(long)]
    no_propagation: bool,
    /// An `idbase` binary for the propagation half, instead of building one.
    #[arg(long)]
    idbase: Option<PathBuf>,
}

/// The hidden `bench cutover-proxy`: the gateway's proxy path as its own
/// process, so its CPU time can be read apart from the load generator's.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    legacy_url: url::Url,
    #[arg(long)]
    legacy_token_file: PathBuf,
}

/// The member's `me` answer as legacy would give it.
const ANSWER: &str = r#"{"id":"4711","email":"ann@example.com","display_name":"Ann","phone":null,"email_verified":true,"version":7,"created_at":"2024-03-01T09:00:00Z"}"#;
const CLIENT_TOKEN: &str = "bench-cutover-web-client";
const GATEWAY_TOKEN: &str = "bench-cutover-gateway-credential";
/// Legacy-shaped access tokens: this and a request number.
const BEARER: &str = "Bearer la_bench0123456789abcdef";
const INTERNAL_TOKEN: &str = "bench-cutover-internal-client";
/// The half (b) figures.
const FLEET_FIGURES: [&str; 8] = [
    "phase_propagation_p99_ms",
    "shadow_cpu_cost_percent",
    "shadow_p99_delta_ms",
    "shadow_off_cpu_us_per_request",
    "shadow_on_cpu_us_per_request",
    "shadow_off_p99_ms",
    "shadow_on_p99_ms",
    "shadow_reads",
];
/// The share of reads shadowed in the cost figure.
const SHADOW_PERCENT: &str = "10";

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let upstream = static_upstream().await?;
    let mut figures = proxy_vs_nginx(&args, dir.path(), upstream).await?;
    let fleet = if args.no_propagation {
        None
    } else {
        match fleet(&args, dir.path(), upstream).await {
            Ok(fleet) => Some(fleet),
            Err(error) => {
                eprintln!("phase propagation and shadow reads not measured: {error:#}");
                None
            }
        }
    };
    for name in FLEET_FIGURES {
        figures[name] = fleet.as_ref().map_or(Value::Null, |f| f[name].clone());
    }
    Ok(figures)
}

/// Serves [`ANSWER`] to every request over HTTP/1.1 keep-alive.
async fn static_upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request: Request<_>| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    response.headers_mut().insert(
                        "legacy-served",
                        hyper::header::HeaderValue::from_static("true"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Measured {
    stats: Stats,
    cpu_us_per_request: f64,
}

async fn proxy_vs_nginx(args: &Args, dir: &Path, upstream: SocketAddr) -> anyhow::Result<Value> {
    let token_file = dir.join("legacy-token");
    std::fs::write(&token_file, GATEWAY_TOKEN)?;
    let proxy_addr = e2e::free_addr()?;
    let mut proxy = Command::new(std::env::current_exe()?)
        .args(["cutover-proxy", "--listen", &proxy_addr])
        .args(["--legacy-url", &format!("http://{upstream}")])
        .arg("--legacy-token-file")
        .arg(&token_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway-access.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the proxy process")?;
    let proxy_pid = proxy.id().context("proxy exited")?;
    let proxy_addr: SocketAddr = proxy_addr.parse()?;
    wait_listening(proxy_addr).await?;

    let mut nginx = match start_nginx(&args.nginx, dir, upstream).await {
        Ok(nginx) => Some(nginx),
        Err(error) => {
            eprintln!("{error:#}");
            None
        }
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        if let Some((pid, addr, _)) = &nginx {
            let measured = measure(args, *addr, &processes_of(*pid)).await?;
            eprintln!(
                "round {round}, nginx   {}  {:.0} µs CPU/request",
                measured.stats, measured.cpu_us_per_request
            );
            theirs.push(measured);
        }
        let measured = measure(args, proxy_addr, &[proxy_pid]).await?;
        eprintln!(
            "round {round}, gateway {}  {:.0} µs CPU/request",
            measured.stats, measured.cpu_us_per_request
        );
        ours.push(measured);
    }
    if let Some((pid, _, _)) = nginx.take() {
        stop_nginx(pid);
    }
    let _ = proxy.kill().await;
    if ours.iter().chain(&theirs).any(|m| m.stats.errors > 0) {
        eprintln!("warning: some requests failed; their figures are not clean");
    }
    let mean = |phases: &[Measured], figure: fn(&Measured) -> f64| -> Option<f64> {
        (!phases.is_empty()).then(|| phases.iter().map(figure).sum::<f64>() / phases.len() as f64)
    };
    Ok(json!({
        "legacy_proxy_rps": mean(&ours, |m| m.stats.rps),
        "nginx_proxy_rps": mean(&theirs, |m| m.stats.rps),
        "legacy_proxy_p99_ms": mean(&ours, |m| m.stats.p99_ms),
        "nginx_proxy_p99_ms": mean(&theirs, |m| m.stats.p99_ms),
        "gateway_cpu_us_per_request": mean(&ours, |m| m.cpu_us_per_request),
        "nginx_cpu_us_per_request": mean(&theirs, |m| m.cpu_us_per_request),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
    }))
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after 30 s")
}

/// nginx as a reverse proxy would be set up for legacy: upstream keep-alive,
/// the gateway's credential added, `Client-Token` removed, an access log.
/// Returns the master's pid, the listen address and the config path.
async fn start_nginx(
    nginx: &Path,
    dir: &Path,
    upstream: SocketAddr,
) -> anyhow::Result<(u32, SocketAddr, PathBuf)> {
    if !nginx.exists() {
        bail!(
            "nginx not installed ({} missing): apt-get install nginx-light; the nginx half is skipped",
            nginx.display()
        );
    }
    let listen: SocketAddr = e2e::free_addr()?.parse()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let root = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    let p = prefix.display();
    let config = format!(
        r#"{user}
worker_processes auto;
daemon off;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {p}/logs/access.log combined;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    upstream legacy {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {listen};
        # The load generator keeps its connections for the whole phase;
        # nginx's default closes one after 1,000 requests.
        keepalive_requests 100000000;
        location / {{
            proxy_pass http://legacy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Client-Token "";
            proxy_set_header Idbase-Gateway-Token "{GATEWAY_TOKEN}";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 5s;
            proxy_read_timeout 5s;
        }}
    }}
}}
"#,
        user = if root { "user root;" } else { "" },
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config)?;
    let child = std::process::Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_listening(listen).await?;
    Ok((child.id(), listen, path))
}

fn stop_nginx(pid: u32) {
    // SIGQUIT: nginx's graceful shutdown; the master reaps its workers.
    let _ = std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status();
}

/// A process and its children (nginx's master and workers).
fn processes_of(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

fn total_cpu(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// `connections` keep-alive HTTP/1.1 connections, each sending `GET
/// /v1/users/me` one after another for `seconds`.
async fn measure(args: &Args, target: SocketAddr, pids: &[u32]) -> anyhow::Result<Measured> {
    measure_for(args, Duration::from_secs(args.seconds), target, pids).await
}

async fn measure_for(
    args: &Args,
    duration: Duration,
    target: SocketAddr,
    pids: &[u32],
) -> anyhow::Result<Measured> {
    let cpu_before = total_cpu(pids)?;
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                if let Err(error) = keep_alive_loop(target, deadline, &mut histogram).await
                    && errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("first error: {error:#}");
                }
                histogram
            })
        })
        .collect();
    let mut histogram = new_histogram();
    for worker in workers {
        histogram.add(worker.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = total_cpu(pids)? - cpu_before;
    let requests = histogram.len();
    Ok(Measured {
        stats: Stats {
            requests,
            errors: errors.load(Ordering::Relaxed),
            rps: requests as f64 / elapsed,
            p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        },
        cpu_us_per_request: cpu * 1e6 / requests.max(1) as f64,
    })
}

async fn keep_alive_loop(
    target: SocketAddr,
    deadline: Instant,
    histogram: &mut Histogram<u64>,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let host = target.to_string();
    // Each request its own session, as a fleet of members' apps would be:
    // shadow reads of `me` are sampled per session.
    let connection: u64 = rand::random();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let request = Request::get("/v1/users/me")
            .header(hyper::header::HOST, &host)
            .header("client-token", CLIENT_TOKEN)
            .header(
                hyper::header::AUTHORIZATION,
                format!("{BEARER}{connection:016x}{n:012}"),
            )
            .header(
                hyper::header::USER_AGENT,
                "idbase-ios/5.2 (iPhone; iOS 18.1)",
            )
            .body(Empty::new())?;
        let sent = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        histogram.saturating_record(sent.elapsed().as_micros() as u64);
        if !status.is_success() || body.len() != ANSWER.len() {
            bail!("GET /v1/users/me through the proxy: {status}");
        }
    }
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `bench cutover-proxy`: serves the proxy path until killed.
pub async fn serve_proxy(args: ProxyArgs) -> anyhow::Result<Value> {
    use axum::Extension;
    use axum::extract::Request;
    use axum::middleware::{from_fn, from_fn_with_state};
    use gateway::clients::{Client, ClientClass, Clients, require_client};
    use gateway::legacy::{Legacy, LegacyArgs};

    let _log = gateway::telemetry::init_logging(true, tracing_subscriber::layer::Identity::new());
    let config = LegacyArgs {
        legacy_url: Some(args.legacy_url),
        legacy_token_file: Some(args.legacy_token_file),
        legacy_timeout_ms: gateway::legacy::DEFAULT_TIMEOUT_MS,
        legacy_pool_idle: gateway::legacy::DEFAULT_POOL_IDLE,
        legacy_ca: None,
    }
    .config()?
    .context("no legacy URL")?;
    let legacy = Legacy::new(config)?;
    let clients = Clients::from_tokens([("bench-web", ClientClass::Web, CLIENT_TOKEN)]);
    let app = axum::Router::new()
        .fallback(
            move |Extension(client): Extension<Client>, request: Request| async move {
                legacy.forward(request, &client, 0).await
            },
        )
        .layer(from_fn_with_state(clients, require_client))
        .layer(from_fn_with_state(
            gateway::edge::Edge::default(),
            gateway::edge::guard,
        ))
        .layer(from_fn(gateway::telemetry::observe));
    let listener = TcpListener::bind(args.listen).await?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(Value::Null)
}

/// Part (b), written against the cutover's design (idsvc's `--admin-credentials`,
/// the gateway's `--idsvc-admin` phase following and `/readyz` generation):
/// fails with the processes' complaint where those are not there yet.
async fn fleet(args: &Args, dir: &Path, legacy: SocketAddr) -> anyhow::Result<Value> {
    use idbase_proto::v1::phases_client::PhasesClient;
    use idbase_proto::v1::{GetPhaseRequest, SetPhaseRequest};
    use sha2::{Digest, Sha256};

    let binary = match &args.idbase {
        Some(path) => path.clone(),
        None => e2e::idbase_binary()?,
    };
    let keys = dir.join("keys");
    e2e::generate_keys(&binary, &keys)?;
    let database = e2e::fresh_mysql_database().await?;
    let sha = |token: &str| -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let (operator, gateway_token) = ("bench-operator-token", "bench-gateway-phase-token");
    let credentials = dir.join("admin-credentials.toml");
    std::fs::write(
        &credentials,
        format!(
            "[[admin]]\nname = \"bench\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\n\
             [[admin]]\nname = \"gateways\"\nrole = \"gateway\"\ntoken_sha256 = \"{}\"\n",
            sha(operator),
            sha(gateway_token)
        ),
    )?;
    let gateway_token_file = dir.join("gateway-admin-token");
    std::fs::write(&gateway_token_file, gateway_token)?;
    let legacy_token_file = dir.join("legacy-token");
    std::fs::write(&legacy_token_file, GATEWAY_TOKEN)?;
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        format!(
            "[[client]]\nid = \"bench-web\"\nclass = \"web\"\ntoken_sha256 = \"{}\"\n\n\
             [[client]]\nid = \"bench-internal\"\nclass = \"internal\"\ntoken_sha256 = \"{}\"\n",
            sha(CLIENT_TOKEN),
            sha(INTERNAL_TOKEN)
        ),
    )?;

    let (grpc, admin) = (e2e::free_addr()?, e2e::free_addr()?);
    let mut processes: Vec<Child> = Vec::new();
    processes.push(
        Command::new(&binary)
            .args(["idsvc", "--database-url", &database, "--grpc", &grpc])
            .args(["--admin-grpc", &admin, "--insecure-plaintext"])
            .arg("--keys-dir")
            .arg(&keys)
            .arg("--admin-credentials")
            .arg(&credentials)
            .args(e2e::CHEAP_ARGON2)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting idsvc")?,
    );
    let mut gateways = Vec::new();
    let mut listeners = Vec::new();
    // The first gateway runs no shadow reads, the second shadows
    // SHADOW_PERCENT of the reads it sends to legacy.
    for (n, shadows) in ["0", SHADOW_PERCENT].into_iter().enumerate() {
        let (http, metrics) = (e2e::free_addr()?, e2e::free_addr()?);
        processes.push(
            Command::new(&binary)
                .args([
                    "gateway",
                    "--idsvc",
                    &format!("http://{grpc}"),
                    "--http",
                    &http,
                    "--metrics",
                    &metrics,
                    "--shadow-percent",
                    shadows,
                ])
                .arg("--clients")
                .arg(&clients)
                .args(["--idsvc-admin", &format!("http://{admin}")])
                .arg("--idsvc-admin-token-file")
                .arg(&gateway_token_file)
                .args(["--gateway-id", &format!("bench-gateway-{n}")])
                .args(["--legacy-url", &format!("http://{legacy}")])
                .arg("--legacy-token-file")
                .arg(&legacy_token_file)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting a gateway")?,
        );
        gateways.push(format!("http://{http}/readyz"));
        listeners.push((
            http.parse::<SocketAddr>()?,
            format!("http://{metrics}/metrics"),
        ));
    }
    let http = reqwest::Client::new();
    // Learned once, the phase shows in /readyz (ready or not: phases 1–4 wait on legacy).
    for url in &gateways {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exited) = processes
                .iter_mut()
                .find_map(|p| p.try_wait().ok().flatten())
            {
                bail!("a process exited early ({exited}); see its stderr above");
            }
            if generation(&http, url).await.is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} did not learn the phase within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?
        .connect()
        .await?;
    let mut phases = PhasesClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {operator}").parse()?;
    fn authorised<T>(
        bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        message: T,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        request
    }
    let mut current = phases
        .get_phase(authorised(&bearer, GetPhaseRequest {}))
        .await?
        .into_inner()
        .generation;
    let mut set = async |target: u32, weight: u32| -> anyhow::Result<(u64, Instant)> {
        let sent = Instant::now();
        let answer = phases
            .set_phase(authorised(
                &bearer,
                SetPhaseRequest {
                    target,
                    weight,
                    expected_generation: current,
                    // No legacy behind the bench's stand-in, no traffic: the
                    // checks would refuse; the moves themselves are what is timed.
                    force: true,
                    reason: "bench cutover: phase propagation".to_owned(),
                },
            ))
            .await?
            .into_inner();
        current = answer
            .state
            .context("SetPhase answered no state")?
            .generation;
        Ok((current, sent))
    };
    // Up to phase 2, untimed.
    set(1, 100).await?;
    set(2, 100).await?;
    // A ramped move into 3, its ramp step, the way back, a ramp step in 2
    // and its end: every kind of change the read phases see.
    let cycle = [(3, 50), (3, 100), (2, 100), (2, 50), (2, 100)];
    let mut slowest = new_histogram();
    for (target, weight) in cycle.iter().cycle().take(args.moves) {
        let (wanted, sent) = set(*target, *weight).await?;
        let deadline = sent + Duration::from_secs(10);
        let mut pending: Vec<&String> = gateways.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for url in pending {
                if generation(&http, url)
                    .await
                    .is_none_or(|seen| seen < wanted)
                {
                    still.push(url);
                }
            }
            pending = still;
            if Instant::now() > deadline {
                bail!("generation {wanted} did not reach every gateway within 10 s");
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        slowest.saturating_record(sent.elapsed().as_micros() as u64);
    }
    eprintln!(
        "phase propagation over {} moves: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        slowest.len(),
        slowest.value_at_quantile(0.5) as f64 / 1000.0,
        slowest.value_at_quantile(0.99) as f64 / 1000.0,
        slowest.max() as f64 / 1000.0
    );
    let mut figures = json!({
        "phase_propagation_p99_ms": slowest.value_at_quantile(0.99) as f64 / 1000.0,
    });

    // Shadow reads' cost: phase 1, legacy (the static upstream) serves
    // `me`; idbase holds the member it answers with, so shadows agree.
    set(1, 100).await?;
    let (gateway_pids, idsvc_pid) = (
        [processes[1].id(), processes[2].id()],
        processes[0].id().context("idsvc exited")?,
    );
    let member = json!({
        "email": "ann@example.com",
        "phone": null,
        "password_hash": "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0$3Tf4m8cM5eV6cFfY1QSrmXL0yQkH3mvbM2QtYQbo0C0",
        "version": 1,
    });
    let stored = http
        .put(format!("http://{}/internal/v1/users/4711", listeners[0].0))
        .header("client-token", INTERNAL_TOKEN)
        .json(&member)
        .send()
        .await?;
    if !stored.status().is_success() {
        bail!("storing the bench member: {}", stored.status());
    }
    // A second of each first, unmeasured: the shadowing gateway's first
    // batches open its connections to idsvc, and idsvc's to the database.
    for (addr, _) in &listeners {
        measure_for(args, Duration::from_secs(1), *addr, &[idsvc_pid]).await?;
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // Alternately first: neither side gains from going first.
        let mut order = [
            (false, &listeners[0], gateway_pids[0]),
            (true, &listeners[1], gateway_pids[1]),
        ];
        if round % 2 == 0 {
            order.reverse();
        }
        for (shadowing, (addr, _), pid) in order {
            let pids = [pid.context("a gateway exited")?, idsvc_pid];
            let measured = measure(args, *addr, &pids).await?;
            eprintln!(
                "round {round}, shadows {:3} {}  {:.0} µs CPU/request (gateway + idsvc)",
                if shadowing { "on" } else { "off" },
                measured.stats,
                measured.cpu_us_per_request
            );
            if shadowing { &mut on } else { &mut off }.push(measured);
        }
    }
    let mean = |runs: &[Measured], figure: fn(&Measured) -> f64| {
        runs.iter().map(figure).sum::<f64>() / runs.len().max(1) as f64
    };
    let cpu = |m: &Measured| m.cpu_us_per_request;
    let p99 = |m: &Measured| m.stats.p99_ms;
    let outcomes = shadow_outcomes(&http, &listeners[1].1).await?;
    eprintln!("shadow reads by outcome: {outcomes}");
    figures["shadow_off_cpu_us_per_request"] = json!(mean(&off, cpu));
    figures["shadow_on_cpu_us_per_request"] = json!(mean(&on, cpu));
    figures["shadow_cpu_cost_percent"] = json!((mean(&on, cpu) / mean(&off, cpu) - 1.0) * 100.0);
    figures["shadow_off_p99_ms"] = json!(mean(&off, p99));
    figures["shadow_on_p99_ms"] = json!(mean(&on, p99));
    figures["shadow_p99_delta_ms"] = json!(mean(&on, p99) - mean(&off, p99));
    figures["shadow_reads"] = outcomes;
    Ok(figures)
}

/// `idbase_gateway_shadow_reads_total` by outcome, from a gateway's metrics.
async fn shadow_outcomes(http: &reqwest::Client, metrics_url: &str) -> anyhow::Result<Value> {
    let text = http.get(metrics_url).send().await?.text().await?;
    let mut outcomes = serde_json::Map::new();
    for line in text
        .lines()
        .filter(|line| line.starts_with("idbase_gateway_shadow_reads_total{"))
    {
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("unknown");
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = outcomes.get(outcome).and_then(Value::as_u64).unwrap_or(0) + count;
        outcomes.insert(outcome.to_owned(), json!(total));
    }
    Ok(Value::Object(outcomes))
}

/// The generation a gateway routes by, from its `/readyz` body.
async fn generation(http: &reqwest::Client, url: &str) -> Option<u64> {
    let answer = http.get(url).send().await.ok()?;
    let body: Value = answer.json().await.ok()?;
    body["generation"].as_u64()
}
