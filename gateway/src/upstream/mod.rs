//! The gateway's one way to idsvc: gRPC calls that carry the request id and
//! fail over across idsvc endpoints (one per cluster) in preference order.
//!
//! Envoy's router and outlier detection are the model: each try has a
//! timeout and the request an overall deadline; a try that cannot connect,
//! gets UNAVAILABLE or times out moves to the next endpoint, but only calls
//! that are safe to replay move on once the request may have reached idsvc
//! ([`Retry`]); retries spend a [`budget::RetryBudget`]; endpoints that keep
//! failing are ejected ([`ejection`]) and health-checked back in ([`health`]).

pub mod budget;
pub mod ejection;
pub mod health;
pub mod pool;
pub mod tls;
pub mod trace;

use crate::problem::Problem;
use budget::RetryBudget;
use ejection::EjectionPolicy;
use idbase_proto::problem::{PROBLEM_METADATA_KEY, REQUEST_ID_METADATA_KEY};
use idbase_proto::v1::{self as pb, identity_client::IdentityClient};
use pool::{Endpoint, Pool};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

// Defaults: Envoy's where Envoy has one.
/// Far above a healthy read (milliseconds), so only a stuck try moves on.
pub const DEFAULT_PER_TRY_TIMEOUT_MS: u64 = 1_000;
/// Fits a queued argon2 hash and stays inside idsvc's 10 s refresh grace window.
pub const DEFAULT_DEADLINE_MS: u64 = 10_000;
/// Envoy's retry budget: retries add at most a fifth to the load in an outage.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Envoy's floor, so a quiet gateway can still retry.
pub const DEFAULT_MIN_RETRIES_PER_SEC: u32 = 10;
/// Envoy's `consecutive_5xx`: a few failures in a row, not one blip.
pub const DEFAULT_EJECT_AFTER: u32 = 5;
/// Envoy's `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
/// Envoy's `max_ejection_time`.
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
/// Often enough that a recovered cluster is back within a second.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1_000;
/// One small call a minute per gateway pod; a compromised key that idsvc
/// stops publishing is refused a minute later.
pub const DEFAULT_JWKS_REFRESH_MS: u64 = 60_000;

/// Flags for the way to idsvc (`idbase gateway`).
#[derive(Clone, Debug, clap::Args)]
pub struct UpstreamArgs {
    /// idsvc's gRPC URLs, comma-separated, in preference order (one per cluster).
    #[arg(long, env = "IDBASE_IDSVC", value_delimiter = ',', required = true)]
    pub idsvc: Vec<String>,
    /// Longest one try of a retriable call may take before it moves on.
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_PER_TRY_TIMEOUT_MS",
        default_value_t = DEFAULT_PER_TRY_TIMEOUT_MS
    )]
    pub upstream_per_try_timeout_ms: u64,
    /// Longest a whole call may take, retries included.
    #[arg(long, env = "IDBASE_UPSTREAM_DEADLINE_MS", default_value_t = DEFAULT_DEADLINE_MS)]
    pub upstream_deadline_ms: u64,
    /// Retries may add at most this percentage on top of the request rate.
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_RETRY_BUDGET_PERCENT",
        default_value_t = DEFAULT_RETRY_BUDGET_PERCENT
    )]
    pub upstream_retry_budget_percent: u32,
    /// Retries per second allowed regardless of the budget (low traffic).
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_MIN_RETRIES_PER_SEC",
        default_value_t = DEFAULT_MIN_RETRIES_PER_SEC
    )]
    pub upstream_min_retries_per_sec: u32,
    /// Consecutive failures that eject an endpoint.
    #[arg(long, env = "IDBASE_UPSTREAM_EJECT_AFTER", default_value_t = DEFAULT_EJECT_AFTER)]
    pub upstream_eject_after: u32,
    /// First ejection time; the k-th recent ejection lasts k times this.
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_BASE_EJECTION_MS",
        default_value_t = DEFAULT_BASE_EJECTION_MS
    )]
    pub upstream_base_ejection_ms: u64,
    /// Longest ejection.
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_MAX_EJECTION_MS",
        default_value_t = DEFAULT_MAX_EJECTION_MS
    )]
    pub upstream_max_ejection_ms: u64,
    /// How often ejected endpoints are health-checked once their time is up.
    #[arg(
        long,
        env = "IDBASE_UPSTREAM_HEALTH_INTERVAL_MS",
        default_value_t = DEFAULT_HEALTH_INTERVAL_MS
    )]
    pub upstream_health_interval_ms: u64,
    /// How long the gateway trusts its copy of idsvc's published signing
    /// keys: a key dropped from the JWKS stops verifying access tokens
    /// within this time.
    #[arg(long, env = "IDBASE_JWKS_REFRESH_MS", default_value_t = DEFAULT_JWKS_REFRESH_MS)]
    pub jwks_refresh_ms: u64,
    #[command(flatten)]
    pub tls: tls::UpstreamTlsArgs,
}

/// How the gateway reaches idsvc, however it was configured.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub endpoints: Vec<String>,
    pub per_try_timeout: Duration,
    pub deadline: Duration,
    pub retry_budget_percent: u32,
    pub min_retries_per_sec: u32,
    pub ejection: EjectionPolicy,
    pub health_interval: Duration,
    /// Re-read idsvc's JWKS at least this often (see [`UpstreamArgs`]).
    pub jwks_refresh: Duration,
    /// Client certificate and idsvc's CA, for `https://` endpoints.
    pub tls: Option<tls::UpstreamTlsFiles>,
}

impl UpstreamConfig {
    /// One endpoint with the default policy (`idbase dev`, tests).
    pub fn single(url: String) -> Self {
        Self {
            endpoints: vec![url],
            ..Self::default()
        }
    }
}

impl Default for UpstreamConfig {
    /// The flags' defaults (`DEFAULT_*`).
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            endpoints: Vec::new(),
            per_try_timeout: ms(DEFAULT_PER_TRY_TIMEOUT_MS),
            deadline: ms(DEFAULT_DEADLINE_MS),
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_retries_per_sec: DEFAULT_MIN_RETRIES_PER_SEC,
            ejection: EjectionPolicy {
                consecutive_failures: DEFAULT_EJECT_AFTER,
                base: ms(DEFAULT_BASE_EJECTION_MS),
                max: ms(DEFAULT_MAX_EJECTION_MS),
            },
            health_interval: ms(DEFAULT_HEALTH_INTERVAL_MS),
            jwks_refresh: ms(DEFAULT_JWKS_REFRESH_MS),
            tls: None,
        }
    }
}

impl From<UpstreamArgs> for UpstreamConfig {
    fn from(args: UpstreamArgs) -> Self {
        let ms = Duration::from_millis;
        Self {
            endpoints: args
                .idsvc
                .into_iter()
                .map(|url| url.trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            per_try_timeout: ms(args.upstream_per_try_timeout_ms),
            deadline: ms(args.upstream_deadline_ms),
            retry_budget_percent: args.upstream_retry_budget_percent,
            min_retries_per_sec: args.upstream_min_retries_per_sec,
            ejection: EjectionPolicy {
                consecutive_failures: args.upstream_eject_after,
                base: ms(args.upstream_base_ejection_ms),
                max: ms(args.upstream_max_ejection_ms),
            },
            health_interval: ms(args.upstream_health_interval_ms),
            jwks_refresh: ms(args.jwks_refresh_ms),
            tls: args.tls.files(),
        }
    }
}

/// Whether a call may be sent again after it may have reached idsvc. The
/// table per RPC is in README ("Upstreams").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Replaying it changes nothing (reads, versioned writes, revoke, a
    /// refresh inside idsvc's grace window, a registration with an
    /// Idempotency-Key): moves on after UNAVAILABLE or a per-try timeout.
    Idempotent,
    /// Replaying it could act twice: moves on only when the try surely never
    /// left (no connection), and its one try has the whole deadline.
    Unsafe,
}

/// What a failed try tells us.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// No connection was made: nothing was sent.
    NotSent,
    /// The connection broke or the try timed out: idsvc may have acted.
    MaybeSent,
}

/// idsvc answers every outcome, its own internal errors included, with
/// `idbase-problem`; UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, and the
/// UNKNOWN / INTERNAL that tonic gives a connection reset mid-call (an idsvc
/// killed while answering) are transport when it is missing.
fn failure_of(status: &Status) -> Option<Failure> {
    if status.metadata().get(PROBLEM_METADATA_KEY).is_some() {
        return None;
    }
    match status.code() {
        // hyper-util names every failure before a connection exists
        // "tcp … error" or "dns error" (checked by a test against a closed
        // port), and a refused TLS handshake is `tls::HandshakeError`.
        Code::Unavailable
            if ["tcp ", "dns ", "tls "]
                .iter()
                .any(|prefix| status.message().starts_with(prefix)) =>
        {
            Some(Failure::NotSent)
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => Some(Failure::MaybeSent),
        _ => None,
    }
}

#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(!config.endpoints.is_empty(), "no idsvc endpoint given");
        let budget = RetryBudget::new(config.retry_budget_percent, config.min_retries_per_sec);
        let client_tls = config.tls.clone().map(tls::ClientTls::load).transpose()?;
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint::new(url, config.per_try_timeout, client_tls.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pool = Arc::new(Pool {
            endpoints,
            budget,
            config,
        });
        // Outside a runtime (a router built in a sync test) nothing is ejected
        // for long enough to need the checker.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(health::check_ejected(Arc::downgrade(&pool)));
            if let Some(client_tls) = &client_tls {
                // Stops when the endpoints (which hold the config) are gone.
                tokio::spawn(tls::ClientTls::watch(
                    Arc::downgrade(client_tls),
                    tls::RELOAD_INTERVAL,
                ));
            }
        }
        Ok(Self { pool })
    }

    /// One idsvc call with failover. `rpc` sends the request on a client.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        request_id: &str,
        message: Req,
        mut rpc: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        F: FnMut(IdentityClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let pool = &self.pool;
        let deadline = Instant::now() + pool.config.deadline;
        pool.budget.deposit();
        let mut retries = 0;
        let mut tried = None;
        let mut last = Status::unavailable("no idsvc endpoint answered");
        for (n, endpoint) in pool.in_order().into_iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            if n > 0 {
                if !pool.budget.withdraw() {
                    metrics::counter!("idbase_upstream_retry_budget_exhausted_total").increment(1);
                    break;
                }
                retries += 1;
                endpoint.count_retry();
            }
            let limit = match retry {
                Retry::Idempotent => pool.config.per_try_timeout.min(remaining),
                Retry::Unsafe => remaining,
            };
            let mut request = call(message.clone(), request_id);
            request.set_timeout(limit);
            endpoint.count_request();
            let answer = tokio::time::timeout(limit, rpc(endpoint.client(), request)).await;
            let failure = match answer {
                Ok(Ok(response)) => {
                    endpoint.on_success();
                    trace::record(&endpoint.url, retries);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => match failure_of(&status) {
                    None => {
                        endpoint.on_success();
                        trace::record(&endpoint.url, retries);
                        return Err(status);
                    }
                    Some(failure) => {
                        last = status;
                        failure
                    }
                },
                Err(_elapsed) => {
                    last = Status::deadline_exceeded("idsvc try timed out");
                    Failure::MaybeSent
                }
            };
            endpoint.on_failure(&pool.config.ejection);
            tried = Some(endpoint.url.clone());
            if failure == Failure::MaybeSent && retry == Retry::Unsafe {
                break;
            }
        }
        if let Some(url) = tried {
            trace::record(&url, retries);
        }
        Err(last)
    }

    /// A client on the preferred endpoint, without failover, for callers
    /// that handle errors themselves. Prefer [`Upstream::call`].
    pub fn identity(&self) -> IdentityClient<Channel> {
        self.pool.in_order()[0].client()
    }

    /// How often the access-token verifier re-reads the JWKS.
    pub fn jwks_refresh(&self) -> Duration {
        self.pool.config.jwks_refresh
    }

    pub async fn jwks(&self) -> Result<pb::Jwks, Problem> {
        let jwks = self
            .call(Retry::Idempotent, "", pb::Empty {}, |mut c, r| async move {
                c.get_jwks(r).await
            })
            .await?;
        Ok(jwks)
    }

    /// Each endpoint's URL and whether it is in rotation (not ejected), for
    /// the phase report.
    pub fn endpoint_health(&self) -> Vec<(Arc<str>, bool)> {
        self.pool
            .endpoints
            .iter()
            .map(|e| (Arc::clone(&e.url), !e.is_ejected()))
            .collect()
    }

    /// True when some endpoint that is not ejected answers its health check
    /// as serving.
    pub async fn ready(&self) -> bool {
        for endpoint in self.pool.in_order() {
            if !endpoint.is_ejected() && endpoint.serving(Duration::from_secs(2)).await {
                return true;
            }
        }
        false
    }
}

/// A gRPC request carrying the HTTP request's id.
pub fn call<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = request_id.parse() {
        request
            .metadata_mut()
            .insert(REQUEST_ID_METADATA_KEY, value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let endpoint =
            Endpoint::new(&format!("http://{addr}"), Duration::from_secs(1), None).unwrap();
        let status = endpoint.client().get_jwks(pb::Empty {}).await.unwrap_err();
        assert_eq!(failure_of(&status), Some(Failure::NotSent), "{status:?}");
    }

    #[tokio::test]
    async fn plain_text_goes_only_to_loopback_and_https_needs_certificates() {
        assert!(Upstream::new(UpstreamConfig::single("http://127.0.0.1:50051".into())).is_ok());
        let refused = Upstream::new(UpstreamConfig::single("http://idsvc:50051".into()))
            .err()
            .unwrap();
        assert!(refused.to_string().contains("loopback"), "{refused:#}");
        let refused = Upstream::new(UpstreamConfig::single("https://idsvc:50051".into()))
            .err()
            .unwrap();
        assert!(refused.to_string().contains("--idsvc-ca"), "{refused:#}");
    }

    #[tokio::test]
    async fn a_refused_tls_handshake_is_not_sent() {
        // idsvc's side: a certificate the gateway's CA did not sign.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server.signing_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        // The gateway's side: its own CA and client certificate.
        let dir = tempfile::tempdir().unwrap();
        let own = rcgen::generate_simple_self_signed(vec!["gateway".to_owned()]).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let files = tls::UpstreamTlsFiles {
            ca: write("ca.crt", own.cert.pem()),
            cert: write("tls.crt", own.cert.pem()),
            key: write("tls.key", own.signing_key.serialize_pem()),
        };
        let client_tls = tls::ClientTls::load(files).unwrap();
        let url = format!("https://localhost:{}", addr.port());
        let endpoint = Endpoint::new(&url, Duration::from_secs(1), Some(&client_tls)).unwrap();
        let status = endpoint.client().get_jwks(pb::Empty {}).await.unwrap_err();
        assert_eq!(failure_of(&status), Some(Failure::NotSent), "{status:?}");
    }

    #[test]
    fn idsvc_answers_are_not_failures() {
        let mut status = Status::unavailable("draining");
        assert_eq!(failure_of(&status), Some(Failure::MaybeSent));
        status
            .metadata_mut()
            .insert(PROBLEM_METADATA_KEY, "overloaded".parse().unwrap());
        assert_eq!(failure_of(&status), None);
        assert_eq!(failure_of(&Status::not_found("x")), None);
    }
}
