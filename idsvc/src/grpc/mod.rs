//! idsvc's gRPC servers: the identity API (with `grpc.health.v1` and server
//! reflection) and the admin port.

mod identity;
pub mod status;

pub use identity::IdentityGrpc;

use crate::domain::IdentityService;
use idbase_proto::v1::identity_server::IdentityServer;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// Serves the identity API until `shutdown` is cancelled, then drains.
pub async fn serve_identity(
    service: Arc<IdentityService>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IdentityServer<IdentityGrpc>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(idbase_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let stopping = shutdown.clone();
    let drain = async move {
        stopping.cancelled().await;
        // Tell load balancers first, so new calls go elsewhere while we drain.
        health
            .set_not_serving::<IdentityServer<IdentityGrpc>>()
            .await;
        // Kubernetes `grpc` probes ask for the empty service name: flip it too.
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(IdentityServer::new(IdentityGrpc::new(service)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain)
        .await?;
    Ok(())
}

/// The admin port. Until the phase and console APIs land it serves health
/// only, so probes and the SRE's tooling can already reach it.
pub async fn serve_admin(listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (_health, health_service) = tonic_health::server::health_reporter();
    Server::builder()
        .add_service(health_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
