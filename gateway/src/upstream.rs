//! The gateway's one way to idsvc: a gRPC client that carries the request id.

use crate::problem::Problem;
use idbase_proto::v1::{self as pb, identity_client::IdentityClient};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Longest an idsvc call may take: enough for a queued argon2 hash.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Upstream {
    channel: Channel,
}

impl Upstream {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        Ok(Self { channel })
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub async fn jwks(&self) -> Result<pb::Jwks, Problem> {
        Ok(self.identity().get_jwks(pb::Empty {}).await?.into_inner())
    }

    /// True when idsvc answers its health check as serving.
    pub async fn ready(&self) -> bool {
        let mut health = HealthClient::new(self.channel.clone());
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(answer)) => answer.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}

/// A gRPC request carrying the HTTP request's id.
pub fn call<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = request_id.parse() {
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}
