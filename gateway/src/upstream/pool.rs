//! The idsvc endpoints, their outlier state and their metrics.
//!
//! Per endpoint (label `endpoint`, the URL): `idbase_upstream_requests_total`
//! (tries sent), `idbase_upstream_failures_total`, `idbase_upstream_retries_total`
//! (tries that were retries), `idbase_upstream_ejections_total`, and the gauge
//! `idbase_upstream_state` (1 in rotation, 0 ejected).

use super::UpstreamConfig;
use super::budget::RetryBudget;
use super::ejection::{EjectionPolicy, Outlier};
use super::tls::{ClientTls, TlsConnector, is_loopback};
use anyhow::Context;
use idbase_proto::v1::identity_client::IdentityClient;
use metrics::{Counter, Gauge};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tracing::{info, warn};

pub struct Pool {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub budget: RetryBudget,
    pub config: UpstreamConfig,
}

impl Pool {
    /// Endpoints in rotation in preference order, then ejected ones: when
    /// every endpoint is ejected, trying them beats failing outright
    /// (Envoy's panic mode).
    pub fn in_order(&self) -> Vec<Arc<Endpoint>> {
        let (mut order, ejected): (Vec<_>, Vec<_>) = self
            .endpoints
            .iter()
            .cloned()
            .partition(|e| !e.is_ejected());
        order.extend(ejected);
        order
    }
}

pub struct Endpoint {
    pub url: Arc<str>,
    channel: Channel,
    outlier: Mutex<Outlier>,
    metrics: EndpointMetrics,
}

/// The endpoint's series, registered once: counting a try allocates nothing.
struct EndpointMetrics {
    requests: Counter,
    retries: Counter,
    failures: Counter,
    ejections: Counter,
    state: Gauge,
}

impl EndpointMetrics {
    fn register(url: &str) -> Self {
        let label = || [("endpoint", url.to_owned())];
        Self {
            requests: metrics::counter!("idbase_upstream_requests_total", &label()),
            retries: metrics::counter!("idbase_upstream_retries_total", &label()),
            failures: metrics::counter!("idbase_upstream_failures_total", &label()),
            ejections: metrics::counter!("idbase_upstream_ejections_total", &label()),
            state: metrics::gauge!("idbase_upstream_state", &label()),
        }
    }
}

impl Endpoint {
    /// `https://` URLs are reached over mTLS with `tls`; `http://` only on loopback.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        tls: Option<&Arc<ClientTls>>,
    ) -> anyhow::Result<Arc<Self>> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30));
        let channel = match endpoint.uri().scheme_str() {
            Some("https") => {
                let tls = tls.with_context(|| {
                    format!(
                        "{url}: https needs --idsvc-ca, --idsvc-client-cert and --idsvc-client-key"
                    )
                })?;
                endpoint.connect_with_connector_lazy(TlsConnector::new(Arc::clone(tls)))
            }
            Some("http") => {
                anyhow::ensure!(
                    is_loopback(endpoint.uri()),
                    "{url}: plain-text gRPC is allowed to loopback only; use https:// with \
                     --idsvc-ca, --idsvc-client-cert and --idsvc-client-key"
                );
                endpoint.connect_lazy()
            }
            _ => anyhow::bail!("{url}: idsvc URLs are https:// (or http:// on loopback)"),
        };
        let endpoint = Arc::new(Self {
            url: url.into(),
            channel,
            outlier: Mutex::default(),
            metrics: EndpointMetrics::register(url),
        });
        endpoint.publish_state(true);
        Ok(endpoint)
    }

    pub fn client(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    fn outlier(&self) -> std::sync::MutexGuard<'_, Outlier> {
        // The state stays consistent across a panic: every change is one step.
        self.outlier.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_ejected(&self) -> bool {
        self.outlier().is_ejected()
    }

    pub fn due_for_check(&self) -> bool {
        self.outlier().due_for_check(Instant::now())
    }

    pub fn count_request(&self) {
        self.metrics.requests.increment(1);
    }

    pub fn count_retry(&self) {
        self.metrics.retries.increment(1);
    }

    pub fn on_success(&self) {
        self.outlier().on_success();
    }

    pub fn on_failure(&self, policy: &EjectionPolicy) {
        self.metrics.failures.increment(1);
        if self.outlier().on_failure(policy, Instant::now()) {
            warn!(endpoint = %self.url, "idsvc endpoint ejected");
            self.metrics.ejections.increment(1);
            self.publish_state(false);
        }
    }

    /// After the ejection time, a SERVING health check brings it back.
    pub fn on_health_serving(&self) {
        if self.outlier().on_health_serving(Instant::now()) {
            info!(endpoint = %self.url, "idsvc endpoint back in rotation");
            self.publish_state(true);
        }
    }

    fn publish_state(&self, in_rotation: bool) {
        self.metrics.state.set(if in_rotation { 1.0 } else { 0.0 });
    }

    /// `grpc.health.v1` for the whole server (the empty service name, which
    /// idsvc turns NOT_SERVING while it drains).
    pub async fn serving(&self, timeout: Duration) -> bool {
        let mut health = HealthClient::new(self.channel.clone());
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(answer)) => answer.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}
