//! "Me": read, change (email, phone, password) and withdraw.

use super::{IdentityService, Principal, User, UserChanges, next_version};
use crate::domain::password::reject_oversized;
use crate::domain::{Email, Error, Password, Phone, Result, UserRow};
use tracing::info;

impl IdentityService {
    pub async fn me(&self, principal: &Principal) -> Result<User> {
        let row = self.session_user(principal).await?;
        self.user_from(&row)
    }

    pub async fn update_me(&self, principal: &Principal, changes: UserChanges) -> Result<User> {
        let row = self.session_user(principal).await?;
        let current = self.user_from(&row)?;
        let email = changes
            .email
            .as_deref()
            .map(Email::parse_strict)
            .transpose()?;
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
        next.phone_index = sealed.phone_index;
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

    async fn session_user(&self, principal: &Principal) -> Result<UserRow> {
        self.store
            .user_in_session(principal.user_id, &principal.session_id)
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// Checks the current password before a sensitive change, under the same
    /// throttle as logins so a stolen access token cannot guess it.
    /// A wrong password takes the same padded time as a failed login.
    async fn confirm_password(&self, row: &UserRow, email: &Email, password: &str) -> Result<()> {
        let started = tokio::time::Instant::now();
        let key = self.index.login_throttle(email.as_str());
        self.policy
            .throttle
            .begin_attempt(&*self.store, &*self.clock, &key)
            .await?;
        let matched = match reject_oversized(password) {
            Ok(()) => self
                .verify(password, row.password_hash.clone())
                .await?
                .matched(),
            Err(_) => false,
        };
        if !matched {
            let scheme = super::login::scheme_label(Some(&row.password_hash));
            self.pad_failed_check(started, scheme).await;
            return Err(Error::WrongCurrentPassword);
        }
        self.policy.throttle.succeeded(&*self.store, &key).await
    }
}
