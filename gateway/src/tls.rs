//! TLS termination with rustls (HTTP/1.1 and HTTP/2 offered by ALPN) from
//! PEM files that are re-read when they change, as cert-manager rotates them.
//! Plain HTTP keeps its own listener for deployments behind an ALB.

use crate::connections::Connections;
use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the certificate and key files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

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

/// Serves `app` over TLS on `listener` until `shutdown`, under the limits of
/// `connections`, reloading the certificate every `reload_every` if its files
/// changed. A pair that does not load is logged and the previous certificate
/// stays in use.
pub async fn serve(
    app: Router,
    listener: std::net::TcpListener,
    cert: PathBuf,
    key: PathBuf,
    reload_every: Duration,
    connections: Connections,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One provider for the whole process; a second install is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut seen = digest(&cert, &key).context("reading TLS certificate and key")?;
    let config = RustlsConfig::from_pem_file(&cert, &key)
        .await
        .with_context(|| format!("loading TLS certificate {}", cert.display()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(https = %listener.local_addr()?, "gateway listening with TLS");
    let reloader = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reload_every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
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
    // Each handshake takes the certificate in force when it starts.
    let handshake = move |stream: TcpStream| {
        let acceptor = TlsAcceptor::from(config.get_inner());
        async move {
            let stream = acceptor.accept(stream).await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok((stream, h2))
        }
    };
    let served = connections
        .serve("https", listener, app, handshake, shutdown)
        .await;
    reloader.abort();
    served.context("TLS server")
}
