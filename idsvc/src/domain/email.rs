//! Email addresses: normalised once, so lookups match however members type them.

use super::Error;
use email_address::{EmailAddress, Options};
use std::fmt;

/// Octet limits from RFC 5321 §4.5.3.1.
const MAX_LOCAL_OCTETS: usize = 64;
const MAX_TOTAL_OCTETS: usize = 254;

/// A validated email address, trimmed and lower-cased (the case-insensitive
/// form used for matching and for the blind index).
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let normalised = raw.trim().to_lowercase();
        if normalised.is_empty() {
            return Err(Error::invalid("email", "is required"));
        }
        if normalised.len() > MAX_TOTAL_OCTETS {
            return Err(Error::invalid("email", "is longer than 254 octets"));
        }
        let Some((local, _domain)) = normalised.rsplit_once('@') else {
            return Err(Error::invalid("email", "is not an email address"));
        };
        if local.len() > MAX_LOCAL_OCTETS {
            return Err(Error::invalid(
                "email",
                "local part is longer than 64 octets",
            ));
        }
        if !EmailAddress::is_valid(&normalised) {
            return Err(Error::invalid("email", "is not an email address"));
        }
        Ok(Self(normalised))
    }

    /// An address a member types into idbase (registration, email change):
    /// only a plain addr-spec with a dotted domain. Display names, domain
    /// literals and TLD-less domains make look-alike accounts
    /// (`"X <victim@example.com>"`, `a@[127.0.0.1]`, `a@localhost`).
    pub fn parse_strict(raw: &str) -> Result<Self, Error> {
        let email = Self::parse(raw)?;
        match email.nonconformity() {
            Some(reason) => Err(Error::invalid("email", reason)),
            None => Ok(email),
        }
    }

    /// Why an address `parse` accepts (what the legacy system may hold) would
    /// be refused by `parse_strict`; `None` for a plain dotted addr-spec.
    pub fn nonconformity(&self) -> Option<&'static str> {
        let strict = Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        match EmailAddress::parse_with_options(&self.0, strict) {
            Ok(_) => None,
            Err(email_address::Error::UnsupportedDisplayName) => {
                Some("must be a plain address, without a display name")
            }
            Err(email_address::Error::UnsupportedDomainLiteral) => {
                Some("must have a domain name, not an address literal")
            }
            Err(email_address::Error::DomainTooFew) => {
                Some("domain must have a dot (a top-level domain)")
            }
            Err(_) => Some("is not a plain email address"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form safe for logs: first character of the local part and the domain.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

/// Masks an email for logs: `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

// Never print the address itself by accident.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_lowercases() {
        let email = Email::parse("  Hanako.Yamada@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "hanako.yamada@example.com");
    }

    #[test]
    fn enforces_octet_limits() {
        let local = "a".repeat(65);
        assert!(Email::parse(&format!("{local}@example.com")).is_err());
        let ok_local = "a".repeat(64);
        assert!(Email::parse(&format!("{ok_local}@example.com")).is_ok());
        let domain = format!("{}.com", "d".repeat(250));
        assert!(Email::parse(&format!("a@{domain}")).is_err());
    }

    #[test]
    fn rejects_non_addresses() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@example.com",
            "a@",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn strict_parse_takes_only_plain_dotted_addresses() {
        for (raw, reason) in [
            ("\"X\" <victim@example.com>", "display name"),
            ("X <victim@example.com>", "display name"),
            ("a@[127.0.0.1]", "address literal"),
            ("a@localhost", "a dot"),
        ] {
            let lenient = Email::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert!(
                lenient.nonconformity().is_some_and(|r| r.contains(reason)),
                "{raw:?}: {:?}",
                lenient.nonconformity()
            );
            let err = Email::parse_strict(raw).unwrap_err().to_string();
            assert!(err.contains(reason), "{raw:?}: {err}");
        }
        for good in ["hanako@example.com", "a.b+tag@mail.example.co.jp"] {
            let email = Email::parse_strict(good).unwrap();
            assert_eq!(email.nonconformity(), None);
        }
    }

    #[test]
    fn debug_is_masked() {
        let email = Email::parse("hanako@example.com").unwrap();
        assert_eq!(format!("{email:?}"), "Email(h***@example.com)");
    }
}
