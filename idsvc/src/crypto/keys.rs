//! The keys directory (`--keys-dir`): one file per key, base64 of 32 random
//! bytes, so each maps to one entry of a Kubernetes Secret.
//!
//! - `pii-<kid>.key`: AES-256-GCM keys for email and phone; the newest kid seals,
//!   all open (rotation without re-encrypting at once).
//! - `blind-index.key`: the HMAC-SHA256 key for lookups; never rotated in place,
//!   since every stored index depends on it.
//! - `signing-<kid>.key`: Ed25519 seeds for access tokens; the newest signs,
//!   all verify.
//!
//! Kids are UTC timestamps (`k20261129T001500`), so "newest" is the greatest.
//!
//! The service loads all three ([`KeyUse::Service`]); the migration jobs seal
//! and index but never sign, so they load the PII and blind-index keys only
//! ([`KeyUse::Jobs`]) and their pods do not mount the signing keys.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

pub type Key32 = Zeroizing<[u8; 32]>;

const BLIND_INDEX_FILE: &str = "blind-index.key";

/// Which keys a process needs, and so which the loader requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// idsvc: PII, blind index and signing keys.
    Service,
    /// `idbase migrate`: PII and blind index; signing keys, if present, are
    /// not read at all.
    Jobs,
}

pub struct KeyRing {
    /// kid → key, ascending; the last is the newest.
    pub pii: BTreeMap<String, Key32>,
    pub blind_index: Key32,
    /// Empty when loaded for [`KeyUse::Jobs`].
    pub signing: BTreeMap<String, Key32>,
}

impl KeyRing {
    /// The service's keys: PII, blind index and signing.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_for(dir, KeyUse::Service)
    }

    pub fn load_for(dir: &Path, usage: KeyUse) -> anyhow::Result<Self> {
        let mut pii = BTreeMap::new();
        let mut signing = BTreeMap::new();
        let mut blind_index = None;
        let entries =
            fs::read_dir(dir).with_context(|| format!("reading keys dir {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Kubernetes mounts Secrets through `..data` symlinks; skip those.
            if name.starts_with('.') || !name.ends_with(".key") {
                continue;
            }
            let stem = name.trim_end_matches(".key");
            if usage == KeyUse::Jobs && stem.starts_with("signing-") {
                continue;
            }
            let key = read_key(&entry.path())?;
            if name == BLIND_INDEX_FILE {
                blind_index = Some(key);
            } else if let Some(kid) = stem.strip_prefix("pii-") {
                pii.insert(valid_kid(kid)?, key);
            } else if let Some(kid) = stem.strip_prefix("signing-") {
                signing.insert(valid_kid(kid)?, key);
            }
        }
        let Some(blind_index) = blind_index else {
            bail!(
                "{} has no {BLIND_INDEX_FILE}; create keys with `idbase keys generate --out DIR`",
                dir.display()
            );
        };
        if pii.is_empty() {
            bail!("{} needs at least one pii-<kid>.key", dir.display());
        }
        if usage == KeyUse::Service && signing.is_empty() {
            bail!(
                "{} needs at least one signing-<kid>.key for idsvc",
                dir.display()
            );
        }
        Ok(Self {
            pii,
            blind_index,
            signing,
        })
    }

    /// Creates a new PII key and signing key (a rotation when the directory
    /// already holds keys) and the blind-index key if there is none.
    /// Returns the new kid.
    pub fn generate(dir: &Path) -> anyhow::Result<String> {
        create_private_dir(dir)?;
        let kid = format!(
            "k{}",
            time::OffsetDateTime::now_utc().format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]"
            ))?
        );
        let blind = dir.join(BLIND_INDEX_FILE);
        if !blind.exists() {
            write_new_key(&blind)?;
        }
        for prefix in ["pii", "signing"] {
            write_new_key(&dir.join(format!("{prefix}-{kid}.key")))?;
        }
        Ok(kid)
    }

    /// True when the directory holds a usable key set.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(BLIND_INDEX_FILE).exists()
    }
}

fn valid_kid(kid: &str) -> anyhow::Result<String> {
    let ok = !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!("key id {kid:?} must be 1–32 characters of [A-Za-z0-9_-]");
    }
    Ok(kid.to_owned())
}

fn read_key(path: &Path) -> anyhow::Result<Key32> {
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        bail!(
            "{} must hold 32 bytes, holds {}",
            path.display(),
            bytes.len()
        );
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn write_new_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} exists already; keys are never overwritten",
            path.display()
        );
    }
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    let text = Zeroizing::new(STANDARD.encode(key.as_ref()));
    let mut file = private_file(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

#[cfg(unix)]
fn private_file(path: &Path) -> anyhow::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a file only its owner can read (credentials, keys).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_file(path)?;
    }
    let mut file = private_file(path)?;
    file.write_all(contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let first = KeyRing::generate(&keys_dir).unwrap();
        let ring = KeyRing::load(&keys_dir).unwrap();
        assert_eq!(ring.pii.keys().collect::<Vec<_>>(), [&first]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys_dir.join(BLIND_INDEX_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second generate in the same second must not overwrite anything.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = KeyRing::generate(&keys_dir).unwrap();
        let ring = KeyRing::load(&keys_dir).unwrap();
        assert_eq!(ring.signing.len(), 2);
        assert_eq!(ring.signing.keys().last(), Some(&second));
    }

    #[test]
    fn jobs_need_no_signing_keys_and_never_read_them() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::generate(dir.path()).unwrap();
        let signing: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("signing-")
            })
            .collect();
        // A signing file the job could not even parse is not read.
        fs::write(&signing[0], "not base64").unwrap();
        let ring = KeyRing::load_for(dir.path(), KeyUse::Jobs).unwrap();
        assert!(ring.signing.is_empty());
        assert_eq!(ring.pii.len(), 1);
        assert!(KeyRing::load(dir.path()).is_err());

        // Without signing keys (the jobs' mount): jobs load, the service does not.
        fs::remove_file(&signing[0]).unwrap();
        assert!(KeyRing::load_for(dir.path(), KeyUse::Jobs).is_ok());
        let err = KeyRing::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("signing"), "{err}");

        // PII and blind-index keys stay required for jobs.
        fs::remove_file(dir.path().join(BLIND_INDEX_FILE)).unwrap();
        assert!(KeyRing::load_for(dir.path(), KeyUse::Jobs).is_err());
    }

    #[test]
    fn rejects_short_keys() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::generate(dir.path()).unwrap();
        fs::write(dir.path().join("pii-bad.key"), STANDARD.encode([1u8; 16])).unwrap();
        assert!(KeyRing::load(dir.path()).is_err());
    }
}
