//! The reverse proxy to the legacy member service, which keeps answering
//! members until the cutover reaches it (see the phase router).
//!
//! Why in the gateway and not a separate proxy in front: the gateway must
//! decide per request which side answers, and it already knows the client,
//! its class and the request id. What crosses to legacy is what an HTTP
//! proxy would send (RFC 9110 §7.6): method, path, query, headers minus the
//! hop-by-hop ones and minus the client's `Client-Token`, plus who is asking
//! ([`headers`]); bodies stream both ways, never held whole in memory.
//!
//! Connections to legacy are pooled HTTP/1.1 keep-alive ([`connector`]).
//! Each try has `--legacy-timeout-ms` to get legacy's response head. A
//! failed try is sent again once, and only when replaying cannot act twice:
//! the request never left (connect error, its body still unread, see
//! [`body`]), or it is a GET/HEAD, which are safe to repeat (RFC 9110 §9.2.1).
//! The rules mirror [`crate::upstream::Retry`]. When legacy cannot be
//! reached the client gets 503 `unavailable` with Retry-After, like an idsvc
//! outage.

pub mod body;
pub mod connector;
pub mod headers;

use crate::clients::Client;
use crate::problem::Problem;
use crate::telemetry::RequestId;
use crate::waf::source_ip::{SourceIp, TrustedProxies};
use anyhow::Context;
use axum::body::Body;
use axum::extract::{ConnectInfo, OriginalUri, Request};
use axum::response::{IntoResponse, Response};
use body::Replay;
use connector::LegacyClient;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use idbase_proto::ProblemType;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};
use url::Url;

/// A slow legacy page load is seconds, not more; a try stuck longer is
/// answered 503 instead of holding the client and a pooled connection.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Idle keep-alive connections kept per gateway: enough for a burst of
/// concurrent requests without a new handshake each, bounded so a quiet
/// gateway does not hold legacy's sockets.
pub const DEFAULT_POOL_IDLE: usize = 64;
/// One try and at most one retry: a second retry rarely helps an outage and
/// doubles the load on a legacy that is already struggling.
pub const MAX_TRIES: u32 = 2;
/// `POST {legacy}` with `{refresh_token}` → `{member_id}`; single use.
pub const REDEEM_PATH: &str = "/legacy/v1/refresh-tokens/redeem";
pub const HEALTH_PATH: &str = "/legacy/v1/health";
/// `{"member_id": …}` is a few dozen bytes; anything much larger is not it.
const MAX_REDEEM_ANSWER_BYTES: usize = 4 * 1024;

/// `idbase gateway` flags for the legacy member service.
#[derive(Clone, Debug, clap::Args)]
pub struct LegacyArgs {
    /// Base URL of the legacy member service; unset, everything is served by
    /// idbase and the phases are ignored.
    #[arg(long, env = "IDBASE_LEGACY_URL", requires = "legacy_token_file")]
    pub legacy_url: Option<Url>,
    /// File holding the gateway's credential at legacy (sent as
    /// `Idbase-Gateway-Token`); read once at start.
    #[arg(long, env = "IDBASE_LEGACY_TOKEN_FILE")]
    pub legacy_token_file: Option<PathBuf>,
    /// Longest one try may wait for legacy's response head.
    #[arg(long, env = "IDBASE_LEGACY_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    pub legacy_timeout_ms: u64,
    /// Idle keep-alive connections to legacy kept open.
    #[arg(long, env = "IDBASE_LEGACY_POOL_IDLE", default_value_t = DEFAULT_POOL_IDLE)]
    pub legacy_pool_idle: usize,
    /// PEM CA bundle that signs legacy's certificate (private CA); without it
    /// `https://` legacy URLs are checked against the web PKI's roots.
    #[arg(long, env = "IDBASE_LEGACY_CA")]
    pub legacy_ca: Option<PathBuf>,
}

impl LegacyArgs {
    /// The proxy's configuration, or `None` without `--legacy-url`. Reads
    /// the credential file.
    pub fn config(&self) -> anyhow::Result<Option<LegacyConfig>> {
        let Some(url) = &self.legacy_url else {
            return Ok(None);
        };
        let path = self
            .legacy_token_file
            .as_ref()
            .context("--legacy-url needs --legacy-token-file")?;
        let token =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config = LegacyConfig::new(url.clone(), token.trim());
        config.timeout = Duration::from_millis(self.legacy_timeout_ms);
        config.pool_idle = self.legacy_pool_idle;
        config.ca = self.legacy_ca.clone();
        Ok(Some(config))
    }
}

/// How the gateway reaches legacy, however it was configured.
#[derive(Clone)]
pub struct LegacyConfig {
    pub url: Url,
    /// The gateway's credential at legacy. Never logged (see `Debug`).
    pub gateway_token: String,
    /// Per try, until legacy's response head.
    pub timeout: Duration,
    pub pool_idle: usize,
    pub ca: Option<PathBuf>,
    /// The gateway's own proxies (`--trusted-proxies`): their
    /// `X-Forwarded-For` is passed on with the peer appended.
    pub trusted_proxies: TrustedProxies,
    /// Largest request body passed on (the gateway's `--max-body-bytes`).
    pub max_body_bytes: usize,
}

impl LegacyConfig {
    /// The flags' defaults for everything but the URL and credential.
    pub fn new(url: Url, gateway_token: impl Into<String>) -> Self {
        Self {
            url,
            gateway_token: gateway_token.into(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            pool_idle: DEFAULT_POOL_IDLE,
            ca: None,
            trusted_proxies: TrustedProxies::default(),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl std::fmt::Debug for LegacyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyConfig")
            .field("url", &self.url.as_str())
            .field("gateway_token", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("pool_idle", &self.pool_idle)
            .field("ca", &self.ca)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What the proxy did for a response, for the access log: a response
/// extension on every answer of [`Legacy::forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// Tries made (1 or 2); 0 when the request was refused before any.
    pub tries: u32,
}

/// The legacy member service, as the router uses it.
#[derive(Clone)]
pub struct Legacy {
    inner: Arc<Inner>,
}

struct Inner {
    client: LegacyClient,
    /// The URL without a trailing `/`; request paths are appended.
    base: String,
    gateway_token: HeaderValue,
    timeout: Duration,
    trusted_proxies: TrustedProxies,
    max_body_bytes: usize,
}

/// Why a try brought no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// No connection: nothing was sent.
    NotSent,
    /// The connection broke after the request may have left.
    Broken,
    TimedOut,
    /// The client's streamed body went past the limit.
    TooLarge,
}

impl Failure {
    fn outcome(self) -> &'static str {
        match self {
            Self::NotSent | Self::Broken => "unreachable",
            Self::TimedOut => "timeout",
            Self::TooLarge => "too-large",
        }
    }
}

impl Legacy {
    pub fn new(config: LegacyConfig) -> anyhow::Result<Self> {
        // Half the try for the connection: a blackholed legacy then fails as
        // a connect error (nothing sent, so even a POST may retry) before
        // the try's own timeout would leave it unknown whether it was sent.
        let client = connector::client(
            &config.url,
            config.ca.as_deref(),
            config.timeout / 2,
            config.pool_idle,
        )?;
        anyhow::ensure!(
            !config.gateway_token.is_empty(),
            "the legacy credential is empty"
        );
        let mut gateway_token = HeaderValue::from_str(&config.gateway_token)
            .context("the legacy credential is not a valid header value")?;
        // Kept out of hyper's debug output and HPACK tables.
        gateway_token.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base: config.url.as_str().trim_end_matches('/').to_owned(),
                gateway_token,
                timeout: config.timeout,
                trusted_proxies: config.trusted_proxies,
                max_body_bytes: config.max_body_bytes,
            }),
        })
    }

    /// Reverse-proxies one request (body already limited by the gateway's
    /// body limit layer or streamed). `phase` is the phase the router
    /// decided by, for the log.
    pub async fn forward(&self, req: Request, client: &Client, phase: u32) -> Response {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let inner = &self.inner;
        // The path as the client sent it, even if a nested router stripped a prefix.
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |uri| uri.0.clone());
        let path = original
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let Ok(uri) = self.uri(path) else {
            return Problem::bad_request("the request path cannot be passed on").into_response();
        };
        if declared_length(&parts.headers).is_some_and(|len| len > inner.max_body_bytes as u64) {
            return finish(too_large(inner.max_body_bytes), started, "too-large", 0);
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .or_else(|| parts.extensions.get::<SourceIp>().map(|s| s.0));
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        headers::to_legacy(
            &mut parts.headers,
            &headers::Identity {
                gateway_token: &inner.gateway_token,
                client_id: &client.id,
                client_class: client.class,
                request_id: request_id.as_deref(),
                peer,
                peer_trusted: peer.is_some_and(|ip| inner.trusted_proxies.trusts(ip)),
            },
        );
        let body = Body::new(Limited::new(body, inner.max_body_bytes));
        let replayable = matches!(parts.method, Method::GET | Method::HEAD);
        let (answer, tries) = self
            .send(
                &parts.method,
                &uri,
                &parts.headers,
                Replay::new(body),
                replayable,
            )
            .await;
        debug!(phase, tries, method = %parts.method, "proxied to legacy");
        match answer {
            Ok(response) => {
                let outcome = status_outcome(response.status());
                let (mut head, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers);
                // hyper's connection details are not the client's business.
                head.extensions = http::Extensions::new();
                let response = Response::from_parts(head, Body::new(body));
                finish(response, started, outcome, tries)
            }
            Err(Failure::TooLarge) => {
                finish(too_large(inner.max_body_bytes), started, "too-large", tries)
            }
            Err(failure) => finish(unavailable(), started, failure.outcome(), tries),
        }
    }

    /// Redeems a legacy refresh token: Ok(Some(member_id)) | Ok(None) when
    /// legacy says invalid (401/404) | Err(problem) unreachable.
    pub async fn redeem(
        &self,
        refresh_token: &str,
        client: &Client,
    ) -> Result<Option<i64>, Problem> {
        let uri = self.uri(REDEEM_PATH).map_err(|_| Problem::internal())?;
        let json = serde_json::json!({ "refresh_token": refresh_token }).to_string();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
        headers::to_legacy(&mut headers, &self.identity(client));
        // Single use: once sent, a replay could find the token already spent.
        let (answer, _) = self
            .send(
                &Method::POST,
                &uri,
                &headers,
                Replay::new(Body::from(json)),
                false,
            )
            .await;
        let response = answer.map_err(|failure| {
            warn!(
                outcome = failure.outcome(),
                "legacy refresh-token redemption failed"
            );
            unavailable()
        })?;
        match response.status() {
            StatusCode::OK => {}
            // Legacy's 400 is a token it cannot parse: as invalid as an unknown one.
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => {
                return Ok(None);
            }
            status => {
                warn!(%status, "legacy refresh-token redemption answered unexpectedly");
                return Err(unavailable());
            }
        }
        #[derive(serde::Deserialize)]
        struct Redeemed {
            member_id: i64,
        }
        let bytes = self.read_small(response.into_body()).await?;
        let redeemed: Redeemed = serde_json::from_slice(&bytes).map_err(|e| {
            error!(error = %e, "legacy's redemption answer is not {{member_id}}");
            Problem::internal()
        })?;
        Ok(Some(redeemed.member_id))
    }

    /// Health: GET {legacy}/legacy/v1/health → 200.
    pub async fn reachable(&self) -> bool {
        let Ok(uri) = self.uri(HEALTH_PATH) else {
            return false;
        };
        let mut headers = HeaderMap::new();
        headers.insert(headers::GATEWAY_TOKEN, self.inner.gateway_token.clone());
        let (answer, _) = self
            .send(
                &Method::GET,
                &uri,
                &headers,
                Replay::new(Body::empty()),
                true,
            )
            .await;
        let Ok(response) = answer else {
            return false;
        };
        let ok = response.status() == StatusCode::OK;
        // Read to the end so the connection goes back to the pool.
        let _ = self.read_small(response.into_body()).await;
        ok
    }

    fn identity<'a>(&'a self, client: &'a Client) -> headers::Identity<'a> {
        headers::Identity {
            gateway_token: &self.inner.gateway_token,
            client_id: &client.id,
            client_class: client.class,
            request_id: None,
            peer: None,
            peer_trusted: false,
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, http::uri::InvalidUri> {
        format!("{}{}", self.inner.base, path_and_query).parse()
    }

    /// A small answer of legacy's, read whole within the per-try timeout.
    async fn read_small(&self, body: Incoming) -> Result<bytes::Bytes, Problem> {
        let read = Limited::new(body, MAX_REDEEM_ANSWER_BYTES).collect();
        match tokio::time::timeout(self.inner.timeout, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) => {
                warn!(error = %e, "reading legacy's answer failed");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }

    /// Up to [`MAX_TRIES`] tries; a failed one is repeated only when nothing
    /// was sent or `replayable` says repeating is harmless, and only while
    /// the body is still unread.
    async fn send(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Replay,
        replayable: bool,
    ) -> (Result<hyper::Response<Incoming>, Failure>, u32) {
        let inner = &self.inner;
        let mut tries = 0;
        let mut last = Failure::NotSent;
        while tries < MAX_TRIES {
            let Some(body) = body.next_try() else {
                break;
            };
            if tries > 0 {
                metrics::counter!("idbase_legacy_retries_total").increment(1);
            }
            tries += 1;
            let mut request = http::Request::new(body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.clone();
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = headers.clone();
            let failure =
                match tokio::time::timeout(inner.timeout, inner.client.request(request)).await {
                    Ok(Ok(response)) => return (Ok(response), tries),
                    Ok(Err(e)) if body_too_large(&e) => return (Err(Failure::TooLarge), tries),
                    Ok(Err(e)) => {
                        warn!(error = %error_chain(&e), "legacy try failed");
                        if e.is_connect() {
                            Failure::NotSent
                        } else {
                            Failure::Broken
                        }
                    }
                    Err(_elapsed) => {
                        warn!(
                            timeout_ms = inner.timeout.as_millis(),
                            "legacy try timed out"
                        );
                        Failure::TimedOut
                    }
                };
            last = failure;
            if failure != Failure::NotSent && !replayable {
                break;
            }
        }
        (Err(last), tries)
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a failed try failed on the client's body passing the limit.
fn body_too_large(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// hyper's errors say little at the top ("client error (Connect)"); the
/// cause is in the chain. Holds no header or body content.
fn error_chain(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn unavailable() -> Problem {
    Problem::new(
        ProblemType::Unavailable,
        "the legacy member service is unavailable".to_owned(),
    )
    .retry_after(1)
}

fn too_large(max: usize) -> Response {
    Problem::new(
        ProblemType::TooLarge,
        format!("the request body is larger than {max} bytes"),
    )
    .into_response()
}

fn status_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        500.. => "5xx",
        400.. => "4xx",
        _ => "ok",
    }
}

/// Counts and times an answer and tags it for the access log.
fn finish(
    response: impl IntoResponse,
    started: Instant,
    outcome: &'static str,
    tries: u32,
) -> Response {
    metrics::counter!("idbase_legacy_requests_total", "outcome" => outcome).increment(1);
    metrics::histogram!("idbase_legacy_request_duration_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    let mut response = response.into_response();
    response.extensions_mut().insert(Forwarded { tries });
    response
}
