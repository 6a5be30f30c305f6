//! Access tokens, verified at the edge against idsvc's published keys.
//!
//! Keys are cached for the JWKS refresh interval (`IDBASE_JWKS_REFRESH_MS`):
//! the first request after it re-reads the JWKS, so a key idsvc stops
//! publishing (a compromised or retired key) stops verifying within that
//! interval. A token with an unknown `kid` (a rotation) triggers one refetch,
//! at most once per `REFETCH_INTERVAL` so forged kids cannot turn the gateway
//! into a load generator against idsvc. When idsvc cannot be reached the
//! previous keys stay in use: every Bearer route calls idsvc anyway, which
//! checks the session itself.
//!
//! Tokens that verified are remembered (by SHA-256, never the token itself)
//! until they expire, with the key that signed them: an app reading `me` in a
//! loop costs one signature check per token, not per request, and a
//! remembered token stops working with its key. Whether the session is still
//! live is idsvc's check on every call, so the cache cannot outlive a logout.

use crate::iptable::{BoundedTable, Expiring};
use crate::problem::Problem;
use crate::upstream::Upstream;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use futures::future::BoxFuture;
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
/// The shortest JWKS refresh interval honoured: a zero setting must not turn
/// every request into a JWKS call.
const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Clock skew tolerated between idsvc and gateway hosts.
const LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered at most (about 200 bytes each). Clients choose
/// the keys, so the table is bounded like the WAF's.
const VERIFIED_CAPACITY: usize = 100_000;

/// Reads the published keys: idsvc's `GetJwks` in production.
pub type JwksSource = Arc<dyn Fn() -> BoxFuture<'static, Result<pb::Jwks, Problem>> + Send + Sync>;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    exp: u64,
}

/// A token that verified, the key that signed it, and until when it stays
/// valid (its `exp` plus the leeway the full check allows).
#[derive(Default)]
struct Verified {
    principal: Option<pb::Principal>,
    kid: String,
    valid_until_ms: u64,
}

impl Expiring for Verified {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.valid_until_ms
    }
}

/// The keys as last read, and when.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

pub struct AccessVerifier {
    source: JwksSource,
    refresh: Duration,
    keys: RwLock<KeySet>,
    /// When the JWKS was last asked for (answered or not); held while asking,
    /// so concurrent requests wait for one call instead of each making one.
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
    verified: BoundedTable<[u8; 32], Verified>,
}

impl AccessVerifier {
    pub fn new(upstream: Upstream) -> Self {
        let refresh = upstream.jwks_refresh();
        let source: JwksSource = Arc::new(move || {
            let upstream = upstream.clone();
            Box::pin(async move { upstream.jwks().await })
        });
        Self::with_source(source, refresh)
    }

    /// A verifier over any key source, refreshed every `refresh`.
    pub fn with_source(source: JwksSource, refresh: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&["idbase"]);
        validation.set_audience(&["idbase"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            source,
            refresh: refresh.max(MIN_REFRESH),
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
            validation,
            verified: BoundedTable::new(VERIFIED_CAPACITY),
        }
    }

    /// The principal of a valid bearer token.
    pub async fn verify(&self, token: &str) -> Result<pb::Principal, Problem> {
        self.refresh_if_stale().await;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_ms();
        let remembered = self.verified.peek(digest, |seen| {
            (!seen.expired(now))
                .then(|| Some((seen.kid.clone(), seen.principal.clone()?)))
                .flatten()
        });
        if let Some(Some((kid, principal))) = remembered
            && self.keys.read().await.keys.contains_key(&kid)
        {
            return Ok(principal);
        }
        let (principal, kid, exp) = self.verify_signature(token).await?;
        self.verified.update(digest, now, |seen| {
            *seen = Verified {
                principal: Some(principal.clone()),
                kid,
                valid_until_ms: exp.saturating_add(LEEWAY_SECS).saturating_mul(1000),
            }
        });
        Ok(principal)
    }

    /// The full check: signature by a published key, issuer, audience, expiry.
    async fn verify_signature(&self, token: &str) -> Result<(pb::Principal, String, u64), Problem> {
        let invalid = || {
            Problem::unauthenticated(ProblemType::InvalidToken, "invalid or expired access token")
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let kid = header.kid.ok_or_else(invalid)?;
        let cached = self.keys.read().await.keys.get(&kid).cloned();
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
        Ok((principal, kid, data.claims.exp))
    }

    /// Whether `kid` names one of idsvc's signing keys: how the phase router
    /// tells an idbase access token from legacy's without verifying it. An
    /// unknown kid triggers the same rate-limited refetch as verification.
    pub async fn knows_kid(&self, kid: &str) -> bool {
        self.refresh_if_stale().await;
        if self.keys.read().await.keys.contains_key(kid) {
            return true;
        }
        matches!(self.refetch_for(kid).await, Ok(Some(_)))
    }

    /// Re-reads the JWKS once the keys are older than the refresh interval.
    /// A failed read keeps the previous keys and is retried after
    /// `REFETCH_INTERVAL` (or the refresh interval, if shorter).
    async fn refresh_if_stale(&self) {
        if !self.stale().await {
            return;
        }
        let mut last = self.last_fetch.lock().await;
        let retry_after = self.refresh.min(REFETCH_INTERVAL);
        if !self.stale().await || last.is_some_and(|at| at.elapsed() < retry_after) {
            // Another request refreshed (or just tried) while we waited.
            return;
        }
        *last = Some(Instant::now());
        if let Err(problem) = self.fetch().await {
            tracing::warn!(
                problem = %problem.kind,
                status = problem.status,
                "refreshing the JWKS failed; verifying with the keys read before"
            );
        }
    }

    async fn stale(&self) -> bool {
        self.keys
            .read()
            .await
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.refresh)
    }

    async fn refetch_for(&self, kid: &str) -> Result<Option<DecodingKey>, Problem> {
        let mut last = self.last_fetch.lock().await;
        let cached = self.keys.read().await.keys.get(kid).cloned();
        if cached.is_some() {
            // Another request fetched while we waited.
            return Ok(cached);
        }
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        self.fetch().await?;
        Ok(self.keys.read().await.keys.get(kid).cloned())
    }

    /// Replaces the key set with what the source publishes now; the caller
    /// holds `last_fetch`.
    async fn fetch(&self) -> Result<(), Problem> {
        let jwks = (self.source)().await?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            if let Ok(key) = DecodingKey::from_ed_components(&jwk.x) {
                keys.insert(jwk.kid, key);
            }
        }
        *self.keys.write().await = KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        };
        Ok(())
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
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    /// What the fake idsvc publishes; tests change it under the verifier.
    type Published = Arc<std::sync::Mutex<Vec<pb::Jwk>>>;

    struct Signer {
        kid: String,
        key: EncodingKey,
        jwk: pb::Jwk,
    }

    fn signer(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        Signer {
            kid: kid.into(),
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: pb::Jwk { kid: kid.into(), x },
        }
    }

    /// A verifier over a key source the test controls, and the source.
    fn verifier_over(published: &[&Signer], refresh: Duration) -> (AccessVerifier, Published) {
        let keys: Published = Arc::new(std::sync::Mutex::new(
            published.iter().map(|s| s.jwk.clone()).collect(),
        ));
        let source_keys = Arc::clone(&keys);
        let source: JwksSource = Arc::new(move || {
            let keys = source_keys.lock().unwrap().clone();
            Box::pin(async move { Ok(pb::Jwks { keys }) })
        });
        (AccessVerifier::with_source(source, refresh), keys)
    }

    /// A verifier that publishes the key `kid-1`, and that key's signer.
    fn verifier() -> (AccessVerifier, Signer) {
        let signer = signer("kid-1");
        let (verifier, _) = verifier_over(&[&signer], Duration::from_secs(60));
        (verifier, signer)
    }

    fn token(signer: &Signer, exp: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        let claims = serde_json::json!({
            "sub": "42", "sid": "s-1", "exp": exp, "iss": "idbase", "aud": "idbase",
        });
        jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
    }

    #[tokio::test]
    async fn verified_tokens_are_remembered_until_they_expire() {
        let (verifier, signer) = verifier();
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
        let (verifier, signer) = verifier();
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
                    kid: "kid-1".into(),
                    valid_until_ms: now_ms() - 1,
                }
            });
        assert!(verifier.verify(&stale).await.is_err());
    }

    #[tokio::test]
    async fn a_key_dropped_from_the_jwks_stops_verifying_within_the_refresh_interval() {
        let (old, new) = (signer("k-old"), signer("k-new"));
        let refresh = Duration::from_millis(300);
        let (verifier, published) = verifier_over(&[&old, &new], refresh);
        let exp = now_ms() / 1000 + 600;
        let (old_token, new_token) = (token(&old, exp), token(&new, exp));
        // Both verify, and both are remembered.
        assert!(verifier.verify(&old_token).await.is_ok());
        assert!(verifier.verify(&new_token).await.is_ok());
        assert_eq!(verifier.verified.len(), 2);

        published.lock().unwrap().retain(|jwk| jwk.kid != "k-old");
        let dropped = Instant::now();
        let deadline = dropped + refresh * 10;
        let refused = loop {
            match verifier.verify(&old_token).await {
                Err(problem) => break problem,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "k-old still verifies");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // Refused once the interval since the last read was up, not later
        // than one interval (plus scheduling slack) after the drop.
        assert!(dropped.elapsed() < refresh * 3, "{:?}", dropped.elapsed());
        assert_eq!(refused.status, 401);
        assert_eq!(refused.kind, "urn:idbase:problem:invalid-token");
        // The key idsvc still publishes keeps verifying, from memory too.
        assert!(verifier.verify(&new_token).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_source_keeps_the_keys_read_before() {
        let signer = signer("kid-1");
        let answers = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answering = Arc::clone(&answers);
        let jwk = signer.jwk.clone();
        let source: JwksSource = Arc::new(move || {
            let up = answering.load(std::sync::atomic::Ordering::SeqCst);
            let keys = vec![jwk.clone()];
            Box::pin(async move {
                if up {
                    Ok(pb::Jwks { keys })
                } else {
                    Err(Problem::unavailable())
                }
            })
        });
        let refresh = Duration::from_millis(100);
        let verifier = AccessVerifier::with_source(source, refresh);
        let good = token(&signer, now_ms() / 1000 + 600);
        assert!(verifier.verify(&good).await.is_ok());
        answers.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(refresh * 2).await;
        assert!(verifier.verify(&good).await.is_ok());
        assert!(
            verifier.stale().await,
            "a failed read must not count as fresh"
        );
    }
}
