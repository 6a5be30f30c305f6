//! idbase access tokens, accepted from phase 2 on: EdDSA JWTs verified
//! against the gateway's JWKS, `sub` = the member id (idbase keeps legacy
//! ids). The key set is cached and fetched again when a token names an
//! unknown `kid` (a key rotation), at most once a second so that garbage
//! tokens cannot turn into a flood of fetches.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};
use tracing::warn;

const MIN_REFETCH: Duration = Duration::from_secs(1);
/// Clock skew tolerated on `exp`, as the gateway's verifier.
const LEEWAY_SECS: u64 = 5;

pub struct IdbaseTokens {
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    #[serde(default)]
    crv: String,
    x: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl IdbaseTokens {
    pub fn new(url: String, http: reqwest::Client) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["idbase"]);
        validation.set_audience(&["idbase"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            url,
            http,
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
            validation,
        }
    }

    /// Whether the token looks like a JWT at all (three dot-separated parts).
    pub fn is_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// The member id of a valid idbase access token.
    pub async fn verify(&self, token: &str) -> Option<i64> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        if !self.keys.read().await.contains_key(&kid) {
            self.refetch().await;
        }
        let keys = self.keys.read().await;
        let key = keys.get(&kid)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?;
        data.claims.sub.parse().ok().filter(|id: &i64| *id > 0)
    }

    async fn refetch(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => *self.keys.write().await = keys,
            Err(err) => warn!(cause = %err, url = %self.url, "fetching the JWKS failed"),
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(set
            .keys
            .into_iter()
            .filter(|jwk| jwk.crv == "Ed25519")
            .filter_map(|jwk| Some((jwk.kid, DecodingKey::from_ed_components(&jwk.x).ok()?)))
            .collect())
    }
}
