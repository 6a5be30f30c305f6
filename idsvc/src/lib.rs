//! idsvc, the ID service: members, credentials, sessions, their storage and
//! the migration jobs. Reached only through gRPC.

pub mod config;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod legacy;
pub mod log_tail;
pub mod migration;
pub mod store;

pub use config::{AdminConfig, IdsvcArgs, IdsvcConfig, PhaseArgs, PolicyArgs, ServiceConfig};

use crate::crypto::{HashingPool, KeyRing, KeyUse};
use crate::domain::audit::AuditTrail;
use crate::domain::phase::PhaseService;
use crate::domain::{IdentityService, Store, SystemClock};
use crate::store::SqlStore;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Opens the store and keys and assembles the service.
pub async fn build_service(
    database_url: &str,
    keys_dir: &Path,
    config: impl Into<ServiceConfig>,
) -> anyhow::Result<Arc<IdentityService>> {
    let store = Arc::new(SqlStore::connect(database_url).await?);
    service_over(store, keys_dir, KeyUse::Service, config)
}

/// The ID service over a store the caller keeps too (the migration jobs
/// keep the concrete [`SqlStore`] and pass it here as the domain's trait),
/// with the keys `usage` needs.
pub fn service_over(
    store: Arc<dyn Store>,
    keys_dir: &Path,
    usage: KeyUse,
    config: impl Into<ServiceConfig>,
) -> anyhow::Result<Arc<IdentityService>> {
    let config = config.into();
    let keys = KeyRing::load_for(keys_dir, usage)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashing = HashingPool::new(config.argon2, cores, config.argon2_queue)?;
    let service =
        IdentityService::new(store, Arc::new(SystemClock), &keys, hashing, config.policy)?;
    Ok(Arc::new(service))
}

/// Serves idsvc on the given listeners until `shutdown` is cancelled;
/// `probes`, if given, serves plain-text health for kubelet probes; the
/// admin port serves the Phases service as `admin_config` says.
pub async fn serve(
    service: Arc<IdentityService>,
    grpc: TcpListener,
    admin: TcpListener,
    transport: grpc::Transport,
    probes: Option<TcpListener>,
    admin_config: AdminConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = matches!(transport, grpc::Transport::Mtls { .. });
    info!(grpc = %grpc.local_addr()?, admin = %admin.local_addr()?, tls, "idsvc listening");
    let phases = PhaseService::start(
        Arc::clone(service.store()),
        Arc::new(SystemClock),
        admin_config.phase,
        admin_config.legacy,
    )
    .await
    .context("loading the migration phase")?;
    transport.watch(shutdown.clone());
    let housekeeping = tokio::spawn(purge_periodically(Arc::clone(&service), shutdown.clone()));
    let following = tokio::spawn(Arc::clone(&phases).run(shutdown.clone()));
    let trail = AuditTrail::new(Arc::clone(service.store()), Arc::new(SystemClock));
    let gate = Arc::new(grpc::AdminGate::new(admin_config.credentials, trail));
    let phases_grpc =
        grpc::PhasesGrpc::new(Arc::clone(&phases), Arc::clone(&gate), shutdown.clone());
    let admin_grpc = grpc::AdminGrpc::new(Arc::clone(&service), phases, gate, shutdown.clone());
    let (identity, admin) = tokio::join!(
        grpc::serve_identity(service, grpc, transport.clone(), probes, shutdown.clone()),
        grpc::serve_admin(admin, phases_grpc, admin_grpc, transport, shutdown.clone()),
    );
    shutdown.cancel();
    housekeeping.await.ok();
    following.await.ok();
    identity.and(admin)
}

/// `idbase idsvc`: serves until `shutdown` is cancelled.
pub async fn run(config: IdsvcConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .context("starting the metrics listener")?;
    }
    // TLS files are checked before the database is touched: a bad mount fails fast.
    let transport =
        grpc::Transport::from_args(&config.transport, &[config.grpc, config.admin_grpc])?;
    let admin_config = AdminConfig::from_args(&config.phases)?;
    let service = build_service(&config.database_url, &config.keys_dir, config.service).await?;
    let probes = match config.transport.health_grpc {
        Some(addr) => Some(grpc::transport::bind(addr).await?),
        None => None,
    };
    let grpc = TcpListener::bind(config.grpc)
        .await
        .with_context(|| format!("binding {}", config.grpc))?;
    let admin = TcpListener::bind(config.admin_grpc)
        .await
        .with_context(|| format!("binding {}", config.admin_grpc))?;
    serve(
        service,
        grpc,
        admin,
        transport,
        probes,
        admin_config,
        shutdown,
    )
    .await
}

async fn purge_periodically(service: Arc<IdentityService>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    let mut each_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = each_second.tick() => {
                if let Err(err) = service.store_shadow_counts().await {
                    warn!(cause = %err, "storing shadow read counts failed");
                }
            }
            _ = every.tick() => {
                if let Err(err) = service.purge_expired().await {
                    warn!(cause = %err, "purging expired login throttles failed");
                }
            }
        }
    }
    // The last second's shadows: a clean stop loses none.
    if let Err(err) = service.store_shadow_counts().await {
        warn!(cause = %err, "storing shadow read counts failed");
    }
}
