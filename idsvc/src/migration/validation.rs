//! What `migrate validate` found: counts, per-field differences, bounded
//! samples of ids, the allow list that decides pass or fail, and the record
//! of each run in `migration_validations` (read by `status` and the phase
//! guardrails). Reports carry ids and field names only, never values.

use super::store::MigrationStore;
use crate::domain::Store;
use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Ids kept per category: enough to start an investigation, bounded whatever
/// the number of differences.
pub const SAMPLES: usize = 20;

/// Fields compared between a legacy row and the stored member.
pub const FIELDS: [&str; 5] = ["email", "phone", "password_hash", "deleted", "version"];
/// Why a stored member is extra.
pub const EXTRA_REASONS: [&str; 3] = [
    "absent_in_legacy",
    "deleted_in_legacy",
    "rejected_in_legacy",
];

/// Differences that do not fail the validation (`--allow`): field names
/// (`email`, `phone`, `password_hash`, `deleted`, `version`), `missing`,
/// `extra`, or one reason for extras (`absent_in_legacy`,
/// `deleted_in_legacy`, `rejected_in_legacy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow(Vec<String>);

impl Allow {
    pub fn parse(items: &[String]) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for item in items.iter().flat_map(|i| i.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let known = FIELDS.contains(&item)
                || EXTRA_REASONS.contains(&item)
                || matches!(item, "missing" | "extra");
            if !known {
                bail!(
                    "--allow {item:?}: not one of {}, missing, extra, {}",
                    FIELDS.join(", "),
                    EXTRA_REASONS.join(", ")
                );
            }
            if !out.iter().any(|o| o == item) {
                out.push(item.to_owned());
            }
        }
        Ok(Self(out))
    }

    fn allows(&self, what: &str) -> bool {
        self.0.iter().any(|a| a == what)
    }

    fn allows_extra(&self, reason: &str) -> bool {
        self.allows("extra") || self.allows(reason)
    }
}

/// Extras by reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtraCounts {
    /// Stored, but the legacy source has no such id.
    pub absent_in_legacy: u64,
    /// Stored, but soft-deleted in the legacy table: what `purge` removes.
    pub deleted_in_legacy: u64,
    /// Stored, but the legacy row cannot be imported (a bulkload reject).
    pub rejected_in_legacy: u64,
}

/// Members that differ, per field (a member may count under several).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldCounts {
    pub email: u64,
    pub phone: u64,
    pub password_hash: u64,
    /// Live in the legacy table, deleted (tombstoned) in the store.
    pub deleted: u64,
    /// The stored version is older than the legacy row's: a change was missed.
    pub version: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtraSample {
    pub id: i64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DifferentSample {
    pub id: i64,
    pub fields: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Samples {
    pub missing: Vec<i64>,
    pub extra: Vec<ExtraSample>,
    pub different: Vec<DifferentSample>,
    pub duplicate_losers: Vec<i64>,
    /// Legacy ids as the source spells them (a reject may have no integer id).
    pub rejected: Vec<String>,
}

/// The whole result. Every legacy row counts exactly once:
/// `source_rows = matched + missing + different + duplicate_losers + rejected
/// + extra_reasons.deleted_in_legacy + extra_reasons.rejected_in_legacy`;
/// `extra_reasons.absent_in_legacy` are store rows without a legacy row.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ValidationReport {
    pub job: String,
    /// Milliseconds since the epoch, and the same in RFC 3339.
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    pub source_rows: u64,
    /// Equal on both sides (including soft-deleted in legacy and absent here).
    pub matched: u64,
    /// Of `matched`: soft-deleted in legacy and absent from the store.
    pub matched_deleted: u64,
    /// Of `matched`: the store holds an argon2id re-hash made at a login
    /// after the legacy row's version (an allowed difference, see README).
    pub password_upgraded: u64,
    /// Live in legacy, absent from the store, no tombstone, not a duplicate loser.
    pub missing: u64,
    pub extra: u64,
    pub extra_reasons: ExtraCounts,
    /// Members with at least one differing field.
    pub different: u64,
    pub different_fields: FieldCounts,
    /// Absent as expected: they lost their email under the duplicates rule
    /// (or to a member already stored), see the conflicts reports.
    pub duplicate_losers: u64,
    /// Legacy rows that cannot be transformed (bulkload rejects them too).
    pub rejected: u64,
    /// Live legacy rows whose email registration through idbase would refuse
    /// (display name, domain literal, no dot in the domain): imported as
    /// stored, to be cleaned up at the source. Informational: not a failure.
    #[serde(default)]
    pub email_nonconforming: u64,
    pub allowed: Vec<String>,
    /// Members whose differences are not all allowed; 0 means passed.
    pub failures: u64,
    pub passed: bool,
    pub samples: Samples,
}

/// Accumulates a report while the merge runs.
pub struct Tally {
    pub report: ValidationReport,
    allow: Allow,
}

impl Tally {
    pub fn new(allow: Allow) -> Self {
        Self {
            report: ValidationReport {
                job: super::validate::JOB.to_owned(),
                allowed: allow.0.clone(),
                passed: true,
                ..ValidationReport::default()
            },
            allow,
        }
    }

    pub fn matched(&mut self, deleted: bool, upgraded: bool) {
        self.report.matched += 1;
        self.report.matched_deleted += u64::from(deleted);
        self.report.password_upgraded += u64::from(upgraded);
    }

    pub fn missing(&mut self, id: i64) {
        self.report.missing += 1;
        push(&mut self.report.samples.missing, id);
        if !self.allow.allows("missing") {
            self.fail();
        }
    }

    pub fn duplicate_loser(&mut self, id: i64) {
        self.report.duplicate_losers += 1;
        push(&mut self.report.samples.duplicate_losers, id);
    }

    pub fn email_nonconforming(&mut self) {
        self.report.email_nonconforming += 1;
    }

    pub fn rejected(&mut self, raw_id: &str) {
        self.report.rejected += 1;
        push(&mut self.report.samples.rejected, raw_id.to_owned());
    }

    /// `reason` is one of [`EXTRA_REASONS`].
    pub fn extra(&mut self, id: i64, reason: &'static str) {
        self.report.extra += 1;
        let counts = &mut self.report.extra_reasons;
        match reason {
            "deleted_in_legacy" => counts.deleted_in_legacy += 1,
            "rejected_in_legacy" => counts.rejected_in_legacy += 1,
            _ => counts.absent_in_legacy += 1,
        }
        push(
            &mut self.report.samples.extra,
            ExtraSample {
                id,
                reason: reason.to_owned(),
            },
        );
        if !self.allow.allows_extra(reason) {
            self.fail();
        }
    }

    /// `fields` are names from [`FIELDS`]; not empty.
    pub fn different(&mut self, id: i64, fields: &[&'static str]) {
        self.report.different += 1;
        let counts = &mut self.report.different_fields;
        for field in fields {
            match *field {
                "email" => counts.email += 1,
                "phone" => counts.phone += 1,
                "password_hash" => counts.password_hash += 1,
                "deleted" => counts.deleted += 1,
                _ => counts.version += 1,
            }
        }
        push(
            &mut self.report.samples.different,
            DifferentSample {
                id,
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            },
        );
        if fields.iter().any(|f| !self.allow.allows(f)) {
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.report.failures += 1;
        self.report.passed = false;
    }
}

fn push<T>(samples: &mut Vec<T>, item: T) {
    if samples.len() < SAMPLES {
        samples.push(item);
    }
}

/// Records a finished validation (every run is kept; the newest counts).
pub async fn save(store: &dyn MigrationStore, report: &ValidationReport) -> anyhow::Result<()> {
    store.save_validation(report).await
}

pub use crate::domain::phase::LastValidation;

/// The newest validation's headline (`status`; the phase guardrails read it too).
pub async fn latest(store: &dyn Store) -> anyhow::Result<Option<LastValidation>> {
    Ok(store.latest_validation().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_parses_and_refuses_unknown_names() {
        let allow = Allow::parse(&["password_hash, deleted_in_legacy".into()]).unwrap();
        assert!(allow.allows("password_hash"));
        assert!(allow.allows_extra("deleted_in_legacy"));
        assert!(!allow.allows_extra("absent_in_legacy"));
        let err = Allow::parse(&["mail".into()]).unwrap_err().to_string();
        assert!(err.contains("\"mail\""), "{err}");
    }

    #[test]
    fn allowed_differences_pass_others_fail() {
        let mut tally = Tally::new(Allow::parse(&["phone".into()]).unwrap());
        tally.different(1, &["phone"]);
        tally.duplicate_loser(2);
        assert!(tally.report.passed);
        tally.different(3, &["phone", "email"]);
        assert!(!tally.report.passed);
        assert_eq!(tally.report.failures, 1);
        assert_eq!(tally.report.different_fields.phone, 2);
        for id in 0..100 {
            tally.missing(id);
        }
        assert_eq!(tally.report.samples.missing.len(), SAMPLES);
        assert_eq!(tally.report.missing, 100);
    }
}
