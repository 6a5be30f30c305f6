//! Logging in: the throttle, the password (or the dummy hash), the upgrade
//! of outdated hashes; and the edge's login-anomaly events.

use super::{IdentityService, TokenPair, next_version};
use crate::crypto::legacy_hash;
use crate::crypto::password::Verification;
use crate::domain::password::reject_oversized;
use crate::domain::{Email, Error, LoginThrottleKeys, Password, Result, SourceNetwork, UserRow};
use tokio::time::Instant;
use tracing::warn;
use zeroize::Zeroizing;

impl IdentityService {
    /// Logs in from an unknown network (all such logins share one).
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair> {
        self.login_from(email, password, None, "").await
    }

    /// Logs in; failures are counted per (email, `source`) and per email
    /// (see `domain::throttle`). `client_id` names the client app (kept
    /// with the session; empty when unknown).
    pub async fn login_from(
        &self,
        email: &str,
        password: &str,
        source: Option<SourceNetwork>,
        client_id: &str,
    ) -> Result<TokenPair> {
        let email = Email::parse(email).map_err(|_| Error::InvalidCredentials)?;
        let started = Instant::now();
        let network = source.map_or_else(|| "unknown".to_owned(), |n| n.as_text());
        let throttle_keys = LoginThrottleKeys {
            pair: self.index.login_throttle_from(email.as_str(), &network),
            email: self.index.login_throttle(email.as_str()),
        };
        self.policy
            .throttle
            .begin_login(&*self.store, &*self.clock, &throttle_keys)
            .await?;
        let user = self
            .store
            .user_by_email_index(&self.index.email(email.as_str()))
            .await?;
        // Unknown email and wrong password do the same work and say the same.
        let verification = match reject_oversized(password) {
            Ok(()) => {
                let stored = user.as_ref().map_or(&self.dummy_hash, |u| &u.password_hash);
                self.verify(password, stored.clone()).await?
            }
            Err(_) => Verification::Mismatch,
        };
        let scheme = scheme_label(user.as_ref().map(|u| u.password_hash.as_str()));
        let Some(user) = user.filter(|_| verification.matched()) else {
            self.pad_failed_check(started, scheme).await;
            return Err(Error::InvalidCredentials);
        };
        self.policy
            .throttle
            .login_succeeded(&*self.store, &throttle_keys)
            .await?;
        if verification == Verification::MatchNeedsRehash {
            self.upgrade_hash(&user, password).await;
        }
        self.start_session(user.id, super::tokens::client_label(client_id).as_deref())
            .await
    }

    /// Pads a failed credential check (login, current password) with an
    /// async sleep to the configured floor, measured from `started`, so its
    /// duration does not tell an unknown email from a member, nor one hash
    /// scheme from another. A check that already ran past the floor is not
    /// padded but counted: the floor is then too low for that scheme.
    pub(super) async fn pad_failed_check(&self, started: Instant, scheme: &'static str) {
        let floor = self.policy.credential_failure_floor;
        if started.elapsed() > floor {
            metrics::counter!("idbase_credential_check_over_floor_total", "scheme" => scheme)
                .increment(1);
            return;
        }
        tokio::time::sleep_until(started + floor).await;
    }

    /// Records a security event raised at the edge (the gateway's login-anomaly
    /// detection). Kinds are a closed list and details are bounded, so the
    /// audit trail cannot be filled with arbitrary text.
    pub async fn record_edge_event(&self, kind: &str, detail: &str) -> Result<()> {
        const EDGE_KINDS: [&str; 2] = ["login_anomaly", "login_autoblock"];
        const MAX_DETAIL: usize = 512;
        if !EDGE_KINDS.contains(&kind) {
            return Err(Error::Invalid {
                field: "kind",
                reason: format!("must be one of {EDGE_KINDS:?}"),
            });
        }
        if detail.len() > MAX_DETAIL {
            return Err(Error::Invalid {
                field: "detail",
                reason: format!("longer than {MAX_DETAIL} bytes"),
            });
        }
        let now = self.clock.now_ms();
        self.store
            .record_security_event(kind, None, detail, now)
            .await?;
        Ok(())
    }

    /// Stores a fresh argon2id hash after a login with outdated parameters or a
    /// legacy scheme. Best effort: the login succeeds either way.
    async fn upgrade_hash(&self, user: &UserRow, password: &str) {
        let scheme = legacy_hash::canonical(&user.password_hash)
            .map_or("unknown", |(_, scheme)| scheme.label());
        let Ok(Ok(hash)) = self
            .hashing
            .hash(Zeroizing::new(
                Password::normalise(password).expose().to_owned(),
            ))
            .await
        else {
            return;
        };
        let now = self.clock.now_ms();
        let next = UserRow {
            password_hash: hash,
            version: next_version(user.version, now),
            updated_at: now,
            ..user.clone()
        };
        match self
            .store
            .rehash_user(&next, user.version, &user.password_hash)
            .await
        {
            Ok(true) => {
                metrics::counter!("idbase_password_rehash_total", "from" => scheme).increment(1)
            }
            Ok(false) => {}
            Err(err) => warn!(user_id = user.id, cause = %err, "password rehash not stored"),
        }
    }
}

/// The metrics label of a stored hash's scheme; `none` for an unknown email.
pub(super) fn scheme_label(stored: Option<&str>) -> &'static str {
    match stored {
        None => "none",
        Some(stored) => legacy_hash::canonical(stored).map_or("unknown", |(_, s)| s.label()),
    }
}
