//! An emulator of the legacy member system, as docs/legacy-contract.yaml
//! states it: the member REST API under idbase's paths, opaque `la_…` /
//! `lr_…` tokens, the legacy `Member` table (soft deletes, `UpdateDate` as
//! the version), synchronous double writes to idbase, idbase access tokens
//! accepted through the gateway's JWKS, and the `/legacy/v1/…` endpoints
//! idbase calls (refresh-token redemption, health, highest member id).
//!
//! It stands in for the real legacy system in the e2e suite, the kind
//! cluster and local runs (`cargo run -p e2e --bin legacy`).

mod double_write;
mod jwks;
mod password;
mod problem;
mod routes;
mod store;

pub use password::Credential;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use double_write::DoubleWrite;
use idbase_proto::ProblemType;
use problem::Problem;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use subtle::ConstantTimeEq;

/// The header legacy requires on every request: the gateway's credential.
pub const GATEWAY_TOKEN_HEADER: &str = "Idbase-Gateway-Token";
/// On every legacy response, so that a client (and a test) can tell which
/// side answered.
pub const SERVED_HEADER: &str = "Legacy-Served";

/// The member's client as the gateway names it, and its class.
pub const CLIENT_HEADER: &str = "X-Idbase-Client";
pub const CLIENT_CLASS_HEADER: &str = "X-Idbase-Client-Class";
const MAX_CLIENT_ID: usize = 64;

/// Request bodies are a few hundred bytes; the gateway's limit is 16 KiB.
const BODY_LIMIT: usize = 64 * 1024;

/// `legacy` flags (`IDBASE_LEGACY_EMULATOR_*` in the environment).
#[derive(Debug, clap::Parser)]
#[command(name = "legacy", about = "The legacy member system's emulator")]
pub struct LegacyArgs {
    /// The emulator's own MariaDB database (`mysql://…`).
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_DATABASE_URL")]
    pub database_url: String,
    /// Address of the HTTP listener.
    #[arg(
        long,
        env = "IDBASE_LEGACY_EMULATOR_HTTP",
        default_value = "127.0.0.1:8090"
    )]
    pub http: SocketAddr,
    /// The idbase gateway to double-write to (phase ≥ 1); unset, no double writes.
    #[arg(
        long,
        env = "IDBASE_LEGACY_EMULATOR_DOUBLE_WRITE_TO",
        requires = "client_token_file"
    )]
    pub double_write_to: Option<String>,
    /// The internal client token for the double writes (`Client-Token`).
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_CLIENT_TOKEN_FILE")]
    pub client_token_file: Option<PathBuf>,
    /// The gateway's JWKS (`…/.well-known/jwks.json`): idbase access tokens
    /// are accepted when set (phase ≥ 2).
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Seeds members 1..=N (`member-<id>@legacy.example`, password
    /// `password-<id>`) into an empty table.
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_SEED_MEMBERS", default_value_t = 0)]
    pub seed_members: u32,
    /// The credential every caller (the gateway, idsvc) must send as
    /// `Idbase-Gateway-Token`.
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: PathBuf,
    /// PEM certificate chain; with `--tls-key` the listener serves HTTPS
    /// instead of plain HTTP.
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "IDBASE_LEGACY_EMULATOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The certificate and key the listener serves HTTPS with, read at start
/// (a renewed certificate takes a restart).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the emulator runs with, secrets read.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub gateway_token: String,
    /// Gateway URL and internal client token.
    pub double_write: Option<(String, String)>,
    pub jwks_url: Option<String>,
    pub seed_members: u32,
    /// HTTPS with these; plain HTTP without.
    pub tls: Option<TlsFiles>,
}

impl LegacyArgs {
    pub fn config(self) -> anyhow::Result<Config> {
        let read = |path: &PathBuf| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
            Ok(token)
        };
        let double_write = match (self.double_write_to, &self.client_token_file) {
            (Some(url), Some(file)) => Some((url, read(file)?)),
            _ => None,
        };
        Ok(Config {
            database_url: self.database_url,
            gateway_token: read(&self.gateway_token_file)?,
            double_write,
            jwks_url: self.jwks_url,
            seed_members: self.seed_members,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
        })
    }
}

#[derive(Clone)]
struct AppState {
    store: Store,
    double_write: Option<DoubleWrite>,
    idbase_tokens: Option<Arc<jwks::IdbaseTokens>>,
    gateway_token_sha256: [u8; 32],
}

/// Opens (and creates) the database, seeds it, and serves on `listener`
/// (HTTPS when `config.tls` is set) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = config.tls.clone();
    let app = app(config).await?;
    serve_router(listener, app, tls.as_ref(), shutdown).await
}

/// How long in-flight requests get to finish once `shutdown` completes
/// (HTTPS listener).
const TLS_DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes: HTTPS (rustls,
/// HTTP/1.1 and HTTP/2) with `tls`, plain HTTP without.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<&TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(tls) = tls else {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    };
    // One provider for the whole process; a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .with_context(|| {
            format!(
                "loading TLS certificate {} and key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.await;
            handle.graceful_shutdown(Some(TLS_DRAIN));
        }
    });
    axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
        .handle(handle)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

/// The emulator's router over a ready database.
pub async fn app(config: Config) -> anyhow::Result<Router> {
    let store = Store::connect(&config.database_url)
        .await
        .context("opening the legacy database")?;
    store.seed(i64::from(config.seed_members)).await?;
    let http = reqwest::Client::new();
    let state = AppState {
        store,
        double_write: config
            .double_write
            .map(|(url, token)| DoubleWrite::new(&url, token, http.clone())),
        idbase_tokens: config
            .jwks_url
            .map(|url| Arc::new(jwks::IdbaseTokens::new(url, http))),
        gateway_token_sha256: Sha256::digest(config.gateway_token.as_bytes()).into(),
    };
    Ok(routes::router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_gateway_token,
        ))
        .layer(middleware::from_fn(legacy_served))
        .with_state(state))
}

/// Only idbase (the gateway, idsvc's checks) may call legacy.
async fn require_gateway_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(GATEWAY_TOKEN_HEADER)
        .map(|v| Sha256::digest(v.as_bytes()));
    let valid = presented
        .is_some_and(|digest| bool::from(digest.as_slice().ct_eq(&state.gateway_token_sha256)));
    if !valid {
        return Problem::new(
            ProblemType::InvalidClient,
            format!("a valid {GATEWAY_TOKEN_HEADER} is required"),
        )
        .into_response();
    }
    if let Err(problem) = check_client_headers(request.headers()) {
        return problem.into_response();
    }
    next.run(request).await
}

/// The gateway names the member's client; a value it cannot have sent is
/// refused rather than trusted.
fn check_client_headers(headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    if let Some(class) = headers.get(CLIENT_CLASS_HEADER)
        && !matches!(class.as_bytes(), b"internal" | b"web" | b"mobile")
    {
        return Err(Problem::bad_request(format!(
            "{CLIENT_CLASS_HEADER} must be internal, web or mobile"
        )));
    }
    if let Some(client) = headers.get(CLIENT_HEADER)
        && client.len() > MAX_CLIENT_ID
    {
        return Err(Problem::bad_request(format!(
            "{CLIENT_HEADER} is longer than {MAX_CLIENT_ID} characters"
        )));
    }
    Ok(())
}

async fn legacy_served(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(SERVED_HEADER, HeaderValue::from_static("true"));
    response
}

async fn not_found() -> Problem {
    Problem::new(ProblemType::NotFound, "no such route".to_owned())
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Problem::new(ProblemType::MethodNotAllowed, None),
    )
}
