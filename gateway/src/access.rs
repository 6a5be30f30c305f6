//! Access tokens, verified at the edge against idsvc's published keys.
//!
//! Keys are cached; a token with an unknown `kid` (a rotation) triggers one
//! refetch, at most once per `REFETCH_INTERVAL` so forged kids cannot turn the
//! gateway into a load generator against idsvc.

use crate::problem::Problem;
use crate::upstream::Upstream;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use idbase_proto::v1 as pb;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew tolerated between idsvc and gateway hosts.
const LEEWAY_SECS: u64 = 30;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    sid: String,
}

pub struct AccessVerifier {
    upstream: Upstream,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
}

impl AccessVerifier {
    pub fn new(upstream: Upstream) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["idbase"]);
        validation.set_audience(&["idbase"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            upstream,
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
            validation,
        }
    }

    /// The principal of a valid bearer token.
    pub async fn verify(&self, token: &str) -> Result<pb::Principal, Problem> {
        let invalid =
            || Problem::unauthenticated("invalid-token", "invalid or expired access token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let kid = header.kid.ok_or_else(invalid)?;
        let cached = self.keys.read().await.get(&kid).cloned();
        let key = match cached {
            Some(key) => key,
            None => self.refetch_for(&kid).await?.ok_or_else(invalid)?,
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|_| invalid())?;
        let user_id = data.claims.sub.parse().map_err(|_| invalid())?;
        Ok(pb::Principal {
            user_id,
            session_id: data.claims.sid,
        })
    }

    async fn refetch_for(&self, kid: &str) -> Result<Option<DecodingKey>, Problem> {
        let mut last = self.last_fetch.lock().await;
        let cached = self.keys.read().await.get(kid).cloned();
        if cached.is_some() {
            // Another request fetched while we waited.
            return Ok(cached);
        }
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        let jwks = self.upstream.jwks().await?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            if let Ok(key) = DecodingKey::from_ed_components(&jwk.x) {
                keys.insert(jwk.kid, key);
            }
        }
        let found = keys.get(kid).cloned();
        *self.keys.write().await = keys;
        Ok(found)
    }
}

/// Extractor: the verified principal of `Authorization: Bearer …`.
pub struct Bearer(pub pb::Principal);

impl<S: Send + Sync> FromRequestParts<S> for Bearer
where
    Arc<AccessVerifier>: axum::extract::FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = <Arc<AccessVerifier> as axum::extract::FromRef<S>>::from_ref(state);
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Problem::unauthenticated(
                    "invalid-token",
                    "an Authorization: Bearer access token is required",
                )
            })?;
        verifier.verify(token.trim()).await.map(Bearer)
    }
}
