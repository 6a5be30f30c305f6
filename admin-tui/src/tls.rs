//! Mutual TLS to idsvc's admin port: the tool checks idsvc's certificate
//! against `--admin-ca` and presents `--admin-cert`. The same scheme as the
//! gateway's upstream TLS (TCP through hyper-util, then rustls, ALPN h2),
//! without its file watching: a command lives for seconds.

use anyhow::Context;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::Service;

/// The PEM files of this tool's side of mutual TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The rustls client configuration the files describe.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&files.ca)?) {
        roots
            .add(cert.with_context(|| format!("parsing {}", files.ca.display()))?)
            .context("adding an idsvc CA")?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{} holds no certificate",
        files.ca.display()
    );
    let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .with_context(|| format!("parsing the private key {}", files.key.display()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("--admin-cert does not match --admin-key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// tonic's connector for `https://` admin URLs.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    config: Arc<ClientConfig>,
    handshake_timeout: Duration,
}

impl TlsConnector {
    pub fn load(files: &TlsFiles, handshake_timeout: Duration) -> anyhow::Result<Self> {
        let mut tcp = HttpConnector::new();
        // The URL says https; TLS is ours to add on top of the TCP stream.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        Ok(Self {
            tcp,
            config: Arc::new(client_config(files)?),
            handshake_timeout,
        })
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
        let config = Arc::clone(&self.config);
        let timeout = self.handshake_timeout;
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
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| "tls handshake with idsvc timed out")?
                .map_err(|e| format!("tls handshake with idsvc failed: {e}"))?;
            Ok(TokioIo::new(stream))
        })
    }
}
