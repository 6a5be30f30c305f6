//! Password rules after NIST SP 800-63B §3.1.1.2 and OWASP ASVS V2.1: length
//! limits, any Unicode, no composition rules, no common or context-specific
//! passwords. Checked before any hashing.

use super::{Email, Error};
use std::collections::HashSet;
use std::io::Read;
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Longer passwords are rejected, never truncated (ASVS 2.1.2).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// NIST's minimum for memorised secrets chosen by the member.
pub const DEFAULT_MIN_PASSWORD_CHARS: usize = 8;

/// Django's list of 20,000 common passwords (Royce Williams' compilation,
/// BSD-3-Clause), as shipped in `django/contrib/auth/common-passwords.txt.gz`.
static COMMON_PASSWORDS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let gz = include_bytes!("../../data/common-passwords.txt.gz");
    let mut text = String::new();
    // The list is compiled in; failing to inflate it is a build defect.
    #[allow(clippy::expect_used, reason = "the list is compiled in and tested")]
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("embedded common password list is valid gzip");
    text.lines().map(|line| line.trim().to_owned()).collect()
});

/// A password in normalised form (NFKC), wiped from memory when dropped.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Normalises without judging: for verifying an existing password.
    pub fn normalise(raw: &str) -> Self {
        Self(Zeroizing::new(raw.nfkc().collect()))
    }

    /// Normalises and applies the rules for a new password.
    pub fn new_for(raw: &str, email: &Email, min_chars: usize) -> Result<Self, Error> {
        let password = Self::normalise(raw);
        let chars = password.0.chars().count();
        if chars < min_chars {
            return Err(Error::invalid(
                "password",
                format!("must be at least {min_chars} characters"),
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(Error::invalid(
                "password",
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        let folded = Zeroizing::new(password.0.to_lowercase());
        if is_common(&folded) {
            return Err(Error::invalid("password", "is too common"));
        }
        let email = email.as_str();
        let local = email.split('@').next().unwrap_or_default();
        if folded.as_str() == email || folded.as_str() == local {
            return Err(Error::invalid("password", "must not be the email address"));
        }
        Ok(password)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn is_common(folded: &str) -> bool {
    COMMON_PASSWORDS.contains(folded.trim())
}

/// Cheap length check on the raw input, before normalisation or hashing, so an
/// oversized password never reaches argon2 (4 bytes per char at most, and NFKC
/// can expand; a generous bound that still caps the work).
pub fn reject_oversized(raw: &str) -> Result<(), Error> {
    if raw.len() > MAX_PASSWORD_CHARS * 4 * 4 {
        return Err(Error::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email::parse("hanako@example.com").unwrap()
    }

    #[test]
    fn list_is_large() {
        assert!(
            COMMON_PASSWORDS.len() >= 10_000,
            "{}",
            COMMON_PASSWORDS.len()
        );
    }

    #[test]
    fn accepts_long_unicode_passphrases() {
        assert!(Password::new_for("すもももももももものうち", &email(), 8).is_ok());
        assert!(Password::new_for("correct horse battery staple", &email(), 8).is_ok());
    }

    #[test]
    fn enforces_length_without_truncating() {
        assert!(Password::new_for("short1!", &email(), 8).is_err());
        let max = "あ".repeat(MAX_PASSWORD_CHARS);
        assert!(Password::new_for(&max, &email(), 8).is_ok());
        let over = "あ".repeat(MAX_PASSWORD_CHARS + 1);
        assert!(Password::new_for(&over, &email(), 8).is_err());
    }

    #[test]
    fn rejects_common_and_email() {
        for common in ["password", "12345678", "Qwerty123", "iloveyou"] {
            assert!(Password::new_for(common, &email(), 8).is_err(), "{common}");
        }
        assert!(Password::new_for("Hanako@Example.com", &email(), 8).is_err());
    }

    #[test]
    fn normalises_compatibility_forms() {
        // Full-width letters, as typed with a Japanese IME, equal their ASCII forms.
        assert_eq!(Password::normalise("ｐａｓｓ").expose(), "pass");
    }
}
