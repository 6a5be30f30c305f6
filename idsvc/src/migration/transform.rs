//! A legacy record → the row a double write would store, or a reject reason.

use super::mapping::Mapping;
use super::source::{Record, Source};
use crate::crypto::legacy_hash::{self, SaltPosition};
use crate::domain::{IdentityService, LegacyUser, Millis, UserRow};
use time::UtcOffset;

/// A transformed legacy row.
#[derive(Clone, Debug)]
pub struct LegacyRecord {
    /// The row as the live service stores it (sealed, blind-indexed).
    pub row: UserRow,
    /// Soft-deleted in the legacy table.
    pub deleted: bool,
}

/// A row that cannot be transformed: its id (as the source spells it) and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reject {
    pub id: String,
    pub reason: String,
}

/// Column positions and rules, resolved once per source.
pub struct Transformer {
    id: usize,
    email: usize,
    phone: Option<usize>,
    hash: usize,
    salt: Option<usize>,
    deleted: Option<usize>,
    created: Option<usize>,
    updated: Option<usize>,
    version: usize,
    salted: Option<(String, SaltPosition)>,
    deleted_values: Vec<String>,
    offset: UtcOffset,
}

impl Transformer {
    pub fn new(mapping: &Mapping, source: &Source) -> anyhow::Result<Self> {
        let c = &mapping.columns;
        let opt = |name: &Option<String>| name.as_deref().map(|n| source.position(n)).transpose();
        let salted = mapping.password.scheme.strip_prefix("salted-").map(|alg| {
            let pos = if mapping.password.salt_position == "after" {
                SaltPosition::After
            } else {
                SaltPosition::Before
            };
            (alg.to_owned(), pos)
        });
        Ok(Self {
            id: source.position(&c.id)?,
            email: source.position(&c.email)?,
            phone: opt(&c.phone)?,
            hash: source.position(&c.password_hash)?,
            salt: opt(&c.password_salt)?,
            deleted: opt(&c.deleted)?,
            created: opt(&c.created)?,
            updated: opt(&c.updated)?,
            version: source.position(&c.version)?,
            salted,
            deleted_values: mapping.deleted.values.clone(),
            offset: mapping.offset()?,
        })
    }

    /// Normalises, validates, seals and blind-indexes one record through the
    /// live service's own code (`IdentityService::legacy_row`).
    pub fn transform(
        &self,
        service: &IdentityService,
        record: &Record,
        now: Millis,
    ) -> Result<LegacyRecord, Reject> {
        let field = |i: usize| record.get(i).and_then(|v| v.as_deref());
        let raw_id = field(self.id).unwrap_or("").trim().to_owned();
        let reject = |reason: String| Reject {
            id: raw_id.clone(),
            reason,
        };
        let id: i64 = raw_id
            .parse()
            .map_err(|_| reject("id is not an integer".into()))?;
        let stamp = |i: Option<usize>, what: &str| -> Result<Option<i64>, Reject> {
            match i.and_then(field) {
                None => Ok(None),
                Some(v) => super::mapping::stamp_millis(v, self.offset)
                    .map(Some)
                    .ok_or_else(|| reject(format!("{what} {v:?} is not a timestamp or integer"))),
            }
        };
        let version = stamp(Some(self.version), "version")?
            .ok_or_else(|| reject("version is NULL".into()))?;
        let created = stamp(self.created, "created")?;
        let updated = stamp(self.updated, "updated")?;
        let raw_hash = field(self.hash).ok_or_else(|| reject("password hash is NULL".into()))?;
        let password_hash = match &self.salted {
            None => raw_hash.to_owned(),
            Some((alg, pos)) => {
                let salt = self.salt.and_then(field).unwrap_or("");
                legacy_hash::salted(alg, *pos, salt.as_bytes(), raw_hash)
                    .map_err(|e| reject(format!("password hash: {e}")))?
            }
        };
        let legacy = LegacyUser {
            id,
            email: field(self.email).unwrap_or("").to_owned(),
            phone: self.phone.and_then(field).map(str::to_owned),
            password_hash,
            version,
        };
        let mut row = service
            .legacy_row(&legacy, now)
            .map_err(|e| reject(e.to_string()))?;
        row.created_at = created.unwrap_or(now);
        row.updated_at = updated.unwrap_or(row.created_at);
        let deleted = self
            .deleted
            .and_then(field)
            .is_some_and(|v| self.deleted_values.iter().any(|d| d == v.trim()));
        Ok(LegacyRecord { row, deleted })
    }
}
