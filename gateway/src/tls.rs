//! TLS termination with rustls (HTTP/1.1 and HTTP/2 offered by ALPN) from
//! PEM files that are re-read when they change, as cert-manager rotates them.
//! Plain HTTP keeps its own listener for deployments behind an ALB.

use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the certificate and key files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Open connections get this long to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// `idbase gateway` flags for TLS.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain; with `--tls-key` enables HTTPS on `--https`.
    #[arg(long, env = "IDBASE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "IDBASE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTPS listen address (only with a certificate).
    #[arg(long, env = "IDBASE_HTTPS", default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
}

fn digest(cert: &Path, key: &Path) -> std::io::Result<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update(std::fs::read(cert)?);
    hash.update(std::fs::read(key)?);
    Ok(hash.finalize().into())
}

/// Serves `app` over TLS on `listener` until `shutdown`, reloading the
/// certificate every `reload_every` if its files changed. A pair that does
/// not load is logged and the previous certificate stays in use.
pub async fn serve(
    app: Router,
    listener: std::net::TcpListener,
    cert: PathBuf,
    key: PathBuf,
    reload_every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One provider for the whole process; a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut seen = digest(&cert, &key).context("reading TLS certificate and key")?;
    let config = RustlsConfig::from_pem_file(&cert, &key)
        .await
        .with_context(|| format!("loading TLS certificate {}", cert.display()))?;
    listener.set_nonblocking(true)?;
    info!(https = %listener.local_addr()?, "gateway listening with TLS");
    let handle = axum_server::Handle::<SocketAddr>::new();
    let reloader = {
        let (config, handle, shutdown) = (config.clone(), handle.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reload_every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        handle.graceful_shutdown(Some(DRAIN));
                        return;
                    }
                    _ = tick.tick() => {}
                }
                match digest(&cert, &key) {
                    Ok(now) if now == seen => {}
                    Ok(now) => {
                        seen = now;
                        match config.reload_from_pem_file(&cert, &key).await {
                            Ok(()) => info!(cert = %cert.display(), "TLS certificate reloaded"),
                            Err(e) => {
                                error!(error = %e, "TLS certificate rejected; previous stays in use")
                            }
                        }
                    }
                    Err(e) => error!(error = %e, "reading TLS certificate files"),
                }
            }
        })
    };
    let served = axum_server::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    reloader.abort();
    served.context("TLS server")
}
