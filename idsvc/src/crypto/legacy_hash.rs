//! Password hashes imported from the legacy system.
//!
//! Imported members keep their legacy hash until their next successful login,
//! when `crypto::password` re-hashes them to argon2id. This module parses,
//! canonicalises and verifies every scheme the migration accepts; each
//! primitive comes from a maintained crate and every comparison of derived
//! bytes is constant-time.
//!
//! Stored forms (what `canonical` returns and the users table holds):
//! - `$argon2id$…` / `$argon2i$…`: PHC strings, costs within the caps
//!   ([`LegacyHashLimits`]).
//! - `$2a$…` / `$2b$…` / `$2y$…`: bcrypt, cost 4 up to the configured cap.
//! - `$pbkdf2-sha256$i=N,l=L$salt$hash` / `$pbkdf2-sha512$…`: PHC strings.
//! - `$salted-{sha256|sha1|md5}${before|after}$<salt hex>$<digest hex>`: one
//!   digest of salt ‖ password (`before`) or password ‖ salt (`after`), as
//!   classic ASP / PHP members tables store them. Hex is lower case.
//! - `$aspnet-identity-v2$<base64>` / `$aspnet-identity-v3$<base64>`: the
//!   ASP.NET Identity `PasswordHasher` payload. The bare base64 payload is
//!   accepted on import and gets the prefix.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// bcrypt cost cap: real systems use 10–12 (PHP's and Rails' default is 10,
/// OWASP asks for at least 10); each step doubles the work, and 12 already
/// costs ~250 ms on one core, so a higher stored cost is a lever on the pool.
pub const DEFAULT_LEGACY_BCRYPT_MAX_COST: u32 = 12;
/// PBKDF2 iterations cap (PHC strings and ASP.NET Identity v3): OWASP's
/// 2023 figure for PBKDF2-HMAC-SHA256 is 600,000; 1M leaves room for
/// SHA-1 tables tuned higher and is ~300 ms of one core.
pub const DEFAULT_LEGACY_PBKDF2_MAX_ITERATIONS: u32 = 1_000_000;
/// argon2 memory cap in KiB (64 MiB): RFC 9106's second recommendation; the
/// pod's memory limit must hold one such area per hashing thread.
pub const DEFAULT_LEGACY_ARGON2_MAX_MEMORY_KIB: u32 = 64 * 1024;
/// argon2 passes cap: no published recommendation goes above 10.
pub const DEFAULT_LEGACY_ARGON2_MAX_ITERATIONS: u32 = 10;

/// The largest work factors a double write or an import may carry: every
/// login with that email, by anyone, pays that cost on the hashing pool, so
/// an unbounded cost is a denial-of-service lever. Above a cap the hash is
/// refused with a reason naming it (400 / a rejects line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct LegacyHashLimits {
    /// Highest bcrypt cost accepted from the legacy system.
    #[arg(
        long = "legacy-bcrypt-max-cost",
        env = "IDBASE_LEGACY_BCRYPT_MAX_COST",
        default_value_t = DEFAULT_LEGACY_BCRYPT_MAX_COST,
        value_parser = clap::value_parser!(u32).range(4..=31)
    )]
    pub bcrypt_max_cost: u32,
    /// Highest PBKDF2 iteration count accepted (PHC and ASP.NET Identity v3).
    #[arg(
        long = "legacy-pbkdf2-max-iterations",
        env = "IDBASE_LEGACY_PBKDF2_MAX_ITERATIONS",
        default_value_t = DEFAULT_LEGACY_PBKDF2_MAX_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pub pbkdf2_max_iterations: u32,
    /// Highest argon2 memory cost accepted, in KiB.
    #[arg(
        long = "legacy-argon2-max-memory-kib",
        env = "IDBASE_LEGACY_ARGON2_MAX_MEMORY_KIB",
        default_value_t = DEFAULT_LEGACY_ARGON2_MAX_MEMORY_KIB,
        value_parser = clap::value_parser!(u32).range(8..=262_144)
    )]
    pub argon2_max_memory_kib: u32,
    /// Highest argon2 pass count (t) accepted.
    #[arg(
        long = "legacy-argon2-max-iterations",
        env = "IDBASE_LEGACY_ARGON2_MAX_ITERATIONS",
        default_value_t = DEFAULT_LEGACY_ARGON2_MAX_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub argon2_max_iterations: u32,
}

impl Default for LegacyHashLimits {
    fn default() -> Self {
        Self {
            bcrypt_max_cost: DEFAULT_LEGACY_BCRYPT_MAX_COST,
            pbkdf2_max_iterations: DEFAULT_LEGACY_PBKDF2_MAX_ITERATIONS,
            argon2_max_memory_kib: DEFAULT_LEGACY_ARGON2_MAX_MEMORY_KIB,
            argon2_max_iterations: DEFAULT_LEGACY_ARGON2_MAX_ITERATIONS,
        }
    }
}

impl LegacyHashLimits {
    /// What login verifies: the highest value any setting accepts (the flags'
    /// ranges), so that a row stored under a raised cap still verifies after
    /// the cap is lowered again. Acceptance is where the real cap applies.
    pub const VERIFY_CEILING: Self = Self {
        bcrypt_max_cost: 31,
        pbkdf2_max_iterations: 10_000_000,
        argon2_max_memory_kib: 256 * 1024,
        argon2_max_iterations: 64,
    };
}

/// .NET's `Convert.FromBase64String` ignores non-zero trailing bits; decode
/// as leniently so that every payload .NET accepts is accepted here.
const DOTNET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a stored hash is not acceptable; the message is shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HashFormatError(String);

fn bad(reason: impl Into<String>) -> HashFormatError {
    HashFormatError(reason.into())
}

/// The digest of a salted-digest hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha1,
    Md5,
}

impl DigestAlg {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha1 => "sha1",
            Self::Md5 => "md5",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Some(Self::Sha256),
            "sha1" | "sha-1" => Some(Self::Sha1),
            "md5" => Some(Self::Md5),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha1 => 20,
            Self::Md5 => 16,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(parts),
            Self::Sha1 => run::<Sha1>(parts),
            Self::Md5 => run::<Md5>(parts),
        }
    }
}

/// Where the salt goes relative to the password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaltPosition {
    Before,
    After,
}

/// The scheme of a stored hash; its `label` names it in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Argon2id,
    Argon2i,
    Bcrypt,
    Pbkdf2,
    Salted(DigestAlg, SaltPosition),
    AspNetV2,
    AspNetV3,
}

impl Scheme {
    pub fn label(self) -> &'static str {
        match self {
            Self::Argon2id => "argon2id",
            Self::Argon2i => "argon2i",
            Self::Bcrypt => "bcrypt",
            Self::Pbkdf2 => "pbkdf2",
            Self::Salted(DigestAlg::Sha256, _) => "salted-sha256",
            Self::Salted(DigestAlg::Sha1, _) => "salted-sha1",
            Self::Salted(DigestAlg::Md5, _) => "salted-md5",
            Self::AspNetV2 => "aspnet-identity-v2",
            Self::AspNetV3 => "aspnet-identity-v3",
        }
    }
}

/// Checks a stored hash and returns its canonical stored form and scheme,
/// within the largest costs any setting accepts (what login verifies).
pub fn canonical(stored: &str) -> Result<(String, Scheme), HashFormatError> {
    canonical_within(stored, &LegacyHashLimits::VERIFY_CEILING)
}

/// Checks a hash offered by the legacy system (double write, import) against
/// the configured caps and returns its canonical stored form and scheme.
pub fn canonical_within(
    stored: &str,
    limits: &LegacyHashLimits,
) -> Result<(String, Scheme), HashFormatError> {
    let stored = stored.trim();
    if stored.is_empty() {
        return Err(bad("password hash is empty"));
    }
    if stored.len() > 1024 {
        return Err(bad("password hash is longer than 1024 characters"));
    }
    if let Some(rest) = stored.strip_prefix("$salted-") {
        return parse_salted(rest).map(|(alg, pos, salt, digest)| {
            (
                salted_form(alg, pos, &salt, &digest),
                Scheme::Salted(alg, pos),
            )
        });
    }
    if let Some(b64) = stored.strip_prefix("$aspnet-identity-v2$") {
        return aspnet(b64, limits).and_then(|s| expect_scheme(s, Scheme::AspNetV2, b64));
    }
    if let Some(b64) = stored.strip_prefix("$aspnet-identity-v3$") {
        return aspnet(b64, limits).and_then(|s| expect_scheme(s, Scheme::AspNetV3, b64));
    }
    if ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| stored.starts_with(p))
    {
        check_bcrypt(stored, limits)?;
        return Ok((stored.to_owned(), Scheme::Bcrypt));
    }
    if stored.starts_with('$') {
        let phc = PasswordHash::new(stored)
            .map_err(|e| bad(format!("unsupported scheme or malformed PHC string: {e}")))?;
        let scheme = check_phc(&phc, limits)?;
        return Ok((stored.to_owned(), scheme));
    }
    // A bare ASP.NET Identity payload (what AspNetUsers.PasswordHash holds).
    let scheme = aspnet(stored, limits).map_err(|e| {
        if e.0.contains("above the accepted maximum") {
            e
        } else {
            bad("unsupported password hash scheme (see README: legacy password hashes)")
        }
    })?;
    let prefix = match scheme {
        Scheme::AspNetV2 => "$aspnet-identity-v2$",
        _ => "$aspnet-identity-v3$",
    };
    Ok((format!("{prefix}{stored}"), scheme))
}

fn expect_scheme(
    found: Scheme,
    wanted: Scheme,
    b64: &str,
) -> Result<(String, Scheme), HashFormatError> {
    if found != wanted {
        return Err(bad(
            "ASP.NET Identity payload version does not match its prefix",
        ));
    }
    let prefix = match wanted {
        Scheme::AspNetV2 => "$aspnet-identity-v2$",
        _ => "$aspnet-identity-v3$",
    };
    Ok((format!("{prefix}{b64}"), wanted))
}

/// Builds the stored form of a salted digest from a members table's hash and
/// salt columns (`digest_hex` as the legacy table holds it).
pub fn salted(
    alg: &str,
    position: SaltPosition,
    salt: &[u8],
    digest_hex: &str,
) -> Result<String, HashFormatError> {
    let alg = DigestAlg::parse(alg).ok_or_else(|| bad(format!("unknown digest {alg:?}")))?;
    let digest =
        hex::decode(digest_hex.trim()).map_err(|_| bad("password hash is not hexadecimal"))?;
    if digest.len() != alg.len() {
        return Err(bad(format!(
            "a {} digest has {} bytes, this one {}",
            alg.name(),
            alg.len(),
            digest.len()
        )));
    }
    Ok(salted_form(alg, position, salt, &digest))
}

fn salted_form(alg: DigestAlg, pos: SaltPosition, salt: &[u8], digest: &[u8]) -> String {
    let pos = match pos {
        SaltPosition::Before => "before",
        SaltPosition::After => "after",
    };
    format!(
        "$salted-{}${pos}${}${}",
        alg.name(),
        hex::encode(salt),
        hex::encode(digest)
    )
}

type Salted = (DigestAlg, SaltPosition, Vec<u8>, Vec<u8>);

fn parse_salted(rest: &str) -> Result<Salted, HashFormatError> {
    let mut parts = rest.split('$');
    let (Some(alg), Some(pos), Some(salt), Some(digest), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad(
            "salted hash must be $salted-ALG$POSITION$SALT_HEX$DIGEST_HEX",
        ));
    };
    let alg = DigestAlg::parse(alg).ok_or_else(|| bad(format!("unknown digest {alg:?}")))?;
    let pos = match pos {
        "before" => SaltPosition::Before,
        "after" => SaltPosition::After,
        other => return Err(bad(format!("salt position {other:?} is not before/after"))),
    };
    let salt = hex::decode(salt).map_err(|_| bad("salt is not hexadecimal"))?;
    let digest = hex::decode(digest).map_err(|_| bad("digest is not hexadecimal"))?;
    if digest.len() != alg.len() {
        return Err(bad(format!("{} digest has the wrong length", alg.name())));
    }
    Ok((alg, pos, salt, digest))
}

fn check_bcrypt(stored: &str, limits: &LegacyHashLimits) -> Result<(), HashFormatError> {
    // `$2b$12$` + 22 salt + 31 hash characters.
    let cost: u32 = stored
        .get(4..6)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bcrypt cost is not a number"))?;
    if !(4..=31).contains(&cost) || stored.len() != 60 || stored.as_bytes()[6] != b'$' {
        return Err(bad("malformed bcrypt hash"));
    }
    if cost > limits.bcrypt_max_cost {
        return Err(above_cap(
            "bcrypt cost",
            cost,
            limits.bcrypt_max_cost,
            "--legacy-bcrypt-max-cost",
        ));
    }
    Ok(())
}

/// The reason a hash above a cap is refused: the value, the cap and the
/// setting that holds it, so an operator knows what to raise (or clean up).
fn above_cap(what: &str, found: u32, cap: u32, flag: &str) -> HashFormatError {
    bad(format!(
        "{what} {found} is above the accepted maximum {cap} ({flag})"
    ))
}

fn check_phc(phc: &PasswordHash<'_>, limits: &LegacyHashLimits) -> Result<Scheme, HashFormatError> {
    let alg = phc.algorithm.as_str();
    let scheme = match alg {
        "argon2id" | "argon2i" => {
            let params = argon2::Params::try_from(phc)
                .map_err(|e| bad(format!("argon2 parameters: {e}")))?;
            if params.m_cost() > limits.argon2_max_memory_kib {
                return Err(above_cap(
                    "argon2 memory (KiB)",
                    params.m_cost(),
                    limits.argon2_max_memory_kib,
                    "--legacy-argon2-max-memory-kib",
                ));
            }
            if params.t_cost() > limits.argon2_max_iterations {
                return Err(above_cap(
                    "argon2 iterations",
                    params.t_cost(),
                    limits.argon2_max_iterations,
                    "--legacy-argon2-max-iterations",
                ));
            }
            if alg == "argon2id" {
                Scheme::Argon2id
            } else {
                Scheme::Argon2i
            }
        }
        "pbkdf2-sha256" | "pbkdf2-sha512" => {
            let params = pbkdf2::Params::try_from(phc)
                .map_err(|e| bad(format!("pbkdf2 parameters: {e}")))?;
            if params.rounds > limits.pbkdf2_max_iterations {
                return Err(above_cap(
                    "pbkdf2 iterations",
                    params.rounds,
                    limits.pbkdf2_max_iterations,
                    "--legacy-pbkdf2-max-iterations",
                ));
            }
            Scheme::Pbkdf2
        }
        other => return Err(bad(format!("unsupported PHC algorithm {other:?}"))),
    };
    if phc.hash.is_none() || phc.salt.is_none() {
        return Err(bad("PHC string has no salt or hash"));
    }
    Ok(scheme)
}

/// Decodes an ASP.NET Identity payload far enough to know its version and to
/// reject a malformed header.
fn aspnet(b64: &str, limits: &LegacyHashLimits) -> Result<Scheme, HashFormatError> {
    let raw = DOTNET_BASE64
        .decode(b64)
        .map_err(|_| bad("ASP.NET Identity hash is not base64"))?;
    match raw.first() {
        Some(0x00) if raw.len() == 1 + 16 + 32 => Ok(Scheme::AspNetV2),
        Some(0x01) => aspnet_v3(&raw, limits).map(|_| Scheme::AspNetV3),
        _ => Err(bad("not an ASP.NET Identity v2/v3 payload")),
    }
}

struct AspNetV3<'a> {
    prf: u32,
    iterations: u32,
    salt: &'a [u8],
    subkey: &'a [u8],
}

fn aspnet_v3<'a>(
    raw: &'a [u8],
    limits: &LegacyHashLimits,
) -> Result<AspNetV3<'a>, HashFormatError> {
    let be = |at: usize| -> Option<u32> {
        raw.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    let malformed = || bad("malformed ASP.NET Identity v3 payload");
    let (prf, iterations, salt_len) = (
        be(1).ok_or_else(malformed)?,
        be(5).ok_or_else(malformed)?,
        be(9).ok_or_else(malformed)? as usize,
    );
    let salt = raw.get(13..13 + salt_len).ok_or_else(malformed)?;
    let subkey = raw.get(13 + salt_len..).ok_or_else(malformed)?;
    if prf > 2 || iterations == 0 || salt_len < 16 || subkey.len() < 16 || subkey.len() > 64 {
        return Err(malformed());
    }
    if iterations > limits.pbkdf2_max_iterations {
        return Err(above_cap(
            "pbkdf2 iterations",
            iterations,
            limits.pbkdf2_max_iterations,
            "--legacy-pbkdf2-max-iterations",
        ));
    }
    Ok(AspNetV3 {
        prf,
        iterations,
        salt,
        subkey,
    })
}

/// Verifies a password against a stored hash of any accepted scheme. An
/// unparseable hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok((canon, scheme)) = canonical(stored) else {
        return false;
    };
    let pw = password.as_bytes();
    match scheme {
        Scheme::Argon2id | Scheme::Argon2i => PasswordHash::new(&canon)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(pw, &h).is_ok()),
        Scheme::Pbkdf2 => {
            PasswordHash::new(&canon).is_ok_and(|h| pbkdf2::Pbkdf2.verify_password(pw, &h).is_ok())
        }
        // The bcrypt crate compares in constant time.
        Scheme::Bcrypt => bcrypt::verify(pw, &canon).unwrap_or(false),
        Scheme::Salted(..) => {
            let Some(rest) = canon.strip_prefix("$salted-") else {
                return false;
            };
            let Ok((alg, pos, salt, digest)) = parse_salted(rest) else {
                return false;
            };
            let computed = match pos {
                SaltPosition::Before => alg.digest(&[&salt, pw]),
                SaltPosition::After => alg.digest(&[pw, &salt]),
            };
            bool::from(computed.ct_eq(&digest))
        }
        Scheme::AspNetV2 | Scheme::AspNetV3 => {
            let Some(b64) = canon.rsplit('$').next() else {
                return false;
            };
            let Ok(raw) = DOTNET_BASE64.decode(b64) else {
                return false;
            };
            verify_aspnet(pw, &raw)
        }
    }
}

fn verify_aspnet(pw: &[u8], raw: &[u8]) -> bool {
    if raw.first() == Some(&0x00) {
        // v2: PBKDF2-HMAC-SHA1, 1000 iterations, 128-bit salt, 256-bit subkey.
        let (Some(salt), Some(subkey)) = (raw.get(1..17), raw.get(17..)) else {
            return false;
        };
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha1>(pw, salt, 1000, &mut out);
        return bool::from(out.as_slice().ct_eq(subkey));
    }
    let Ok(v3) = aspnet_v3(raw, &LegacyHashLimits::VERIFY_CEILING) else {
        return false;
    };
    let mut out = vec![0u8; v3.subkey.len()];
    match v3.prf {
        0 => pbkdf2::pbkdf2_hmac::<Sha1>(pw, v3.salt, v3.iterations, &mut out),
        1 => pbkdf2::pbkdf2_hmac::<Sha256>(pw, v3.salt, v3.iterations, &mut out),
        _ => pbkdf2::pbkdf2_hmac::<Sha512>(pw, v3.salt, v3.iterations, &mut out),
    }
    bool::from(out.as_slice().ct_eq(v3.subkey))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published vectors: ASP.NET Core's PasswordHasherTest ("my password"),
    // OpenWall crypt_blowfish ("U*U"), the PHC argon2 reference ("password"),
    // RFC 7914 §11 PBKDF2-HMAC-SHA256 ("passwd", salt "salt", c = 1).
    const ASPNET_V2: &str = "AAABAgMEBQYHCAkKCwwNDg+ukCEMDf0yyQ29NYubggHIVY0sdEUfdyeM+E1LtH1uJg==";
    const ASPNET_V3: [&str; 3] = [
        "AQAAAAAAAAD6AAAAEAhftMyfTJylOlZT+eEotFXd1elee8ih5WsjXaR3PA9M",
        "AQAAAAIAAAAyAAAAEOMwvh3+FZxqkdMBz2ekgGhwQ4B6pZWND6zgESBuWiHw",
        "AQAAAAEAACcQAAAAEAABAgMEBQYHCAkKCwwNDg+yWU7rLgUwPZb1Itsmra7cbxw2EFpwpVFIEtP+JIuUEw==",
    ];
    const BCRYPT_2A: &str = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
    const ARGON2I: &str =
        "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
    const ARGON2ID: &str =
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
    const PBKDF2_RFC7914: &str = "$pbkdf2-sha256$i=1,l=64$c2FsdA$VawEblbjCJ/sFpHCJUS2BflBhSFt3gRl5oudV8INrLxJypzM8Xm2RZkWZLOdd+8xfHG4RbHjC9UJESBB06GXgw";

    fn accepts(stored: &str, password: &str, scheme: Scheme) {
        let (canon, found) = canonical(stored).unwrap();
        assert_eq!(found, scheme, "{stored}");
        assert!(verify(password, &canon), "{stored} should verify");
        assert!(verify(password, stored), "{stored} should verify as given");
        assert!(
            !verify("wrong password", &canon),
            "{stored} accepted a wrong password"
        );
        assert_eq!(
            canonical(&canon).unwrap().0,
            canon,
            "canonical form is stable"
        );
    }

    #[test]
    fn aspnet_identity_published_vectors() {
        accepts(ASPNET_V2, "my password", Scheme::AspNetV2);
        for v3 in ASPNET_V3 {
            accepts(v3, "my password", Scheme::AspNetV3);
        }
        assert_eq!(
            canonical(ASPNET_V2).unwrap().0,
            format!("$aspnet-identity-v2${ASPNET_V2}")
        );
        assert!(canonical(&format!("$aspnet-identity-v3${ASPNET_V2}")).is_err());
    }

    #[test]
    fn bcrypt_all_prefixes() {
        accepts(BCRYPT_2A, "U*U", Scheme::Bcrypt);
        let parts = bcrypt::hash_with_result("correct horse", 4).unwrap();
        for version in [
            bcrypt::Version::TwoA,
            bcrypt::Version::TwoB,
            bcrypt::Version::TwoY,
        ] {
            accepts(
                &parts.format_for_version(version),
                "correct horse",
                Scheme::Bcrypt,
            );
        }
        assert!(canonical("$2b$99$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW").is_err());
    }

    #[test]
    fn pbkdf2_phc() {
        accepts(PBKDF2_RFC7914, "passwd", Scheme::Pbkdf2);
        // Generated with python3 hashlib.pbkdf2_hmac, salt "saltsaltsaltsalt".
        accepts(
            "$pbkdf2-sha256$i=1000,l=32$c2FsdHNhbHRzYWx0c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM",
            "correct horse",
            Scheme::Pbkdf2,
        );
        accepts(
            "$pbkdf2-sha512$i=1000,l=64$c2FsdHNhbHRzYWx0c2FsdA$EHLBej+uEvxlmr0QnHnceg1vM6h1wbwSP5XErh3SmizNDWZsIi28RPGARe0EssjGRoiACzxgHjNvqwJY1zxKig",
            "correct horse",
            Scheme::Pbkdf2,
        );
        assert!(
            canonical(
                "$pbkdf2-sha256$i=99999999,l=32$c2FsdA$BBs+1+PaslLtBPULUr8/lQicvVuHiEPMz0i8MjLCbzM"
            )
            .is_err()
        );
    }

    #[test]
    fn argon2_reference_vectors() {
        accepts(ARGON2I, "password", Scheme::Argon2i);
        accepts(ARGON2ID, "password", Scheme::Argon2id);
        assert!(
            canonical("$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc")
                .is_err(),
            "4 GiB memory cost is refused"
        );
    }

    #[test]
    fn salted_digests_both_positions() {
        // python3: hashlib.new(alg, salt + pw) / (pw + salt), salt "NaCl-salt".
        let cases = [
            (
                "sha256",
                SaltPosition::Before,
                "da77852e5c9e71943e8f29b1bbc74cb43a33e893a200022b636048e5c9769659",
            ),
            (
                "sha256",
                SaltPosition::After,
                "1e06db2fd4914d7295c2316514256357552f6e3dc038fc475c02385ca587ae62",
            ),
            (
                "sha1",
                SaltPosition::Before,
                "b703c3930cca0c7416cb842152c6d19fb9778d7c",
            ),
            (
                "sha1",
                SaltPosition::After,
                "cde1a5a6e1d021fdee98783d2f7145ae4bec228d",
            ),
            (
                "md5",
                SaltPosition::Before,
                "0b42469a74c379efdea25feb28d3fe54",
            ),
            (
                "md5",
                SaltPosition::After,
                "0509e421664df3242e549b18b40a65c5",
            ),
        ];
        for (alg, pos, digest) in cases {
            let stored = salted(alg, pos, b"NaCl-salt", &digest.to_uppercase()).unwrap();
            let (_, scheme) = canonical(&stored).unwrap();
            accepts(&stored, "correct horse", scheme);
            assert!(matches!(scheme, Scheme::Salted(_, p) if p == pos));
        }
        // SHA-256 of "abc" with an empty salt (FIPS 180-2 example).
        let abc = salted(
            "sha256",
            SaltPosition::Before,
            b"",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )
        .unwrap();
        assert!(verify("abc", &abc));
        assert!(salted("sha256", SaltPosition::After, b"s", "abcd").is_err());
    }

    #[test]
    fn costs_above_the_caps_are_refused_naming_the_cap() {
        let limits = LegacyHashLimits::default();
        let bcrypt13 = "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        let err = canonical_within(bcrypt13, &limits).unwrap_err().to_string();
        assert!(err.contains("--legacy-bcrypt-max-cost"), "{err}");
        // Login still verifies what a raised cap once accepted.
        assert!(canonical(bcrypt13).is_ok());
        assert!(canonical_within(&bcrypt13.replace("$13$", "$12$"), &limits).is_ok());
        // ASP.NET Identity v3 with 2M iterations: the PBKDF2 cap applies.
        let mut v3 = vec![1u8];
        v3.extend_from_slice(&1u32.to_be_bytes());
        v3.extend_from_slice(&2_000_000u32.to_be_bytes());
        v3.extend_from_slice(&16u32.to_be_bytes());
        v3.extend_from_slice(&[0u8; 16 + 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&v3);
        for stored in [b64.clone(), format!("$aspnet-identity-v3${b64}")] {
            let err = canonical_within(&stored, &limits).unwrap_err().to_string();
            assert!(err.contains("--legacy-pbkdf2-max-iterations"), "{err}");
        }
        let raised = LegacyHashLimits {
            pbkdf2_max_iterations: 2_000_000,
            ..limits
        };
        assert_eq!(canonical_within(&b64, &raised).unwrap().1, Scheme::AspNetV3);
    }

    #[test]
    fn unknown_schemes_are_rejected_with_a_reason() {
        for stored in [
            "",
            "plaintext-password",
            "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$salted-sha512$before$00$00",
        ] {
            let err = canonical(stored).unwrap_err();
            assert!(!err.to_string().is_empty());
            assert!(!verify("x", stored));
        }
    }
}
