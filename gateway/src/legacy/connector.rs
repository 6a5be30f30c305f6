//! The pooled HTTP/1.1 client to legacy: TCP with a connect timeout, then
//! rustls for `https://` (the web PKI's roots, or only `--legacy-ca` when
//! legacy's certificate comes from a private CA).
//!
//! Plain-text `http://` is allowed only on loopback, the rule the gateway
//! keeps for idsvc too: passwords and the gateway's own credential cross
//! this connection.

use super::body::Handoff;
use crate::upstream::tls::is_loopback;
use anyhow::Context;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Idle pooled connections are closed after this: legacy's web servers
/// commonly drop idle keep-alive connections after a minute or more, and a
/// connection closed first by us is never raced by a request.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type LegacyClient = Client<HttpsConnector<HttpConnector>, Handoff>;

pub fn client(
    url: &Url,
    ca: Option<&Path>,
    connect_timeout: Duration,
    pool_idle: usize,
) -> anyhow::Result<LegacyClient> {
    let uri: http::Uri = url.as_str().parse().context("the legacy URL")?;
    match url.scheme() {
        "https" => {}
        "http" => anyhow::ensure!(
            is_loopback(&uri),
            "plain-text http:// to legacy is allowed only on loopback; use https:// (and --legacy-ca for a private CA)"
        ),
        other => anyhow::bail!("the legacy URL's scheme must be http or https, not {other}"),
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool_idle)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(https))
}

fn tls_config(ca: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.context("parsing the legacy CA bundle")?)
                    .context("adding a legacy CA")?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN is left to the connector builder (`enable_http1`).
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
