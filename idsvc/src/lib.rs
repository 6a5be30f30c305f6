//! idsvc, the ID service: members, credentials, sessions, their storage and
//! the migration jobs. Reached only through gRPC.

#![deny(clippy::unwrap_used)]

pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod migration;
pub mod store;

use crate::crypto::{HashingPool, KeyRing, PasswordParams};
use crate::domain::{IdentityService, Policy, SystemClock, ThrottlePolicy};
use crate::store::SqlStore;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The rules members live by; shared by `idbase idsvc` and `idbase dev`.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Shortest password accepted (NIST SP 800-63B: at least 8).
    #[arg(long, env = "IDBASE_MIN_PASSWORD_CHARS", default_value_t = domain::DEFAULT_MIN_PASSWORD_CHARS)]
    pub min_password_chars: usize,
    /// Access token lifetime in seconds (short: they cannot be revoked early).
    #[arg(long, env = "IDBASE_ACCESS_TTL_SECS", default_value_t = 15 * 60)]
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in days; each use rotates it.
    #[arg(long, env = "IDBASE_REFRESH_TTL_DAYS", default_value_t = 30)]
    pub refresh_ttl_days: u64,
    /// Seconds a rotated refresh token may come back (a client that missed our answer).
    #[arg(long, env = "IDBASE_REFRESH_GRACE_SECS", default_value_t = 10)]
    pub refresh_grace_secs: u64,
    /// Failed logins per account before it is locked with exponential backoff (max 15 min).
    #[arg(long, env = "IDBASE_LOGIN_FAILURE_LIMIT", default_value_t = 10)]
    pub login_failure_limit: i64,
    #[command(flatten)]
    pub argon2: PasswordParams,
    /// Password hashes allowed to wait for a core; beyond this, 503 at once.
    #[arg(long, env = "IDBASE_ARGON2_QUEUE", default_value_t = 64)]
    pub argon2_queue: usize,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        Policy {
            min_password_chars: self.min_password_chars,
            access_ttl: Duration::from_secs(self.access_ttl_secs),
            refresh_ttl: Duration::from_secs(self.refresh_ttl_days * 24 * 60 * 60),
            refresh_grace: Duration::from_secs(self.refresh_grace_secs),
            throttle: ThrottlePolicy {
                limit: self.login_failure_limit,
                ..ThrottlePolicy::default()
            },
        }
    }
}

/// `idbase idsvc`: the ID service as its own process.
#[derive(Clone, Debug, clap::Args)]
pub struct IdsvcArgs {
    /// `mysql://user:pass@host/db` (Aurora MySQL, MariaDB) or `sqlite://PATH`.
    #[arg(long, env = "IDBASE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Directory of PII, blind-index and signing keys (`idbase keys generate`).
    #[arg(long, env = "IDBASE_KEYS_DIR")]
    pub keys_dir: PathBuf,
    /// Identity gRPC address.
    #[arg(long, env = "IDBASE_GRPC", default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    /// Admin gRPC address (kept off the public path).
    #[arg(long, env = "IDBASE_ADMIN_GRPC", default_value = "127.0.0.1:50052")]
    pub admin_grpc: SocketAddr,
    /// Prometheus metrics address (plain HTTP, `/metrics`); off when unset.
    #[arg(long, env = "IDBASE_METRICS")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub transport: grpc::TransportArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Opens the store and keys and assembles the service.
pub async fn build_service(
    database_url: &str,
    keys_dir: &Path,
    policy: &PolicyArgs,
) -> anyhow::Result<Arc<IdentityService>> {
    let store = Arc::new(SqlStore::connect(database_url).await?);
    service_over(store, keys_dir, policy)
}

/// The ID service over a store the caller keeps too (the migration jobs
/// read and write it directly).
pub fn service_over(
    store: Arc<SqlStore>,
    keys_dir: &Path,
    policy: &PolicyArgs,
) -> anyhow::Result<Arc<IdentityService>> {
    let keys = KeyRing::load(keys_dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashing = HashingPool::new(policy.argon2, cores, policy.argon2_queue)?;
    let service = IdentityService::new(
        store,
        Arc::new(SystemClock),
        &keys,
        hashing,
        policy.policy(),
    )?;
    Ok(Arc::new(service))
}

/// Serves idsvc on the given listeners until `shutdown` is cancelled;
/// `probes`, if given, serves plain-text health for kubelet probes.
pub async fn serve(
    service: Arc<IdentityService>,
    grpc: TcpListener,
    admin: TcpListener,
    transport: grpc::Transport,
    probes: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = matches!(transport, grpc::Transport::Mtls { .. });
    info!(grpc = %grpc.local_addr()?, admin = %admin.local_addr()?, tls, "idsvc listening");
    transport.watch(shutdown.clone());
    let housekeeping = tokio::spawn(purge_periodically(Arc::clone(&service), shutdown.clone()));
    let (identity, admin) = tokio::join!(
        grpc::serve_identity(service, grpc, transport.clone(), probes, shutdown.clone()),
        grpc::serve_admin(admin, transport, shutdown.clone()),
    );
    shutdown.cancel();
    housekeeping.await.ok();
    identity.and(admin)
}

/// `idbase idsvc`.
pub async fn run(args: IdsvcArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .context("starting the metrics listener")?;
    }
    // TLS files are checked before the database is touched: a bad mount fails fast.
    let transport = grpc::Transport::from_args(&args.transport, &[args.grpc, args.admin_grpc])?;
    let service = build_service(&args.database_url, &args.keys_dir, &args.policy).await?;
    let probes = match args.transport.health_grpc {
        Some(addr) => Some(grpc::transport::bind(addr).await?),
        None => None,
    };
    let grpc = TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("binding {}", args.grpc))?;
    let admin = TcpListener::bind(args.admin_grpc)
        .await
        .with_context(|| format!("binding {}", args.admin_grpc))?;
    serve(service, grpc, admin, transport, probes, shutdown).await
}

async fn purge_periodically(service: Arc<IdentityService>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = service.purge_expired().await {
            warn!(cause = %err, "purging expired login throttles failed");
        }
    }
}
