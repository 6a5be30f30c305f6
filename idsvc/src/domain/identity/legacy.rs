//! The legacy system's members: its double writes (upsert and delete by
//! legacy id, newest version wins) and the helpers the migration jobs call
//! (`legacy_row`, `legacy_fields`, `purge_legacy_deleted`), which store and
//! compare rows exactly as a double write does.

use super::IdentityService;
use crate::crypto::legacy_hash::{self, LegacyHashLimits};
use crate::domain::{Email, Error, Millis, Phone, Result, UpsertOutcome, UserId, UserRow};
use tracing::{info, warn};

/// A legacy member normalised and validated, not yet sealed.
pub struct LegacyFields {
    pub email: Email,
    /// HMAC blind index of the normalised email, as `users.email_index` holds it.
    pub email_index: [u8; 32],
    pub phone: Option<Phone>,
    /// The canonical stored form (`crypto::legacy_hash`).
    pub password_hash: String,
    /// Why the email would be refused by registration through idbase
    /// (`Email::nonconformity`): kept, because a migration must not drop a
    /// member legacy serves, but flagged for clean-up at the source.
    pub email_nonconformity: Option<&'static str>,
}

/// A double write from the legacy system.
pub struct LegacyUser {
    pub id: UserId,
    pub email: String,
    pub phone: Option<String>,
    pub password_hash: String,
    pub version: i64,
}

impl IdentityService {
    /// Double write: upsert by legacy id, newest version wins.
    pub async fn upsert_legacy(&self, legacy: LegacyUser) -> Result<(UpsertOutcome, i64)> {
        self.accept_double_write().await?;
        let (row, email_nonconformity) = self.legacy_row_flagged(&legacy, self.clock.now_ms())?;
        if let Some(reason) = email_nonconformity {
            flag_nonconforming_email(legacy.id, "double_write", reason);
        }
        Ok(self.store.upsert_legacy(&row).await?)
    }

    /// The row a legacy member becomes: normalised, validated, sealed and
    /// blind-indexed exactly as a double write stores it. The migration jobs
    /// stage rows through here so both paths store the same thing.
    pub fn legacy_row(&self, legacy: &LegacyUser, now: Millis) -> Result<UserRow> {
        self.legacy_row_flagged(legacy, now).map(|(row, _)| row)
    }

    /// `legacy_row`, and why its email would not be accepted by registration
    /// through idbase (`None` when it would).
    pub fn legacy_row_flagged(
        &self,
        legacy: &LegacyUser,
        now: Millis,
    ) -> Result<(UserRow, Option<&'static str>)> {
        let fields = self.legacy_fields(legacy)?;
        let sealed = self
            .seal(legacy.id, &fields.email, fields.phone.as_ref())
            .map_err(Error::internal)?;
        let row = UserRow {
            id: legacy.id,
            email_sealed: sealed.email_sealed,
            email_index: fields.email_index.to_vec(),
            phone_sealed: sealed.phone_sealed,
            phone_index: sealed.phone_index,
            password_hash: fields.password_hash,
            version: legacy.version,
            created_at: now,
            updated_at: now,
        };
        Ok((row, fields.email_nonconformity))
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
        let password_hash =
            check_password_hash(&legacy.password_hash, &self.policy.legacy_hash_limits)?;
        Ok(LegacyFields {
            email_index: self.index.email(email.as_str()),
            email_nonconformity: email.nonconformity(),
            email,
            phone,
            password_hash,
        })
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
        self.accept_double_write().await?;
        let now = self.clock.now_ms();
        self.store.delete_user(id, version, now).await?;
        Ok(())
    }
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

/// Counts and logs a legacy email that registration through idbase would
/// refuse. The line carries the member id and the reason, never the address.
pub fn flag_nonconforming_email(id: UserId, source: &'static str, reason: &'static str) {
    metrics::counter!("idbase_legacy_email_nonconforming_total", "source" => source).increment(1);
    warn!(
        user_id = id,
        source,
        reason,
        "legacy email kept as stored but does not conform; clean it up at the source"
    );
}

/// A double-written or imported hash must be in a scheme login can verify,
/// with a cost within the caps; it is stored in its canonical form (see
/// `crypto::legacy_hash`).
fn check_password_hash(hash: &str, limits: &LegacyHashLimits) -> Result<String> {
    legacy_hash::canonical_within(hash, limits)
        .map(|(canonical, _)| canonical)
        .map_err(|e| Error::invalid("password_hash", e.to_string()))
}
