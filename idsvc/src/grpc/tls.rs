//! idsvc's server side of mTLS: its certificate and the CA that signs its
//! callers' certificates, read from PEM files and re-read when they change
//! (cert-manager rewrites the mounted Secret before a certificate expires).
//!
//! Callers must present a certificate from the CA to be served; one without
//! a certificate still completes the handshake so that every RPC can answer
//! UNAUTHENTICATED with a reason (see [`super::authz`]) instead of an opaque
//! transport error.

use anyhow::Context;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the PEM files are checked for changes: well inside
/// cert-manager's renewal margin, and a few reads of small files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The PEM files of idsvc's mTLS listeners.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    /// idsvc's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA bundle that signs callers' certificates.
    pub client_ca: PathBuf,
}

/// The current server configuration, swapped whole when the files change;
/// connections keep the configuration they were accepted with.
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

/// The bytes of the three files, read once so the digest and the parsed
/// configuration describe the same contents.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

impl Material {
    fn read(files: &ServerTlsFiles) -> anyhow::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: read(&files.client_ca)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [&self.cert, &self.key, &self.client_ca] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the certificate chain")?;
        anyhow::ensure!(
            !certs.is_empty(),
            "the certificate file holds no certificate"
        );
        let key = PrivateKeyDer::from_pem_slice(&self.key).context("parsing the private key")?;
        let roots = client_roots(&self.client_ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .context("the certificate does not match its key")?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn client_roots(pem: &[u8]) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.context("parsing the client CA bundle")?)
            .context("adding a client CA")?;
    }
    anyhow::ensure!(!roots.is_empty(), "the client CA file holds no certificate");
    Ok(Arc::new(roots))
}

impl ServerTls {
    /// Loads the files; a start with files that do not load fails.
    pub fn load(files: ServerTlsFiles) -> anyhow::Result<Arc<Self>> {
        // The process-wide default matters only to code that does not name
        // a provider; a second install is harmless.
        let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
        let material = Material::read(&files)?;
        let config = material
            .server_config()
            .with_context(|| format!("loading TLS certificate {}", files.cert.display()))?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The configuration new connections are accepted with.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a whole configuration: every write is one swap.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the files every `every` until `shutdown`; a set that does not
    /// load is logged and the previous configuration stays in use.
    pub fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut seen = Material::read(&self.files).map(|m| m.digest()).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let material = match Material::read(&self.files) {
                    Ok(material) => material,
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "reading idsvc TLS files; previous certificate stays in use");
                        continue;
                    }
                };
                let digest = material.digest();
                if seen == Some(digest) {
                    continue;
                }
                seen = Some(digest);
                match material.server_config() {
                    Ok(config) => {
                        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(config);
                        info!(cert = %self.files.cert.display(), "idsvc TLS certificate and client CA reloaded");
                    }
                    Err(e) => error!(
                        error = %format!("{e:#}"),
                        "idsvc TLS files rejected; previous certificate stays in use"
                    ),
                }
            }
        });
    }
}
