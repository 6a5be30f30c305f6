//! Personal data at rest: AES-256-GCM with a random nonce, the key id kept
//! with the ciphertext, and the user id and field name bound in as associated
//! data (a ciphertext copied to another user or column fails to open).
//! Lookups go through a keyed blind index (HMAC-SHA256), never the plaintext.

use super::keys::{Key32, KeyRing};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, anyhow, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

/// Leading byte of every sealed value, so the layout can change later.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Clone, Copy, Debug)]
pub enum Field {
    Email,
    Phone,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
        }
    }
}

pub struct PiiSealer {
    ciphers: BTreeMap<String, Aes256Gcm>,
    current: String,
}

impl PiiSealer {
    pub fn new(keys: &KeyRing) -> anyhow::Result<Self> {
        let ciphers: BTreeMap<_, _> = keys
            .pii
            .iter()
            .map(|(kid, key)| (kid.clone(), Aes256Gcm::new(key.as_ref().into())))
            .collect();
        let current = ciphers
            .keys()
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("no PII key"))?;
        Ok(Self { ciphers, current })
    }

    /// `[FORMAT_V1, kid_len, kid…, nonce(12), ciphertext‖tag]`
    pub fn seal(&self, field: Field, user_id: i64, plaintext: &str) -> anyhow::Result<Vec<u8>> {
        let cipher = &self.ciphers[&self.current];
        // ThreadRng is a CSPRNG seeded from the OS: random nonces without a
        // getrandom system call per sealed value.
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        let aad = associated_data(field, user_id);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow!("sealing {} failed", field.name()))?;
        let kid = self.current.as_bytes();
        let mut out = Vec::with_capacity(2 + kid.len() + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.push(u8::try_from(kid.len())?);
        out.extend_from_slice(kid);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, field: Field, user_id: i64, blob: &[u8]) -> anyhow::Result<String> {
        let (&format, rest) = blob.split_first().context("empty sealed value")?;
        if format != FORMAT_V1 {
            bail!("unknown sealed format {format}");
        }
        let (&kid_len, rest) = rest.split_first().context("truncated sealed value")?;
        let kid_len = usize::from(kid_len);
        if rest.len() < kid_len + NONCE_LEN {
            bail!("truncated sealed value");
        }
        let (kid, rest) = rest.split_at(kid_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let kid = std::str::from_utf8(kid)?;
        let cipher = self
            .ciphers
            .get(kid)
            .with_context(|| format!("no PII key {kid:?} in the keys dir"))?;
        let aad = associated_data(field, user_id);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow!("{} of user {user_id} does not open", field.name()))?;
        Ok(String::from_utf8(plain)?)
    }
}

fn associated_data(field: Field, user_id: i64) -> Vec<u8> {
    format!("idbase/v1/{}/{user_id}", field.name()).into_bytes()
}

/// Keyed hashes of normalised values: equal inputs give equal indexes, and
/// without the key they reveal nothing.
pub struct BlindIndex {
    key: Key32,
}

impl BlindIndex {
    pub fn new(keys: &KeyRing) -> Self {
        Self {
            key: keys.blind_index.clone(),
        }
    }

    /// The lookup index of a normalised email.
    pub fn email(&self, normalised_email: &str) -> [u8; 32] {
        self.digest(b"email", normalised_email)
    }

    /// The lookup index of a phone in E.164 form.
    pub fn phone(&self, e164: &str) -> [u8; 32] {
        self.digest(b"phone", e164)
    }

    /// The failed-login counter key for a submitted email (member or not).
    pub fn login_throttle(&self, normalised_email: &str) -> [u8; 32] {
        self.digest(b"login-throttle", normalised_email)
    }

    /// The login throttle's key for one email from one source network.
    pub fn login_throttle_from(&self, normalised_email: &str, network: &str) -> [u8; 32] {
        self.digest_parts(b"login-throttle-network", &[normalised_email, network])
    }

    /// The key of a registration's `Idempotency-Key`, scoped to its client.
    pub fn registration_key(&self, client: &str, key: &str) -> [u8; 32] {
        self.digest_parts(b"registration-key", &[client, key])
    }

    /// A registration request's fingerprint, compared when its key comes
    /// back. Keyed, so the stored value cannot be tried against guesses of
    /// the password in it.
    pub fn registration_request(
        &self,
        email: &str,
        phone: Option<&str>,
        password: &str,
    ) -> [u8; 32] {
        self.digest_parts(
            b"registration-request",
            &[email, phone.unwrap_or(""), password],
        )
    }

    fn digest(&self, purpose: &[u8], value: &str) -> [u8; 32] {
        let mut mac = self.mac(purpose);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Several values, each length-prefixed so no two lists run together.
    fn digest_parts(&self, purpose: &[u8], values: &[&str]) -> [u8; 32] {
        let mut mac = self.mac(purpose);
        for value in values {
            mac.update(&(value.len() as u64).to_be_bytes());
            mac.update(value.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn mac(&self, purpose: &[u8]) -> Hmac<Sha256> {
        #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes any key length");
        // Domain separation: the same email gives unrelated values per purpose.
        mac.update(purpose);
        mac.update(&[0]);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::generate(dir.path()).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        (dir, ring)
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (_dir, ring) = ring();
        let sealer = PiiSealer::new(&ring).unwrap();
        let blob = sealer.seal(Field::Email, 7, "hanako@example.com").unwrap();
        assert!(!blob.windows(6).any(|w| w == b"hanako"));
        assert_eq!(
            sealer.open(Field::Email, 7, &blob).unwrap(),
            "hanako@example.com"
        );
        // Moved to another user or another column: refused.
        assert!(sealer.open(Field::Email, 8, &blob).is_err());
        assert!(sealer.open(Field::Phone, 7, &blob).is_err());
        // Random nonces: sealing twice differs.
        assert_ne!(
            blob,
            sealer.seal(Field::Email, 7, "hanako@example.com").unwrap()
        );
    }

    #[test]
    fn blind_index_is_deterministic_and_separated() {
        let (_dir, ring) = ring();
        let index = BlindIndex::new(&ring);
        assert_eq!(index.email("a@example.com"), index.email("a@example.com"));
        assert_ne!(index.email("a@example.com"), index.email("b@example.com"));
        assert_ne!(
            index.email("a@example.com"),
            index.login_throttle("a@example.com")
        );
    }
}
