//! Cryptography of the ID service: keys, sealing personal data, password
//! hashing and tokens. Every primitive comes from a maintained crate.

pub mod keys;
pub mod legacy_hash;
pub mod password;
pub mod pii;
pub mod tokens;

pub use keys::{KeyRing, KeyUse};
pub use password::{HashingPool, PasswordParams};
pub use pii::{BlindIndex, PiiSealer};
pub use tokens::{AccessClaims, TokenSigner};
