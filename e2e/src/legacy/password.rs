//! The legacy password scheme (e2e/fixtures/legacy/mapping.toml):
//! `PasswordHash` = upper-case hex of SHA-256(`PasswordSalt` ‖ password).
//! Verification and the form sent in double writes are idsvc's own
//! (`legacy_hash`), so what the emulator accepts is what idbase accepts.

use idsvc::crypto::legacy_hash::{self, SaltPosition};
use rand::Rng;
use sha2::{Digest, Sha256};

/// A member's stored credential, as the `Member` table holds it.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Upper-case hex, 64 characters.
    pub hash: String,
    /// 16 hex characters (the column holds up to 32).
    pub salt: String,
    /// A hash idbase synced back in phase 4 (`PUT /legacy/v1/sync/…`) in a
    /// scheme the two columns cannot hold (argon2id after a login at
    /// idbase); it then replaces them.
    pub synced: Option<String>,
}

impl Credential {
    /// Hashes `password` (already NFKC-normalised, as idsvc verifies) with a
    /// fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; 8] = rand::thread_rng().r#gen();
        Self::with_salt(password, hex::encode(salt))
    }

    pub fn with_salt(password: &str, salt: String) -> Self {
        let mut digest = Sha256::new();
        digest.update(salt.as_bytes());
        digest.update(password.as_bytes());
        Self {
            hash: hex::encode_upper(digest.finalize()),
            salt,
            synced: None,
        }
    }

    /// A hash idbase sent: the salted-SHA-256 form goes back into the
    /// columns, any other scheme idbase verifies is kept as it is.
    pub fn from_idbase(stored: &str) -> Result<Self, String> {
        let (canonical, _) = legacy_hash::canonical(stored).map_err(|e| e.to_string())?;
        let columns = canonical
            .strip_prefix("$salted-sha256$before$")
            .and_then(|rest| rest.split_once('$'))
            .and_then(|(salt, digest)| {
                let salt = String::from_utf8(hex::decode(salt).ok()?).ok()?;
                (salt.len() <= 32).then(|| Self {
                    hash: digest.to_uppercase(),
                    salt,
                    synced: None,
                })
            });
        Ok(columns.unwrap_or_else(|| Self {
            // The columns are NOT NULL; nothing verifies against these.
            hash: "0".repeat(64),
            salt: String::new(),
            synced: Some(canonical),
        }))
    }

    /// `$salted-sha256$before$<salt hex>$<digest hex>`: the double write's
    /// `password_hash`, exactly as the bulk load derives it from the columns.
    pub fn idbase_form(&self) -> Option<String> {
        if let Some(synced) = &self.synced {
            return Some(synced.clone());
        }
        legacy_hash::salted(
            "sha256",
            SaltPosition::Before,
            self.salt.as_bytes(),
            &self.hash,
        )
        .ok()
    }

    /// Constant-time check through idsvc's verifier.
    pub fn verify(&self, password: &str) -> bool {
        self.idbase_form()
            .is_some_and(|stored| legacy_hash::verify(password, &stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_its_own_hash_and_nothing_else() {
        let credential = Credential::new("password-1");
        assert_eq!(credential.hash.len(), 64);
        assert_eq!(credential.hash, credential.hash.to_uppercase());
        assert!(credential.verify("password-1"));
        assert!(!credential.verify("password-2"));
    }

    #[test]
    fn a_salted_hash_from_idbase_goes_back_into_the_columns() {
        let original = Credential::new("password-9");
        let back = Credential::from_idbase(&original.idbase_form().unwrap()).unwrap();
        assert_eq!((&back.hash, &back.salt), (&original.hash, &original.salt));
        assert!(back.synced.is_none());
        assert!(back.verify("password-9"));
        assert!(Credential::from_idbase("plaintext").is_err());
    }

    #[test]
    fn digest_is_salt_then_password() {
        let credential = Credential::with_salt("pw", "salt".into());
        let expected = hex::encode_upper(Sha256::digest(b"saltpw"));
        assert_eq!(credential.hash, expected);
        assert_eq!(
            credential.idbase_form().unwrap(),
            format!(
                "$salted-sha256$before${}${}",
                hex::encode("salt"),
                expected.to_lowercase()
            )
        );
    }
}
