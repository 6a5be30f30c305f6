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
        }
    }

    /// `$salted-sha256$before$<salt hex>$<digest hex>`: the double write's
    /// `password_hash`, exactly as the bulk load derives it from the columns.
    pub fn idbase_form(&self) -> Option<String> {
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
