//! Admin credentials for the admin port (the Phases and Admin services): a
//! TOML file of named bearer tokens, one per person, each stored as its
//! SHA-256 with a role and an optional expiry.
//!
//! ```toml
//! [[admin]]
//! name = "alice"
//! role = "operator"          # viewer | support | operator | gateway
//! token_sha256 = "…hex…"
//! expires = "2027-06-30T00:00:00Z"   # optional
//! ```

use anyhow::Context;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What an admin credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Read and watch the phase, run its checks, tail the events; no
    /// member data.
    Viewer,
    /// Everything a viewer may, and look members up, reveal them and revoke
    /// their sessions (each with a reason).
    Support,
    /// Everything support may, and move the phase.
    Operator,
    /// A gateway in plain-text mode: watch the phase and report.
    Gateway,
}

impl AdminRole {
    pub fn name(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Support => "support",
            AdminRole::Operator => "operator",
            AdminRole::Gateway => "gateway",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AdminCredential {
    pub name: String,
    pub role: AdminRole,
    token_sha256: [u8; 32],
    pub expires: Option<OffsetDateTime>,
}

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Unknown,
    Expired { name: String },
}

/// The credentials file, loaded once at start.
#[derive(Clone, Debug, Default)]
pub struct AdminCredentials {
    entries: Vec<AdminCredential>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    admin: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: AdminRole,
    token_sha256: String,
    expires: Option<String>,
}

impl AdminCredentials {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin credentials {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("admin credentials {}", path.display()))
    }

    /// Parses the file, reporting every bad entry at once.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text).context("not a valid credentials file")?;
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for entry in file.admin {
            match credential(entry) {
                Ok(credential) => entries.push(credential),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credential a bearer token belongs to. Every entry is compared,
    /// each in constant time, so timing tells nothing about which matched.
    pub fn authenticate(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<&AdminCredential, AuthFailure> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token_sha256.ct_eq(&presented)) && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthFailure::Unknown)?;
        if entry.expires.is_some_and(|expires| expires <= now) {
            return Err(AuthFailure::Expired {
                name: entry.name.clone(),
            });
        }
        Ok(entry)
    }
}

fn credential(entry: Entry) -> Result<AdminCredential, String> {
    let name = entry.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 {
        return Err("an admin entry needs a name of 1 to 64 characters".to_owned());
    }
    let mut token_sha256 = [0u8; 32];
    hex::decode_to_slice(entry.token_sha256.trim(), &mut token_sha256)
        .map_err(|_| format!("{name}: token_sha256 must be 64 hex digits"))?;
    let expires = entry
        .expires
        .map(|text| OffsetDateTime::parse(&text, &Rfc3339))
        .transpose()
        .map_err(|_| format!("{name}: expires must be an RFC 3339 time"))?;
    Ok(AdminCredential {
        name,
        role: entry.role,
        token_sha256,
        expires,
    })
}

/// The SHA-256 of a token, in hex, as the credentials file holds it.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn file() -> String {
        format!(
            "[[admin]]\nname = \"alice\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\
             expires = \"2027-06-30T00:00:00Z\"\n\n\
             [[admin]]\nname = \"eve\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n\n\
             [[admin]]\nname = \"gw\"\nrole = \"gateway\"\ntoken_sha256 = \"{}\"\n",
            token_sha256_hex("alice-token"),
            token_sha256_hex("eve-token"),
            token_sha256_hex("gw-token"),
        )
    }

    #[test]
    fn tokens_authenticate_by_hash_with_role_and_expiry() {
        let credentials = AdminCredentials::parse(&file()).unwrap();
        let before = datetime!(2027-06-29 23:59 UTC);
        let alice = credentials.authenticate("alice-token", before).unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.role),
            ("alice", AdminRole::Operator)
        );
        let eve = credentials.authenticate("eve-token", before).unwrap();
        assert_eq!(eve.role, AdminRole::Viewer);
        assert_eq!(
            credentials.authenticate("gw-token", before).unwrap().role,
            AdminRole::Gateway
        );
        assert_eq!(
            credentials
                .authenticate("alice-token", datetime!(2027-06-30 0:00 UTC))
                .unwrap_err(),
            AuthFailure::Expired {
                name: "alice".to_owned()
            }
        );
        // No expiry: valid for ever.
        assert!(
            credentials
                .authenticate("eve-token", datetime!(2100-01-01 0:00 UTC))
                .is_ok()
        );
        assert_eq!(
            credentials
                .authenticate("alice-token2", before)
                .unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(
            credentials.authenticate("", before).unwrap_err(),
            AuthFailure::Unknown
        );
    }

    #[test]
    fn bad_entries_are_reported_together() {
        let text = "[[admin]]\nname = \"a\"\nrole = \"operator\"\ntoken_sha256 = \"xyz\"\n\n\
                    [[admin]]\nname = \"b\"\nrole = \"viewer\"\ntoken_sha256 = \"00\"\nexpires = \"soon\"\n";
        let err = AdminCredentials::parse(text).unwrap_err().to_string();
        assert!(
            err.contains("a: token_sha256") && err.contains("b: "),
            "{err}"
        );
        let err = AdminCredentials::parse(
            "[[admin]]\nname = \"a\"\nrole = \"root\"\ntoken_sha256 = \"00\"\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("root"), "{err:#}");
        assert!(AdminCredentials::parse("").unwrap().is_empty());
    }
}
