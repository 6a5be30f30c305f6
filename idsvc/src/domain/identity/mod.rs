//! The use cases of the ID service, one file per use case: `register`,
//! `login`, `tokens` (refresh, revoke, sessions), `profile` ("me": read,
//! change, withdraw) and `legacy` (the legacy system's double writes and the
//! migration jobs' helpers). This file holds the service, its policy, the
//! types clients see, and what several use cases share (hashing, sealing).

mod legacy;
mod login;
mod profile;
mod register;
mod shadow;
mod support;
mod tokens;

pub use legacy::{LegacyFields, LegacyUser, flag_nonconforming_email};
pub use register::{IdempotencyKey, REGISTRATION_KEY_TTL};
pub use shadow::{ShadowCheck, ShadowRead};
pub use support::{MaskedMember, MemberKey, MemberRecord, mask_email_for_support, mask_phone};

use super::phase::{LegacyTraffic, LegacyTrafficCounter, Phase};
use super::{
    Clock, Email, Error, Millis, Password, Phone, Result, SealedPii, Store, ThrottlePolicy, UserId,
    UserRow,
};
use crate::crypto::legacy_hash::LegacyHashLimits;
use crate::crypto::password::{PoolFull, Verification};
use crate::crypto::pii::Field;
use crate::crypto::tokens::{self as token_crypto, PublicKey};
use crate::crypto::{BlindIndex, HashingPool, KeyRing, PiiSealer, TokenSigner};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Access token lifetime: short, because an access token cannot be revoked
/// before it expires (OWASP ASVS 3.5; RFC 9700 recommends short-lived tokens).
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 15 * 60;
/// Refresh token lifetime: a month keeps a member of a mobile app signed in
/// across normal use; each refresh rotates the token (RFC 9700 4.14).
pub const DEFAULT_REFRESH_TTL_DAYS: u64 = 30;
/// How long a rotated refresh token may come back: long enough for a client
/// that missed our answer to retry, short enough that a thief cannot use it.
pub const DEFAULT_REFRESH_GRACE_SECS: u64 = 10;
/// Absolute session lifetime from login: rotation never carries a session
/// past it, so a stolen refresh token used monthly still dies (OWASP ASVS
/// 3.3.2 asks for re-authentication at least every 30 days for L2 apps with
/// step-up; 90 days is the common consumer-app ceiling, as Cognito's and
/// Keycloak's "SSO Session Max" defaults allow up to).
pub const DEFAULT_SESSION_MAX_DAYS: u64 = 90;
/// A session unused this long cannot rotate. The refresh TTL already ends an
/// unused token after 30 days; the idle timeout keeps that rule when an
/// operator lengthens the refresh TTL, and can be set shorter on its own.
pub const DEFAULT_SESSION_IDLE_DAYS: u64 = DEFAULT_REFRESH_TTL_DAYS;

/// The least time a failed credential check (login, current password) takes,
/// measured from its start; failures are padded to it with an async sleep.
/// It hides which hash a member has (or that there is none). 250 ms holds the
/// legacy costs real systems use (bcrypt 10–11, PBKDF2 up to OWASP's 600,000,
/// ASP.NET Identity's 10,000–100,000) plus our argon2id, twice for the cheap
/// schemes when NFKC changes the password, on one production core. Hashes
/// near the caps (bcrypt 12, 1M PBKDF2, 64 MiB argon2) can run past it; those
/// are counted in `idbase_credential_check_over_floor_total{scheme}`.
pub const DEFAULT_CREDENTIAL_FAILURE_FLOOR_MS: u64 = 250;

/// Tunable rules, with defaults from NIST SP 800-63B, OWASP ASVS and RFC 9700
/// (the `DEFAULT_*` constants, which the flags use too).
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_password_chars: usize,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a just-rotated refresh token may be presented again.
    pub refresh_grace: Duration,
    /// Absolute session lifetime, counted from login.
    pub session_max_age: Duration,
    /// A session not refreshed for this long cannot rotate.
    pub session_idle: Duration,
    pub throttle: ThrottlePolicy,
    /// The costliest legacy hash a double write or an import may carry.
    pub legacy_hash_limits: LegacyHashLimits,
    /// Failed credential checks take at least this long (timing hides
    /// which accounts exist and which hash scheme they have).
    pub credential_failure_floor: Duration,
    /// From phase 4, members registered here get ids from this one upward
    /// (legacy's stay below; see `--native-id-margin`).
    pub native_id_start: UserId,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_password_chars: super::DEFAULT_MIN_PASSWORD_CHARS,
            access_ttl: Duration::from_secs(DEFAULT_ACCESS_TTL_SECS),
            refresh_ttl: days(DEFAULT_REFRESH_TTL_DAYS),
            refresh_grace: Duration::from_secs(DEFAULT_REFRESH_GRACE_SECS),
            session_max_age: days(DEFAULT_SESSION_MAX_DAYS),
            session_idle: days(DEFAULT_SESSION_IDLE_DAYS),
            throttle: ThrottlePolicy::default(),
            legacy_hash_limits: LegacyHashLimits::default(),
            credential_failure_floor: Duration::from_millis(DEFAULT_CREDENTIAL_FAILURE_FLOOR_MS),
            native_id_start: super::phase::DEFAULT_NATIVE_ID_START,
        }
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

pub struct IdentityService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: PiiSealer,
    index: BlindIndex,
    signer: TokenSigner,
    hashing: HashingPool,
    policy: Policy,
    legacy_traffic: LegacyTrafficCounter,
    mismatch_sampler: shadow::MismatchSampler,
    shadow_tally: shadow::ShadowTally,
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
        let dummy_hash = hashing.params().hash(&token_crypto::new_refresh_secret())?;
        Ok(Self {
            legacy_traffic: LegacyTrafficCounter::new(store.clone(), clock.clone()),
            store,
            clock,
            sealer: PiiSealer::new(keys)?,
            index: BlindIndex::new(keys),
            signer: TokenSigner::new(keys)?,
            hashing,
            policy,
            mismatch_sampler: shadow::MismatchSampler::default(),
            shadow_tally: shadow::ShadowTally::default(),
            dummy_hash,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn public_keys(&self) -> &[PublicKey] {
        self.signer.public_keys()
    }

    /// Deletes throttle rows and registration keys that expired; run
    /// periodically.
    pub async fn purge_expired(&self) -> Result<u64> {
        let now = self.clock.now_ms();
        let before = self.policy.throttle.purge_before(now);
        let throttles = self.store.purge_throttle(before).await?;
        Ok(throttles + self.store.purge_registrations(now).await?)
    }

    /// The phase as stored (`None` before idsvc first started its service).
    async fn phase(&self) -> Result<Option<Phase>> {
        Ok(self.store.phase_state().await?.map(|state| state.phase))
    }

    /// Where ids of members registered here start: from phase 4 idbase
    /// takes writes, and its members get ids from `native_id_start` up,
    /// apart from legacy's (double writes keep legacy's ids).
    async fn native_ids(&self) -> Result<Option<UserId>> {
        let native = self
            .phase()
            .await?
            .is_some_and(|phase| phase >= Phase::Writes);
        Ok(native.then_some(self.policy.native_id_start))
    }

    /// Double writes end with legacy: refused once migration is complete.
    /// Each one received is counted (double-write parity, legacy-quiet).
    async fn accept_double_write(&self) -> Result<()> {
        if self.phase().await? == Some(Phase::Complete) {
            return Err(Error::Gone(
                "migration is complete (phase 5): legacy's double writes are retired",
            ));
        }
        self.legacy_traffic
            .count(LegacyTraffic::DoubleWrite, 1)
            .await
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
        self.verify_on_pool(password, stored, false).await
    }

    /// [`Self::verify`] only while a hashing worker is free (shadow reads).
    async fn verify_when_idle(&self, password: &str, stored: String) -> Result<Verification> {
        self.verify_on_pool(password, stored, true).await
    }

    async fn verify_on_pool(
        &self,
        password: &str,
        stored: String,
        when_idle: bool,
    ) -> Result<Verification> {
        let run = |password: Zeroizing<String>, stored: String| async move {
            let verified = if when_idle {
                self.hashing.verify_if_idle(password, stored).await
            } else {
                self.hashing.verify(password, stored).await
            };
            verified.map_err(overloaded)
        };
        let normalised = Zeroizing::new(Password::normalise(password).expose().to_owned());
        // A legacy system hashed the bytes as typed; a member who typed
        // full-width characters only matches the unnormalised form.
        let retry_raw = normalised.as_str() != password && !stored.starts_with("$argon2");
        let first = run(normalised, stored.clone()).await?;
        if first.matched() || !retry_raw {
            return Ok(first);
        }
        run(Zeroizing::new(password.to_owned()), stored).await
    }

    fn seal(&self, id: UserId, email: &Email, phone: Option<&Phone>) -> anyhow::Result<SealedPii> {
        Ok(SealedPii {
            email_sealed: self.sealer.seal(Field::Email, id, email.as_str())?,
            phone_sealed: phone
                .map(|p| self.sealer.seal(Field::Phone, id, p.as_str()))
                .transpose()?,
            phone_index: phone.map(|p| self.index.phone(p.as_str()).to_vec()),
        })
    }

    /// Opens a stored row's sealed email and phone as stored (normalised).
    /// Each field fails on its own (another key, tampering): `migrate
    /// validate` compares them with the legacy values and never prints them;
    /// every other caller wants the member ([`Self::user_from`]).
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

    /// The member a stored row holds, its personal data opened.
    fn user_from(&self, row: &UserRow) -> Result<User> {
        let (email, phone) = self.open_pii(row);
        Ok(User {
            id: row.id,
            email: Email::parse(&email.map_err(Error::internal)?)?,
            phone: phone.map_err(Error::internal)?.map(Phone::from_stored),
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

/// Whole days as a duration (refresh token lifetimes are set in days).
pub fn days(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(24 * 60 * 60))
}

fn overloaded(_: PoolFull) -> Error {
    Error::Overloaded {
        retry_after_secs: 1,
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
