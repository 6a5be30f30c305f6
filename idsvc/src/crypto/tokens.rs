//! Access tokens (EdDSA-signed JWTs) and refresh tokens (random, stored hashed).

use super::keys::KeyRing;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "idbase";
pub const AUDIENCE: &str = "idbase";

/// The claims of an access token. `sid` names the session (refresh-token
/// family), so a revoked session's access tokens stop working on `me` at once.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
}

/// A public verification key, as published in the JWKS.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub kid: String,
    /// Raw Ed25519 public key, base64url without padding.
    pub x: String,
}

pub struct TokenSigner {
    /// The newest key (it keeps its public half, which a signature needs) and
    /// `{"alg":"EdDSA","typ":"JWT","kid":…}`, base64url: the same for every
    /// token. `None` in a process loaded without signing keys (the migration
    /// jobs, [`super::keys::KeyUse::Jobs`]), which issues no tokens.
    newest: Option<(SigningKey, String)>,
    public: Vec<PublicKey>,
}

impl TokenSigner {
    pub fn new(keys: &KeyRing) -> anyhow::Result<Self> {
        let mut public = Vec::new();
        let mut newest = None;
        for (kid, seed) in &keys.signing {
            let signing = SigningKey::from_bytes(seed);
            public.push(PublicKey {
                kid: kid.clone(),
                x: URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
            });
            newest = Some((kid.clone(), signing));
        }
        let newest = match newest {
            Some((kid, key)) => {
                let header = serde_json::to_vec(
                    &serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                )?;
                Some((key, URL_SAFE_NO_PAD.encode(header)))
            }
            None => None,
        };
        Ok(Self { newest, public })
    }

    /// A JWS in compact serialization (RFC 7515 §7.1), assembled here rather
    /// than by `jsonwebtoken::encode`: that re-parses the PKCS#8 key for every
    /// token, and for Ed25519 re-deriving the public key doubles the cost of a
    /// login's or refresh's signature. Verification stays with jsonwebtoken
    /// (gateway, tests).
    pub fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let (key, header) = self
            .newest
            .as_ref()
            .context("no signing key loaded (a migration job issues no tokens)")?;
        let mut token = header.clone();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let signature = key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }

    /// Every verification key: the newest signs, all of them verify.
    pub fn public_keys(&self) -> &[PublicKey] {
        &self.public
    }
}

/// 256 random bits, base64url: the secret part of a refresh token.
pub fn new_refresh_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A refresh token: `SECRET.USER.SESSION`. Naming its member and session
/// lets a rotation write at once instead of reading the token's row first
/// (the store checks both against that row). They are the access token's
/// `sub` and `sid`: nothing the client does not hold already.
pub fn refresh_token(secret: &str, user_id: i64, session_id: &str) -> String {
    format!("{secret}.{user_id}.{session_id}")
}

/// The member and session a refresh token names; `None` for a token issued
/// before tokens named them (a bare secret) or a malformed one.
pub fn refresh_token_session(token: &str) -> Option<(i64, &str)> {
    let mut parts = token.splitn(3, '.');
    let (_secret, user_id, session_id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((user_id.parse().ok()?, session_id))
}

/// What is stored of a refresh token. Tokens carry 256 random bits, so a
/// fast unkeyed hash is enough: there is nothing to brute-force.
pub fn refresh_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    #[test]
    fn a_ring_loaded_for_jobs_publishes_and_signs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::generate(dir.path()).unwrap();
        let ring = KeyRing::load_for(dir.path(), crate::crypto::KeyUse::Jobs).unwrap();
        let signer = TokenSigner::new(&ring).unwrap();
        assert!(signer.public_keys().is_empty());
        let claims = AccessClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "42".into(),
            sid: "s1".into(),
            iat: 1_700_000_000,
            exp: 4_000_000_000,
        };
        let err = signer.sign(&claims).unwrap_err().to_string();
        assert!(err.contains("no signing key"), "{err}");
    }

    #[test]
    fn signs_with_newest_key_and_verifies_with_jwks() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::generate(dir.path()).unwrap();
        let signer = TokenSigner::new(&KeyRing::load(dir.path()).unwrap()).unwrap();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "42".into(),
            sid: "s1".into(),
            iat: 1_700_000_000,
            exp: 4_000_000_000,
        };
        let token = signer.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let jwk = &signer.public_keys()[0];
        assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let key = DecodingKey::from_ed_components(&jwk.x).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        let decoded = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).unwrap();
        assert_eq!(decoded.claims, claims);
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, b) = (new_refresh_secret(), new_refresh_secret());
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_eq!(refresh_token_hash(&a), refresh_token_hash(&a));
    }

    #[test]
    fn refresh_tokens_name_their_session() {
        let session = "0b6c1a52-3f4e-4d6a-9d1e-2f0c8a7b5e41";
        let token = refresh_token(&new_refresh_secret(), 42, session);
        assert_eq!(refresh_token_session(&token), Some((42, session)));
        assert!(token.len() <= 128, "fits the length refresh accepts");
        // A bare secret (tokens issued before) and junk name nothing.
        assert_eq!(refresh_token_session(&new_refresh_secret()), None);
        assert_eq!(refresh_token_session("a.b.c"), None);
    }
}
