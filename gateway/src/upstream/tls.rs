//! mTLS to idsvc: the gateway proves its identity with a client certificate
//! (SPIFFE id `spiffe://idbase/gateway`) and checks idsvc's against the CA
//! that signs it. The PEM files are re-read when they change (cert-manager
//! rotates them); every new connection uses the files as they are then, and
//! connections already open keep the certificate they started with.
//!
//! Plain-text `http://` endpoints are allowed only on loopback (`idbase dev`,
//! tests): anywhere else a password would cross the network in clear.

use anyhow::Context;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::Service;
use tracing::{error, info};

/// How often the PEM files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// `idbase gateway` flags for mTLS to idsvc (needed for `https://` URLs).
#[derive(Clone, Debug, clap::Args)]
pub struct UpstreamTlsArgs {
    /// PEM CA bundle that signs idsvc's certificate.
    #[arg(long, env = "IDBASE_IDSVC_CA", requires_all = ["idsvc_client_cert", "idsvc_client_key"])]
    pub idsvc_ca: Option<PathBuf>,
    /// The gateway's PEM client certificate chain for idsvc.
    #[arg(long, env = "IDBASE_IDSVC_CLIENT_CERT", requires = "idsvc_ca")]
    pub idsvc_client_cert: Option<PathBuf>,
    /// PEM private key of `--idsvc-client-cert`.
    #[arg(long, env = "IDBASE_IDSVC_CLIENT_KEY", requires = "idsvc_ca")]
    pub idsvc_client_key: Option<PathBuf>,
}

/// The PEM files of the gateway's side of mTLS.
#[derive(Clone, Debug)]
pub struct UpstreamTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl UpstreamTlsArgs {
    pub fn files(&self) -> Option<UpstreamTlsFiles> {
        match (
            &self.idsvc_ca,
            &self.idsvc_client_cert,
            &self.idsvc_client_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(UpstreamTlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// The bytes of the three files, read once so the digest and the parsed
/// configuration describe the same contents.
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Material {
    fn read(files: &UpstreamTlsFiles) -> anyhow::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            ca: read(&files.ca)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [&self.ca, &self.cert, &self.key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            roots
                .add(cert.context("parsing the idsvc CA bundle")?)
                .context("adding an idsvc CA")?;
        }
        anyhow::ensure!(!roots.is_empty(), "the idsvc CA file holds no certificate");
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the client certificate chain")?;
        anyhow::ensure!(
            !chain.is_empty(),
            "the client certificate file holds no certificate"
        );
        let key = PrivateKeyDer::from_pem_slice(&self.key).context("parsing the client key")?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the client certificate does not match its key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The gateway's current client configuration for idsvc.
pub struct ClientTls {
    files: UpstreamTlsFiles,
    current: RwLock<Arc<ClientConfig>>,
}

impl ClientTls {
    /// Loads the files; a start with files that do not load fails.
    pub fn load(files: UpstreamTlsFiles) -> anyhow::Result<Arc<Self>> {
        let config = Material::read(&files)?.client_config().with_context(|| {
            format!("loading idsvc client certificate {}", files.cert.display())
        })?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The configuration the next connection uses.
    pub fn current(&self) -> Arc<ClientConfig> {
        // A poisoned lock still holds a whole configuration: every write is one swap.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the files every `every` while anything holds `tls`; a set
    /// that does not load is logged and the previous one stays in use.
    pub async fn watch(tls: Weak<Self>, every: Duration) {
        let mut seen = match tls.upgrade() {
            Some(tls) => Material::read(&tls.files).map(|m| m.digest()).ok(),
            None => return,
        };
        loop {
            tokio::time::sleep(every).await;
            let Some(tls) = tls.upgrade() else {
                return;
            };
            let material = match Material::read(&tls.files) {
                Ok(material) => material,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "reading idsvc client TLS files; previous ones stay in use");
                    continue;
                }
            };
            let digest = material.digest();
            if seen == Some(digest) {
                continue;
            }
            seen = Some(digest);
            match material.client_config() {
                Ok(config) => {
                    *tls.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                    info!(cert = %tls.files.cert.display(), "idsvc client certificate and CA reloaded");
                }
                Err(e) => error!(
                    error = %format!("{e:#}"),
                    "idsvc client TLS files rejected; previous ones stay in use"
                ),
            }
        }
    }
}

/// True for `localhost` and loopback addresses.
pub fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some(host) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// A failed TLS handshake with idsvc. Its message starts with "tls ": the
/// retry rule counts it, like a refused TCP connect, as a try that sent nothing.
#[derive(Debug, thiserror::Error)]
#[error("tls handshake with idsvc failed: {0}")]
pub struct HandshakeError(#[source] std::io::Error);

/// tonic's connector for `https://` endpoints: TCP through hyper-util (so
/// connect errors keep their "tcp connect error" name), then rustls with the
/// configuration current at that moment.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    tls: Arc<ClientTls>,
}

impl TlsConnector {
    pub fn new(tls: Arc<ClientTls>) -> Self {
        let mut tcp = HttpConnector::new();
        // The URL says https; TLS is ours to add on top of the TCP stream.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        Self { tcp, tls }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let name = ServerName::try_from(host)?;
            let tcp = connecting.await?.into_inner();
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(HandshakeError)?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:50051",
        ] {
            assert!(is_loopback(&url.parse().unwrap()), "{url}");
        }
        for url in [
            "http://idsvc:50051",
            "http://10.0.0.1:50051",
            "http://[fd00::1]:1",
        ] {
            assert!(!is_loopback(&url.parse().unwrap()), "{url}");
        }
    }
}
