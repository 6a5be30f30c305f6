//! Access tokens, verified at the edge against idsvc's published keys.
//!
//! Keys are cached; a token with an unknown `kid` (a rotation) triggers one
//! refetch, at most once per `REFETCH_INTERVAL` so forged kids cannot turn the
//! gateway into a load generator against idsvc.
//!
//! Tokens that verified are remembered (by SHA-256, never the token itself)
//! until they expire: an app reading `me` in a loop costs one signature check
//! per token, not per request. Whether the session is still live is idsvc's
//! check on every call, so the cache cannot outlive a logout.

use crate::iptable::{BoundedTable, Expiring};
use crate::problem::Problem;
use crate::upstream::Upstream;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use idbase_proto::ProblemType;
use idbase_proto::v1 as pb;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Mutex, RwLock};

const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew tolerated between idsvc and gateway hosts.
const LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered at most (about 200 bytes each). Clients choose
/// the keys, so the table is bounded like the WAF's.
const VERIFIED_CAPACITY: usize = 100_000;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    exp: u64,
}

/// A token that verified, and until when it stays valid (its `exp` plus the
/// leeway the full check allows).
#[derive(Default)]
struct Verified {
    principal: Option<pb::Principal>,
    valid_until_ms: u64,
}

impl Expiring for Verified {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.valid_until_ms
    }
}

pub struct AccessVerifier {
    upstream: Upstream,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
    verified: BoundedTable<[u8; 32], Verified>,
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
            verified: BoundedTable::new(VERIFIED_CAPACITY),
        }
    }

    /// The principal of a valid bearer token.
    pub async fn verify(&self, token: &str) -> Result<pb::Principal, Problem> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_ms();
        let remembered = self.verified.peek(digest, |seen| {
            (!seen.expired(now))
                .then(|| seen.principal.clone())
                .flatten()
        });
        if let Some(Some(principal)) = remembered {
            return Ok(principal);
        }
        let (principal, exp) = self.verify_signature(token).await?;
        self.verified.update(digest, now, |seen| {
            *seen = Verified {
                principal: Some(principal.clone()),
                valid_until_ms: exp.saturating_add(LEEWAY_SECS).saturating_mul(1000),
            }
        });
        Ok(principal)
    }

    /// The full check: signature by a published key, issuer, audience, expiry.
    async fn verify_signature(&self, token: &str) -> Result<(pb::Principal, u64), Problem> {
        let invalid = || {
            Problem::unauthenticated(ProblemType::InvalidToken, "invalid or expired access token")
        };
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
        let principal = pb::Principal {
            user_id,
            session_id: data.claims.sid,
        };
        Ok((principal, data.claims.exp))
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
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
                    ProblemType::InvalidToken,
                    "an Authorization: Bearer access token is required",
                )
            })?;
        verifier.verify(token.trim()).await.map(Bearer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamConfig;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    /// A verifier that already holds the key `kid-1` (no idsvc needed), and
    /// that key's signer.
    async fn verifier() -> (AccessVerifier, EncodingKey) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        let upstream = Upstream::new(UpstreamConfig::single("http://127.0.0.1:1".into())).unwrap();
        let verifier = AccessVerifier::new(upstream);
        verifier
            .keys
            .write()
            .await
            .insert("kid-1".into(), DecodingKey::from_ed_components(&x).unwrap());
        (verifier, EncodingKey::from_ed_der(&pair.serialize_der()))
    }

    fn token(signer: &EncodingKey, exp: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("kid-1".into());
        let claims = serde_json::json!({
            "sub": "42", "sid": "s-1", "exp": exp, "iss": "idbase", "aud": "idbase",
        });
        jsonwebtoken::encode(&header, &claims, signer).unwrap()
    }

    #[tokio::test]
    async fn verified_tokens_are_remembered_until_they_expire() {
        let (verifier, signer) = verifier().await;
        let exp = now_ms() / 1000 + 600;
        let good = token(&signer, exp);
        for _ in 0..3 {
            let principal = verifier.verify(&good).await.unwrap();
            assert_eq!(
                (principal.user_id, principal.session_id.as_str()),
                (42, "s-1")
            );
        }
        assert_eq!(verifier.verified.len(), 1);
        let remembered = verifier
            .verified
            .peek(Sha256::digest(good.as_bytes()).into(), |v| v.valid_until_ms)
            .unwrap();
        assert_eq!(remembered, (exp + LEEWAY_SECS) * 1000);

        // Expired past the leeway, or with a changed signature: refused and
        // not remembered.
        let expired = token(&signer, now_ms() / 1000 - LEEWAY_SECS - 5);
        assert!(verifier.verify(&expired).await.is_err());
        let mut forged = good.clone();
        forged.pop();
        forged.push(if good.ends_with('A') { 'B' } else { 'A' });
        assert!(verifier.verify(&forged).await.is_err());
        assert_eq!(verifier.verified.len(), 1);
    }

    #[tokio::test]
    async fn a_remembered_token_past_its_expiry_is_checked_again() {
        let (verifier, signer) = verifier().await;
        // Signed long expired: only the memory of it could let it in.
        let stale = token(&signer, 1_000);
        verifier
            .verified
            .update(Sha256::digest(stale.as_bytes()).into(), 0, |seen| {
                *seen = Verified {
                    principal: Some(pb::Principal {
                        user_id: 42,
                        session_id: "s-1".into(),
                    }),
                    valid_until_ms: now_ms() - 1,
                }
            });
        assert!(verifier.verify(&stale).await.is_err());
    }
}
