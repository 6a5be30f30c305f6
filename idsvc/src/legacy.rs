//! What idsvc asks the legacy API, only for a phase move's checks
//! (`legacy-reachable`, `id-range-margin`): its health and its highest
//! member id. Members' traffic to legacy goes through the gateway, never here.

use crate::domain::phase::LegacyProbe;
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// A check waits this long for legacy before calling it unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The header legacy authenticates its callers by.
const TOKEN_HEADER: &str = "Idbase-Gateway-Token";

pub struct HttpLegacy {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl HttpLegacy {
    /// `url` is legacy's base URL; `token_file` holds the credential sent as
    /// `Idbase-Gateway-Token`; `ca`, a PEM bundle, is then the only trust for
    /// an `https://` legacy (a private CA) instead of the web PKI's roots.
    pub fn new(url: &str, token_file: Option<&Path>, ca: Option<&Path>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--legacy-url must be an http(s) URL"
        );
        let token = match token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
            None => String::new(),
        };
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        if let Some(path) = ca {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing {}", path.display()))?;
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
            builder = roots
                .into_iter()
                .fold(builder.tls_built_in_root_certs(false), |builder, root| {
                    builder.add_root_certificate(root)
                });
        }
        let client = builder.build().context("building the legacy HTTP client")?;
        Ok(Self {
            client,
            base,
            token,
        })
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
            .send()
            .await
            .map_err(|err| format!("legacy unreachable: {}", without_url(&err)))?;
        if !response.status().is_success() {
            return Err(format!("legacy answered {path} with {}", response.status()));
        }
        Ok(response)
    }
}

/// The error without the URL (it may carry credentials in its userinfo).
fn without_url(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

#[async_trait::async_trait]
impl LegacyProbe for HttpLegacy {
    async fn healthy(&self) -> Result<(), String> {
        self.get("/legacy/v1/health").await.map(drop)
    }

    async fn max_id(&self) -> Result<i64, String> {
        #[derive(serde::Deserialize)]
        struct MaxId {
            max_id: i64,
        }
        let body: MaxId = self
            .get("/legacy/v1/members/max-id")
            .await?
            .json()
            .await
            .map_err(|_| "legacy's max-id answer is not {\"max_id\": N}".to_owned())?;
        Ok(body.max_id)
    }
}
