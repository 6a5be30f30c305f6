//! The way to the legacy member system during the cutover: a reverse proxy
//! for member requests the phase sends there, the redemption of legacy
//! refresh tokens, and legacy's health check.
//!
//! Every request carries the gateway's credential at legacy
//! (`Idbase-Gateway-Token`) and the client it is made for
//! (`X-Idbase-Client`, `X-Idbase-Client-Class`); the client's own
//! `Client-Token` stays at the edge.

use crate::clients::{Client, ClientClass};
use crate::problem::Problem;
use crate::telemetry::RequestId;
use crate::waf::source_ip::{SourceIp, TrustedProxies};
use anyhow::Context;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idbase_proto::ProblemType;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A healthy legacy answers in milliseconds; five seconds covers its slow
/// password hashing under load.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Idle keep-alive connections kept per host.
pub const DEFAULT_POOL_IDLE: usize = 64;

const GATEWAY_TOKEN: &str = "idbase-gateway-token";

/// `idbase gateway` flags for the legacy member system.
#[derive(Clone, Debug, clap::Args)]
pub struct LegacyArgs {
    /// Legacy's base URL; without it every request goes to idsvc.
    #[arg(long, env = "IDBASE_LEGACY_URL")]
    pub legacy_url: Option<Uri>,
    /// File holding the gateway's credential at legacy, sent as `Idbase-Gateway-Token`.
    #[arg(long, env = "IDBASE_LEGACY_TOKEN_FILE", requires = "legacy_url")]
    pub legacy_token_file: Option<PathBuf>,
    /// Longest one try of a legacy request may take.
    #[arg(long, env = "IDBASE_LEGACY_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    pub legacy_timeout_ms: u64,
    /// Idle keep-alive connections kept to legacy.
    #[arg(long, env = "IDBASE_LEGACY_POOL_IDLE", default_value_t = DEFAULT_POOL_IDLE)]
    pub legacy_pool_idle: usize,
}

impl LegacyArgs {
    /// The configuration, or `None` without `--legacy-url`.
    pub fn config(&self) -> anyhow::Result<Option<LegacyConfig>> {
        let Some(url) = self.legacy_url.clone() else {
            return Ok(None);
        };
        let token = match &self.legacy_token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
            None => String::new(),
        };
        let mut config = LegacyConfig::new(url, token);
        config.timeout = Duration::from_millis(self.legacy_timeout_ms);
        config.pool_idle = self.legacy_pool_idle;
        Ok(Some(config))
    }
}

/// How the gateway reaches legacy.
#[derive(Clone)]
pub struct LegacyConfig {
    pub url: Uri,
    /// The gateway's credential at legacy.
    pub gateway_token: String,
    pub timeout: Duration,
    pub pool_idle: usize,
    /// The gateway's own proxies, whose `X-Forwarded-For` is passed on.
    pub trusted_proxies: TrustedProxies,
    /// Largest request body passed on.
    pub max_body_bytes: usize,
}

impl LegacyConfig {
    /// The flags' defaults for everything but the URL and credential.
    pub fn new(url: Uri, gateway_token: impl Into<String>) -> Self {
        Self {
            url,
            gateway_token: gateway_token.into(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            pool_idle: DEFAULT_POOL_IDLE,
            trusted_proxies: TrustedProxies::default(),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl std::fmt::Debug for LegacyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct Legacy {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: HeaderValue,
    timeout: Duration,
    client: HttpClient<HttpConnector, Body>,
}

/// RFC 9110 §7.6.1: meaningful for one connection only.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

fn class_name(class: ClientClass) -> &'static str {
    match class {
        ClientClass::Internal => "internal",
        ClientClass::Web => "web",
        ClientClass::Mobile => "mobile",
    }
}

fn unavailable() -> Problem {
    Problem::new(
        ProblemType::Unavailable,
        "the legacy member system is unavailable".to_owned(),
    )
    .retry_after(1)
}

impl Legacy {
    pub fn new(config: LegacyConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.url.scheme_str() == Some("http"),
            "{}: the legacy URL must be http://",
            config.url
        );
        let token = HeaderValue::from_str(&config.gateway_token)
            .context("the legacy token is not a valid header value")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_idle)
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                base: config.url.to_string().trim_end_matches('/').to_owned(),
                token,
                timeout: config.timeout,
                client,
            }),
        })
    }

    /// Reverse-proxies one request (body already limited by the gateway's body limit layer or streamed).
    pub async fn forward(&self, req: Request, client: &Client, _phase: u32) -> Response {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let Ok(uri) = format!("{}{path}", self.inner.base).parse::<Uri>() else {
            return Problem::bad_request("unroutable path").into_response();
        };
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        headers.remove(crate::clients::CLIENT_TOKEN);
        headers.remove(header::HOST);
        self.identify(&mut headers, client);
        if let Some(RequestId(id)) = parts.extensions.get::<RequestId>()
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert(crate::telemetry::REQUEST_ID, value);
        }
        if let Some(SourceIp(ip)) = parts.extensions.get::<SourceIp>() {
            let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(before) => format!("{before}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded) {
                headers.insert("x-forwarded-for", value);
            }
        }
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.inner.timeout, self.inner.client.request(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(error)) => {
                tracing::warn!(cause = %error, "legacy request failed");
                unavailable().into_response()
            }
            Err(_elapsed) => {
                tracing::warn!("legacy request timed out");
                unavailable().into_response()
            }
        }
    }

    /// Redeems a legacy refresh token: Ok(Some(member_id)) | Ok(None) when legacy says invalid (401/404) | Err(problem) unreachable
    pub async fn redeem(
        &self,
        refresh_token: &str,
        client: &Client,
    ) -> Result<Option<i64>, Problem> {
        let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
        let mut request = http::Request::new(Body::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = format!("{}/legacy/v1/refresh-tokens/redeem", self.inner.base)
            .parse()
            .map_err(|_| unavailable())?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.identify(headers, client);
        let response = tokio::time::timeout(self.inner.timeout, self.inner.client.request(request))
            .await
            .map_err(|_| unavailable())?
            .map_err(|_| unavailable())?;
        match response.status().as_u16() {
            200 => {
                let bytes = axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024)
                    .await
                    .map_err(|_| unavailable())?;
                let answer: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|_| unavailable())?;
                let member_id = match &answer["member_id"] {
                    serde_json::Value::Number(n) => n.as_i64(),
                    serde_json::Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                member_id.map(Some).ok_or_else(unavailable)
            }
            401 | 404 => Ok(None),
            _ => Err(unavailable()),
        }
    }

    /// Health: GET {legacy}/legacy/v1/health → 200.
    pub async fn reachable(&self) -> bool {
        let mut request = http::Request::new(Body::empty());
        let Ok(uri) = format!("{}/legacy/v1/health", self.inner.base).parse() else {
            return false;
        };
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(GATEWAY_TOKEN, self.inner.token.clone());
        matches!(
            tokio::time::timeout(self.inner.timeout, self.inner.client.request(request)).await,
            Ok(Ok(response)) if response.status() == http::StatusCode::OK
        )
    }

    fn identify(&self, headers: &mut HeaderMap, client: &Client) {
        headers.insert(GATEWAY_TOKEN, self.inner.token.clone());
        if let Ok(id) = HeaderValue::from_str(&client.id) {
            headers.insert("x-idbase-client", id);
        }
        headers.insert(
            "x-idbase-client-class",
            HeaderValue::from_static(class_name(client.class)),
        );
    }
}
