//! Sessions and their tokens: issue, refresh (rotation), revoke.

use super::{IdentityService, TokenPair, millis};
use crate::crypto::tokens::{self, AUDIENCE, AccessClaims, ISSUER};
use crate::domain::phase::LegacyTraffic;
use crate::domain::{
    Error, ExchangeOutcome, LegacyExchange, Millis, NewRefreshToken, Result, RotateOutcome,
    Rotation, UserId,
};
use tracing::{info, warn};

impl IdentityService {
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        if refresh_token.is_empty() || refresh_token.len() > 128 {
            return Err(Error::InvalidToken);
        }
        let presented = tokens::refresh_token_hash(refresh_token);
        let secret = tokens::new_refresh_secret();
        let successor = |user_id: UserId, session_id: &str| {
            tokens::refresh_token_hash(&tokens::refresh_token(&secret, user_id, session_id))
        };
        let now = self.clock.now_ms();
        let outcome = self
            .store
            .rotate_refresh_token(Rotation {
                presented: &presented,
                claimed: tokens::refresh_token_session(refresh_token),
                successor: &successor,
                expires_at: now + millis(self.policy.refresh_ttl),
                now,
                grace_ms: millis(self.policy.refresh_grace),
                max_age_ms: millis(self.policy.session_max_age),
                idle_ms: millis(self.policy.session_idle),
            })
            .await?;
        match outcome {
            RotateOutcome::Rotated {
                user_id,
                session_id,
            } => {
                let next = tokens::refresh_token(&secret, user_id, &session_id);
                self.token_pair(user_id, &session_id, next, now)
            }
            RotateOutcome::Reused {
                user_id,
                session_id,
            } => {
                warn!(user_id, session_id, "refresh token reused: session revoked");
                self.store
                    .record_security_event(
                        "refresh_token_reuse",
                        Some(user_id),
                        &format!("session {session_id} revoked"),
                        now,
                    )
                    .await?;
                Err(Error::InvalidToken)
            }
            RotateOutcome::Invalid => Err(Error::InvalidToken),
        }
    }

    /// Logs out the session the token belongs to. Unknown tokens are ignored:
    /// revocation is idempotent and tells nothing.
    pub async fn revoke(&self, refresh_token: &str) -> Result<()> {
        if refresh_token.is_empty() || refresh_token.len() > 128 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if let Some(user_id) = self
            .store
            .revoke_session_of(&tokens::refresh_token_hash(refresh_token), now)
            .await?
        {
            info!(user_id, "session revoked");
        }
        Ok(())
    }

    /// Opens an idbase session for a member whose legacy refresh token the
    /// gateway redeemed at legacy (from phase 3). The token's SHA-256 is
    /// recorded: the same token again within the refresh grace window (a
    /// client that missed our answer) gets a rotation of the same session;
    /// later, or for another member, it is an invalid token.
    pub async fn exchange_legacy_session(
        &self,
        user_id: UserId,
        legacy_token_sha256: &[u8],
        client_id: &str,
    ) -> Result<TokenPair> {
        if legacy_token_sha256.len() != 32 {
            return Err(Error::invalid(
                "legacy_token_sha256",
                "must be the 32 bytes of a SHA-256",
            ));
        }
        // Unknown or withdrawn: legacy's answer is no longer ours to honour.
        if user_id <= 0 || self.store.user(user_id).await?.is_none() {
            return Err(Error::InvalidToken);
        }
        self.legacy_traffic
            .count(LegacyTraffic::TokenExchange, 1)
            .await?;
        let client = client_label(client_id);
        let client_id = client.as_deref().unwrap_or("-");
        let new_session = uuid::Uuid::new_v4().to_string();
        let secret = tokens::new_refresh_secret();
        let successor = |user_id: UserId, session_id: &str| {
            tokens::refresh_token_hash(&tokens::refresh_token(&secret, user_id, session_id))
        };
        let now = self.clock.now_ms();
        let outcome = self
            .store
            .exchange_legacy_session(LegacyExchange {
                legacy_token: legacy_token_sha256,
                user_id,
                session_id: &new_session,
                successor: &successor,
                expires_at: now + millis(self.policy.refresh_ttl.min(self.policy.session_max_age)),
                now,
                grace_ms: millis(self.policy.refresh_grace),
                max_age_ms: millis(self.policy.session_max_age),
                client: client.as_deref(),
            })
            .await?;
        let session_id = match outcome {
            ExchangeOutcome::Opened { session_id } => {
                info!(user_id, client_id, "legacy session exchanged");
                session_id
            }
            ExchangeOutcome::Rotated { session_id } => {
                info!(
                    user_id,
                    client_id, "legacy session exchange retried: rotated"
                );
                session_id
            }
            ExchangeOutcome::Invalid => {
                warn!(
                    user_id,
                    client_id, "legacy refresh token exchanged before: refused"
                );
                return Err(Error::InvalidToken);
            }
        };
        let refresh = tokens::refresh_token(&secret, user_id, &session_id);
        self.token_pair(user_id, &session_id, refresh, now)
    }

    /// Opens a session for the member; `client` is the client app that asked.
    pub(super) async fn start_session(
        &self,
        user_id: UserId,
        client: Option<&str>,
    ) -> Result<TokenPair> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let refresh = tokens::refresh_token(&tokens::new_refresh_secret(), user_id, &session_id);
        let now = self.clock.now_ms();
        let token = NewRefreshToken {
            hash: &tokens::refresh_token_hash(&refresh),
            session_id: &session_id,
            user_id,
            expires_at: now + millis(self.policy.refresh_ttl.min(self.policy.session_max_age)),
        };
        self.store.create_session(token, client, now).await?;
        self.token_pair(user_id, &session_id, refresh, now)
    }

    fn token_pair(
        &self,
        user_id: UserId,
        session_id: &str,
        refresh_token: String,
        now: Millis,
    ) -> Result<TokenPair> {
        let iat = now / 1000;
        let claims = AccessClaims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: user_id.to_string(),
            sid: session_id.to_owned(),
            iat,
            exp: iat + i64::try_from(self.policy.access_ttl.as_secs()).unwrap_or(i64::MAX),
        };
        Ok(TokenPair {
            access_token: self.signer.sign(&claims).map_err(Error::internal)?,
            refresh_token,
            expires_in: self.policy.access_ttl,
        })
    }
}

/// The client app's id as the gateway names it, kept with the session for
/// support (and logged): printable ASCII, at most 64 characters; `None` when
/// the gateway did not say or said something else.
pub(super) fn client_label(client_id: &str) -> Option<String> {
    let client_id = client_id.trim();
    let fits = !client_id.is_empty()
        && client_id.len() <= 64
        && client_id.bytes().all(|b| b.is_ascii_graphic());
    fits.then(|| client_id.to_owned())
}
