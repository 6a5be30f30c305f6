//! idsvc's gRPC servers: the identity API (with `grpc.health.v1` and server
//! reflection) and the admin port, both over mTLS with per-RPC authorisation
//! by certificate identity ([`authz`]), or plain text on loopback
//! ([`transport`]); and a plain-text health port for kubelet probes.

mod admin;
mod admin_gate;
pub mod authz;
pub mod credentials;
mod identity;
mod phases;
pub mod status;
pub mod tls;
pub mod transport;

pub use admin::AdminGrpc;
pub use admin_gate::AdminGate;
pub use identity::IdentityGrpc;
pub use phases::PhasesGrpc;
pub use transport::{Transport, TransportArgs};

use crate::domain::IdentityService;
use idbase_proto::v1::admin_server::{self, AdminServer};
use idbase_proto::v1::identity_server::{self, IdentityServer};
use idbase_proto::v1::phases_server::{self, PhasesServer};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_reflection::pb::v1::server_reflection_server as v1_reflection;
use tonic_reflection::pb::v1alpha::server_reflection_server as v1alpha_reflection;
use tracing::info;

/// Serves the identity API until `shutdown` is cancelled, then drains.
/// With `probes`, the same health service is also served in plain text there.
pub async fn serve_identity(
    service: Arc<IdentityService>,
    listener: TcpListener,
    transport: Transport,
    probes: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IdentityServer<IdentityGrpc>>().await;
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
    // Probes keep answering (NOT_SERVING) until the drain is over.
    let probes_stop = CancellationToken::new();
    let probes = probes.map(|probes| {
        let health_service = health_service.clone();
        let stopping = probes_stop.clone();
        tokio::spawn(async move {
            info!(health = %probes.local_addr()?, "idsvc health probes listening (plain text)");
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(probes),
                    stopping.cancelled_owned(),
                )
                .await?;
            anyhow::Ok(())
        })
    });
    let incoming = transport::incoming(listener, transport, shutdown.clone());
    let served = Server::builder()
        .layer(authz::AuthorizeLayer)
        .add_service(health_service)
        .add_service(reflection(&[identity_server::SERVICE_NAME]).build_v1()?)
        .add_service(reflection(&[identity_server::SERVICE_NAME]).build_v1alpha()?)
        .add_service(IdentityServer::new(IdentityGrpc::new(service)))
        .serve_with_incoming_shutdown(incoming, drain)
        .await;
    probes_stop.cancel();
    if let Some(probes) = probes {
        probes.await??;
    }
    Ok(served?)
}

/// The admin port: the Phases and Admin services, health and reflection.
pub async fn serve_admin(
    listener: TcpListener,
    phases: PhasesGrpc,
    admin: AdminGrpc,
    transport: Transport,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_health, health_service) = tonic_health::server::health_reporter();
    let incoming = transport::incoming(listener, transport, shutdown.clone());
    Server::builder()
        .layer(authz::AuthorizeLayer)
        .add_service(health_service)
        .add_service(reflection(ADMIN_SERVICES).build_v1()?)
        .add_service(reflection(ADMIN_SERVICES).build_v1alpha()?)
        .add_service(PhasesServer::new(phases))
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// What the admin port serves besides health and reflection.
const ADMIN_SERVICES: &[&str] = &[phases_server::SERVICE_NAME, admin_server::SERVICE_NAME];

/// The services every port serves besides its own: health and both
/// reflection versions.
const COMMON_SERVICES: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    v1_reflection::SERVICE_NAME,
    v1alpha_reflection::SERVICE_NAME,
];

/// Server reflection for `grpcurl`, `grpcui`, Postman and the like, listing
/// exactly what one port serves (`served` plus [`COMMON_SERVICES`]). Each
/// port serves it twice, as `grpc.reflection.v1` and as
/// `grpc.reflection.v1alpha`, which many stock clients (Python's
/// grpcio-reflection among them) still speak exclusively; both versions list
/// both, so either client sees the whole port.
fn reflection(served: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(idbase_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    served
        .iter()
        .chain(&COMMON_SERVICES)
        .fold(builder, |builder, name| builder.with_service_name(*name))
}
