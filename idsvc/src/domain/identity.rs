//! The use cases of the ID service: register, log in, refresh, revoke, read
//! and change "me", withdraw, and the legacy system's double writes.

use super::password::reject_oversized;
use super::{
    Clock, Email, Error, Millis, NewRefreshToken, NewUser, Password, Phone, RegistrationKey,
    Result, RotateOutcome, Rotation, SealedPii, Store, StoreError, ThrottlePolicy, UpsertOutcome,
    UserId, UserRow,
};
use crate::crypto::legacy_hash;
use crate::crypto::password::{PoolFull, Verification};
use crate::crypto::pii::Field;
use crate::crypto::tokens::{self, AUDIENCE, AccessClaims, ISSUER, PublicKey};
use crate::crypto::{BlindIndex, HashingPool, KeyRing, PiiSealer, TokenSigner};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use zeroize::Zeroizing;

/// Tunable rules, with defaults from NIST SP 800-63B, OWASP ASVS and RFC 9700.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_password_chars: usize,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a just-rotated refresh token may be presented again.
    pub refresh_grace: Duration,
    pub throttle: ThrottlePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_password_chars: super::DEFAULT_MIN_PASSWORD_CHARS,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            refresh_grace: Duration::from_secs(10),
            throttle: ThrottlePolicy::default(),
        }
    }
}

/// How long an `Idempotency-Key` of a registration is remembered.
pub const REGISTRATION_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A client's `Idempotency-Key` for a registration: unique per client.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyKey<'a> {
    pub client: &'a str,
    pub key: &'a str,
}

impl IdempotencyKey<'_> {
    /// At most this many bytes; printable ASCII, like a UUID or ULID.
    pub const MAX_LEN: usize = 255;

    fn validate(&self) -> Result<()> {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if self.key.is_empty() || self.key.len() > Self::MAX_LEN || !printable(self.key) {
            return Err(Error::invalid(
                "idempotency_key",
                format!("must be 1 to {} printable ASCII characters", Self::MAX_LEN),
            ));
        }
        if self.client.is_empty() {
            return Err(Error::invalid(
                "client_id",
                "is required with an idempotency key",
            ));
        }
        Ok(())
    }
}

/// A member as clients see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub phone: Option<Phone>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Whom a verified access token speaks for.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: UserId,
    pub session_id: String,
}

pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
}

// Tokens are secrets: never printed.
impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A change to "me". Email and password changes need the current password.
#[derive(Default)]
pub struct UserChanges {
    pub email: Option<String>,
    /// `Some("")` removes the phone number.
    pub phone: Option<String>,
    pub password: Option<String>,
    pub current_password: Option<String>,
}

/// A legacy member normalised and validated, not yet sealed.
pub struct LegacyFields {
    pub email: Email,
    /// HMAC blind index of the normalised email, as `users.email_index` holds it.
    pub email_index: [u8; 32],
    pub phone: Option<Phone>,
    /// The canonical stored form (`crypto::legacy_hash`).
    pub password_hash: String,
}

/// A double write from the legacy system.
pub struct LegacyUser {
    pub id: UserId,
    pub email: String,
    pub phone: Option<String>,
    pub password_hash: String,
    pub version: i64,
}

pub struct IdentityService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: PiiSealer,
    index: BlindIndex,
    signer: TokenSigner,
    hashing: HashingPool,
    policy: Policy,
    /// Verified when no account has the email, so that case costs the same.
    dummy_hash: String,
}

impl IdentityService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: &KeyRing,
        hashing: HashingPool,
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let dummy_hash = hashing.params().hash(&tokens::new_refresh_secret())?;
        Ok(Self {
            store,
            clock,
            sealer: PiiSealer::new(keys)?,
            index: BlindIndex::new(keys),
            signer: TokenSigner::new(keys)?,
            hashing,
            policy,
            dummy_hash,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub async fn register(&self, email: &str, password: &str, phone: Option<&str>) -> Result<User> {
        self.register_once(None, email, password, phone).await
    }

    /// Registers a member at most once per `(client, key)`: a retry of the
    /// same request within [`REGISTRATION_KEY_TTL`] answers with the member
    /// the first attempt created; the same key with another request is refused.
    pub async fn register_once(
        &self,
        key: Option<IdempotencyKey<'_>>,
        email: &str,
        password: &str,
        phone: Option<&str>,
    ) -> Result<User> {
        reject_oversized(password)?;
        let email = Email::parse(email)?;
        let phone = phone.map(Phone::parse).transpose()?;
        let password = Password::new_for(password, &email, self.policy.min_password_chars)?;
        let now = self.clock.now_ms();
        let key = key
            .map(|key| -> Result<_> {
                key.validate()?;
                let request = self.index.registration_request(
                    email.as_str(),
                    phone.as_ref().map(Phone::as_str),
                    password.expose(),
                );
                Ok((self.index.registration_key(key.client, key.key), request))
            })
            .transpose()?;
        if let Some(user) = self.registered_by(key.as_ref(), now).await? {
            return Ok(user);
        }
        let index = self.index.email(email.as_str());
        // Cheap check first, so a taken email costs no hashing; the unique
        // index still decides races. Either way, a retry of this request may
        // have lost to its first attempt, which registered meanwhile.
        if self.store.user_by_email_index(&index).await?.is_some() {
            return self
                .registered_by(key.as_ref(), now)
                .await?
                .ok_or(Error::Conflict("email is already in use"));
        }
        let hash = self.hash(password).await?;
        let seal = |id| self.seal(id, &email, phone.as_ref());
        let new = NewUser {
            email_index: &index,
            password_hash: &hash,
            version: now,
            now,
            key: key.as_ref().map(|(key, request)| RegistrationKey {
                key,
                request,
                expires_at: now + millis(REGISTRATION_KEY_TTL),
            }),
        };
        let row = match self.store.create_user(new, &seal).await {
            Ok(row) => row,
            Err(err @ (StoreError::EmailTaken | StoreError::RegistrationKeyTaken)) => {
                return self
                    .registered_by(key.as_ref(), now)
                    .await?
                    .ok_or_else(|| err.into());
            }
            Err(err) => return Err(err.into()),
        };
        info!(user_id = row.id, email = %email.masked(), "member registered");
        self.user_from(&row)
    }

    /// The member an earlier registration with this key (and its request
    /// fingerprint) created, if any.
    async fn registered_by(
        &self,
        key: Option<&([u8; 32], [u8; 32])>,
        now: Millis,
    ) -> Result<Option<User>> {
        let Some((key, request)) = key else {
            return Ok(None);
        };
        let Some(earlier) = self.store.registration(key, now).await? else {
            return Ok(None);
        };
        // Keyed hashes of equal length: the comparison leaks nothing useful,
        // but costs nothing to make constant-time.
        if !bool::from(earlier.request.as_slice().ct_eq(request.as_slice())) {
            return Err(Error::KeyReused);
        }
        match self.store.user(earlier.user_id).await? {
            Some(row) => {
                info!(
                    user_id = row.id,
                    "registration replayed for its idempotency key"
                );
                self.user_from(&row).map(Some)
            }
            None => Err(Error::Conflict(
                "the member this idempotency key registered has since been deleted",
            )),
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair> {
        let email = Email::parse(email).map_err(|_| Error::InvalidCredentials)?;
        let throttle_key = self.index.login_throttle(email.as_str());
        self.policy
            .throttle
            .begin_attempt(&*self.store, &*self.clock, &throttle_key)
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
        let Some(user) = user.filter(|_| verification.matched()) else {
            return Err(Error::InvalidCredentials);
        };
        self.policy
            .throttle
            .succeeded(&*self.store, &throttle_key)
            .await?;
        if verification == Verification::MatchNeedsRehash {
            self.upgrade_hash(&user, password).await;
        }
        self.start_session(user.id).await
    }

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

    pub async fn me(&self, principal: &Principal) -> Result<User> {
        let row = self.session_user(principal).await?;
        self.user_from(&row)
    }

    pub async fn update_me(&self, principal: &Principal, changes: UserChanges) -> Result<User> {
        let row = self.session_user(principal).await?;
        let current = self.user_from(&row)?;
        let email = changes.email.as_deref().map(Email::parse).transpose()?;
        let phone = match changes.phone.as_deref() {
            None => current.phone.clone(),
            Some(raw) if raw.trim().is_empty() => None,
            Some(raw) => Some(Phone::parse(raw)?),
        };
        let final_email = email.clone().unwrap_or_else(|| current.email.clone());
        let password = changes
            .password
            .as_deref()
            .map(|raw| {
                reject_oversized(raw)?;
                Password::new_for(raw, &final_email, self.policy.min_password_chars)
            })
            .transpose()?;
        // The phone counts like the email: whoever holds a stolen access
        // token must not be able to redirect where the member is reached.
        if email.is_some() || password.is_some() || changes.phone.is_some() {
            let confirm = changes.current_password.as_deref().ok_or_else(|| {
                Error::invalid(
                    "current_password",
                    "is required to change email, phone or password",
                )
            })?;
            self.confirm_password(&row, &current.email, confirm).await?;
        }
        let now = self.clock.now_ms();
        let mut next = row.clone();
        if let Some(email) = &email {
            next.email_index = self.index.email(email.as_str()).to_vec();
        }
        let password_changed = password.is_some();
        if let Some(password) = password {
            next.password_hash = self.hash(password).await?;
        }
        let sealed = self
            .seal(row.id, &final_email, phone.as_ref())
            .map_err(Error::internal)?;
        next.email_sealed = sealed.email_sealed;
        next.phone_sealed = sealed.phone_sealed;
        next.version = next_version(row.version, now);
        next.updated_at = now;
        if !self.store.update_user(&next, row.version).await? {
            return Err(Error::Conflict("the account changed meanwhile; try again"));
        }
        if password_changed {
            let revoked = self
                .store
                .revoke_sessions(row.id, Some(&principal.session_id), now)
                .await?;
            info!(
                user_id = row.id,
                revoked, "password changed; other sessions revoked"
            );
        }
        self.user_from(&next)
    }

    /// Withdrawal: the member is deleted outright; a tombstone remains.
    pub async fn withdraw(&self, principal: &Principal, current_password: &str) -> Result<()> {
        let row = self.session_user(principal).await?;
        let email = self.user_from(&row)?.email;
        self.confirm_password(&row, &email, current_password)
            .await?;
        let now = self.clock.now_ms();
        self.store
            .delete_user(row.id, next_version(row.version, now), now)
            .await?;
        info!(user_id = row.id, "member withdrew");
        Ok(())
    }

    pub fn public_keys(&self) -> &[PublicKey] {
        self.signer.public_keys()
    }

    /// Double write: upsert by legacy id, newest version wins.
    pub async fn upsert_legacy(&self, legacy: LegacyUser) -> Result<(UpsertOutcome, i64)> {
        let row = self.legacy_row(&legacy, self.clock.now_ms())?;
        Ok(self.store.upsert_legacy(&row).await?)
    }

    /// The row a legacy member becomes: normalised, validated, sealed and
    /// blind-indexed exactly as a double write stores it. The migration jobs
    /// stage rows through here so both paths store the same thing.
    pub fn legacy_row(&self, legacy: &LegacyUser, now: Millis) -> Result<UserRow> {
        let fields = self.legacy_fields(legacy)?;
        let sealed = self
            .seal(legacy.id, &fields.email, fields.phone.as_ref())
            .map_err(Error::internal)?;
        Ok(UserRow {
            id: legacy.id,
            email_sealed: sealed.email_sealed,
            email_index: fields.email_index.to_vec(),
            phone_sealed: sealed.phone_sealed,
            password_hash: fields.password_hash,
            version: legacy.version,
            created_at: now,
            updated_at: now,
        })
    }

    /// A legacy member normalised and validated as `legacy_row` does, before
    /// sealing: what `migrate validate` compares a stored row against.
    pub fn legacy_fields(&self, legacy: &LegacyUser) -> Result<LegacyFields> {
        validate_legacy_ids(legacy.id, legacy.version)?;
        let email = Email::parse(&legacy.email)?;
        let phone = legacy
            .phone
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(Phone::parse)
            .transpose()?;
        let password_hash = check_password_hash(&legacy.password_hash)?;
        Ok(LegacyFields {
            email_index: self.index.email(email.as_str()),
            email,
            phone,
            password_hash,
        })
    }

    /// Opens a stored row's sealed email and phone as stored (normalised),
    /// for `migrate validate`, which compares them with the legacy values and
    /// never prints them. Each field fails on its own (another key, tampering).
    pub fn open_pii(
        &self,
        row: &UserRow,
    ) -> (anyhow::Result<String>, anyhow::Result<Option<String>>) {
        let email = self.sealer.open(Field::Email, row.id, &row.email_sealed);
        let phone = row
            .phone_sealed
            .as_deref()
            .map(|blob| self.sealer.open(Field::Phone, row.id, blob))
            .transpose();
        (email, phone)
    }

    /// `migrate purge`: deletes a member whose legacy row is soft-deleted,
    /// through the double write's delete path (tombstone at the legacy row's
    /// `version`, sessions revoked), and audits it as a security event. True
    /// when a member was deleted; false when none was stored or the stored
    /// row is newer than the legacy deletion (then nothing changes).
    pub async fn purge_legacy_deleted(&self, id: UserId, version: i64, job: &str) -> Result<bool> {
        validate_legacy_ids(id, version)?;
        let now = self.clock.now_ms();
        let deleted = self.store.delete_user(id, version, now).await?;
        if deleted {
            // After the delete: an event is written only for a deletion that
            // happened. A crash in between leaves a deletion that the job's
            // report file still lists.
            self.store
                .record_security_event(
                    "migration_purge",
                    Some(id),
                    &format!("{job}: soft-deleted in the legacy system at version {version}"),
                    now,
                )
                .await?;
            info!(
                user_id = id,
                version, "purged: soft-deleted in the legacy system"
            );
        }
        Ok(deleted)
    }

    /// Double write: delete by legacy id. Idempotent; an older version than
    /// the stored one is ignored.
    pub async fn delete_legacy(&self, id: UserId, version: i64) -> Result<()> {
        validate_legacy_ids(id, version)?;
        let now = self.clock.now_ms();
        self.store.delete_user(id, version, now).await?;
        Ok(())
    }

    /// Deletes throttle rows and registration keys that expired; run
    /// periodically.
    pub async fn purge_expired(&self) -> Result<u64> {
        let now = self.clock.now_ms();
        let before = self.policy.throttle.purge_before(now);
        let throttles = self.store.purge_throttle(before).await?;
        Ok(throttles + self.store.purge_registrations(now).await?)
    }

    async fn session_user(&self, principal: &Principal) -> Result<UserRow> {
        self.store
            .user_in_session(principal.user_id, &principal.session_id)
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// Checks the current password before a sensitive change, under the same
    /// throttle as logins so a stolen access token cannot guess it.
    async fn confirm_password(&self, row: &UserRow, email: &Email, password: &str) -> Result<()> {
        let key = self.index.login_throttle(email.as_str());
        self.policy
            .throttle
            .begin_attempt(&*self.store, &*self.clock, &key)
            .await?;
        reject_oversized(password).map_err(|_| Error::WrongCurrentPassword)?;
        if !self
            .verify(password, row.password_hash.clone())
            .await?
            .matched()
        {
            return Err(Error::WrongCurrentPassword);
        }
        self.policy.throttle.succeeded(&*self.store, &key).await
    }

    async fn start_session(&self, user_id: UserId) -> Result<TokenPair> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let refresh = tokens::refresh_token(&tokens::new_refresh_secret(), user_id, &session_id);
        let now = self.clock.now_ms();
        let token = NewRefreshToken {
            hash: &tokens::refresh_token_hash(&refresh),
            session_id: &session_id,
            user_id,
            expires_at: now + millis(self.policy.refresh_ttl),
        };
        self.store.create_session(token, now).await?;
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
        match self.store.update_user(&next, user.version).await {
            Ok(true) => {
                metrics::counter!("idbase_password_rehash_total", "from" => scheme).increment(1)
            }
            Ok(false) => {}
            Err(err) => warn!(user_id = user.id, cause = %err, "password rehash not stored"),
        }
    }

    async fn hash(&self, password: Password) -> Result<String> {
        let hashed = self
            .hashing
            .hash(Zeroizing::new(password.expose().to_owned()))
            .await
            .map_err(overloaded)?;
        hashed.map_err(Error::internal)
    }

    async fn verify(&self, password: &str, stored: String) -> Result<Verification> {
        let normalised = Zeroizing::new(Password::normalise(password).expose().to_owned());
        // A legacy system hashed the bytes as typed; a member who typed
        // full-width characters only matches the unnormalised form.
        let retry_raw = normalised.as_str() != password && !stored.starts_with("$argon2");
        let first = self
            .hashing
            .verify(normalised, stored.clone())
            .await
            .map_err(overloaded)?;
        if first.matched() || !retry_raw {
            return Ok(first);
        }
        self.hashing
            .verify(Zeroizing::new(password.to_owned()), stored)
            .await
            .map_err(overloaded)
    }

    fn seal(&self, id: UserId, email: &Email, phone: Option<&Phone>) -> anyhow::Result<SealedPii> {
        Ok(SealedPii {
            email_sealed: self.sealer.seal(Field::Email, id, email.as_str())?,
            phone_sealed: phone
                .map(|p| self.sealer.seal(Field::Phone, id, p.as_str()))
                .transpose()?,
        })
    }

    fn user_from(&self, row: &UserRow) -> Result<User> {
        let email = self
            .sealer
            .open(Field::Email, row.id, &row.email_sealed)
            .map_err(Error::internal)?;
        let phone = row
            .phone_sealed
            .as_deref()
            .map(|blob| self.sealer.open(Field::Phone, row.id, blob))
            .transpose()
            .map_err(Error::internal)?;
        Ok(User {
            id: row.id,
            email: Email::parse(&email)?,
            phone: phone.map(Phone::from_stored),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Changes made here (not by the legacy system) get a version above both the
/// stored one and the clock, so they order after legacy stamps taken earlier.
fn next_version(stored: i64, now: Millis) -> i64 {
    (stored + 1).max(now)
}

fn validate_legacy_ids(id: UserId, version: i64) -> Result<()> {
    if id <= 0 {
        return Err(Error::invalid("id", "must be a positive integer"));
    }
    if version < 0 {
        return Err(Error::invalid("version", "must not be negative"));
    }
    Ok(())
}

/// A double-written or imported hash must be in a scheme login can verify;
/// it is stored in its canonical form (see `crypto::legacy_hash`).
fn check_password_hash(hash: &str) -> Result<String> {
    legacy_hash::canonical(hash)
        .map(|(canonical, _)| canonical)
        .map_err(|e| Error::invalid("password_hash", e.to_string()))
}

fn overloaded(_: PoolFull) -> Error {
    Error::Overloaded {
        retry_after_secs: 1,
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
