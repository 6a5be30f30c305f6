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
    /// Why the email would be refused by registration through idbase; the
    /// row is kept as legacy stored it, and the job flags it.
    pub email_nonconformity: Option<&'static str>,
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
        let parsed = self.parse(record)?;
        let (mut row, email_nonconformity) = service
            .legacy_row_flagged(&parsed.user, now)
            .map_err(|e| parsed.reject(e.to_string()))?;
        row.created_at = parsed.created.unwrap_or(now);
        row.updated_at = parsed.updated.unwrap_or(row.created_at);
        Ok(LegacyRecord {
            row,
            deleted: parsed.key.deleted,
            email_nonconformity,
        })
    }

    /// What `validate` and `purge` need before anything else: the id, the
    /// version stamp and the soft-delete flag. A soft-deleted row whose other
    /// columns are broken still has a key.
    pub fn key(&self, record: &Record) -> Result<RowKey, Reject> {
        let raw_id = field(record, self.id).unwrap_or("").trim();
        let reject = |reason: String| Reject {
            id: raw_id.to_owned(),
            reason,
        };
        let id: i64 = raw_id
            .parse()
            .map_err(|_| reject("id is not an integer".into()))?;
        let version = self
            .stamp(record, Some(self.version), "version")
            .map_err(reject)?
            .ok_or_else(|| reject("version is NULL".into()))?;
        let deleted = self
            .deleted
            .and_then(|i| field(record, i))
            .is_some_and(|v| self.deleted_values.iter().any(|d| d == v.trim()));
        Ok(RowKey {
            id,
            version,
            deleted,
        })
    }

    /// The record as the double write's input (`LegacyUser`), with its
    /// stamps; nothing normalised or validated beyond the key yet.
    pub fn parse(&self, record: &Record) -> Result<ParsedRecord, Reject> {
        let key = self.key(record)?;
        let reject = |reason: String| Reject {
            id: key.id.to_string(),
            reason,
        };
        let created = self
            .stamp(record, self.created, "created")
            .map_err(reject)?;
        let updated = self
            .stamp(record, self.updated, "updated")
            .map_err(reject)?;
        let raw_hash =
            field(record, self.hash).ok_or_else(|| reject("password hash is NULL".into()))?;
        let password_hash = match &self.salted {
            None => raw_hash.to_owned(),
            Some((alg, pos)) => {
                let salt = self.salt.and_then(|i| field(record, i)).unwrap_or("");
                legacy_hash::salted(alg, *pos, salt.as_bytes(), raw_hash)
                    .map_err(|e| reject(format!("password hash: {e}")))?
            }
        };
        let user = LegacyUser {
            id: key.id,
            email: field(record, self.email).unwrap_or("").to_owned(),
            phone: self.phone.and_then(|i| field(record, i)).map(str::to_owned),
            password_hash,
            version: key.version,
        };
        Ok(ParsedRecord {
            key,
            user,
            created,
            updated,
        })
    }

    fn stamp(&self, record: &Record, i: Option<usize>, what: &str) -> Result<Option<i64>, String> {
        match i.and_then(|i| field(record, i)) {
            None => Ok(None),
            Some(v) => super::mapping::stamp_millis(v, self.offset)
                .map(Some)
                .ok_or_else(|| format!("{what} {v:?} is not a timestamp or integer")),
        }
    }
}

fn field(record: &Record, i: usize) -> Option<&str> {
    record.get(i).and_then(|v| v.as_deref())
}

/// A legacy row's identity, ordering stamp and soft-delete flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowKey {
    pub id: i64,
    pub version: i64,
    pub deleted: bool,
}

/// A legacy record read into the double write's input.
pub struct ParsedRecord {
    pub key: RowKey,
    pub user: LegacyUser,
    pub created: Option<Millis>,
    pub updated: Option<Millis>,
}

impl ParsedRecord {
    /// A reject of this record with `reason`.
    pub fn reject(&self, reason: String) -> Reject {
        Reject {
            id: self.key.id.to_string(),
            reason,
        }
    }
}
