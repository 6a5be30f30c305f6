//! Registration, at most once per client's `Idempotency-Key`.

use super::{IdentityService, User, millis};
use crate::domain::password::reject_oversized;
use crate::domain::{
    Email, Error, Millis, NewUser, Password, Phone, RegistrationKey, Result, StoreError,
};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::info;

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

impl IdentityService {
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
        let email = Email::parse_strict(email)?;
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
        // Hashed before the email is looked up: a taken email answers 409
        // (as Cognito and Keycloak do) but only after the same work as a new
        // one, so response time does not tell which emails are members; the
        // gateway's per-source rate rule on registration bounds how fast
        // anyone can ask. The unique index still decides races. Either way,
        // a retry of this request may have lost to its first attempt, which
        // registered meanwhile.
        let hash = self.hash(password).await?;
        if self.store.user_by_email_index(&index).await?.is_some() {
            return self
                .registered_by(key.as_ref(), now)
                .await?
                .ok_or(Error::Conflict("email is already in use"));
        }
        let seal = |id| self.seal(id, &email, phone.as_ref());
        let id_floor = self.native_ids().await?;
        let new = NewUser {
            id_floor,
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
}
