//! `--mapping FILE`: how a legacy members table maps onto idbase users.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::Path;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset, format_description::well_known};

/// The whole mapping file (documented in README, "Migration mapping").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub columns: Columns,
    #[serde(default)]
    pub password: PasswordMapping,
    #[serde(default)]
    pub deleted: DeletedMapping,
    #[serde(default)]
    pub tsv: TsvMapping,
    #[serde(default)]
    pub query: Option<String>,
    /// Offset of the legacy timestamps without a zone, e.g. "+09:00".
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub duplicates: DuplicatesRule,
}

fn utc() -> String {
    "+00:00".into()
}

/// Legacy column names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub id: String,
    pub email: String,
    pub phone: Option<String>,
    pub password_hash: String,
    pub password_salt: Option<String>,
    pub deleted: Option<String>,
    pub created: Option<String>,
    pub updated: Option<String>,
    /// The stamp ordered against double writes' `version` (integer, or a
    /// timestamp turned into milliseconds since the epoch).
    pub version: String,
}

/// How the legacy hash column is read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordMapping {
    /// `stored` (the column already holds a form `crypto::legacy_hash`
    /// accepts: PHC, bcrypt, ASP.NET Identity), or `salted-sha256`,
    /// `salted-sha1`, `salted-md5` (hex digest column + salt column).
    #[serde(default = "stored")]
    pub scheme: String,
    /// `before` (digest(salt ‖ password)) or `after`.
    #[serde(default = "before")]
    pub salt_position: String,
}

fn stored() -> String {
    "stored".into()
}
fn before() -> String {
    "before".into()
}

impl Default for PasswordMapping {
    fn default() -> Self {
        Self {
            scheme: stored(),
            salt_position: before(),
        }
    }
}

/// Values of the soft-delete column that mean "deleted".
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletedMapping {
    #[serde(default = "deleted_values")]
    pub values: Vec<String>,
}

fn deleted_values() -> Vec<String> {
    vec!["1".into(), "true".into(), "True".into()]
}

impl Default for DeletedMapping {
    fn default() -> Self {
        Self {
            values: deleted_values(),
        }
    }
}

/// `tsv:` sources as `bcp … queryout -c` writes them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsvMapping {
    #[serde(default = "tab")]
    pub delimiter: String,
    /// The text that stands for NULL (bcp -c writes an empty field).
    #[serde(default)]
    pub null: String,
    /// The first line names the columns.
    #[serde(default)]
    pub header: bool,
    /// Column order when there is no header.
    #[serde(default)]
    pub columns: Vec<String>,
}

fn tab() -> String {
    "\t".into()
}

impl Default for TsvMapping {
    fn default() -> Self {
        Self {
            delimiter: tab(),
            null: String::new(),
            header: false,
            columns: Vec::new(),
        }
    }
}

/// Which of several legacy accounts with the same (normalised) email keeps it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatesRule {
    /// The most recently updated live account (ties: the higher id).
    #[default]
    LatestUpdated,
    /// The oldest account (lowest id).
    LowestId,
}

impl Mapping {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading mapping {}", path.display()))?;
        let mapping: Self =
            toml::from_str(&text).with_context(|| format!("parsing mapping {}", path.display()))?;
        mapping.check()?;
        Ok(mapping)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.offset()?;
        match self.password.scheme.as_str() {
            "stored" => {}
            "salted-sha256" | "salted-sha1" | "salted-md5" => {
                if self.columns.password_salt.is_none() {
                    bail!(
                        "mapping: scheme {} needs columns.password_salt",
                        self.password.scheme
                    );
                }
                if !matches!(self.password.salt_position.as_str(), "before" | "after") {
                    bail!("mapping: password.salt_position must be before or after");
                }
            }
            other => bail!("mapping: unknown password.scheme {other:?}"),
        }
        if self.tsv.delimiter.is_empty() {
            bail!("mapping: tsv.delimiter is empty");
        }
        Ok(())
    }

    pub fn offset(&self) -> anyhow::Result<UtcOffset> {
        let format =
            time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
        UtcOffset::parse(&self.timezone, &format)
            .with_context(|| format!("mapping: timezone {:?} is not like +09:00", self.timezone))
    }
}

/// A legacy stamp as milliseconds since the epoch: an integer as is, or a
/// `YYYY-MM-DD HH:MM:SS[.fff]` / RFC 3339 timestamp.
pub fn stamp_millis(raw: &str, offset: UtcOffset) -> Option<i64> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i64>() {
        return Some(n);
    }
    // bcp writes `2024-01-01 12:00:00.000`; only RFC 3339 has a `T`.
    let at = if raw.contains(['T', 't']) {
        OffsetDateTime::parse(raw, &well_known::Rfc3339).ok()?
    } else {
        let with_fraction = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
        );
        let plain =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let date_only = time::macros::format_description!("[year]-[month]-[day]");
        PrimitiveDateTime::parse(raw, &with_fraction)
            .or_else(|_| PrimitiveDateTime::parse(raw, &plain))
            .or_else(|_| time::Date::parse(raw, &date_only).map(|d| d.midnight()))
            .ok()?
            .assume_offset(offset)
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_mapping_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/legacy/mapping.toml");
        let m = Mapping::load(&path).unwrap();
        assert_eq!(m.columns.id, "MemberId");
        assert_eq!(m.password.scheme, "salted-sha256");
        assert_eq!(m.duplicates, DuplicatesRule::LatestUpdated);
    }

    #[test]
    fn stamps() {
        let jst = UtcOffset::from_hms(9, 0, 0).unwrap();
        assert_eq!(stamp_millis("42", jst), Some(42));
        assert_eq!(stamp_millis("1970-01-01 09:00:01.5", jst), Some(1500));
        assert_eq!(stamp_millis("1970-01-01 09:00:01", jst), Some(1000));
        assert_eq!(stamp_millis("1970-01-01T00:00:02Z", jst), Some(2000));
        assert_eq!(stamp_millis("yesterday", jst), None);
    }
}
